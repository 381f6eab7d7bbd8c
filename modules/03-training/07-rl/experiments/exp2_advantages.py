"""实验 2：优势估计在做什么？——不减基线的 REINFORCE、减组内均值（Dr. GRPO）、再除以组内标准差（GRPO）。

同一个起点（trainer/rl/startup.py 的 task_sft），同一个可验证奖励（答对 1、答错 0），同一个损失
（trainer/rl/losses.py::policy_loss，grpo 聚合，β=0），只换优势 Â：
    none  Â_i = r_i                               REINFORCE，没有基线（Williams 1992）
    none+1 Â_i = r_i + 1                          同上，但奖励整体偏移 1（比如一个打分偏高的奖励模型）
    mean  Â_i = r_i − mean(r)                     组内均值当基线；Dr. GRPO（Liu et al. 2025）的优势
    std   Â_i = (r_i − mean(r)) / std(r)          GRPO（Shao et al. 2024）
（Dr. GRPO 还去掉了"回答内按长度平均"；这里的回答都是 1 个数字 + <|im_end|>，长度一样，这一半不起作用。）

三部分测量：
  A. 全组奖励相同（优势全为 0、这组不提供梯度）的组占比 vs 组大小 G，按任务（难度）分开；
     预测值：一道答对率 p 的题，G 条全对或全错的概率 p^G + (1−p)^G（用超几何分布在 K 条样本上精确计算）。
  B. 梯度方差：起点上同一批 rollout 分别用每种 Â 求策略梯度，K 批之间的方差 tr Var(g) = E‖g − ḡ‖²。
     none、none+1、mean 的期望梯度相同（减常数或组均值不改变期望，mean 只多一个 (G−1)/G 因子），方差可以直接比；
     std 的梯度尺度不同，只列出来不比较。
  C. 训练：每种 Â 从同一个起点训练同样的步数，看训练时的答对率与留出题上的采样准确率。

quick（起点答对率约 0.15、12 批）不判定"奖励 0/1 时减均值也降低梯度方差"（QUICK_SMALL_BASELINE）：差约 12%，与批间噪声同量级，
判定随种子在 ❔ 与 ✅ 之间变（42、1、7 上 ❔，11、13 上 ✅）。这是看过种子 11 的判定之后的改动，测得的值不变；完整模式照常判定。

    python exp2_advantages.py --quick
"""
import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import rl_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.rl.losses import group_advantages, policy_loss  # noqa: E402
from trainer.rl.rewards import correctness_reward  # noqa: E402
from trainer.rl.rollout import completion_logprobs, sample_replies  # noqa: E402

ESTIMATORS = ("none", "none+1", "mean", "std")
COLORS = {"none": "tab:gray", "none+1": "tab:red", "mean": "tab:blue", "std": "tab:orange"}
LABELS = {"none": "REINFORCE (no baseline)", "none+1": "REINFORCE, reward + 1", "mean": "mean-centred (Dr. GRPO)", "std": "std-normalised (GRPO)"}
GROUP_SIZES = (2, 4, 8, 16)
LR = 1e-3  # 同 trainer/rl/startup.py 的 QUICK_RL
# quick 不判定"奖励 0/1 时减均值也降低梯度方差"的原因（交给 exp.conclude_verdict 的 quick_reason，完整模式照常判定）
QUICK_SMALL_BASELINE = ("quick 的起点答对率约 0.15，组内均值本来就接近 0，none 只比 mean 大约 12%（种子 1：0.086 vs 0.076，"
                        "种子 7：0.099 vs 0.088），与 12 批之间的噪声同量级：种子 42、1、7 上 ❔，11、13 上 ✅；"
                        "完整模式（起点答对率约 0.27、16 批）小 27%，成立")
QUICK = dict(start_epochs=1, steps=24, batch_prompts=8, group=8, zero_prompts=96, samples=32, grad_batches=12,
             eval_prompts=150)
FULL = dict(start_epochs=4, steps=50, batch_prompts=16, group=8, zero_prompts=300, samples=32, grad_batches=16,
            eval_prompts=300)


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每种优势估计的 RL 步数（默认 quick 24，完整 50）")
    parser.add_argument("--group", type=int, default=None, help="训练时的组大小 G（默认 8）")


