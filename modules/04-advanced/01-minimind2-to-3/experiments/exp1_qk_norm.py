"""实验 1：QK-norm（minimind-3 的 q_norm / k_norm）能不能管住注意力 logit、让大学习率也能训？

同一个 LabModel，只差一个开关 qk_norm（True = minimind-3 的注意力：RoPE 前对每个头的 q、k 做 RMSNorm），
在 Wortsman et al. 2023 的学习率范围（3e-4 ~ 3e-1）里扫四个学习率，各训练同样的步数（按论文的设置：
AdamW β2=0.95、5% 线性预热、余弦衰减、梯度裁剪 1.0）。每个训练步都用前向钩子记下所有层的注意力 logit
q·k/√d（softmax 之前、因果 mask 内）的最大绝对值，以及每个头的平均注意力熵（Zhai et al. 2023 的熵坍缩），
同时记录训练 loss 的尖峰、是否出现 NaN/inf、最终验证 loss 与论文定义的学习率敏感度。
训练用 fp32；训练完再在几批验证数据上把每层的 QKᵀ 以 float16 算一遍（同未融合的 eager 注意力在 fp16 混合精度下存分数），
数有多少注意力行出现 inf（softmax 后就是 NaN）——论文里的大模型用 bf16/fp16 训练，数值发散出现在这种精度下，
而 fp32 的 softmax 先减去最大值，logit 上十万也不会溢出。另记整个模型放进 fp16 autocast 时输出为 NaN/inf 的 token 比例。
完整模式 5 个种子；在 CPU 上每个种子的全部训练（顶层函数 train_seed）交给一个单线程子进程（--workers，modules/common/parallel.py），
数值与在一个进程里依次、单线程地跑逐位相同。
预期（Dehghani et al. 2023；Wortsman et al. 2023；Zhai et al. 2023）：没有 QK-norm 时 logit 随训练增大、注意力熵坍缩，
大学习率下最终 loss 明显变差；有 QK-norm 时 logit 被 RMSNorm 的 weight 管住，对学习率不敏感。
"""
import math
import sys
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import apply_rotary_pos_emb, repeat_kv  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, record_attention  # noqa: E402
from modules.common.noise import compare_runs, diverged_as  # noqa: E402
from modules.common.parallel import add_workers_argument, map_seeds, resolve_workers  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

VARIANTS = {"no qk_norm (minimind2)": False, "qk_norm (minimind3)": True}
EVAL_BATCHES = 4  # 最后一次验证用几个 batch（train_model 的默认值）
WARMUP_FRACTION = 0.05  # Wortsman et al. 2023：1e5 步里预热 5e3 步
FP16_MAX = torch.finfo(torch.float16).max  # 65504：fp16 能表示的最大有限值
# 后段回升：去掉前 20% 的训练步（预热末的早期尖峰两种模型都有，见结论里的"对照"），训练 loss 做 10 步滑动平均
# （单步 loss 的批次噪声约 0.1 nats，平均 10 步降到约 1/3）后，量比此前最低点高出的最大值。
# 两个常数是看过种子 42–44 的结果后、用种子 1–3 检验之前定好的，之后没有再调。
LATE_START_FRACTION = 0.2
SMOOTH_WINDOW = 10
# 两种回升量都是整条训练曲线上的一个数：quick 只有一个种子，没有批次噪声可配对（n = 1），噪声检验只能给"未确立"——
# quick 种子 42、1、7、11、13 上都是 ❔。quick 只打印测量值与这个原因（conclude_verdict 的 quick_reason），完整模式按种子判定
QUICK_REASON_RISE = ("回升量是整条训练曲线上的一个数，quick 只有一个种子、没有批次噪声可配对（n = 1），"
                     "噪声检验只能给未确立（quick 种子 42、1、7、11、13 上都是 ❔）")
