"""实验 2：学习率与调度——预训练最敏感的超参数。

真实的 MiniMindForCausalLM（小尺寸）在字符级 TinyShakespeare 上，相同步数、相同初始化、相同数据顺序：
  A. 学习率扫描：6 个对数等距的峰值 LR（都用 warmup+cosine），画"最终 loss vs LR"，
     看太小（学得慢）/ 合适 / 太大（loss 爆炸后停在接近 unigram 熵的位置，或直接 NaN）三个区间。
  B. 调度对比（都用 training.py::lr_at，即 trainer/ 同款的 warmup + 余弦），峰值取 A 里最好的 LR：
     constant（不预热、不衰减）/ warmup+cosine / 10 倍峰值不预热 / 10 倍峰值有预热；
     看最终验证 loss 和训练初期的 loss 尖峰（前 10% 步里最大的训练 loss）。
"""
import math
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, BLOCK, BATCH = 48, 2, 4, 2, 64, 8
HIGH_FACTOR = 10  # 调度对比里"高峰值"= 扫描出的最好 LR × 10
SWEEP_LRS = [float(v) for v in np.logspace(-4, 0, 6)]  # 1e-4 … 1.0，相邻差 10^0.8 ≈ 6.3 倍
BLOWUP_MARGIN = 1.0  # 训练 loss 的最大值比 ln(V)（均匀乱猜）还高 1 nat 以上（或出现 NaN）就算"爆炸"


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个配置的训练步数（默认 quick 100 / full 240）")