def settings(exp: Experiment) -> dict:
    cfg = dict(QUICK if exp.quick else FULL)
    for key in ("steps", "group"):
        if getattr(exp.args, key) is not None:
            cfg[key] = getattr(exp.args, key)
    if cfg["steps"] < 1 or cfg["group"] < 2:
        raise SystemExit(f"需要 --steps >= 1 且 --group >= 2（收到 {cfg['steps']}、{cfg['group']}）")
    return cfg


def advantages(rewards: torch.Tensor, group: int, estimator: str) -> torch.Tensor:
    """(N,) → (N,)：四种优势；mean/std 用 trainer/rl/losses.py::group_advantages。"""
    if estimator == "none":
        return rewards.clone()
    if estimator == "none+1":
        return rewards + 1.0
    return group_advantages(rewards, group, scale_std=estimator == "std")


def rollout_batch(policy, tokenizer, dataset, indices, group):
    """一批题各采 group 条回答，返回 (rollout, 0/1 奖励 (N,))。"""
    device = next(policy.parameters()).device
    items = [dataset[i] for i in indices]
    ids = torch.stack([x["prompt_ids"] for x in items]).to(device)
    mask = torch.stack([x["prompt_mask"] for x in items]).to(device)
    rollout = sample_replies(policy, tokenizer, ids, mask, group, lab.MAX_NEW_TOKENS, temperature=1.0)
    rows = [dataset.row(i) for i in indices for _ in range(group)]
    rewards = torch.tensor([correctness_reward(t, r["task"], r["answer"]) for t, r in zip(rollout.texts, rows)])
    return rollout, rewards.to(device)


def loss_on(model, rollout, adv):
    """在策略上（μ=1，比率恒为 1）的 GRPO 聚合损失：梯度 = −mean_i mean_t Â_i ∇log π。"""
    logp = completion_logprobs(model, rollout)
    loss, _ = policy_loss(logp, logp.detach(), adv, rollout.completion_mask, "grpo")
    return loss


def zero_group_share(counts, k: int, g: int) -> tuple[float, float]:
    """一道题 K 条样本里 c 条答对：(实测：把 K 条切成 K/G 个不相交的组，全对或全错的组占比，
    预测：随机一组 G 条全对或全错的概率 [C(c,G) + C(K−c,G)] / C(K,G))。"""
    c = counts.sum()
    measured = float(((counts.view(-1, g).sum(1) == 0) | (counts.view(-1, g).sum(1) == g)).float().mean())
    predicted = (math.comb(int(c), g) + math.comb(k - int(c), g)) / math.comb(k, g)
    return measured, predicted


def gradient_noise(policy, tokenizer, dataset, cfg, rng) -> dict:
    """K 批 rollout，每批对每种 Â 各求一次梯度（同一批 rollout，配对）。返回 {估计: 每批的 ‖g_k − ḡ‖²}，
    它们的平均是梯度方差的迹（K/(K−1) 的小样本修正对各估计相同，省去）。"""
    grads = {e: [] for e in ESTIMATORS}
    for _ in range(cfg["grad_batches"]):
        indices = rng.choice(len(dataset), cfg["batch_prompts"], replace=False).tolist()
        rollout, rewards = rollout_batch(policy, tokenizer, dataset, indices, cfg["group"])
        for e in ESTIMATORS:
            policy.zero_grad(set_to_none=True)
            loss_on(policy, rollout, advantages(rewards, cfg["group"], e)).backward()
            grads[e].append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]).clone())
    policy.zero_grad(set_to_none=True)
    out = {}
    for e, gs in grads.items():
        g = torch.stack(gs)  # (K, D)
        mean = g.mean(0)
        out[e] = ((g - mean) ** 2).sum(1).tolist()
    return out