# 学习率敏感度的两条（升幅、Wortsman 的 E_lr[min(L, L0) − L*]）：quick 每个变体、每个学习率只训练一次，按 4 个验证 batch
# 配对的噪声量不到"换一次训练"的噪声。quick 种子 1、7、5、11 上都成立（E_lr 之差 +0.13～+0.19 nats），种子 13 上有 QK-norm 的
# 反而略敏感（0.467 vs 0.455，❌；升幅那条 ❔）——看到种子 13 之后改为 quick 不判定，完整模式按种子判定（42–44：0.161 vs 0.435）
QUICK_REASON_SENSITIVITY = ("quick 每个变体、每个学习率只训练一次，4 个验证 batch 的批次噪声量不到换一次训练的噪声："
                            "种子 1、7、5、11 上成立（E_lr 之差 +0.13～+0.19 nats），种子 13 上反向（0.467 vs 0.455）")


def add_args(parser):
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="要比较的峰值学习率（默认 quick 1e-3 1e-1 3e-1 / full 1e-3 1e-2 1e-1 3e-1）")
    parser.add_argument("--steps", type=int, default=None, help="每个配置的训练步数（默认 quick 120 / full 250）")
    parser.add_argument("--spike-threshold", type=float, default=0.3,
                        help="训练 loss 比此前最低值高出多少 nats 记为一次尖峰（默认 0.3）")
    add_workers_argument(parser)


def attention_qk(attn, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """借注意力层自己的 q_proj / k_proj / q_norm / k_norm 与 RoPE 重算 q、k（与 LabAttention.forward 同一套步骤）。
    x: (B, T, H)，cos/sin: (T, hd)；返回 q, k: (B, nh, T, hd)（K 已按 GQA 复制到 nh 个头）。"""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim)  # (B, T, nh, hd)
    k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim)  # (B, T, nkv, hd)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.n_rep)  # (B, T, nh, hd)
    return q.transpose(1, 2), k.transpose(1, 2)


@contextmanager
def track_attention_logits(model: LabModel):
    """训练模式下每次前向记录三个数：所有层中注意力 logit（q·k·scale，因果 mask 内）的最大绝对值；
    每个头的平均注意力熵（每个 query 那一行 softmax 的熵，对 batch 和位置取平均）在所有层、所有头上的平均，
    以及其中最小的那个（最尖的头）。

    用前向预钩子拿到注意力层的输入，借同一层的 q_proj / k_proj / q_norm / k_norm 重算一遍 q、k（不参与反向）。
    产出 {"max_logit": [...], "mean_entropy": [...], "min_entropy": [...]}，每个训练步一个数。
    """
    trace = {"max_logit": [], "mean_entropy": [], "min_entropy": []}
    step_max, step_entropy = {}, {}

    def hook(attn, args):
        if not attn.training:
            return
        x, (cos, sin) = args[0], args[1]  # x: (B, T, H)，cos/sin: (T, hd)
        with torch.no_grad():
            T = x.shape[1]
            q, k = attention_qk(attn, x, cos, sin)  # (B, nh, T, hd)
            scores = (q @ k.transpose(-2, -1)) * attn.scale  # (B, nh, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            step_max[id(attn)] = scores.abs().masked_fill(~causal, 0).max().item()
            probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)
            entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)  # (B, nh, T)，被 mask 的位置 p=0 贡献 0
            step_entropy[id(attn)] = entropy.mean(dim=(0, 2))  # (nh,)：每个头的平均熵
        if len(step_max) == len(handles):  # 最后一层也算完了：记一个训练步
            heads = torch.cat(list(step_entropy.values()))  # (层数·nh,)
            trace["max_logit"].append(max(step_max.values()))
            trace["mean_entropy"].append(heads.mean().item())
            trace["min_entropy"].append(heads.min().item())
            step_max.clear()
            step_entropy.clear()

    handles = [layer.self_attn.register_forward_pre_hook(hook) for layer in model.model.layers]
    try:
        yield trace
    finally:
        for h in handles:
            h.remove()


def count_spikes(losses: list[float], threshold: float, skip: int) -> tuple[int, float]:
    """(尖峰步数, 最大回升)：第 skip 步之后，loss 比此前最低值高出 threshold 以上的步数，以及最大的高出量。"""
    spikes, worst, best = 0, 0.0, float("inf")
    for t, loss in enumerate(losses):
        if t >= skip:
            rise = loss - best
            worst = max(worst, rise)
            spikes += rise > threshold
        best = min(best, loss)
    return spikes, worst


