"""实验 2：同一个字符级语言模型、同样的训练预算，换不同的归一化方案，谁训得稳、训得好？

四个变体（modules/common/lab_model.py 的 LabConfig 开关，其余结构完全相同，都是 MiniMind 的积木）：
  - No-Norm：         norm="none"（块里和最后都没有归一化）
  - Post-LN (LayerNorm)：norm="layernorm", norm_position="post"（原始 Transformer / BERT）
  - Pre-LN (LayerNorm)： norm="layernorm", norm_position="pre"（GPT-2）
  - Pre-LN (RMSNorm)：   norm="rmsnorm",   norm_position="pre"（Llama / MiniMind）
数据：TinyShakespeare 字符级（block 64，batch 12）。记录验证损失曲线、每步（裁剪前的）总梯度范数、
第一次出现 NaN/inf 的步数（training.train_model 的 diverged_at），完整模式 3 个种子报告 mean ± std。

为什么选 6 层、lr=3e-3：先在 6 层、hidden 64 上试了 lr ∈ {3e-3, 1e-2}（各 150 步，种子 0）。lr=3e-3 时
Post-LN 卡在 ≈3.29（只学到字符频率），Pre-LN 已降到 ≈2.4，差距清楚（换种子后卡住的变体会变，需看多种子）；lr=1e-2 时 Pre-LN(LayerNorm)
也开始变差。No-Norm 在这两个 lr 下都没有出现 NaN（train_model 默认把梯度范数裁剪到 1.0，
且权重初始化 std=0.02 很小）——结论里如实报告，用 --lr / --layers 可以自己往更极端处试。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import FAILS, HOLDS, compare_runs, equivalent_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

# 变体名 → (norm, norm_position)
VARIANTS = {
    "No-Norm": ("none", "pre"),
    "Post-LN (LayerNorm)": ("layernorm", "post"),
    "Pre-LN (LayerNorm)": ("layernorm", "pre"),
    "Pre-LN (RMSNorm)": ("rmsnorm", "pre"),
}
BLOCK_SIZE, BATCH_SIZE = 64, 12
HIDDEN, N_HEADS = 64, 4
EVAL_BATCHES = 8  # 每次验证用几个 batch；最后一次的逐 batch loss 是单种子时的配对噪声
EQUIVALENCE_MARGIN = 0.05  # "RMSNorm 与 LayerNorm 差不多"的界（nats），在看结果之前定好


def add_args(parser):
    parser.add_argument("--layers", type=int, default=6, help="Transformer 层数（默认 6，必须 >= 1）")
    parser.add_argument("--lr", type=float, default=3e-3, help="峰值学习率（默认 3e-3，必须 > 0）")


def train_variant(text: str, norm: str, norm_position: str, *, layers: int, lr: float, steps: int,
                  seed: int, device, desc: str) -> dict:
    """用种子 seed 从头训练一个变体，返回 train_model 的历史，外加每步的总梯度范数 total_grad_norm。"""
    Experiment.seed_everything(seed)  # 同一个种子下，各变体的初始权重随机流和训练批次都一样
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=layers, n_heads=N_HEADS,
                       max_seq_len=BLOCK_SIZE, norm=norm, norm_position=norm_position)
    model = LabModel(config).to(device)
    history = train_model(model, get_batch, steps=steps, lr=lr, eval_every=max(1, steps // 10), eval_batches=EVAL_BATCHES,
                          record_grad_norms=True, device=device, desc=desc)
    per_group = list(history.pop("grad_norms").values())  # [组][步]：各层分组的梯度范数
    history["total_grad_norm"] = [math.sqrt(sum(g[i] ** 2 for g in per_group)) for i in range(len(per_group[0]))]
    return history


def final_val(history: dict) -> float:
    """最后一次验证损失；发散（NaN/inf）的运行记为 inf。"""
    if history["diverged_at"] is not None or not history["val_loss"]:
        return math.inf
    return history["val_loss"][-1]


def weakest(verdicts: dict):
    """"比其余每一个都好"这类结论由几次两两比较组成：全部成立才成立，任一次反向超出噪声就不成立，
    其余未确立。返回 (代表整体的那次比较, 每次比较的一行说明)。"""
    rank = {FAILS: 0, HOLDS: 2}  # 同一状态里取效应最小的那次（全部成立时，就是最勉强成立的一对）
    worst = min(verdicts.values(), key=lambda v: (rank.get(v.status, 1), v.mean_delta))
    lines = "；".join(f"vs {name}：Δ={v.mean_delta:+.4f}（{v.status}）" for name, v in verdicts.items())
    return worst, lines


def main():
    exp = Experiment(__file__, description=(
        "归一化实验 2：同样预算下训练 No-Norm / Post-LN / Pre-LN(LayerNorm) / Pre-LN(RMSNorm) 四个字符级语言模型，\n"
        "比较验证损失、梯度范数和是否发散。"), extra_args=add_args)
    layers, lr = exp.args.layers, exp.args.lr
    if layers < 1 or not lr > 0:
        raise SystemExit(f"错误：--layers 必须 >= 1、--lr 必须 > 0，收到 --layers {layers} --lr {lr}")
    steps = 150 if exp.quick else 400
    text = get_experiment_data("shakespeare")

    runs = {name: [] for name in VARIANTS}  # 变体 → 每个种子一份历史
    for seed in exp.seeds:
        for name, (norm, position) in VARIANTS.items():
            runs[name].append(train_variant(text, norm, position, layers=layers, lr=lr, steps=steps, seed=seed,
                                            device=exp.device, desc=f"{name} seed={seed}"))

    rows, summary = [], {}
    for name, histories in runs.items():
        finals = [final_val(h) for h in histories]
        diverged = [h["diverged_at"] for h in histories]
        grad = [g for h in histories for g in h["total_grad_norm"]]
        mean, std = mean_std(finals)
        summary[name] = {"final_val_loss": finals, "mean": mean, "std": std, "diverged_at": diverged,
                         "grad_norm_median": float(np.median(grad)), "grad_norm_max": max(grad)}
        rows.append([name, format_mean_std(finals), ", ".join("-" if d is None else str(d) for d in diverged),
                     summary[name]["grad_norm_median"], summary[name]["grad_norm_max"]])
    exp.print_table(["variant", "final val loss", "first NaN step", "median |grad|", "max |grad|"], rows,
                    title=f"{layers}-layer char LM, hidden {HIDDEN}, lr {lr:g}, {steps} steps, seeds {exp.seeds}")
    exp.save_metrics({
        "config": {"layers": layers, "hidden": HIDDEN, "n_heads": N_HEADS, "lr": lr, "steps": steps,
                   "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE, "seeds": exp.seeds},
        "summary": summary,
        "curves": {name: [{"val_steps": h["val_steps"], "val_loss": h["val_loss"], "train_loss": h["train_loss"],
                           "total_grad_norm": h["total_grad_norm"], "diverged_at": h["diverged_at"]}
                          for h in histories] for name, histories in runs.items()},
    })

    # ---- 图：验证损失、训练损失、梯度范数（第一个种子）----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for name, histories in runs.items():
        h = histories[0]
        axes[0].plot(h["val_steps"], h["val_loss"], marker=".", label=name)
        axes[1].plot(h["steps"], h["train_loss"], alpha=0.8, label=name)
        axes[2].plot(h["steps"], h["total_grad_norm"], alpha=0.8, label=name)
    for ax, ylabel, title in ((axes[0], "val loss", "Validation loss"), (axes[1], "train loss", "Training loss"),
                              (axes[2], "total grad norm (before clipping, log)", "Gradient norm")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (seed {exp.seeds[0]})")
    axes[2].set_yscale("log")
    axes[0].legend()
    exp.save_figure(fig, "exp2_norm_comparison.png")

    # ---- 结论：全部由上面的测量算出；比较都过噪声检验（modules/common/noise.py）----
    # 多种子按种子配对；只有一个种子时，按同一批 EVAL_BATCHES 个验证 batch 配对（同一种子下各变体读的验证数据相同）
    finals = {name: s["final_val_loss"] for name, s in summary.items()}
    batches = {name: histories[0]["final_val_batches"] if histories[0]["diverged_at"] is None
               else [math.inf] * EVAL_BATCHES for name, histories in runs.items()}  # 发散的运行无法配对
    means = {name: s["mean"] for name, s in summary.items()}

    def verdict(a: str, b: str, direction: str):
        return compare_runs(finals[a], finals[b], direction, batches[a], batches[b])

    def versus_all(name: str, direction: str, others):
        return weakest({o: verdict(name, o, direction) for o in others})

    none = summary["No-Norm"]
    any_nan = any(d is not None for d in none["diverged_at"])
    exp.conclude("No-Norm 训练发散（出现 NaN/inf）",
                 any_nan, f"No-Norm 各种子第一次 NaN 的步数：{none['diverged_at']}（None = 没发散）")
    table = "；".join(f"{n} {m:.4f}" for n, m in means.items())
    worst, lines = versus_all("No-Norm", "greater", [n for n in VARIANTS if n != "No-Norm"])
    exp.conclude_verdict("No-Norm 的最终验证损失是四者中最差的（比其余每一个都高）", worst, f"{table}；{lines}")
    worst, lines = versus_all("Post-LN (LayerNorm)", "greater", ["Pre-LN (LayerNorm)", "Pre-LN (RMSNorm)"])
    exp.conclude_verdict("Post-LN 收敛到比两个 Pre-LN 都差的损失", worst, lines)
    worst, lines = versus_all("Pre-LN (RMSNorm)", "less", [n for n in VARIANTS if n != "Pre-LN (RMSNorm)"])
    exp.conclude_verdict("Pre-LN (RMSNorm) 的最终验证损失是四者中最低的（比其余每一个都低）", worst, f"{table}；{lines}")
    rms, ln = "Pre-LN (RMSNorm)", "Pre-LN (LayerNorm)"
    same = equivalent_runs(finals[rms], finals[ln], EQUIVALENCE_MARGIN, batches[rms], batches[ln])
    exp.conclude_verdict(f"Pre-LN 下 RMSNorm 与 LayerNorm 的最终验证损失相差不到 {EQUIVALENCE_MARGIN} nats", same,
                         f"RMSNorm {means[rms]:.4f} vs LayerNorm {means[ln]:.4f}")
    exp.finish()


if __name__ == "__main__":
    main()
