"""实验 1：块内的零件按什么顺序接？Pre-Norm、Post-Norm、Sandwich-Norm、并行块，同预算对比。

四个变体只差 LabConfig 的一个开关（其余尺寸、数据、步数、种子都相同）：
  pre       x = x + Attn(Norm(x));  x = x + FFN(Norm(x))                  （MiniMind / Llama）
  post      x = Norm(x + Attn(x));  x = Norm(x + FFN(x))                  （原始 Transformer / BERT）
  sandwich  x = x + Norm(Attn(Norm(x)));  x = x + Norm(FFN(Norm(x)))      （CogView / NormFormer 一类）
  parallel  x = x + Attn(Norm(x)) + FFN(Norm(x))                          （GPT-J / PaLM）
在两个学习率下训练（正常 / 偏高，都用 10% 线性 warmup + 余弦衰减），记录：
  - 最终验证损失（完整模式 3 个种子，mean ± std），是否出现 NaN（train_model 的 diverged_at）；
  - 训练损失的最大回升（loss spike）：先对每步训练损失取 10 步滑动平均，再算 max_t [L_t − min_{s<t} L_s]。
    单个训练 batch 只有 8 × 32 个 token，逐步的损失本身上下跳：正常学习率下没有任何尖峰的运行，逐步损失的最大回升也有
    0.37～0.40 nats（种子 42），平均后降到 0.08～0.10，所以只有平均后的回升才量得到"尖峰"而不是 batch 噪声；
  - 每步耗时：另做一个前向 + 反向的微基准，各变体在同一进程里轮流计时（modules/common/timing.py）。
另有一个"学习率斜坡"设置（只跑 Pre 与 Post）：学习率在整个训练里从 0 线性升到偏高学习率、不衰减（LR range test 式）。
为什么加它（开发时看过完整模式的判定之后改的设计，见 teaching.md）：标准调度下偏高学习率的 Post-Norm 从前几十步起就停在
一元熵的平台上（只学会了字符频率），一条从没降下去的曲线无从"回升"，最大回升量到的只是平台上的 batch 晃动——平的噪声曲线
本来就比一直下降的曲线"回升"得多，所以这一行即使判定成立也不是尖峰（保留为"对照"）。文献里的 loss spike 是"先学会了、再在高学习率下坏掉"；斜坡让两种块先在小学习率下学到东西，
再一起经过偏高的学习率；最大回升的定义、平滑窗口、阈值、种子数都不变。斜坡的形状（整个训练都在升）是在种子 42 上
试过把 warmup 拉长到 50%、83% 之后定的，所以完整模式另在从未看过的种子 4–6 上跑过一次（各组结果都写在 teaching.md）。
比较结论都经 modules/common/noise.py 的噪声检验：完整模式按种子配对；quick 只有一个种子，按最后一次验证的
8 个验证 batch 配对（同一种子下各变体、各学习率拿到的验证 batch 相同）；计时按交替窗口配对。
数据：TinyShakespeare 字符级；模型 8 层、hidden 64、序列 32，为了在 CPU 上跑得动。
"""
import statistics
import sys
from collections import Counter
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare_runs, noninferior_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.timing import alternating_timings, compare_speed, speed_ratio  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

VARIANTS = ("pre", "post", "sandwich", "parallel")
LABELS = {"pre": "Pre-Norm", "post": "Post-Norm", "sandwich": "Sandwich-Norm", "parallel": "Parallel (GPT-J)"}
SHORT_LABELS = {"pre": "Pre", "post": "Post", "sandwich": "Sandwich", "parallel": "Parallel"}
BLOCK_SIZE, BATCH_SIZE = 32, 8
HIDDEN, LAYERS, N_HEADS = 64, 8, 4
# 正常学习率 3e-3：这个小模型上 Pre-Norm 训练得好的量级；偏高 3e-2：Post-Norm 在这里开始卡在"只学到字符频率"的水平。
# 开发时（150 步，种子 42 与 0）两个种子都是这个排序，见 teaching.md
LRS = {"normal": 3e-3, "high": 3e-2}
SPIKE_THRESHOLD = 0.5  # 平滑后的训练损失比此前最低点高出这么多（nats）算一次"回升"
SMOOTH_WINDOW = 10  # 最大回升与 spike 计数用的滑动平均窗口（步）：把单个 batch 的噪声压到约 1/√10
TIMING_WINDOWS, CALLS_PER_WINDOW = 15, 4  # 微基准：15 个交替窗口，每个窗口每个变体 4 次前向 + 反向
RAMP_VARIANTS = ("pre", "post")  # 学习率斜坡只比这两种：声明只关于它们
PARALLEL_MARGIN = 0.05  # "并行块不比 Pre-Norm 差"允许的最大差距（nats），与课程里其他"不差于"声明同一个界，事先定好