def late_rise(losses: list[float], start_fraction: float = LATE_START_FRACTION, window: int = SMOOTH_WINDOW) -> float:
    """训练后段的最大回升：丢掉前 start_fraction 的步，对剩下的 loss 取 window 步的滑动平均（只用满窗），
    返回平滑曲线比此前最低点高出的最大值（单调下降时为 0）。"""
    late = losses[int(start_fraction * len(losses)):]
    smooth = [sum(late[i - window + 1:i + 1]) / window for i in range(window - 1, len(late))]
    worst, best = 0.0, float("inf")
    for value in smooth:
        worst = max(worst, value - best)
        best = min(best, value)
    return worst


@torch.no_grad()
def fp16_overflow(model: LabModel, get_batch, n_batches: int, device) -> dict:
    """训练好的 fp32 模型在 n_batches 个验证 batch 上的两种 fp16 测量，每个 batch 一个数：

    attn_rows：模型照常以 fp32 前向，前向预钩子把每层的 QKᵀ 用 float16 再算一遍——与 LabAttention 显式路径的顺序相同，
      先乘 q·k、再乘 scale，所以 |q·k| 超过 65504 就存成 inf，这一行的 softmax 里 inf − inf 得到 NaN。
      记因果 mask 内出现 inf 的注意力行（每层、每个头、每个 query 位置一行）所占比例。只有注意力分数是 fp16，
      量的就是 QK-norm 管的那一处。
    model_tokens：整个模型放进 torch.autocast(float16)（record_attention 让注意力走显式路径），输出 logits 含 NaN/inf 的
      token 比例。这里所有 matmul 都是 fp16，MLP 等别处的溢出也算在内。
    """
    device = torch.device(device)
    attn_rows, model_tokens = [], []
    overflowed = []  # 本次前向里每层一项：(出现 inf 的行数, 总行数)

    def hook(attn, args):
        x, (cos, sin) = args[0], args[1]
        T = x.shape[1]
        q, k = attention_qk(attn, x, cos, sin)  # (B, nh, T, hd)，fp32
        scores = (q.half() @ k.half().transpose(-2, -1)) * attn.scale  # (B, nh, T, T)，fp16：超过 65504 成 inf
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        bad_rows = (~torch.isfinite(scores) & causal).any(dim=-1)  # (B, nh, T)
        overflowed.append((bad_rows.sum().item(), bad_rows.numel()))

    model.eval()
    handles = [layer.self_attn.register_forward_pre_hook(hook) for layer in model.model.layers]
    try:
        for _ in range(n_batches):
            input_ids, labels = get_batch("val")
            input_ids, labels = input_ids.to(device), labels.to(device)
            overflowed.clear()
            model(input_ids)
            attn_rows.append(sum(bad for bad, _ in overflowed) / sum(total for _, total in overflowed))
            with record_attention(model), torch.autocast(device.type, dtype=torch.float16):
                out = model(input_ids, labels=labels)
            model_tokens.append((~torch.isfinite(out.logits).all(dim=-1)).float().mean().item())  # logits: (B, T, V)
    finally:
        for h in handles:
            h.remove()
    model.train()
    return {"attn_rows": attn_rows, "model_tokens": model_tokens}


def lr_sensitivity(losses_by_lr: list[float], init_loss: float) -> float:
    """Wortsman et al. 2023 的学习率敏感度：E_lr[min(L(lr), L0) − L*]，L* 是扫描里最好的 loss，
    L0 是初始化时的 loss（比 L0 还差、或发散成 NaN 的运行按 L0 计，免得一次爆炸主导平均）。越小越不敏感。"""
    capped = [min(loss, init_loss) for loss in diverged_as(losses_by_lr, init_loss)]
    return sum(capped) / len(capped) - min(capped)


