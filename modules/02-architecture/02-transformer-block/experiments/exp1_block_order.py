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
比较结论都经 modules/common/noise.py 的噪声检验：完整模式按种子配对；quick 只有一个种子，按最后一次验证的
8 个验证 batch 配对（同一种子下各变体、各学习率拿到的验证 batch 相同）；计时按交替窗口配对。
数据：TinyShakespeare 字符级；模型 8 层、hidden 64、序列 32，为了在 CPU 上跑得动。
"""
import statistics
import sys
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
    best, rise = float("inf"), 0.0
    for loss in losses:
        rise = max(rise, loss - best)
        best = min(best, loss)
    return rise


def count_spikes(losses: list[float], threshold: float = SPIKE_THRESHOLD) -> int:
    best, spikes = float("inf"), 0
    for loss in losses:
        spikes += loss - best > threshold
        best = min(best, loss)
    return spikes


def train_once(text: str, variant: str, lr: float, steps: int, seed: int, device) -> dict:
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    model = LabModel(make_config(tokenizer.vocab_size, variant))
    history = train_model(model, get_batch, steps=steps, lr=lr, warmup_steps=max(1, steps // 10),
                          eval_every=max(1, steps // 10), eval_batches=8, device=device,
                          desc=f"{LABELS[variant]} lr={lr:g} seed={seed}")
    diverged = history["diverged_at"] is not None or not history["val_loss"]
    return {"final_val_loss": float("inf") if diverged else history["val_loss"][-1],
            "final_val_batches": history["final_val_batches"],
            "diverged_at": history["diverged_at"], "max_rise": max_rise(smoothed(history["train_loss"])),
            "max_rise_single_batch": max_rise(history["train_loss"]),
            "spikes": count_spikes(smoothed(history["train_loss"])),
            "val_steps": history["val_steps"], "val_loss": history["val_loss"], "train_loss": history["train_loss"]}


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

    runs = {}  # (lr_name, variant) → 每个种子一条
    for lr_name, lr in LRS.items():
        for variant in VARIANTS:
            runs[lr_name, variant] = [train_once(text, variant, lr, steps, seed, exp.device) for seed in exp.seeds]

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
            "val_steps": per_seed[0]["val_steps"], "val_loss": [r["val_loss"] for r in per_seed]}

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
    exp.print_table(["variant", "params", "extra params vs Pre", "ms / step (fwd+bwd, median)"],
                    [[LABELS[v], params[v], params[v] - params["pre"], round(ms_per_step[v], 2)] for v in VARIANTS],
                    title="Parameters and time per training step")
    exp.save_metrics({"config": {"hidden": HIDDEN, "layers": LAYERS, "n_heads": N_HEADS, "block_size": BLOCK_SIZE,
                                 "batch_size": BATCH_SIZE, "steps": steps, "lrs": LRS, "warmup_steps": max(1, steps // 10),
                                 "spike_threshold": SPIKE_THRESHOLD, "smooth_window": SMOOTH_WINDOW,
                                 "timing_windows": TIMING_WINDOWS, "calls_per_window": CALLS_PER_WINDOW},
                      "results": results, "params": params, "ms_per_step": ms_per_step, "step_timings_s": timings})

    # ---- 图 1：两个学习率下的验证损失曲线（各种子的均值）----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, (lr_name, lr) in zip(axes, LRS.items()):
        for variant in VARIANTS:
            r = results[lr_name][variant]
            curves = [c for c in r["val_loss"] if len(c) == len(r["val_steps"])]  # 发散的运行曲线较短，不参与平均
            if curves:
                ax.plot(r["val_steps"], np.mean(curves, axis=0), marker=".", label=LABELS[variant])
        ax.set(xlabel="step", ylabel="val loss", title=f"lr = {lr:g} (mean of {len(exp.seeds)} seed(s))")
        ax.legend(fontsize=8)
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
    if exp.quick:
        # 这两条只在完整模式（300 步 × 3 个种子）下结论：quick 的 100 步里 Post-Norm 在正常学习率下也还停在
        # 一元熵的平台上（"变差的幅度"无从比较）；最大回升每次运行只有一个数，单种子量不到它的噪声
        print("quick 模式不判定\"Post-Norm 变差的幅度大于 Pre-Norm\"与\"最大回升大于 Pre-Norm\"：100 步时 Post-Norm "
              f"在正常学习率下也还在平台上（{m(normal, 'post'):.3f}），最大回升每次运行只有一个数；见完整模式")
    else:
        exp.conclude_verdict(f"学习率从 {LRS[normal]:g} 升到 {LRS[high]:g}，Post-Norm 损失变差的幅度大于 Pre-Norm",
                             compare_runs(damage("post"), damage("pre"), "greater"),
                             evidence=f"Post-Norm {m(normal, 'post'):.4f} → {m(high, 'post'):.4f}；"
                                      f"Pre-Norm {m(normal, 'pre'):.4f} → {m(high, 'pre'):.4f}")
        floor = results[normal]["pre"]["max_rise"]
        exp.conclude_verdict(f"偏高学习率下 Post-Norm 训练损失（{SMOOTH_WINDOW} 步滑动平均）的最大回升（loss spike）"
                             "大于 Pre-Norm",
                             compare_runs(post_rise, pre_rise, "greater"),
                             evidence=f"最大回升：Post-Norm {format_mean_std(post_rise, 3)}，"
                                      f"Pre-Norm {format_mean_std(pre_rise, 3)} nats；"
                                      f"噪声底：正常学习率下 Pre-Norm {format_mean_std(floor, 3)}")
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
