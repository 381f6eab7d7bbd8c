"""实验 3：KL 惩罚与裁剪在管什么？——β ∈ {0, 小, 大} 与裁剪 ε 下的奖励、到参考模型的 KL、熵、裁剪比例。

同一个起点（trainer/rl/startup.py 的 task_sft）、同一个 0/1 可验证奖励、同一个训练步：trainer/train_grpo.py::GRPOStep
（grpo 聚合、组内标准化优势、k3 KL），同一批采样做 μ = 4 次优化（PPO 的做法：μ > 1 时重要性比率才离开 1，裁剪才有事可做）。
只换两个旋钮：
    β=0            不加 KL（DAPO 的做法）
    β=0.04         小 KL（DeepSeekMath 的 GRPO 用的值，Shao et al. 2024）
    β=1            大 KL
    β=0, no clip   不加 KL，也不裁剪（ε = ∞）：μ 次优化里每一次都按完整的比率 r·Â 更新
参考模型在四种设置里都在（β=0 时它不进损失，只用来记录 KL）。

测量：
  训练中每步：答对率（奖励）、k3 KL(π‖π_ref)、采样回答上的熵（每步第一次优化时，即采样它的策略）、
  裁剪比例（μ 次里第一次比率恒为 1、不会裁剪；第二次起的平均）、回答长度，
  以及这一批采样被用完后策略移动了多远：KL(π_old‖π_new) 的 k3 估计（样本来自 π_old，即这批回答）——裁剪要限制的正是它。
  单批探针（裁剪的机制，配对测量）：从同一个起点、对同一批采样，分别用 ε=0.2 与不裁剪（β=0）连续优化
  μ = 10 次（PPO 论文 MuJoCo 设置的 K = 10 个 epoch，Schulman et al. 2017），每次优化后记下 KL(π_old‖π_new)。
  两边只差 ε：起点、回答、优势、优化器的初始状态都相同，所以 quick 模式按批配对，完整模式按种子配对。
  训练后在留出题上每题采 4 条：答对率、回答长度，以及逐 token 精确的 KL(π‖π_ref) = Σ_v π log(π/π_ref) 与熵 −Σ_v π log π
  （对整个词表求和，不是单个样本的估计），按题平均——同一批题在各设置之间配对，quick 模式的噪声检验按题配对。

复制训练（modules/common/replicates.py）：训练结果层面的结论（留出准确率、累积 KL）由单次训练的噪声主导。
同一个起点只换训练的随机数，β=0 与 β=0.04 的留出 KL 差是 +0.07 / +0.13 / +0.15（种子 42 的起点），和种子之间的散布一样大；
β=0、μ=4、lr 1e-3 的一次训练有时在最初几步冲走再慢慢回来。--replicates R 让完整模式里每个种子、每种设置训练 R 次
（r = 0 用种子本身），留出指标与训练曲线取平均后再按种子配对；起点与单批探针每个种子一份，不复制。
完整模式默认 R = 2（FULL_REPLICATES）。这是看过判定之后的设计改动：R = 1 的参考结果（种子 42–44）里"β=0.04 的 KL 小于 β=0"
"β=0 的 RL 提高了准确率""KL 的代价"三条未确立，之后才把 R 从 1 改成 2。R 受完整模式 10 分钟 CPU 的预算限制：
R = 2 的完整运行实测 CPU（user + sys）696 s（42–44）/ 617 s（1–3）/ 671 s（4–6，负载均值 2–6 时测），单线程依次跑已经超出预算，所以没有再加；完整模式在 CPU 上默认把种子分给单线程子进程同时跑（--workers，
modules/common/parallel.py），2 核上种子 42–44 墙钟 497 s，JSON 与单线程依次运行的参考结果逐位相同（核对过）。
改动之后 42–44（参考结果）、1–3 与从没看过的 4–6 各运行一次（AMD EPYC，与 R = 1 的参考结果不是同一种 CPU），
三组的判定不论结果都写进讲义：42–44 上"提高准确率""KL 的代价"成立，"β=0.04 的 KL"与"不裁剪会把策略推坏"未确立；
bound、种子、lr、步数都没有改。
quick 只有一个种子、只训练一次，逐题检验量到的只是评估噪声，量不到训练噪声，所以"β=0.04 的 KL 小于 β=0"
"β=0 的 RL 提高了准确率""KL 的代价""不裁剪会把策略推坏"四条在 quick 里只打印测得的值和原因（QUICK_TRAINING_NOISE）、
指向完整模式的参考结果。这是看过 quick 判定之后的改动；quick 测得的值与改动前逐位相同（种子 42 上核对过），完整模式不受影响。
两条熵的结论（"没有 KL 时熵坍缩""大 β 减缓熵坍缩"）原先在 quick 里判定（种子 42/1/7/5/2 上都成立）；从没用过的种子 11
上这一次 β=0 训练在 10 步里冲离起点（KL 0.71），熵反而升高，两条都判为不成立（QUICK_ENTROPY_NOISE）——同样是逐题检验量不到的
训练噪声，所以也改为 quick 不判定（看过种子 11 的判定之后的改动；完整模式不变，9 个种子上都成立）。quick 不判定的结论统一走
Experiment.conclude_verdict 的 quick_reason（原来是本文件自己的 judge），完整模式的结论、顺序与参考结果不变。

    python exp3_kl_clip.py --quick
"""
import copy
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import rl_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs, exceeds  # noqa: E402
from modules.common.parallel import add_workers_argument, map_seeds, resolve_workers  # noqa: E402
from modules.common.replicates import add_replicates_argument, replicate_seed, resolve_replicates  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.rl.losses import k3_kl, masked_mean, policy_loss  # noqa: E402
from trainer.rl.rewards import correctness_reward  # noqa: E402
from trainer.rl.rollout import completion_logprobs, sample_replies  # noqa: E402
from trainer.rl.startup import RewardFunction, frozen_copy, reply_prefix  # noqa: E402
from trainer.train_grpo import GRPOStep  # noqa: E402