def train_seed(seed: int, text: str, lrs: list, steps: int, warmup: int, spike_threshold: float, size: dict,
               device) -> dict:
    """一个种子的全部训练：每个 (变体, 学习率) 训练一次，返回 {"runs": {(变体, 学习率): 记录}, "vocab_size": 词表大小}。
    在顶层定义，map_seeds 才能把它交给单线程子进程；每次训练自己设随机种子，与别的种子无关。"""
    runs = {}
    for lr in lrs:
        for variant, qk_norm in VARIANTS.items():
            Experiment.seed_everything(seed)
            tokenizer, get_batch = char_lm_batches(text, 64, batch_size=12, seed=seed, device=device)
            model = LabModel(LabConfig(vocab_size=tokenizer.vocab_size, qk_norm=qk_norm, **size)).to(device)
            with track_attention_logits(model) as trace:
                hist = train_model(model, get_batch, steps=steps, lr=lr, warmup_steps=warmup, grad_clip=1.0,
                                   eval_every=steps, eval_batches=EVAL_BATCHES, device=device,
                                   desc=f"{variant} lr={lr:g} seed={seed}")
            spikes, worst = count_spikes(hist["train_loss"], spike_threshold, skip=warmup)
            diverged = hist["diverged_at"] is not None
            fp16 = fp16_overflow(model, get_batch, EVAL_BATCHES, device)
            n_done = len(hist["train_loss"])
            logits = trace["max_logit"][:n_done]
            entropies, sharpest = trace["mean_entropy"][:n_done], trace["min_entropy"][:n_done]
            runs[(variant, lr)] = {
                "max_logit_trace": logits,
                "mean_entropy_trace": entropies,
                "min_entropy_trace": sharpest,
                "train_loss": hist["train_loss"],
                "final_max_logit": max(logits[-10:]) if logits else float("nan"),
                "peak_max_logit": max(logits) if logits else float("nan"),
                "final_mean_entropy": sum(entropies[-10:]) / len(entropies[-10:]) if entropies else float("nan"),
                "final_min_entropy": min(sharpest[-10:]) if sharpest else float("nan"),
                "val_loss": hist["val_loss"][-1] if (hist["val_loss"] and not diverged) else float("nan"),
                # 最后一次验证的逐 batch loss：同一种子下各配置读的是同一批验证数据，quick 模式按 batch 配对
                "val_batches": hist["final_val_batches"] if not diverged else [float("nan")] * EVAL_BATCHES,
                "spikes": spikes, "max_rise": worst, "late_rise": late_rise(hist["train_loss"]),
                "diverged_at": hist["diverged_at"],
                # fp16 测量的逐 batch 值（同一种子下各配置读同一批验证数据，quick 模式按 batch 配对）
                "fp16_attn_batches": fp16["attn_rows"],
                "fp16_attn_overflow": sum(fp16["attn_rows"]) / EVAL_BATCHES,
                "fp16_model_nonfinite": sum(fp16["model_tokens"]) / EVAL_BATCHES}
    return {"runs": runs, "vocab_size": tokenizer.vocab_size}