def schedules(steps: int, base_lr: float) -> dict:
    """名字 → train_model 的调度参数（lr, warmup_steps, min_lr_ratio）。warmup_steps=1 即不预热。"""
    warmup, high_lr = max(1, steps // 10), HIGH_FACTOR * base_lr
    return {
        f"constant {base_lr:.2g}": dict(lr=base_lr, warmup_steps=1, min_lr_ratio=1.0),
        f"warmup+cosine {base_lr:.2g}": dict(lr=base_lr, warmup_steps=warmup, min_lr_ratio=0.1),
        f"no warmup, cosine {high_lr:.2g}": dict(lr=high_lr, warmup_steps=1, min_lr_ratio=0.1),
        f"warmup+cosine {high_lr:.2g}": dict(lr=high_lr, warmup_steps=warmup, min_lr_ratio=0.1),
    }


def unigram_entropy(text: str) -> float:
    """只看字符频率、不看上下文的最好模型的交叉熵（nats）：LR 太大的模型常塌缩到这附近。"""
    counts = Counter(text)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def run(seed, text, steps, device, desc, **schedule) -> dict:
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=device)
    config = MiniMindConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV_HEADS, vocab_size=tokenizer.vocab_size, max_position_embeddings=256)
    # 只在最后评估一次（16 个验证批），省下中途评估的时间
    hist = train_model(MiniMindForCausalLM(config), get_batch, steps=steps, eval_every=steps, eval_batches=16,
                       device=device, desc=desc, **schedule)
    early = hist["train_loss"][: max(1, steps // 10)]
    diverged = hist["diverged_at"] is not None
    return {
        "final_val_loss": math.nan if diverged else hist["val_loss"][-1],
        "max_train_loss": max(hist["train_loss"]) if hist["train_loss"] else math.nan,
        "early_peak_loss": max(early) if early else math.nan,
        "initial_loss": hist["train_loss"][0] if hist["train_loss"] else math.nan,
        "diverged_at": hist["diverged_at"],
        "train_loss": hist["train_loss"], "lr": hist["lr"],
    }


def blew_up(r: dict, ln_v: float) -> bool:
    return r["diverged_at"] is not None or r["max_train_loss"] > ln_v + BLOWUP_MARGIN


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "预训练实验 2：6 个峰值 LR 的扫描（太小 / 合适 / 爆炸三个区间），再在最好的 LR 上比较\n"
        "constant / warmup+cosine / 10 倍峰值不预热 / 10 倍峰值有预热。相同步数、初始化与数据顺序。"))
    steps = exp.args.steps or (100 if exp.quick else 240)
    if steps < 10:
        raise SystemExit(f"--steps 至少为 10（收到 {steps}）：warmup 占 10% 的步数，至少要有 1 步")
    text = get_experiment_data("shakespeare")
    vocab_size = len(set(text))
    ln_v = math.log(vocab_size)
    h_unigram = unigram_entropy(text[: int(len(text) * 0.9)])

    sweep_runs = {lr: [run(seed, text, steps, exp.device, f"lr={lr:.2g} seed={seed}", lr=lr,
                           warmup_steps=max(1, steps // 10)) for seed in exp.seeds] for lr in SWEEP_LRS}

    def stat(runs, key):
        return mean_std([r[key] for r in runs])

    sweep_mean = {lr: stat(rs, "final_val_loss")[0] for lr, rs in sweep_runs.items()}
    finite = {lr: v for lr, v in sweep_mean.items() if math.isfinite(v)}
    if not finite:
        raise SystemExit("扫描里每个 LR 都发散了：请检查数据或减小 LR 范围")
    best_lr = min(finite, key=finite.get)
    low_lr, high_lr = SWEEP_LRS[0], SWEEP_LRS[-1]

    sched = schedules(steps, best_lr)
    sched_runs = {name: [run(seed, text, steps, exp.device, f"{name} seed={seed}", **kw) for seed in exp.seeds]
                  for name, kw in sched.items()}

    exp.print_table(["peak LR", "final val loss", "max train loss", "blew up / NaN"],
                    [[f"{lr:.2g}", format_mean_std([r["final_val_loss"] for r in rs]),
                      format_mean_std([r["max_train_loss"] for r in rs]),
                      f"{sum(blew_up(r, ln_v) for r in rs)}/{len(rs)}"] for lr, rs in sweep_runs.items()],
                    title=f"A. LR sweep (warmup+cosine), {steps} steps, {len(exp.seeds)} seed(s)  "
                          f"(ln V = {ln_v:.3f}, unigram entropy {h_unigram:.3f})")
    exp.print_table(["schedule", "final val loss", "early peak train loss", "blew up"],
                    [[name, format_mean_std([r["final_val_loss"] for r in rs]),
                      format_mean_std([r["early_peak_loss"] for r in rs]),
                      f"{sum(blew_up(r, ln_v) for r in rs)}/{len(rs)}"] for name, rs in sched_runs.items()],
                    title=f"B. Schedules at the best swept LR {best_lr:.2g} (and {HIGH_FACTOR}x it)")
    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
                  "block_size": BLOCK, "batch_size": BATCH},
        "ln_vocab": ln_v, "unigram_entropy": h_unigram, "blowup_threshold": ln_v + BLOWUP_MARGIN,
        "schedules": {name: {"config": sched[name],
                             "final_val_loss": stat(rs, "final_val_loss")[0],
                             "final_val_loss_std": stat(rs, "final_val_loss")[1],
                             "early_peak_loss": stat(rs, "early_peak_loss")[0],
                             "blew_up": [blew_up(r, ln_v) for r in rs],
                             "runs": rs} for name, rs in sched_runs.items()},
        "sweep": {f"{lr:.6g}": {"lr": lr, "final_val_loss": sweep_mean[lr],
                                "final_val_loss_std": stat(rs, "final_val_loss")[1],
                                "max_train_loss": stat(rs, "max_train_loss")[0],
                                "blew_up": [blew_up(r, ln_v) for r in rs],
                                "final_val_losses": [r["final_val_loss"] for r in rs]}
                  for lr, rs in sweep_runs.items()},
        "best_lr": best_lr,
    })

    # ---- 图：左 调度下的 LR 曲线；中 对应的训练 loss；右 最终 loss vs 峰值 LR ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for name, rs in sched_runs.items():
        axes[0].plot(rs[0]["lr"], label=name)
        smooth = np.convolve(rs[0]["train_loss"], np.ones(5) / 5, mode="valid")
        axes[1].plot(np.arange(len(smooth)) + 4, smooth, label=name)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("learning rate")
    axes[0].set_title("Schedules (lr_at)")
    axes[0].legend(fontsize=8)
    axes[1].axhline(ln_v, color="gray", ls="--", label=f"ln V = {ln_v:.2f}")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("train loss (5-step mean, first seed)")
    axes[1].set_title("Training loss under each schedule")
    axes[1].legend(fontsize=8)
    ok = [lr for lr in SWEEP_LRS if not any(blew_up(r, ln_v) for r in sweep_runs[lr])]
    bad = [lr for lr in SWEEP_LRS if lr not in ok]
    axes[2].errorbar(ok, [sweep_mean[lr] for lr in ok], yerr=[stat(sweep_runs[lr], "final_val_loss")[1] for lr in ok],
                     fmt="o-", capsize=3, label="trained normally")
    if bad:
        axes[2].plot(bad, [sweep_mean[lr] if math.isfinite(sweep_mean[lr]) else ln_v for lr in bad], "rx",
                     markersize=12, mew=2, label=f"blew up (max loss > ln V + {BLOWUP_MARGIN:g}, or NaN)")
    axes[2].axhline(ln_v, color="gray", ls="--", label="ln V (uniform)")
    axes[2].axhline(h_unigram, color="C2", ls=":", label="unigram entropy")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("peak learning rate")
    axes[2].set_ylabel("final val loss")
    axes[2].set_title("LR sweep: too low / right / too high")
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp2_lr_schedule.png")

    # ---- 结论（全部由上面的测量算出）----
    names = list(sched)
    const, cosine, high_nowarm, high_warm = (stat(sched_runs[n], "final_val_loss")[0] for n in names)
    exp.conclude("同一峰值 LR 下，warmup+cosine 的最终 loss 低于 constant",
                 cosine < const, f"{names[1]} {cosine:.4f} vs {names[0]} {const:.4f}")
    spike_nowarm, spike_warm = (stat(sched_runs[n], "early_peak_loss")[0] for n in names[2:])
    init = stat(sched_runs[names[2]], "initial_loss")[0]
    exp.conclude(f"{HIGH_FACTOR} 倍峰值不预热时，训练初期出现高于初始 loss 的尖峰，预热能压低它",
                 spike_nowarm > init and spike_warm < spike_nowarm,
                 f"前 10% 步的最大训练 loss：不预热 {spike_nowarm:.3f}，预热 {spike_warm:.3f}（初始 {init:.3f}）")
    exp.conclude(f"{HIGH_FACTOR} 倍峰值（不预热）的最终 loss 比最好的 LR + warmup+cosine 差",
                 high_nowarm > cosine, f"{high_nowarm:.4f} vs {cosine:.4f}")
    exp.conclude("LR 扫描呈 U 形：最好的 LR 在扫描范围内部，不在两端",
                 best_lr not in (low_lr, high_lr),
                 "最终 loss：" + "，".join(f"{lr:.2g}: {sweep_mean[lr]:.3f}" for lr in SWEEP_LRS) + f"；最好 {best_lr:.2g}")
    exp.conclude(f"LR 太小（{low_lr:.2g}）：同样的步数学得慢，最终 loss 比最好的高 0.2 以上",
                 sweep_mean[low_lr] > sweep_mean[best_lr] + 0.2,
                 f"{sweep_mean[low_lr]:.4f} vs 最好 {sweep_mean[best_lr]:.4f}")
    high_blew = any(blew_up(r, ln_v) for r in sweep_runs[high_lr])
    high_final = sweep_mean[high_lr]
    exp.conclude(f"LR 太大（{high_lr:.2g}）：loss 爆炸（最大训练 loss > ln V + {BLOWUP_MARGIN:g} 或 NaN），"
                 "最终 loss 比最好的高 0.2 以上",
                 high_blew and (not math.isfinite(high_final) or high_final > sweep_mean[best_lr] + 0.2),
                 f"最大训练 loss {stat(sweep_runs[high_lr], 'max_train_loss')[0]:.1f}（阈值 {ln_v + BLOWUP_MARGIN:.2f}），"
                 f"最终 loss {high_final:.4f} vs 最好 {sweep_mean[best_lr]:.4f}；unigram 熵 {h_unigram:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