# 四种设置：名字 → (β, 裁剪 ε)；ε = inf 表示不裁剪
SETTINGS = {"beta0": (0.0, 0.2), "beta_small": (0.04, 0.2), "beta_large": (1.0, 0.2), "no_clip": (0.0, math.inf)}
LABELS = {"beta0": "β=0, ε=0.2", "beta_small": "β=0.04, ε=0.2", "beta_large": "β=1, ε=0.2", "no_clip": "β=0, no clip"}
COLORS = {"beta0": "tab:blue", "beta_small": "tab:green", "beta_large": "tab:orange", "no_clip": "tab:red"}
LR = 1e-3  # 同 trainer/rl/startup.py 的 QUICK_RL
ITERATIONS = 4  # μ：训练中每批采样做几次优化
PROBE_ITERATIONS = 10  # 单批探针的 μ：PPO 论文 MuJoCo 设置每批采样训练 K = 10 个 epoch（Schulman et al. 2017）
LENGTH_MARGIN = 0.5  # "回答长度不变"的等价界（token）：答案是一个数字 + <|im_end|>，事先定为半个 token
QUICK = dict(start_epochs=1, steps=10, batch_prompts=8, group=8, eval_prompts=120, eval_samples=4, probe_batches=6)
FULL = dict(start_epochs=4, steps=20, batch_prompts=16, group=8, eval_prompts=300, eval_samples=4, probe_batches=4)
# 每个种子、每种设置训练几次（只换训练的随机数：批次、采样；起点不变）。完整模式 R = 2 是看过判定之后的改动（见文件开头）
QUICK_REPLICATES, FULL_REPLICATES = 1, 2
METRICS = ("accuracy", "reply_len", "kl", "entropy")  # 留出题上每个种子记录的指标
CURVE_KEYS = ("accuracy", "kl", "entropy", "clip_fraction", "reply_len", "batch_kl")  # 训练曲线
# quick 不判定的结论及原因（数字的来历见文件开头），交给 exp.conclude_verdict 的 quick_reason
QUICK_TRAINING_NOISE = ("比较的是两次独立训练的结果，差值里有训练噪声，逐题检验只量到评估噪声：quick 种子 42/1/7/5/2 上，"
                        "\"不裁剪会把策略推坏\"在 7、5 上反向（−0.03、−0.06），\"KL 的代价\"在 42、7 上、"
                        "\"β=0 的 RL 提高了准确率\"在 2 上在逐题噪声以内；同一个起点只换训练的随机数，"
                        "β=0 与 β=0.04 的 KL 差在 +0.07～+0.15 之间变（种子 42 的起点）")
