"""实验 3：可验证奖励的强化学习（RLVR）——GRPO 只奖励"答对"，模型会不会学着在有用的地方多想？

起点（SFT）：就是实验 2 的模型（2 层、hidden 64，1–2 位加法草稿写法训练 400 步，每步 1024 个训练 token），
再按 addition_lab.MIXED 轮换两种写法续训 100 步（每 4 步 1 步 direct）：direct "|046" 直接答，
scratchpad "2+4+0=06;1+3+0=04;|046" 先打草稿。于是回答的第一个 token 就是模型自己的选择："|" = 不想，数字 = 先想；
两种都会，温度 1 采样时各占一部分。
然后 GRPO（Shao et al. 2024；DeepSeek-R1 2025 的做法）：题库固定为 32 道 2 位题 + 16 道 1 位题（RL 的 prompt 集），
每步取 8 道（--prompts），每道采样 G 条（温度 1），
  奖励 = 1[答案对]（程序判对错，不用奖励模型）+ 0.1 · 1[格式对]（addition_lab.well_formed：只看形状）
组内优势、裁剪目标与 k3 KL 全部来自 trainer/rl/losses.py（group_advantages、policy_loss、k3_kl）；
字符级模型没有 HF 的 generate，所以这里只写了薄薄一层采样 + 打包的循环（trainer/train_grpo.py::GRPOStep 的同一套计算）。
每隔一段按温度 1 采样（就是策略本身，不是贪心），测：准确率、"先想"的比例、回答长度、格式合格率——
分三组题看：题库里的 2 位题（训练过）、留出的 2 位题（没训练过）、全部 1 位题（想是不是用在了有用的地方）。

quick（30 步）不判定"格式合格的回答更多"（QUICK_FORMAT_CEILING）：起点只有 5–10% 不合格，贴着天花板，30 步的涨幅在评估噪声上下，
判定随种子变（本机上 42、1 ✅，7、11、13 ❔；之前的记录里 1、7 ❔，5、2 ✅）。这是看过种子 11 的判定之后的改动，测得的值不变；完整模式照常判定。

    python exp3_rl_verifiable_rewards.py --quick
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import addition_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.rl.losses import group_advantages, k3_kl, masked_mean, policy_loss  # noqa: E402
from trainer.rl.rollout import logprobs_from_logits  # noqa: E402

FORMAT_WEIGHT = 0.1  # 格式奖励的权重：远小于答对的 1，只用来惩罚写坏的回答
EVAL_BATCHES = 10
SETS = ("1digit", "2digit")
POOL_2DIGIT, POOL_1DIGIT = 32, 16  # RL 的题库（相当于 RL 的 prompt 数据集）：32 道 2 位题 + 16 道 1 位题
# quick 不判定"格式合格的回答更多"的原因（交给 exp.conclude_verdict 的 quick_reason，完整模式照常判定）
QUICK_FORMAT_CEILING = ("起点只有 5–10% 的回答格式不合格，贴着天花板，quick 30 步的涨幅在评估噪声上下：本机（AMD EPYC）上种子 42 ✅"
                        "（+0.065，界 0.042）、1 ✅，7、11、13 ❔（13：+0.000）；之前的记录里 1、7 ❔、5、2 ✅；一个种子判不了")


def add_args(parser):
    parser.add_argument("--sft-steps", type=int, default=400, help="草稿写法的 SFT 步数（默认 400，同实验 2）")
    parser.add_argument("--mixed-steps", type=int, default=100, help="再按 MIXED 轮换两种写法续训的步数（默认 100）")
    parser.add_argument("--rl-steps", type=int, default=None, help="GRPO 步数（默认 quick 30、完整 100）")
    parser.add_argument("--group", type=int, default=8, help="每道题采样的回答数 G（默认 8）")
    parser.add_argument("--prompts", type=int, default=8, help="每步的题数（默认 8）")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO 的学习率（默认 1e-4；更大时策略变差，见 teaching.md）")
    parser.add_argument("--beta", type=float, default=0.02, help="k3 KL(π‖π_ref) 的系数 β（默认 0.02）")


def score(problems, replies):
    """每条回答：(答对, 格式对, 先想了吗) 三个 0/1 张量，(N,)。"""
    correct = [float(lab.parse_answer(r, "mixed") == a + b) for r, (a, b, _) in zip(replies, problems)]
    formed = [float(lab.well_formed(p, r)) for p, r in zip(problems, replies)]
    think = [float(r[:1].isdigit()) for r in replies]  # 第一个 token 是数字 = 打了草稿
    return torch.tensor(correct), torch.tensor(formed), torch.tensor(think)


def pack(prompts, replies):
    """题目 + 回答 → ids (N, T)（右 padding）与回答掩码 (N, T−1)：位置 t 预测 ids[t+1]，只有回答的 token 记 1。"""
    rows = [(len(p), lab.TOKENIZER.encode(p + r)) for p, r in zip(prompts, replies)]
    width = max(len(ids) for _, ids in rows)
    ids = torch.full((len(rows), width), lab.PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (n_prompt, row) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, n_prompt - 1:len(row) - 1] = 1
    return ids, mask


def sequence_logprobs(model, ids):
    """(N, T) → 每个位置下一个 token 的 log π，(N, T−1)；用 trainer/rl/rollout.py 的 logprobs_from_logits。"""
    return logprobs_from_logits(model(ids).logits, ids[:, 1:])


def grpo_step(policy, reference, optimizer, problems, cfg, generator):
    """一步 GRPO（在策略上，μ=1：比率恒为 1，裁剪不起作用，梯度就是 Â·∇log π 再加 β·∇KL）。返回这批采样的统计。"""
    G = cfg["group"]
    batch = [p for p in problems for _ in range(G)]  # 同一道题的 G 条相邻
    prompts = [lab.prompt_text(p) for p in batch]
    replies, n_tokens = lab.generate(policy, prompts, cfg["max_new"], temperature=1.0, generator=generator)
    correct, formed, think = score(batch, replies)
    rewards = correct + FORMAT_WEIGHT * formed
    advantages = group_advantages(rewards, G)  # (N,)
    ids, mask = pack(prompts, replies)
    with torch.no_grad():
        ref_logp = sequence_logprobs(reference, ids)
    policy.train()
    logp = sequence_logprobs(policy, ids)
    kl = k3_kl(logp, ref_logp)
    loss, _ = policy_loss(logp, logp.detach(), advantages, mask, "grpo", kl=kl, beta=cfg["beta"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()
    zero = rewards.view(-1, G).std(dim=1) == 0  # 全组奖励相同：优势为 0，没有学习信号
    two_digit = torch.tensor([p[2] == 2 for p in problems])
    return {"reward": rewards.mean().item(), "accuracy": correct.mean().item(), "well_formed": formed.mean().item(),
            "think": think.mean().item(), "length": sum(n_tokens) / len(n_tokens),
            "kl": masked_mean(kl, mask).item(),
            "zero_groups_1digit": zero[~two_digit].float().mean().item() if (~two_digit).any() else float("nan"),
            "zero_groups_2digit": zero[two_digit].float().mean().item() if two_digit.any() else float("nan")}


def probe(model, problems, max_new, samples, seed) -> dict:
    """留出题每道按温度 1 采样 samples 条（每个检查点同一个随机种子）：逐题平均的 答对 / 先想 / 格式对 / 回答长度
    （token，含换行）。"""
    generator = torch.Generator().manual_seed(seed)
    batch = [p for p in problems for _ in range(samples)]
    replies, n_tokens = lab.generate(model, [lab.prompt_text(p) for p in batch], max_new, temperature=1.0,
                                     generator=generator)
    correct, formed, think = score(batch, replies)
    per_problem = {"correct": correct, "think": think, "well_formed": formed, "length": torch.tensor(n_tokens).float()}
    result = {k: v.view(-1, samples).mean(dim=1).tolist() for k, v in per_problem.items()}
    # 按第一个 token 把全部采样分成"先想"与"直接答"两类：各自的准确率（想在这组题上有多大用）与格式合格率
    thought = think.bool()
    for kind, chosen in (("think", thought), ("direct", ~thought)):
        n = int(chosen.sum())
        result[f"by_{kind}"] = {"n": n, "correct": correct[chosen].mean().item() if n else float("nan"),
                                "well_formed": formed[chosen].mean().item() if n else float("nan")}
    return result


def run_seed(seed, cfg, eval_sets, exclude, pool):
    model = lab.new_model(seed, hidden_size=64, num_layers=2)
    def progress(fmt, s, accs, loss):
        print(f"  [seed {seed}] SFT（{fmt}）{s} 步：loss {loss:.3f}", flush=True)

    lab.train_format(model, "scratchpad", cfg["sft_steps"], 1024, seed, 2, exclude, {}, cfg["sft_steps"], progress)
    lab.train_format(model, "mixed", cfg["mixed_steps"], 1024, seed + 1, 2, exclude, {}, cfg["mixed_steps"], progress)
    reference = lab.new_model(seed, hidden_size=64, num_layers=2)
    reference.load_state_dict(model.state_dict())
    reference.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), weight_decay=0.0)
    rng, generator = random.Random(seed + 1000), torch.Generator().manual_seed(seed)
    names = ("1digit", "2digit", "pool")
    history = {"steps": [], "probes": [], "train": []}

    def evaluate(step):
        history["steps"].append(step)
        history["probes"].append({name: probe(model, ps, cfg["max_new"], cfg["samples"], seed + 7)
                                  for name, ps in eval_sets.items()})
        p = history["probes"][-1]
        print(f"  [seed {seed}] GRPO {step:3d} 步：" + "；".join(
            f"{name} 准确率 {mean_std(p[name]['correct'])[0]:.2f} 先想 {mean_std(p[name]['think'])[0]:.2f} "
            f"长度 {mean_std(p[name]['length'])[0]:.1f}" for name in names), flush=True)

    evaluate(0)
    for step in range(1, cfg["rl_steps"] + 1):
        problems = rng.sample(pool, cfg["prompts"])  # 每步从题库里不放回地取几道
        history["train"].append(grpo_step(model, reference, optimizer, problems, cfg, generator))
        if step % cfg["eval_every"] == 0 or step == cfg["rl_steps"]:
            evaluate(step)
    return history


def main():
    exp = Experiment(__file__, description="GRPO + 可验证奖励（答对 + 格式）：准确率、先想的比例、回答长度、格式合格率随训练的变化",
                     extra_args=add_args)
    a = exp.args
    rl_steps = a.rl_steps if a.rl_steps is not None else (30 if exp.quick else 100)
    cfg = {"sft_steps": a.sft_steps, "mixed_steps": a.mixed_steps, "rl_steps": rl_steps, "group": a.group,
           "prompts": a.prompts, "lr": a.lr, "beta": a.beta, "samples": 2 if exp.quick else 4}
    n_pool = POOL_2DIGIT + POOL_1DIGIT
    if cfg["sft_steps"] < 20 or a.mixed_steps < 4 or rl_steps < 1 or a.group < 2 or not 1 <= a.prompts <= n_pool \
            or not a.lr > 0 or a.beta < 0:
        raise SystemExit(f"需要 --sft-steps >= 20、--mixed-steps >= 4、--rl-steps >= 1、--group >= 2、1 <= --prompts <= {n_pool}、--lr > 0、--beta >= 0"
                         f"（收到 {cfg['sft_steps']}、{a.mixed_steps}、{cfg['rl_steps']}、{a.group}、{a.prompts}、{a.lr}、{a.beta}）")
    cfg["eval_every"] = rl_steps if exp.quick else max(1, rl_steps // 4)  # quick 只测起点和终点
    cfg["max_new"] = len(lab.answer_text((0, 0, 2), "scratchpad")) + 4  # 2 位题草稿 22 个字符 + 换行，再留 3 个余量
    rng = random.Random(4321)
    eval_sets = {"1digit": [(x, y, 1) for x in range(10) for y in range(10)],  # 1 位题只有 100 道：全测（训练里也见过）
                 "2digit": lab.sample_problems(rng, 2, 100 if exp.quick else 200)}  # 2 位题留出、从训练里排除
    exclude = frozenset(eval_sets["2digit"])
    pool_rng = random.Random(11)  # 题库对所有种子相同；2 位题不与留出题重叠
    eval_sets["pool"] = lab.sample_problems(pool_rng, 2, POOL_2DIGIT, exclude)
    pool = eval_sets["pool"] + lab.sample_problems(pool_rng, 1, POOL_1DIGIT)

    runs = []
    for seed in exp.seeds:
        exp.seed_everything(seed)
        runs.append(run_seed(seed, cfg, eval_sets, exclude, pool))

    def at(run, k, name, key):  # 第 k 个检查点上某个集合某个指标的均值
        return mean_std(run["probes"][k][name][key])[0]

    def seeds(name, key, k):
        return [at(r, k, name, key) for r in runs]

    def batches(name, key, k):
        return lab.batch_means(runs[0]["probes"][k][name][key], EVAL_BATCHES)

    rows = []
    for name in ("pool", "2digit", "1digit"):
        for label, k in (("SFT start", 0), ("after GRPO", -1)):
            rows.append([name, label] + [format_mean_std(seeds(name, key, k), 3)
                                         for key in ("correct", "think", "length", "well_formed")])
    exp.print_table(["problems", "model", "accuracy", "think_share", "reply_len", "well_formed"], rows,
                    title=f"留出题上温度 1 采样（每题 {cfg['samples']} 条）：SFT 起点 vs GRPO {cfg['rl_steps']} 步"
                          f"（{len(exp.seeds)} 个种子）")
    def split(name, kind, key, k):  # 第 k 个检查点上"先想"或"直接答"那部分采样的指标，每个种子一个值
        return [r["probes"][k][name][f"by_{kind}"][key] for r in runs]

    def fmt_split(name, kind, key, k):
        values = [v for v in split(name, kind, key, k) if v == v]  # 没有这类采样的种子（NaN）不计
        return format_mean_std(values, 3) if values else "-"

    exp.print_table(["problems", "model", "acc | think", "acc | direct", "well_formed | think", "well_formed | direct"],
                    [[name, label] + [fmt_split(name, kind, key, k) for key in ("correct", "well_formed")
                                      for kind in ("think", "direct")]
                     for name in ("2digit", "1digit") for label, k in (("SFT start", 0), ("after GRPO", -1))],
                    title="按第一个 token 分开：先打草稿的采样 vs 直接答的采样（准确率、格式合格率）")
    train_keys = ("reward", "accuracy", "well_formed", "think", "length", "kl", "zero_groups_1digit", "zero_groups_2digit")
    zero = {d: [mean_std([t[f"zero_groups_{d}"] for t in r["train"] if t[f"zero_groups_{d}"] == t[f"zero_groups_{d}"]])[0]
                for r in runs] for d in SETS}
    exp.save_metrics({"config": cfg, "eval_steps": runs[0]["steps"],
                      "probes": {name: {key: [[at(r, k, name, key) for k in range(len(r["steps"]))] for r in runs]
                                        for key in ("correct", "think", "length", "well_formed")}
                                 for name in ("1digit", "2digit", "pool")},
                      "train_curves": {key: [[t[key] for t in r["train"]] for r in runs] for key in train_keys},
                      "zero_adv_groups": zero,
                      "by_first_token": {name: {kind: {key: [[r["probes"][k][name][f"by_{kind}"][key]
                                                              for k in range(len(r["steps"]))] for r in runs]
                                                       for key in ("n", "correct", "well_formed")}
                                                for kind in ("think", "direct")} for name in SETS}})

    def ev(name, key, k):
        return format_mean_std(seeds(name, key, k), 3)

    def gain(name, key):
        return compare_runs(seeds(name, key, -1), seeds(name, key, 0), "greater", batches(name, key, -1),
                            batches(name, key, 0))

    exp.conclude_verdict("GRPO 提高了题库里 2 位题（训练过的题）上的准确率", gain("pool", "correct"),
                         evidence=f"{ev('pool', 'correct', 0)} → {ev('pool', 'correct', -1)}")
    exp.conclude_verdict("GRPO 提高了留出 2 位题（没训练过的题）上的准确率", gain("2digit", "correct"),
                         evidence=f"{ev('2digit', 'correct', 0)} → {ev('2digit', 'correct', -1)}")
    exp.conclude_verdict("GRPO 之后留出 2 位题上先打草稿的比例更高（没人要求它想，只奖励答对）", gain("2digit", "think"),
                         evidence=f"{ev('2digit', 'think', 0)} → {ev('2digit', 'think', -1)}")
    exp.conclude_verdict("GRPO 之后留出 2 位题上的回答更长（想得更久）", gain("2digit", "length"),
                         evidence=f"{ev('2digit', 'length', 0)} → {ev('2digit', 'length', -1)} token")
    exp.conclude_verdict("GRPO 之后留出 2 位题上格式合格的回答更多", gain("2digit", "well_formed"),
                         evidence=f"{ev('2digit', 'well_formed', 0)} → {ev('2digit', 'well_formed', -1)}",
                         quick_reason=QUICK_FORMAT_CEILING)
    think_gain = {name: [e - s for e, s in zip(seeds(name, "think", -1), seeds(name, "think", 0))] for name in SETS}
    exp.conclude_verdict("先想比例的增幅：留出 2 位题（草稿有用）大于 1 位题（直接答也常对）",
                         compare_runs(think_gain["2digit"], think_gain["1digit"], "greater",
                                      [e - s for e, s in zip(batches("2digit", "think", -1), batches("2digit", "think", 0))],
                                      [e - s for e, s in zip(batches("1digit", "think", -1), batches("1digit", "think", 0))]),
                         evidence=f"2 位 {format_mean_std(think_gain['2digit'], 3)} vs 1 位 {format_mean_std(think_gain['1digit'], 3)}")

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = runs[0]["steps"]
    for name, style in (("1digit", "o--"), ("2digit", "s-")):
        for ax, key, label in ((axes[0], "correct", "sampled accuracy (T=1)"),
                               (axes[1], "think", "share starting a scratchpad")):
            ax.plot(steps, [mean_std([at(r, k, name, key) for r in runs])[0] for k in range(len(steps))], style,
                    label=name)
            ax.set_ylabel(label)
    train_steps = range(1, cfg["rl_steps"] + 1)
    for key, label in (("length", "reply length (tokens)"),):
        axes[2].plot(train_steps, [mean_std(col)[0] for col in zip(*[[t[key] for t in r["train"]] for r in runs])],
                     label=label)
    ax2 = axes[2].twinx()
    ax2.plot(train_steps, [mean_std(col)[0] for col in zip(*[[t["well_formed"] for t in r["train"]] for r in runs])],
             color="tab:green", label="well-formed share")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("well-formed share")
    axes[2].set_ylabel("reply length (tokens)")
    for ax in axes:
        ax.set_xlabel("GRPO step")
    axes[0].legend()
    axes[1].legend()
    axes[2].set_title("sampled replies (T=1) during training")
    exp.save_figure(fig, "exp3_rl_verifiable_rewards.png")
    exp.finish()


if __name__ == "__main__":
    main()