def make_config(vocab_size: int, variant: str) -> LabConfig:
    return LabConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_layers=LAYERS, n_heads=N_HEADS,
                     max_seq_len=BLOCK_SIZE, norm_position="pre" if variant == "parallel" else variant,
                     parallel_block=variant == "parallel")


def smoothed(losses: list[float], window: int = SMOOTH_WINDOW) -> list[float]:
    """逐步训练损失的滑动平均（只保留窗口完整的位置）：长度 len(losses) − window + 1。"""
    return np.convolve(losses, np.ones(window) / window, mode="valid").tolist()


def max_rise(losses: list[float]) -> float:
    """损失曲线相对此前最低点的最大回升；单调下降时为 0。"""
    return max_rise_and_start(losses)[0]


def max_rise_and_start(losses: list[float]) -> tuple[float, int]:
    """(最大回升, 这次回升所相对的那个最低点的下标)；单调下降时为 (0, 0)。"""
    best, best_at, rise, start = float("inf"), 0, 0.0, 0
    for i, loss in enumerate(losses):
        if loss - best > rise:
            rise, start = loss - best, best_at
        if loss < best:
            best, best_at = loss, i
    return rise, start


def count_spikes(losses: list[float], threshold: float = SPIKE_THRESHOLD) -> int:
    best, spikes = float("inf"), 0
    for loss in losses:
        spikes += loss - best > threshold
        best = min(best, loss)
    return spikes