QUICK_ENTROPY_NOISE = ("熵是单次训练的结果，10 步里一次训练冲离起点就会反过来，逐题检验量不到这种训练噪声：quick 种子 42/1/7/5/2 上"
                       "两条都成立（β=0 的熵 42/1/7：1.31→1.01、1.29→0.83、1.29→0.44），种子 11 上 β=0 的训练冲离起点"
                       "（KL 0.71、准确率 0.108→0.129），熵反而从 1.29 升到 1.41（β=1 为 1.22），两条都判为不成立；"
                       "从没用过的种子 13 上两条都超出噪声（1.33→0.75，β=1 为 1.31）；完整模式 42–44、1–3、4–6 上都成立")


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每种设置的 RL 步数（默认 quick 10，完整 20）")
    add_replicates_argument(parser, QUICK_REPLICATES, FULL_REPLICATES, "只换训练的随机数：批次与采样，起点不变")
    add_workers_argument(parser)


def settings(exp: Experiment) -> dict:
    cfg = dict(QUICK if exp.quick else FULL)
    if exp.args.steps is not None:
        cfg["steps"] = exp.args.steps
    if cfg["steps"] < 1:
        raise SystemExit(f"需要 --steps >= 1（收到 {cfg['steps']}）")
    return cfg


def grpo_args(beta: float, epsilon: float, group: int, iterations: int = ITERATIONS) -> SimpleNamespace:
    """GRPOStep 读的那几个命令行参数（同 train_grpo.py --loss_type grpo），β、ε 与 μ 由设置决定。"""
    return SimpleNamespace(num_generations=group, max_gen_len=lab.MAX_NEW_TOKENS, temperature=1.0, top_p=None,
                           scale_rewards=1, num_iterations=iterations, accumulation_steps=1, loss_type="grpo",
                           epsilon=epsilon, epsilon_high=epsilon, beta=beta)


def verifier_reward(tokenizer, device) -> RewardFunction:
    """只要答对与否（0/1）：格式与长度的权重都为 0，没有奖励模型。"""
    args = SimpleNamespace(correct_weight=1.0, format_weight=0.0, length_weight=0.0, max_gen_len=lab.MAX_NEW_TOKENS,
                           reward_model_path="none", reward_model_weight=1.0)
    return RewardFunction(args, tokenizer, device)


def prompt_batch(dataset, indices, device) -> dict:
    items = [dataset[i] for i in indices]
    return {k: torch.stack([x[k] for x in items]).to(device) for k in ("prompt_ids", "prompt_mask", "index")}