def main():
    # 完整模式 5 个种子：3 个种子时另一台机器上的重跑有两条方向不变（3/3）却丢了余量，种子数按测得的散布事先定下（见 README）
    exp = Experiment(__file__, extra_args=add_args, full_seeds=5, description=(
        "minimind2→3 实验 1：有无 QK-norm 时，注意力 logit 的增长与大学习率下的训练稳定性。\n"
        "三个学习率 × {无 QK-norm, QK-norm}，记录每步最大注意力 logit、loss 尖峰、发散与验证 loss。"))
    lrs = exp.args.lrs or ([1e-3, 1e-1, 3e-1] if exp.quick else [1e-3, 1e-2, 1e-1, 3e-1])
    steps = exp.args.steps if exp.args.steps is not None else (120 if exp.quick else 250)
    if steps < 10 or any(lr <= 0 for lr in lrs) or exp.args.spike_threshold <= 0:
        raise SystemExit(f"--steps 至少为 10，--lrs 与 --spike-threshold 必须为正（收到 steps={steps}，lrs={lrs}，"
                         f"spike-threshold={exp.args.spike_threshold}）")
    lrs = sorted(lrs)
    text = get_experiment_data("shakespeare")
    set_style()
    size = dict(hidden_size=128, num_layers=2, n_heads=4, max_seq_len=64)
    warmup = max(1, round(WARMUP_FRACTION * steps))

    jobs = exp.seeds
    workers = resolve_workers(exp.args.workers, exp.quick, exp.device, len(jobs))
    per_seed = map_seeds(train_seed, jobs, workers, text, lrs, steps, warmup, exp.args.spike_threshold, size, exp.device)
    vocab_size = per_seed[0]["vocab_size"]
    runs = {key: [done["runs"][key] for done in per_seed] for key in per_seed[0]["runs"]}  # (variant, lr) -> 每个种子一条记录

    def agg(variant, lr, key):
        return [r[key] for r in runs[(variant, lr)]]

    rows = []
    for lr in lrs:
        for variant in VARIANTS:
            diverged = sum(r["diverged_at"] is not None for r in runs[(variant, lr)])
            rows.append([f"{lr:g}", variant, format_mean_std(agg(variant, lr, "peak_max_logit"), 3),
                         format_mean_std(agg(variant, lr, "final_max_logit"), 3),
                         format_mean_std(agg(variant, lr, "final_mean_entropy"), 3),
                         format_mean_std(agg(variant, lr, "final_min_entropy"), 3),
                         format_mean_std(agg(variant, lr, "spikes"), 2), format_mean_std(agg(variant, lr, "max_rise"), 2),
                         format_mean_std(agg(variant, lr, "late_rise"), 3), f"{diverged}/{len(exp.seeds)}",
                         format_mean_std(agg(variant, lr, "fp16_attn_overflow"), 3),
                         format_mean_std(agg(variant, lr, "fp16_model_nonfinite"), 3), format_mean_std(agg(variant, lr, "val_loss"), 4)])
    exp.print_table(["lr", "variant", "peak max logit", "final max logit", "mean attn entropy", "sharpest head entropy",
                     "spike steps", "max loss rise",
                     "late rise", "diverged", "fp16 attn inf rows", "fp16 model NaN tokens", "val loss"], rows,
                    title=f"QK-norm vs none, {steps} steps per run")

    # ---- 图：最大 logit（左）、最小注意力熵（中）、训练 loss（右）随训练步，每个学习率一行 ----
    colors = {"no qk_norm (minimind2)": "tab:red", "qk_norm (minimind3)": "tab:blue"}
    fig, axes = plt.subplots(len(lrs), 3, figsize=(16, 2.8 * len(lrs)), squeeze=False)
    for row, lr in enumerate(lrs):
        for variant in VARIANTS:
            for i, r in enumerate(runs[(variant, lr)]):
                label = variant if i == 0 else None
                axes[row, 0].plot(r["max_logit_trace"], color=colors[variant], alpha=0.8, lw=1, label=label)
                axes[row, 1].plot(r["mean_entropy_trace"], color=colors[variant], alpha=0.8, lw=1, label=label)
                axes[row, 1].plot(r["min_entropy_trace"], color=colors[variant], alpha=0.5, lw=0.7, ls=":")
                axes[row, 2].plot(r["train_loss"], color=colors[variant], alpha=0.8, lw=1, label=label)
        axes[row, 0].set_yscale("log")
        axes[row, 0].set_ylabel(f"lr={lr:g}\nmax |attention logit|")
        axes[row, 1].set_ylabel("attn entropy (nats)")
        axes[row, 2].set_ylabel("train loss")
        axes[row, 0].legend(fontsize=8)
    axes[0, 0].set_title("Max attention logit (pre-softmax)")
    axes[0, 1].set_title("Attention entropy\nsolid: mean of all heads, dotted: sharpest head")
    axes[0, 2].set_title("Training loss")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    exp.save_figure(fig, "exp1_logit_growth.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for variant in VARIANTS:
        means = [mean_std(agg(variant, lr, "val_loss"))[0] for lr in lrs]
        stds = [mean_std(agg(variant, lr, "val_loss"))[1] for lr in lrs]
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, color=colors[variant], label=variant)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"val loss after {steps} steps")
    ax.set_title("LR sensitivity (Wortsman et al. 2023 style)")
    ax.legend(fontsize=8)
    exp.save_figure(fig, "exp1_lr_sensitivity.png")

    init_loss = math.log(vocab_size)  # 初始化时输出近似均匀分布：loss ≈ ln(词表大小)
    sensitivity = {v: [lr_sensitivity([runs[(v, lr)][i]["val_loss"] for lr in lrs], init_loss)
                       for i in range(len(exp.seeds))] for v in VARIANTS}
    exp.save_metrics({"lrs": lrs, "steps": steps, "warmup_steps": warmup, "grad_clip": 1.0, "init_loss": init_loss,
                      "spike_threshold": exp.args.spike_threshold, "late_start_fraction": LATE_START_FRACTION,
                      "smooth_window": SMOOTH_WINDOW, "fp16_max": FP16_MAX, "lr_sensitivity": sensitivity,
                      "model": size, "runs": {f"{variant} @ {lr:g}": runs[(variant, lr)]
                                              for lr in lrs for variant in VARIANTS},
                      "summary": {f"{variant} @ {lr:g}": {key: mean_std(agg(variant, lr, key))[0] for key in
                                                          ("peak_max_logit", "final_max_logit", "final_mean_entropy",
                                                           "final_min_entropy",
                                                           "spikes", "max_rise", "late_rise", "fp16_attn_overflow",
                                                           "fp16_model_nonfinite", "val_loss")}
                                  for lr in lrs for variant in VARIANTS}})

    # ---- 结论（全部由上面的测量算出；比较都过噪声检验 modules/common/noise.py）----
    off, on = VARIANTS
    lo, hi = lrs[0], lrs[-1]

    def m(variant, lr, key):
        return mean_std(agg(variant, lr, key))[0]

    def log_logit_verdict(a, b):
        """a=(variant, lr) 的末段最大 logit 大于 b 的：比 log(logit)（效应是倍数）。多种子按种子配对（末 10 步的最大值）；
        单种子按训练步配对——两个配置在同一种子下读同一串训练 batch，末 10 步逐步的 log(logit) 作为批次噪声。"""
        seeds_a, seeds_b = [math.log(v) for v in agg(*a, "final_max_logit")], [math.log(v) for v in agg(*b, "final_max_logit")]
        steps_a = [math.log(v) for v in runs[a][0]["max_logit_trace"][-10:]]
        steps_b = [math.log(v) for v in runs[b][0]["max_logit_trace"][-10:]]
        n = min(len(steps_a), len(steps_b))
        return compare_runs(seeds_a, seeds_b, "greater", steps_a[-n:], steps_b[-n:])

    exp.conclude_verdict(f"最大学习率 {hi:g} 下，无 QK-norm 的最大注意力 logit 高于有 QK-norm",
                         log_logit_verdict((off, hi), (on, hi)),
                         f"训练末 10 步最大 logit：无 {m(off, hi, 'final_max_logit'):.2f} vs 有 "
                         f"{m(on, hi, 'final_max_logit'):.2f}（检验的是 log logit）")
    exp.conclude_verdict(f"无 QK-norm 时学习率越大 logit 越大（{lo:g} → {hi:g}）",
                         log_logit_verdict((off, hi), (off, lo)),
                         f"{m(off, lo, 'final_max_logit'):.2f} → {m(off, hi, 'final_max_logit'):.2f}；"
                         f"有 QK-norm：{m(on, lo, 'final_max_logit'):.2f} → {m(on, hi, 'final_max_logit'):.2f}（检验的是 log logit）")
    # 熵坍缩（Zhai et al. 2023）：logit 变大 → softmax 变尖 → 注意力熵变小。比较所有头的平均熵：字符级模型本来就有
    # 几乎只看一个位置的头（如"前一个字符"头），最尖的那个头两种模型都可能接近 0，它量的不是坍缩（只打印，不判定）。
    # 单种子时按末 10 个训练步配对
    entropy_steps = {key: runs[key][0]["mean_entropy_trace"][-10:] for key in ((off, hi), (on, hi))}
    n_tail = min(len(v) for v in entropy_steps.values())
    exp.conclude_verdict(f"最大学习率 {hi:g} 下，无 QK-norm 的注意力熵坍缩：所有头的平均注意力熵低于有 QK-norm",
                         compare_runs(agg(off, hi, "final_mean_entropy"), agg(on, hi, "final_mean_entropy"), "less",
                                      entropy_steps[(off, hi)][-n_tail:], entropy_steps[(on, hi)][-n_tail:]),
                         f"训练末 10 步所有头的平均熵：无 {m(off, hi, 'final_mean_entropy'):.3f} vs 有 "
                         f"{m(on, hi, 'final_mean_entropy'):.3f} nats（lr={lo:g} 时：无 {m(off, lo, 'final_mean_entropy'):.3f}，"
                         f"有 {m(on, lo, 'final_mean_entropy'):.3f}）；最尖的头：无 {m(off, hi, 'final_min_entropy'):.3f} vs "
                         f"有 {m(on, hi, 'final_min_entropy'):.3f}")
    # 数值发散。fp32 训练里 softmax 先减去每行最大值，logit 上十万也不溢出：这一条是对照，照实记录有没有 NaN/inf
    n_div = {v: sum(r["diverged_at"] is not None for r in runs[(v, hi)]) for v in VARIANTS}
    exp.conclude(f"对照：fp32 训练（softmax 先减最大值）下，最大学习率 {hi:g} 无 QK-norm 出现了发散（loss 变成 NaN/inf）",
                 n_div[off] > 0, f"发散的种子数：无 {n_div[off]}/{len(exp.seeds)}，有 {n_div[on]}/{len(exp.seeds)}"
                 f"（fp32 的最大有限值约 3.4e38，末段最大 logit {m(off, hi, 'final_max_logit'):.0f} 远在其下；"
                 f"Wortsman et al. 2023 所说的小模型不稳定是最终 loss 远高于最优学习率的 loss，见学习率敏感度那条）")
    # 论文的大模型用 bf16/fp16 训练：同样的权重，注意力分数以 fp16 存下时，|q·k| 超过 65504 就成了 inf → 这一行 softmax 为 NaN。
    # 检验每个种子（quick：每个验证 batch）出现 inf 的注意力行比例：比例是连续量，可以用 compare 按种子配对；
    # "发散了没有"的二值结果只有 3 个种子，fewer_failures 至少要 5 个结果不同的种子，3 个种子永远判不成立。
    # 某个种子没有溢出时，它那一对的差值为 0，"每个种子同号"不满足，结论就不会判成立。
    fp16_batches = {v: runs[(v, hi)][0]["fp16_attn_batches"] for v in VARIANTS}
    exp.conclude_verdict(f"注意力分数以 fp16 存储时（eager 注意力的混合精度），最大学习率 {hi:g} 训练出的无 QK-norm 模型"
                         f"出现 inf（softmax 后为 NaN）的注意力行比例高于有 QK-norm",
                         compare_runs(agg(off, hi, "fp16_attn_overflow"), agg(on, hi, "fp16_attn_overflow"), "greater",
                                      fp16_batches[off], fp16_batches[on]),
                         f"inf 注意力行比例：无 {format_mean_std(agg(off, hi, 'fp16_attn_overflow'), 3)} vs "
                         f"有 {format_mean_std(agg(on, hi, 'fp16_attn_overflow'), 3)}（fp16 最大有限值 {FP16_MAX:.0f}；"
                         f"lr={lo:g} 时无 QK-norm 为 {m(off, lo, 'fp16_attn_overflow'):.3f}；整个模型放进 fp16 autocast 时"
                         f"输出为 NaN/inf 的 token 比例：无 {m(off, hi, 'fp16_model_nonfinite'):.3f}，"
                         f"有 {m(on, hi, 'fp16_model_nonfinite'):.3f}——MLP 等别处也会溢出，QK-norm 只管注意力）")
    # 尖峰。预热结束、学习率到顶的前几步两种模型都有一次大尖峰（与注意力 logit 无关）：逐步 loss 的最大回升把它算进来，是对照。
    # 最大回升是整条训练曲线上的一个数，没有批次噪声可用：单种子时只能判"未确立"，所以 quick 不判定（QUICK_REASON_RISE）
    exp.conclude_verdict(f"对照：含预热末的早期尖峰时，最大学习率 {hi:g} 下无 QK-norm 的逐步 loss 最大回升比有 QK-norm 更大",
                         compare_runs(agg(off, hi, "max_rise"), agg(on, hi, "max_rise"), "greater"),
                         f"预热后逐步 loss 的最大回升 {m(off, hi, 'max_rise'):.2f} vs {m(on, hi, 'max_rise'):.2f} nats；"
                         f"尖峰步数 {m(off, hi, 'spikes'):.1f} vs {m(on, hi, 'spikes'):.1f}", quick_reason=QUICK_REASON_RISE)
    exp.conclude_verdict(f"最大学习率 {hi:g} 下，训练后段（前 {LATE_START_FRACTION:.0%} 步之后、{SMOOTH_WINDOW} 步平滑）"
                         f"无 QK-norm 的 loss 回升比有 QK-norm 更大",
                         compare_runs(agg(off, hi, "late_rise"), agg(on, hi, "late_rise"), "greater"),
                         f"后段平滑 loss 的最大回升 {format_mean_std(agg(off, hi, 'late_rise'), 3)} vs "
                         f"{format_mean_std(agg(on, hi, 'late_rise'), 3)} nats", quick_reason=QUICK_REASON_RISE)
    first = {key: runs[key][0]["val_batches"] for key in runs}  # 第一个种子的逐 batch 验证 loss
    exp.conclude_verdict(f"最大学习率 {hi:g} 下，有 QK-norm 的验证 loss 更低",
                         compare_runs(agg(on, hi, "val_loss"), agg(off, hi, "val_loss"), "less",
                                      first[(on, hi)], first[(off, hi)]),
                         f"{m(on, hi, 'val_loss'):.4f} vs {m(off, hi, 'val_loss'):.4f}（NaN = 有种子发散，发散的运行无法配对）")

    # 学习率敏感度（Wortsman et al. 2023 的看法）：lr 从 lo 升到 hi，验证 loss 升了多少；有 QK-norm 的升幅应更小。
    # 只有三个学习率时"最优学习率"常常落在同一个格点上，比较最优格点检验不出什么，所以比较升幅（按种子 / batch 配对）。
    def rise(values_hi, values_lo):
        return [h - l for h, l in zip(values_hi, values_lo)]

    best = {v: min(lrs, key=lambda lr: m(v, lr, "val_loss") if math.isfinite(m(v, lr, "val_loss")) else math.inf)
            for v in VARIANTS}
    exp.conclude_verdict(f"有 QK-norm 时验证 loss 对学习率更不敏感：lr 从 {lo:g} 升到 {hi:g}，loss 的升幅比无 QK-norm 小",
                         compare_runs(rise(agg(on, hi, "val_loss"), agg(on, lo, "val_loss")),
                                      rise(agg(off, hi, "val_loss"), agg(off, lo, "val_loss")), "less",
                                      rise(first[(on, hi)], first[(on, lo)]),
                                      rise(first[(off, hi)], first[(off, lo)])),
                         f"升幅：有 {m(on, hi, 'val_loss') - m(on, lo, 'val_loss'):+.4f}，"
                         f"无 {m(off, hi, 'val_loss') - m(off, lo, 'val_loss'):+.4f}；"
                         f"均值最优的学习率：无 {best[off]:g}，有 {best[on]:g}", quick_reason=QUICK_REASON_SENSITIVITY)
    # 论文的指标：整个扫描上 E_lr[min(L, L0) − L*]。单种子时对每个验证 batch 各算一次（同一批数据），按 batch 配对
    batch_sensitivity = {v: [lr_sensitivity([first[(v, lr)][b] for lr in lrs], init_loss) for b in range(EVAL_BATCHES)]
                         for v in VARIANTS}
    exp.conclude_verdict(f"按 Wortsman et al. 2023 的学习率敏感度 E_lr[min(L, L0) − L*]（lr ∈ {{{', '.join(f'{lr:g}' for lr in lrs)}}}），"
                         f"有 QK-norm 的更小",
                         compare_runs(sensitivity[on], sensitivity[off], "less", batch_sensitivity[on], batch_sensitivity[off]),
                         f"有 {format_mean_std(sensitivity[on], 3)} vs 无 {format_mean_std(sensitivity[off], 3)} nats"
                         f"（L0 = ln {vocab_size} = {init_loss:.3f}）", quick_reason=QUICK_REASON_SENSITIVITY)
    exp.finish()


if __name__ == "__main__":
    main()