def train_once(text: str, variant: str, lr: float, steps: int, seed: int, device, ramp: bool = False) -> dict:
    """ramp=False：10% warmup + 余弦衰减；ramp=True：整个训练都是 warmup，学习率从 lr/steps 线性升到 lr（不衰减）。"""
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    model = LabModel(make_config(tokenizer.vocab_size, variant))
    history = train_model(model, get_batch, steps=steps, lr=lr, warmup_steps=steps if ramp else max(1, steps // 10),
                          eval_every=max(1, steps // 10), eval_batches=8, device=device,
                          desc=f"{LABELS[variant]} lr={lr:g}{' ramp' if ramp else ''} seed={seed}")
    diverged = history["diverged_at"] is not None or not history["val_loss"]
    smooth = smoothed(history["train_loss"])
    rise, rise_start = max_rise_and_start(smooth)
    return {"final_val_loss": float("inf") if diverged else history["val_loss"][-1],
            "final_val_batches": history["final_val_batches"],
            "diverged_at": history["diverged_at"], "max_rise": rise,
            # 回升起点（平滑窗口的最后一步）的学习率：斜坡上它就是"这种块在多大的学习率下开始坏掉"
            "lr_at_rise_start": history["lr"][rise_start + SMOOTH_WINDOW - 1],
            "min_smoothed_loss": min(smooth),
            "max_rise_single_batch": max_rise(history["train_loss"]),
            "spikes": count_spikes(smooth),
            "val_steps": history["val_steps"], "val_loss": history["val_loss"], "train_loss": history["train_loss"]}


def unigram_entropy(text: str) -> float:
    """字符一元熵 −Σ p_c·ln p_c（nats）：只学会字符频率的模型，损失停在这附近（"平台"）。"""
    counts = np.array(list(Counter(text).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def fwd_bwd(model, input_ids, labels):
    model.zero_grad(set_to_none=True)
    model(input_ids, labels=labels).loss.backward()


def step_timings(text: str, seed: int, device) -> dict[str, list[float]]:
    """每个变体一次前向 + 反向（同一批数据）的秒数，每个交替窗口一个值（modules/common/timing.py）。"""
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    input_ids, labels = get_batch("train")  # (B, T)
    models = {v: LabModel(make_config(tokenizer.vocab_size, v)).to(device) for v in VARIANTS}
    return alternating_timings({v: partial(fwd_bwd, model, input_ids, labels) for v, model in models.items()},
                               device, windows=TIMING_WINDOWS, calls_per_window=CALLS_PER_WINDOW)


def main():
    exp = Experiment(__file__, description=(
        "Transformer 块实验 1：Pre-Norm / Post-Norm / Sandwich-Norm / 并行块，在正常与偏高学习率下的"
        "稳定性、最终验证损失与每步耗时。"))
    steps = 100 if exp.quick else 300
    text = get_experiment_data("shakespeare")
    unigram = unigram_entropy(text)

    runs = {}  # (lr_name, variant) → 每个种子一条
    for lr_name, lr in LRS.items():
        for variant in VARIANTS:
            runs[lr_name, variant] = [train_once(text, variant, lr, steps, seed, exp.device) for seed in exp.seeds]
    ramp_runs = {v: [train_once(text, v, LRS["high"], steps, seed, exp.device, ramp=True) for seed in exp.seeds]
                 for v in RAMP_VARIANTS}

    vocab_size = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=exp.seed)[0].vocab_size
    params = {v: LabModel(make_config(vocab_size, v)).num_params() for v in VARIANTS}
    timings = step_timings(text, exp.seed, exp.device)
    ms_per_step = {v: 1000 * statistics.median(t) for v, t in timings.items()}

    results = {}
    for (lr_name, variant), per_seed in runs.items():
        finals = [r["final_val_loss"] for r in per_seed]
        results.setdefault(lr_name, {})[variant] = {
            "lr": LRS[lr_name], "final_val_loss": finals, "mean": mean_std(finals)[0], "std": mean_std(finals)[1],
            "final_val_batches_first_seed": per_seed[0]["final_val_batches"],
            "diverged_at": [r["diverged_at"] for r in per_seed],
            "max_rise": [r["max_rise"] for r in per_seed], "spikes": [r["spikes"] for r in per_seed],
            "max_rise_single_batch": [r["max_rise_single_batch"] for r in per_seed],
            "min_smoothed_loss": [r["min_smoothed_loss"] for r in per_seed],
            "val_steps": per_seed[0]["val_steps"], "val_loss": [r["val_loss"] for r in per_seed]}
    ramp = {v: {"final_val_loss": [r["final_val_loss"] for r in per_seed],
                "max_rise": [r["max_rise"] for r in per_seed], "spikes": [r["spikes"] for r in per_seed],
                "lr_at_rise_start": [r["lr_at_rise_start"] for r in per_seed],
                "min_smoothed_loss": [r["min_smoothed_loss"] for r in per_seed],
                "smoothed_train_loss": [[round(x, 4) for x in smoothed(r["train_loss"])] for r in per_seed]}
            for v, per_seed in ramp_runs.items()}

    single = len(exp.seeds) == 1

    def worse_than(lr_a, variant_a, lr_b, variant_b):
        """声明"(lr_a, variant_a) 的最终验证损失高于 (lr_b, variant_b)"的噪声检验。"""
        a, b = results[lr_a][variant_a], results[lr_b][variant_b]
        return compare_runs(a["final_val_loss"], b["final_val_loss"], "greater",
                            a["final_val_batches_first_seed"] if single else None,
                            b["final_val_batches_first_seed"] if single else None)

    def versus_pre(lr_name, variant) -> str:
        status = worse_than(lr_name, variant, lr_name, "pre").status
        return {"holds": "higher (beyond noise)", "fails": "lower (beyond noise)"}.get(status, "within noise")

    for lr_name, lr in LRS.items():
        rows = []
        for variant in VARIANTS:
            r = results[lr_name][variant]
            diverged = [d for d in r["diverged_at"] if d is not None]
            rows.append([LABELS[variant], format_mean_std(r["final_val_loss"]),
                         versus_pre(lr_name, variant) if variant != "pre" else "—",
                         f"{len(diverged)}/{len(r['diverged_at'])}", format_mean_std(r["max_rise_single_batch"], 3),
                         format_mean_std(r["max_rise"], 3), format_mean_std(r["spikes"], 3)])
        exp.print_table(["variant", "final val loss", "vs Pre-Norm", "NaN runs", "max rise (per batch)",
                         f"max rise ({SMOOTH_WINDOW}-step avg)", "spikes > 0.5 (avg)"],
                        rows, title=f"lr = {lr:g}, {steps} steps, seeds {exp.seeds}")
    exp.print_table(["variant", "final val loss", "min smoothed train loss", f"max rise ({SMOOTH_WINDOW}-step avg)",
                     "lr at start of the rise", "spikes > 0.5 (avg)"],
                    [[LABELS[v], format_mean_std(r["final_val_loss"]), format_mean_std(r["min_smoothed_loss"], 3),
                      format_mean_std(r["max_rise"], 3), format_mean_std(r["lr_at_rise_start"], 3),
                      format_mean_std(r["spikes"], 3)] for v, r in ramp.items()],
                    title=f"lr ramp: 0 → {LRS['high']:g} linearly over all {steps} steps (no decay), seeds {exp.seeds}")
    exp.print_table(["variant", "params", "extra params vs Pre", "ms / step (fwd+bwd, median)"],
                    [[LABELS[v], params[v], params[v] - params["pre"], round(ms_per_step[v], 2)] for v in VARIANTS],
                    title="Parameters and time per training step")
    exp.save_metrics({"config": {"hidden": HIDDEN, "layers": LAYERS, "n_heads": N_HEADS, "block_size": BLOCK_SIZE,
                                 "batch_size": BATCH_SIZE, "steps": steps, "lrs": LRS, "warmup_steps": max(1, steps // 10),
                                 "spike_threshold": SPIKE_THRESHOLD, "smooth_window": SMOOTH_WINDOW,
                                 "ramp_variants": RAMP_VARIANTS, "unigram_entropy": unigram,
                                 "timing_windows": TIMING_WINDOWS, "calls_per_window": CALLS_PER_WINDOW},
                      "results": results, "ramp": ramp, "params": params, "ms_per_step": ms_per_step, "step_timings_s": timings})

    # ---- 图 1：两个学习率下的验证损失曲线（各种子的均值），以及学习率斜坡上 Pre / Post 的平滑训练损失（每个种子一条）----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5), sharey=True)
    for ax, (lr_name, lr) in zip(axes, LRS.items()):
        for variant in VARIANTS:
            r = results[lr_name][variant]
            curves = [c for c in r["val_loss"] if len(c) == len(r["val_steps"])]  # 发散的运行曲线较短，不参与平均
            if curves:
                ax.plot(r["val_steps"], np.mean(curves, axis=0), marker=".", label=LABELS[variant])
        ax.set(xlabel="step", ylabel="val loss", title=f"lr = {lr:g} (mean of {len(exp.seeds)} seed(s))")
        ax.legend(fontsize=8)
    ramp_ax = axes[2]
    for color, variant in zip(("C0", "C1"), RAMP_VARIANTS):
        for i, curve in enumerate(ramp[variant]["smoothed_train_loss"]):
            ramp_ax.plot(np.arange(len(curve)) + SMOOTH_WINDOW - 1, curve, color=color, alpha=0.8, lw=1,
                         label=LABELS[variant] if i == 0 else None)
    ramp_ax.set(xlabel=f"step (lr rises linearly to {LRS['high']:g})", ylabel=f"train loss ({SMOOTH_WINDOW}-step avg)",
                title=f"lr ramp 0 → {LRS['high']:g} (one line per seed)")
    ramp_ax.legend(fontsize=8)
    exp.save_figure(fig, "exp1_block_order_curves.png")

    # ---- 图 2：最终验证损失（两个学习率）与每步耗时 ----
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    xs = np.arange(len(VARIANTS))
    for offset, lr_name in ((-0.2, "normal"), (0.2, "high")):
        means = [results[lr_name][v]["mean"] for v in VARIANTS]
        stds = [results[lr_name][v]["std"] for v in VARIANTS]
        finite = [m if np.isfinite(m) else np.nan for m in means]
        bars = axes[0].bar(xs + offset, finite, width=0.4, yerr=stds, capsize=3, label=f"lr = {LRS[lr_name]:g}")
        axes[0].bar_label(bars, labels=[f"{m:.3f}" if np.isfinite(m) else "NaN" for m in means], fontsize=7, padding=2)
    axes[0].set_xticks(xs, labels=[LABELS[v] for v in VARIANTS])
    lowest = min(r["mean"] for by_variant in results.values() for r in by_variant.values())
    axes[0].set_ylim(bottom=lowest - 0.4)
    axes[0].set(ylabel="final val loss (mean ± std)", title="Final validation loss, same budget")
    axes[0].legend(fontsize=8)
    bars = axes[1].bar(xs, [ms_per_step[v] for v in VARIANTS], color="gray")
    axes[1].bar_label(bars, labels=[f"{ms_per_step[v]:.1f}" for v in VARIANTS], fontsize=7, padding=2)
    axes[1].set_xticks(xs, labels=[SHORT_LABELS[v] for v in VARIANTS])
    axes[1].set(ylabel="ms per fwd+bwd (median)", title="Time per step (CPU)")
    exp.save_figure(fig, "exp1_block_order_bars.png")

    # ---- 结论：全部由上面的测量算出 ----
    high, normal = "high", "normal"

    def shown(lr_name, variant):
        return format_mean_std(results[lr_name][variant]["final_val_loss"])

    def m(lr_name, variant):
        return results[lr_name][variant]["mean"]

    exp.conclude_verdict(f"偏高学习率（{LRS[high]:g}）下 Post-Norm 的最终验证损失高于 Pre-Norm",
                         worse_than(high, "post", high, "pre"),
                         evidence=f"Post-Norm {shown(high, 'post')} vs Pre-Norm {shown(high, 'pre')}")

    def damage(variant):
        """学习率从正常升到偏高时最终验证损失的增量，每个种子一个值。"""
        hi, lo = results[high][variant], results[normal][variant]
        return [a - b for a, b in zip(hi["final_val_loss"], lo["final_val_loss"])]

    post_rise, pre_rise = results[high]["post"]["max_rise"], results[high]["pre"]["max_rise"]
    ramp_post, ramp_pre = ramp["post"]["max_rise"], ramp["pre"]["max_rise"]
    # 下面三条只在完整模式（300 步 × 3 个种子）下判定；quick 只打印测得的值与原因（conclude_verdict 的 quick_reason）
    plateau_reason = (f"100 步时 Post-Norm 在正常学习率下也还在一元熵（{unigram:.3f}）的平台上"
                      f"（{m(normal, 'post'):.3f}），\"变差的幅度\"无从比较；每个种子只有一个差值，单种子量不到它的噪声")
    spike_reason = (f"100 步的斜坡上 Post-Norm 平滑训练损失的最低点 {ramp['post']['min_smoothed_loss'][0]:.3f}"
                    f"（一元熵 {unigram:.3f}），最大回升 Post-Norm {ramp_post[0]:.3f}、Pre-Norm {ramp_pre[0]:.3f}："
                    "quick 种子 42/1/7/5 上 Post-Norm 还没离开平台学习率就过了上限，种子 2、3 却先学到 2.88、3.19 再回升"
                    " 0.60、0.32——出不出尖峰随种子变，每次运行只有一个数，单种子量不到它的噪声")
    plateau_rise_reason = (f"标准调度下 Post-Norm 平滑训练损失最低只到 {results[high]['post']['min_smoothed_loss'][0]:.3f}"
                           f"（一元熵 {unigram:.3f}），最大回升每次运行只有一个数，单种子量不到它的噪声")
    exp.conclude_verdict(f"学习率从 {LRS[normal]:g} 升到 {LRS[high]:g}，Post-Norm 损失变差的幅度大于 Pre-Norm",
                         compare_runs(damage("post"), damage("pre"), "greater"),
                         evidence=f"Post-Norm {m(normal, 'post'):.4f} → {m(high, 'post'):.4f}；"
                                  f"Pre-Norm {m(normal, 'pre'):.4f} → {m(high, 'pre'):.4f}",
                         quick_reason=plateau_reason)
    floor = format_mean_std(results[normal]["pre"]["max_rise"], 3)
    exp.conclude_verdict(f"学习率斜坡（整个训练从 0 线性升到 {LRS[high]:g}）上，Post-Norm 训练损失"
                         f"（{SMOOTH_WINDOW} 步滑动平均）的最大回升（loss spike）大于 Pre-Norm",
                         compare_runs(ramp_post, ramp_pre, "greater"),
                         evidence=f"最大回升：Post-Norm {format_mean_std(ramp_post, 3)}，"
                                  f"Pre-Norm {format_mean_std(ramp_pre, 3)} nats；Post-Norm 回升前的最低点 "
                                  f"{format_mean_std(ramp['post']['min_smoothed_loss'], 3)}，开始回升时学习率 "
                                  f"{format_mean_std(ramp['post']['lr_at_rise_start'], 3)}；噪声底：正常学习率下 "
                                  f"Pre-Norm {floor}",
                         quick_reason=spike_reason)
    exp.conclude_verdict(f"对照：标准调度（10% warmup + 余弦衰减）、学习率 {LRS[high]:g} 下，Post-Norm 训练损失"
                         f"（{SMOOTH_WINDOW} 步滑动平均）的最大回升大于 Pre-Norm",
                         compare_runs(post_rise, pre_rise, "greater"),
                         evidence=f"最大回升：Post-Norm {format_mean_std(post_rise, 3)}，"
                                  f"Pre-Norm {format_mean_std(pre_rise, 3)} nats；Post-Norm 平滑训练损失最低只到 "
                                  f"{format_mean_std(results[high]['post']['min_smoothed_loss'], 3)}（一元熵 "
                                  f"{unigram:.3f}，Pre-Norm {format_mean_std(results[high]['pre']['min_smoothed_loss'], 3)}）："
                                  f"没有先学会，就无从回升；噪声底 {floor}",
                         quick_reason=plateau_rise_reason)
    for lr_name in LRS:
        par, pre = results[lr_name]["parallel"], results[lr_name]["pre"]
        exp.conclude_verdict(
            f"学习率 {LRS[lr_name]:g} 下并行块不比串行 Pre-Norm 差（最终验证损失至多高 {PARALLEL_MARGIN} nats）",
            noninferior_runs(par["final_val_loss"], pre["final_val_loss"], PARALLEL_MARGIN, "less",
                             par["final_val_batches_first_seed"] if single else None,
                             pre["final_val_batches_first_seed"] if single else None),
            evidence=f"Parallel {shown(lr_name, 'parallel')} vs Pre-Norm {shown(lr_name, 'pre')}")
    n_diverged = sum(d is not None for by_variant in results.values() for r in by_variant.values()
                     for d in r["diverged_at"])
    exp.conclude("所有运行都没有出现 NaN（梯度裁剪 + warmup 下，坏的块结构表现为'学不动'而不是数值爆炸）",
                 n_diverged == 0, f"出现 NaN 的运行数：{n_diverged}")
    exp.conclude("Sandwich-Norm 比 Pre-Norm 多出的参数正好是每层 2 个 norm 的 γ（2 × 层数 × hidden）",
                 params["sandwich"] - params["pre"] == 2 * LAYERS * HIDDEN,
                 f"多出 {params['sandwich'] - params['pre']} 个，2 × {LAYERS} × {HIDDEN} = {2 * LAYERS * HIDDEN}")
    exp.conclude_verdict("Sandwich-Norm 每步比 Pre-Norm 慢（多了 2 × 层数 个 norm）",
                         compare_speed(timings["pre"], timings["sandwich"]),
                         evidence=f"{ms_per_step['sandwich']:.2f} vs {ms_per_step['pre']:.2f} ms（中位数），"
                                  f"逐窗口比值的中位数 {speed_ratio(timings['pre'], timings['sandwich']):.3f}×")
    exp.finish()


if __name__ == "__main__":
    main()