def train_setting(start, tokenizer, dataset, cfg, name, seed):
    """从起点的拷贝出发，用 GRPOStep 训练 cfg["steps"] 步，每批采样优化 μ 次。
    返回 (策略, 参考模型, 每步曲线, 每步第一次优化的裁剪比例)。"""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(start.parameters()).device
    beta, epsilon = SETTINGS[name]
    policy = copy.deepcopy(start).train()
    reference = frozen_copy(start, device)
    step_fn = GRPOStep(policy, reference, tokenizer, dataset, verifier_reward(tokenizer, device),
                       grpo_args(beta, epsilon, cfg["group"]), reply_prefix(dataset))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    curves = {k: [] for k in ("accuracy", "kl", "entropy", "clip_fraction", "reply_len", "batch_kl")}
    first_clip = []
    for _ in range(cfg["steps"]):
        batch = prompt_batch(dataset, rng.choice(len(dataset), cfg["batch_prompts"], replace=False).tolist(), device)
        extras = []
        for _ in range(ITERATIONS):  # RolloutCache：第一次调用采样，之后重用同一批
            loss, stats = step_fn(policy, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            extras.append(stats)
        for key in ("accuracy", "kl", "entropy", "reply_len"):
            curves[key].append(extras[0][key])  # 第一次优化时的策略 = 采样这批回答的策略
        curves["clip_fraction"].append(float(np.mean([e["clip_fraction"] for e in extras[1:]])))
        first_clip.append(extras[0]["clip_fraction"])
        with torch.no_grad():  # 这批采样用完后走了多远：KL(π_old‖π_new)，样本来自 π_old
            buf = step_fn.cache.buffers[0]
            new_logp = completion_logprobs(policy, buf["rollout"])
            curves["batch_kl"].append(masked_mean(k3_kl(buf["old_logp"], new_logp), buf["rollout"].completion_mask).item())
    return policy.eval(), reference, curves, first_clip


def step_size_probe(start, tokenizer, dataset, cfg, seed) -> dict:
    """裁剪的机制，配对测量：对 cfg["probe_batches"] 批题，从起点各采样一次，再从起点的两份拷贝出发，
    对这同一批采样分别用 ε=0.2 与不裁剪（β=0）各优化 PROBE_ITERATIONS 次（各自新建的 AdamW，同 LR 与梯度裁剪），
    每次优化后记下 KL(π_old‖π_new)（k3，样本来自 π_old，即这批回答）。返回 {"clip"/"no_clip": 每批一个长 μ 的列表}。"""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(start.parameters()).device
    reward_fn = verifier_reward(tokenizer, device)
    out = {"clip": [], "no_clip": []}
    for _ in range(cfg["probe_batches"]):
        batch = prompt_batch(dataset, rng.choice(len(dataset), cfg["batch_prompts"], replace=False).tolist(), device)
        shared = None  # 第一个设置采样的那批回答（含 old_logp 与优势），第二个设置原样重用
        for key, epsilon in (("clip", 0.2), ("no_clip", math.inf)):
            policy = copy.deepcopy(start).train()
            step_fn = GRPOStep(policy, None, tokenizer, dataset, reward_fn,
                               grpo_args(0.0, epsilon, cfg["group"], PROBE_ITERATIONS), reply_prefix(dataset))
            if shared is not None:
                step_fn.cache.make = lambda _batch: shared  # 同一批采样：不重新采样
            optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
            kls = []
            for _ in range(PROBE_ITERATIONS):
                loss, _ = step_fn(policy, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                buf = step_fn.cache.buffers[0]
                with torch.no_grad():
                    new_logp = completion_logprobs(policy, buf["rollout"])
                kls.append(masked_mean(k3_kl(buf["old_logp"], new_logp), buf["rollout"].completion_mask).item())
            shared = step_fn.cache.buffers[0]
            out[key].append(kls)
    return out


@torch.no_grad()
def exact_kl_entropy(policy, reference, rollout):
    """回答里每个位置对整个词表求和的 KL(π‖π_ref) 与 π 的熵，各 (N,)：按回答的 token 平均。"""
    R = rollout.completion_mask.size(1)
    logp, logq = (m(rollout.sequences, attention_mask=rollout.attention_mask, logits_to_keep=R + 1)
                  .logits[:, :-1].float().log_softmax(-1) for m in (policy, reference))  # (N, R, V)
    p = logp.exp()
    kl = (p * (logp - logq)).sum(-1)  # (N, R)
    entropy = -(p * logp).sum(-1)
    mask = rollout.completion_mask
    return masked_mean(kl, mask, dim=1), masked_mean(entropy, mask, dim=1)


@torch.no_grad()
def heldout_stats(policy, reference, tokenizer, dataset, indices, n, batch_prompts=30) -> dict:
    """留出题上每题采 n 条，逐题平均：答对率、回答 token 数、精确 KL、熵。返回 {指标: 长 P 的列表}。"""
    device = next(policy.parameters()).device
    out = {k: [] for k in ("accuracy", "reply_len", "kl", "entropy")}
    for start in range(0, len(indices), batch_prompts):
        chunk = indices[start:start + batch_prompts]
        batch = prompt_batch(dataset, chunk, device)
        rollout = sample_replies(policy, tokenizer, batch["prompt_ids"], batch["prompt_mask"], n, lab.MAX_NEW_TOKENS)
        kl, entropy = exact_kl_entropy(policy, reference, rollout)
        rows = [dataset.row(i) for i in chunk for _ in range(n)]
        correct = torch.tensor([correctness_reward(t, r["task"], r["answer"]) for t, r in zip(rollout.texts, rows)])
        for key, value in (("accuracy", correct), ("reply_len", rollout.n_tokens.float()), ("kl", kl),
                           ("entropy", entropy)):
            out[key] += value.cpu().view(len(chunk), n).mean(1).tolist()
    return out


def clipping_is_inactive_on_policy() -> bool:
    """确定性检查：比率恒为 1（old_logp = logp）时，无论 ε 多小、优势多大，都没有 token 被裁剪。"""
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(6, 5, generator=gen) - 3
    adv, mask = torch.randn(6, generator=gen) * 5, torch.ones(6, 5)
    return all(policy_loss(logp, logp.clone(), adv, mask, "grpo", eps, eps)[1]["clip_fraction"] == 0.0
               for eps in (0.01, 0.2))


def run_seed(seed: int, cfg: dict, replicates: int, device: str) -> dict:
    """一个种子要做的全部事情：起点、单批探针、起点的留出指标，每种设置 R 次训练（只换训练的随机数，r = 0 用种子本身）
    各自的留出指标与训练曲线。在顶层定义，map_seeds 才能把它交给单线程子进程（完整模式在 CPU 上几个种子同时跑）。"""
    tokenizer = lab.load_tokenizer()
    train_set, eval_set = lab.eval_prompts(tokenizer, lab.RL_TRAIN), lab.eval_prompts(tokenizer)
    eval_idx = list(range(cfg["eval_prompts"]))
    Experiment.seed_everything(seed)
    start = lab.train_task_start(seed, cfg["start_epochs"]).to(device)
    probe = step_size_probe(start, tokenizer, train_set, cfg, seed)

    def evaluate(policy, reference):
        Experiment.seed_everything(seed)  # 各设置、各次训练在留出题上用同样的随机数状态采样
        return heldout_stats(policy, reference, tokenizer, eval_set, eval_idx, cfg["eval_samples"])

    start_stats = evaluate(start, start)
    runs = {}
    for name in SETTINGS:
        runs[name] = []
        for r in range(replicates):
            policy, reference, curve, clip0 = train_setting(start, tokenizer, train_set, cfg, name, replicate_seed(seed, r))
            runs[name].append({"heldout": evaluate(policy, reference), "curve": curve, "first_clip": clip0})
    return {"probe": probe, "start": start_stats, "runs": runs}


def main():
    exp = Experiment(__file__, description="KL 惩罚 β 与裁剪 ε：奖励、到参考模型的 KL、熵、裁剪比例、留出准确率与回答长度",
                     extra_args=add_args)
    cfg = settings(exp)
    replicates = resolve_replicates(exp.args.replicates, exp.quick, QUICK_REPLICATES, FULL_REPLICATES)
    print(f"每步 {cfg['batch_prompts']} 题 × G={cfg['group']}，每批采样优化 μ={ITERATIONS} 次，{cfg['steps']} 步，lr {LR}；"
          f"留出 {cfg['eval_prompts']} 题 × {cfg['eval_samples']} 条；每个种子每种设置平均 {replicates} 次训练（只换训练的随机数）")

    names = list(SETTINGS)
    workers = resolve_workers(exp.args.workers, exp.quick, exp.device, len(exp.seeds))
    per_seed = map_seeds(run_seed, exp.seeds, workers, cfg, replicates, str(exp.device))
    held = {k: {m: [] for m in METRICS} for k in ["start"] + names}  # 每个种子的全体平均（R 次训练再平均）
    held_replicates = {k: {m: [] for m in METRICS} for k in names}  # 每个种子 R 次训练各自的值
    held_prompts = {}  # 第一个种子逐题的值（R 次训练再平均；quick 模式按题配对）
    curves = {k: {m: [] for m in CURVE_KEYS} for k in names}
    first_clip = []
    probe = {"clip": [], "no_clip": []}  # 每个种子一项：每批一条长 PROBE_ITERATIONS 的 KL(π_old‖π_new) 曲线
    for seed, result in zip(exp.seeds, per_seed):
        for key, batches in result["probe"].items():
            probe[key].append(batches)
        held_prompts.setdefault("start", result["start"])
        for m in METRICS:
            held["start"][m].append(float(np.mean(result["start"][m])))
        for name in names:
            # R 次训练的留出指标与训练曲线逐项平均成这个种子的值
            runs_of_setting = result["runs"][name]
            held_prompts.setdefault(name, {m: np.mean([run["heldout"][m] for run in runs_of_setting], axis=0).tolist()
                                           for m in METRICS})
            for m in METRICS:
                held_replicates[name][m].append([float(np.mean(run["heldout"][m])) for run in runs_of_setting])
                held[name][m].append(float(np.mean(held_replicates[name][m][-1])))
            for m in curves[name]:
                curves[name][m].append(np.mean([run["curve"][m] for run in runs_of_setting], axis=0).tolist())
            first_clip += [clip for run in runs_of_setting for clip in run["first_clip"]]
        print(f"[seed {seed}] " + "；".join(f"{LABELS[k] if k in LABELS else k}: 准确率 {held[k]['accuracy'][-1]:.3f}，"
                                            f"KL {held[k]['kl'][-1]:.3f}，熵 {held[k]['entropy'][-1]:.3f}"
                                            for k in ["start"] + names))

    def last(name, m, k=5):  # 每个种子最后 k 步的平均
        return [float(np.mean(c[-k:])) for c in curves[name][m]]

    exp.print_table(["setting", "train acc (last 5)", "k3 KL to ref (last 5)", "entropy (last 5)", "clip fraction (all)",
                     "KL(old‖new) per batch (all)"],
                    [[LABELS[k], format_mean_std(last(k, "accuracy"), 3), format_mean_std(last(k, "kl"), 3),
                      format_mean_std(last(k, "entropy"), 3), format_mean_std(last(k, "clip_fraction", cfg["steps"]), 3),
                      format_mean_std(last(k, "batch_kl", cfg["steps"]), 4)]
                     for k in names], title=f"训练中（{cfg['steps']} 步，每步 μ={ITERATIONS} 次优化）")
    # 单批探针：每批在第 k 次优化后的 log KL(π_old‖π_new)；每个种子取各批的平均（几何平均的对数）
    probe_log = {key: [np.log(np.maximum(np.array(batches), 1e-8)) for batches in probe[key]] for key in probe}
    exp.print_table(["update k", *(f"KL(old‖new), {'eps=0.2' if key == 'clip' else 'no clip'}" for key in probe)],
                    [[k + 1, *(format_mean_std([math.exp(lg[:, k].mean()) for lg in probe_log[key]], 4) for key in probe)]
                     for k in range(PROBE_ITERATIONS)],
                    title=f"单批探针：同一个起点、同一批采样（{cfg['probe_batches']} 批，各 {cfg['batch_prompts']} 题 × G={cfg['group']}），"
                          f"β=0，连续优化 μ={PROBE_ITERATIONS} 次；各批几何平均")
    exp.print_table(["setting", "held-out acc", "reply tokens", "exact KL(π‖π_ref)", "entropy"],
                    [[LABELS.get(k, "start (no RL)"), *(format_mean_std(held[k][m], 3) for m in METRICS)]
                     for k in ["start"] + names], title=f"训练后，留出 {cfg['eval_prompts']} 题 × {cfg['eval_samples']} 条采样")

    # 训练噪声：同一个起点上单次训练之间的差值标准差 vs 种子之间（R 次平均后）的标准差；起点没有复制，取它本身
    compared = (("beta0", "beta_small", "kl"), ("beta0", "start", "accuracy"), ("beta0", "beta_large", "accuracy"),
                ("beta0", "no_clip", "accuracy"))

    def single_run_deltas(a, b, m):  # (种子, R)：第 r 次训练的 a − b
        runs_b = held_replicates[b][m] if b in held_replicates else [[v] * replicates for v in held[b][m]]
        return np.array(held_replicates[a][m]) - np.array(runs_b)

    if replicates > 1:
        exp.print_table(["difference", "per seed (mean of R)", "std between single runs (mean over seeds)",
                         "std between seeds (mean of R)"],
                        [[f"{m}: {LABELS.get(a, a)} − {LABELS.get(b, b)}",
                          " / ".join(f"{d:+.3f}" for d in single_run_deltas(a, b, m).mean(1)),
                          f"{single_run_deltas(a, b, m).std(1, ddof=1).mean():.3f}",
                          f"{single_run_deltas(a, b, m).mean(1).std(ddof=1):.3f}" if len(exp.seeds) > 1 else "—"]
                         for a, b, m in compared],
                        title=f"训练噪声：同一个起点上 {replicates} 次训练（只换训练的随机数）")

    # ---- 结论 ----
    def runs(a, b, m, direction):
        return compare_runs(held[a][m], held[b][m], direction, held_prompts[a][m], held_prompts[b][m])

    def fmt(k, m):
        return f"{LABELS.get(k, 'start')} {format_mean_std(held[k][m], 3)}"

    exp.conclude("在策略上（比率恒为 1）裁剪不起作用：ε = 0.01 或 0.2 时裁剪比例都是 0，"
                 f"实验里每批第一次优化的裁剪比例也全是 0（{len(first_clip)} 次）",
                 clipping_is_inactive_on_policy() and all(c == 0.0 for c in first_clip),
                 f"第一次优化的裁剪比例最大值 {max(first_clip):.3g}")
    clip_seed = last("beta0", "clip_fraction", cfg["steps"])
    exp.conclude_verdict("同一批采样重复优化时有 token 被裁剪：β=0、ε=0.2 在第 2 次起的优化里裁剪比例大于 0",
                         exceeds(clip_seed if len(exp.seeds) > 1 else curves["beta0"]["clip_fraction"][0], 0.0,
                                 unit="seeds" if len(exp.seeds) > 1 else "batches"),
                         f"全程平均 {format_mean_std(clip_seed, 3)}")
    exp.conclude_verdict("β 越大，策略离参考模型越近：β=1 训练后留出题上的 KL(π‖π_ref) 小于 β=0",
                         runs("beta_large", "beta0", "kl", "less"), f"{fmt('beta0', 'kl')} vs {fmt('beta_large', 'kl')}")
    exp.conclude_verdict("小 β 也拉住了一部分：β=0.04 的 KL 小于 β=0",
                         runs("beta_small", "beta0", "kl", "less"), f"{fmt('beta0', 'kl')} vs {fmt('beta_small', 'kl')}",
                         quick_reason=QUICK_TRAINING_NOISE)
    exp.conclude_verdict("没有 KL 时熵坍缩：β=0 训练后留出题上的熵低于起点",
                         runs("beta0", "start", "entropy", "less"), f"{fmt('start', 'entropy')} → {fmt('beta0', 'entropy')}",
                         quick_reason=QUICK_ENTROPY_NOISE)
    exp.conclude_verdict("大 β 减缓熵坍缩：β=1 训练后的熵高于 β=0",
                         runs("beta_large", "beta0", "entropy", "greater"),
                         f"{fmt('beta0', 'entropy')} vs {fmt('beta_large', 'entropy')}", quick_reason=QUICK_ENTROPY_NOISE)
    exp.conclude_verdict("β=0 的 RL 提高了留出题的采样准确率",
                         runs("beta0", "start", "accuracy", "greater"),
                         f"{fmt('start', 'accuracy')} → {fmt('beta0', 'accuracy')}",
                         quick_reason=QUICK_TRAINING_NOISE)
    exp.conclude_verdict("KL 的代价：β=1 训练后的留出准确率低于 β=0",
                         runs("beta_large", "beta0", "accuracy", "less"),
                         f"{fmt('beta0', 'accuracy')} vs {fmt('beta_large', 'accuracy')}",
                         quick_reason=QUICK_TRAINING_NOISE)
    # 步长是乘性的：比较 log KL（几何平均），不让一两批主导。quick 按批配对（同一批采样、只差 ε），完整模式按种子配对
    last_log = {key: [lg[:, -1].tolist() for lg in probe_log[key]] for key in probe}  # 每个种子、每批：第 μ 次优化后
    exp.conclude_verdict(f"裁剪限制每批采样上走多远：同一个起点、同一批采样优化 μ={PROBE_ITERATIONS} 次后，"
                         "不裁剪的 KL(π_old‖π_new) 大于 ε=0.2（比较 log）",
                         compare_runs([float(np.mean(v)) for v in last_log["no_clip"]],
                                      [float(np.mean(v)) for v in last_log["clip"]], "greater",
                                      last_log["no_clip"][0], last_log["clip"][0]),
                         "几何平均 ε=0.2 " + format_mean_std([math.exp(np.mean(v)) for v in last_log["clip"]], 4)
                         + " vs no clip " + format_mean_std([math.exp(np.mean(v)) for v in last_log["no_clip"]], 4))
    exp.conclude_verdict(f"不裁剪会把策略推坏（μ={ITERATIONS}）：no clip 训练后的留出准确率低于 ε=0.2",
                         runs("no_clip", "beta0", "accuracy", "less"),
                         f"{fmt('beta0', 'accuracy')} vs {fmt('no_clip', 'accuracy')}",
                         quick_reason=QUICK_TRAINING_NOISE)
    exp.conclude_verdict(f"回答长度不受 β 影响：β=0 与 β=1 训练后留出回答的 token 数相差不到 {LENGTH_MARGIN}",
                         equivalent_runs(held["beta0"]["reply_len"], held["beta_large"]["reply_len"], LENGTH_MARGIN,
                                         held_prompts["beta0"]["reply_len"], held_prompts["beta_large"]["reply_len"]),
                         f"{fmt('beta0', 'reply_len')} vs {fmt('beta_large', 'reply_len')}")

    set_style()
    fig, axes = plt.subplots(1, 6, figsize=(27, 4.2))
    steps = np.arange(1, cfg["steps"] + 1)
    for ax, m, ylabel in zip(axes, ("accuracy", "kl", "entropy", "clip_fraction", "batch_kl"),
                             ("train accuracy (reward)", "k3 KL(pi || pi_ref) per token", "entropy per token (nats)",
                              "clip fraction (re-used batch)", "KL(pi_old || pi_new) after the batch")):
        for k in names:
            ax.plot(steps, np.array(curves[k][m]).mean(0), color=COLORS[k], label=LABELS[k])
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    axes[0].set_title("A. Reward")
    axes[1].set_title("B. Drift from the reference")
    axes[2].set_title("C. Entropy (collapse)")
    axes[3].set_title("D. Clipped tokens")
    axes[4].set_title("E. Step size per batch")
    axes[4].set_yscale("log")
    inner = np.arange(1, PROBE_ITERATIONS + 1)
    for key, color, label in (("clip", COLORS["beta0"], "eps=0.2"), ("no_clip", COLORS["no_clip"], "no clip")):
        axes[5].plot(inner, np.exp(np.mean([lg.mean(0) for lg in probe_log[key]], axis=0)), color=color, marker="o",
                     label=label)
    axes[5].set_xlabel("update on the same batch")
    axes[5].set_ylabel("KL(pi_old || pi_new), geometric mean")
    axes[5].set_title(f"F. One batch, mu={PROBE_ITERATIONS} (probe)")
    axes[5].set_yscale("log")
    axes[5].legend(fontsize=8)
    fig.suptitle(f"KL penalty and clipping, GRPO with mu={ITERATIONS} ({len(exp.seeds)} seed(s), mean over seeds)")
    fig.tight_layout()
    exp.save_figure(fig, "exp3_kl_clip.png")

    exp.save_metrics({"config": {**cfg, "lr": LR, "iterations": ITERATIONS, "probe_iterations": PROBE_ITERATIONS,
                                 "replicates": replicates,
                                 "settings": {k: {"beta": b, "epsilon": None if math.isinf(e) else e}
                                              for k, (b, e) in SETTINGS.items()}},
                      "heldout": held, "heldout_replicates": held_replicates, "curves": curves, "probe": probe})
    exp.finish()


if __name__ == "__main__":
    main()