def train_estimator(start, tokenizer, dataset, cfg, estimator, seed):
    """从起点的拷贝出发，用一种 Â 训练 cfg["steps"] 步；返回 (模型, 每步训练答对率, 每步零优势组占比)。"""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = copy.deepcopy(start).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    acc, zero = [], []
    for _ in range(cfg["steps"]):
        indices = rng.choice(len(dataset), cfg["batch_prompts"], replace=False).tolist()
        rollout, rewards = rollout_batch(policy, tokenizer, dataset, indices, cfg["group"])
        loss = loss_on(policy, rollout, advantages(rewards, cfg["group"], estimator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        acc.append(rewards.mean().item())
        zero.append((rewards.view(-1, cfg["group"]).std(1) == 0).float().mean().item())
    return policy.eval(), acc, zero


def main():
    exp = Experiment(__file__, description="优势估计：无基线 REINFORCE vs 组内均值（Dr. GRPO）vs 组内标准化（GRPO）",
                     extra_args=add_args)
    cfg = settings(exp)
    tokenizer = lab.load_tokenizer()
    train_set, eval_set = lab.eval_prompts(tokenizer, lab.RL_TRAIN), lab.eval_prompts(tokenizer)
    tasks = sorted({eval_set.row(i)["task"] for i in range(len(eval_set))})
    eval_idx = list(range(cfg["eval_prompts"]))
    print(f"训练题 {len(train_set)}、留出题 {len(eval_set)}；每步 {cfg['batch_prompts']} 题 × G={cfg['group']}，"
          f"{cfg['steps']} 步，lr {LR}")

    zero = {g: {"measured": [], "predicted": []} for g in GROUP_SIZES}  # 每个种子的全体平均
    zero_by_task = {t: {g: [] for g in GROUP_SIZES} for t in tasks}
    zero_per_prompt, predicted_per_prompt = {}, {}  # 第一个种子逐题的实测与预测（quick 模式噪声检验）
    start_acc_by_task = {t: [] for t in tasks}
    noise = {e: [] for e in ESTIMATORS}
    noise_batches = {}
    curves = {e: {"accuracy": [], "zero_adv_groups": []} for e in ESTIMATORS}
    heldout = {e: [] for e in ESTIMATORS + ("start",)}
    heldout_prompts = {}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        start = lab.train_task_start(seed, cfg["start_epochs"]).to(exp.device)
        # A. 零优势组占比：起点在留出题上每题 K 条样本
        z_idx = list(range(cfg["zero_prompts"]))
        gold, _ = lab.sample_and_grade(start, tokenizer, eval_set, z_idx, cfg["samples"])
        for t in tasks:
            rows = [j for j, i in enumerate(z_idx) if eval_set.row(i)["task"] == t]
            start_acc_by_task[t].append(float(gold[rows].mean()))
        for g in GROUP_SIZES:
            pairs = [zero_group_share(gold[j], cfg["samples"], g) for j in range(len(z_idx))]
            zero[g]["measured"].append(float(np.mean([m for m, _ in pairs])))
            zero[g]["predicted"].append(float(np.mean([p for _, p in pairs])))
            zero_per_prompt.setdefault(g, [m for m, _ in pairs])
            predicted_per_prompt.setdefault(g, [p for _, p in pairs])
            for t in tasks:
                zero_by_task[t][g].append(float(np.mean([pairs[j][0] for j, i in enumerate(z_idx)
                                                         if eval_set.row(i)["task"] == t])))
        # B. 梯度方差（同一批 rollout 上配对）
        per_batch = gradient_noise(start, tokenizer, train_set, cfg, np.random.default_rng(seed + 1000))
        for e in ESTIMATORS:
            noise[e].append(float(np.mean(per_batch[e])))
            noise_batches.setdefault(e, per_batch[e])
        # C. 训练，留出题上每题 4 条采样的答对率
        Experiment.seed_everything(seed)
        base, _ = lab.sample_and_grade(start, tokenizer, eval_set, eval_idx, 4)
        heldout["start"].append(float(base.mean()))
        heldout_prompts.setdefault("start", base.mean(1).tolist())
        for e in ESTIMATORS:
            policy, acc, zr = train_estimator(start, tokenizer, train_set, cfg, e, seed)
            curves[e]["accuracy"].append(acc)
            curves[e]["zero_adv_groups"].append(zr)
            Experiment.seed_everything(seed)
            after, _ = lab.sample_and_grade(policy, tokenizer, eval_set, eval_idx, 4)
            heldout[e].append(float(after.mean()))
            heldout_prompts.setdefault(e, after.mean(1).tolist())
            print(f"[seed {seed}] {e}: 训练答对率 {np.mean(acc[:5]):.3f} → {np.mean(acc[-5:]):.3f}，"
                  f"留出采样准确率 {heldout['start'][-1]:.3f} → {heldout[e][-1]:.3f}")

    exp.print_table(["G", "measured", "predicted p^G+(1-p)^G"] + [f"{t} (acc {mean_std(start_acc_by_task[t])[0]:.2f})"
                                                                   for t in tasks],
                    [[g, format_mean_std(zero[g]["measured"], 3), format_mean_std(zero[g]["predicted"], 3)]
                     + [format_mean_std(zero_by_task[t][g], 3) for t in tasks] for g in GROUP_SIZES],
                    title="A. 全组奖励相同（零优势）的组占比，起点模型，按任务分开")
    exp.print_table(["estimator", "gradient variance E|g-ḡ|²"],
                    [[LABELS[e], format_mean_std(noise[e], 3)] for e in ESTIMATORS],
                    title=f"B. 梯度方差（{cfg['grad_batches']} 批，每批 {cfg['batch_prompts']}×{cfg['group']} 条）")
    exp.print_table(["estimator", "train acc (first 5 steps)", "train acc (last 5 steps)", "held-out sampled acc"],
                    [[LABELS[e], format_mean_std([np.mean(a[:5]) for a in curves[e]["accuracy"]], 3),
                      format_mean_std([np.mean(a[-5:]) for a in curves[e]["accuracy"]], 3),
                      format_mean_std(heldout[e], 3)] for e in ESTIMATORS]
                    + [["start (no RL)", "", "", format_mean_std(heldout["start"], 3)]],
                    title=f"C. 训练 {cfg['steps']} 步后（留出 {cfg['eval_prompts']} 题 × 4 条采样）")

    # ---- 结论 ----
    g_small, g_large = GROUP_SIZES[0], GROUP_SIZES[-1]
    exp.conclude_verdict(f"组越大，零优势组越少：G={g_large} 的占比低于 G={g_small}",
                         compare_runs(zero[g_large]["measured"], zero[g_small]["measured"], "less",
                                      zero_per_prompt[g_large], zero_per_prompt[g_small]),
                         f"G={g_small} {format_mean_std(zero[g_small]['measured'], 3)} → "
                         f"G={g_large} {format_mean_std(zero[g_large]['measured'], 3)}")
    g_train = cfg["group"] if cfg["group"] in GROUP_SIZES else 8
    exp.conclude_verdict(f"零优势组占比由每题答对率决定：G={g_train} 时实测与 p^G + (1−p)^G 的预测相差不到 0.1",
                         equivalent_runs(zero[g_train]["measured"], zero[g_train]["predicted"], 0.1,
                                         zero_per_prompt[g_train], predicted_per_prompt[g_train]),
                         f"实测 {format_mean_std(zero[g_train]['measured'], 3)} vs 预测 "
                         f"{format_mean_std(zero[g_train]['predicted'], 3)}")
    shifted = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    exp.conclude("减去组内均值后，奖励整体加一个常数不改变优势（mean 与 std 两种估计都如此）",
                 bool(all(torch.equal(advantages(shifted + 3.0, 4, e), advantages(shifted, 4, e)) for e in ("mean", "std"))),
                 "group_advantages(r + 3) 与 group_advantages(r) 逐元素相等")
    exp.conclude_verdict("没有基线时，奖励偏移让梯度更吵：REINFORCE（奖励 + 1）的梯度方差大于减均值",
                         compare_runs(noise["none+1"], noise["mean"], "greater", noise_batches["none+1"],
                                      noise_batches["mean"]),
                         f"none+1 {format_mean_std(noise['none+1'], 3)} vs mean {format_mean_std(noise['mean'], 3)}")
    exp.conclude_verdict("奖励 0/1 时减均值也降低梯度方差：mean 的方差小于 none",
                         compare_runs(noise["mean"], noise["none"], "less", noise_batches["mean"],
                                      noise_batches["none"]),
                         f"none {format_mean_std(noise['none'], 3)} vs mean {format_mean_std(noise['mean'], 3)}",
                         quick_reason=QUICK_SMALL_BASELINE)
    for e in ("mean", "std"):
        exp.conclude_verdict(f"{LABELS[e]} 训练后留出题的采样准确率高于起点",
                             compare_runs(heldout[e], heldout["start"], "greater", heldout_prompts[e],
                                          heldout_prompts["start"]),
                             f"{format_mean_std(heldout['start'], 3)} → {format_mean_std(heldout[e], 3)}")
    exp.conclude_verdict("奖励偏移时基线有用：减均值比 REINFORCE（奖励 + 1）训练后的留出采样准确率高",
                         compare_runs(heldout["mean"], heldout["none+1"], "greater", heldout_prompts["mean"],
                                      heldout_prompts["none+1"]),
                         f"mean {format_mean_std(heldout['mean'], 3)} vs none+1 {format_mean_std(heldout['none+1'], 3)}")
    # 基线解决的是奖励公共偏移带来的方差：0/1 奖励、答对率低时组内均值本来就接近 0，这里是看不到它的区间（对照），
    # 与上一条"奖励偏移时基线有用"成对阅读
    exp.conclude_verdict("对照：有基线（mean）比无基线（none，奖励 0/1）训练后的留出采样准确率高"
                         "（0/1 奖励、答对率低时基线接近 0；奖励有偏移时见上一条）",
                         compare_runs(heldout["mean"], heldout["none"], "greater", heldout_prompts["mean"],
                                      heldout_prompts["none"]),
                         f"mean {format_mean_std(heldout['mean'], 3)} vs none {format_mean_std(heldout['none'], 3)}")

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for t in tasks:
        ax.plot(GROUP_SIZES, [mean_std(zero_by_task[t][g])[0] for g in GROUP_SIZES], marker="o",
                label=f"{t} (p={mean_std(start_acc_by_task[t])[0]:.2f})")
    ax.plot(GROUP_SIZES, [mean_std(zero[g]["predicted"])[0] for g in GROUP_SIZES], "k--", label="all, predicted")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("group size G")
    ax.set_ylabel("share of zero-advantage groups")
    ax.set_title("A. Groups with no learning signal")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(range(len(ESTIMATORS)), [mean_std(noise[e])[0] for e in ESTIMATORS],
           yerr=[mean_std(noise[e])[1] for e in ESTIMATORS], capsize=4, color=[COLORS[e] for e in ESTIMATORS])
    ax.set_xticks(range(len(ESTIMATORS)), ["none", "none+1", "mean\n(Dr. GRPO)", "std\n(GRPO)"], fontsize=8)
    ax.set_ylabel("gradient variance E|g - mean g|^2")
    ax.set_yscale("log")
    ax.set_title("B. Gradient variance at the start")
    ax = axes[2]
    for e in ESTIMATORS:
        curve = np.array(curves[e]["accuracy"]).mean(0)
        smooth = np.convolve(curve, np.ones(5) / 5, mode="valid")
        ax.plot(np.arange(len(smooth)) + 5, smooth, color=COLORS[e], label=LABELS[e])
    ax.set_xlabel("RL step")
    ax.set_ylabel("train accuracy (5-step mean)")
    ax.set_title("C. Training accuracy")
    ax.legend(fontsize=8)
    fig.suptitle(f"Advantage estimators ({len(exp.seeds)} seed(s))")
    fig.tight_layout()
    exp.save_figure(fig, "exp2_advantages.png")

    exp.save_metrics({"config": {**cfg, "lr": LR, "group_sizes": list(GROUP_SIZES)},
                      "zero_adv_groups": {str(g): zero[g] for g in GROUP_SIZES},
                      "zero_adv_groups_by_task": {t: {str(g): v for g, v in zero_by_task[t].items()} for t in tasks},
                      "start_accuracy_by_task": start_acc_by_task, "grad_variance": noise,
                      "curves": curves, "heldout_sampled_accuracy": heldout})
    exp.finish()


if __name__ == "__main__":
    main()
