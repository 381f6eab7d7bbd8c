"""实验 3：Pre-LN 与 Post-LN——为什么 Post-LN 离不开 warmup、而且越深越难训？

两部分（都用 LayerNorm，只换归一化的位置：LabConfig(norm="layernorm", norm_position="pre"/"post")）：
  1. 初始化时的逐层梯度范数（Xiong et al. 2020）：对浅、深两个模型各做一次前向 + 反向，
     用 lab_model.layer_grad_norms 取每层参数的梯度范数。论文的结论：Post-LN 靠近输出的层梯度大、
     越往输入越小；Pre-LN 各层差不多。spread = 各层梯度范数的 max/min。
  2. 深度 × warmup 网格：{浅, 深} × {无 warmup, warmup = 25% 步数} × {Pre-LN, Post-LN}，
     同样的学习率和步数，比较最终验证损失。
数据：TinyShakespeare 字符级。为了在 CPU 上跑得动，模型很窄（hidden 64）、序列很短（block 32）；学习率 1e-2。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, layer_grad_norms  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

POSITIONS = ("post", "pre")
LABELS = {"post": "Post-LN", "pre": "Pre-LN"}
BLOCK_SIZE, BATCH_SIZE = 32, 8
HIDDEN, N_HEADS = 64, 4
# 学习率 1e-2：在 3e-3（与实验 2 相同）下 4 层与 12 层的 Post-LN、Pre-LN 差别都在噪声量级（见 teaching.md）；
# 学习率大一些，"Post-LN 越深越难训"才显现出来——这本身就是论文的要点：Post-LN 只能用更小的学习率或更长的 warmup
LR = 1e-2


def build_model(vocab_size: int, depth: int, position: str) -> LabModel:
    return LabModel(LabConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_layers=depth, n_heads=N_HEADS,
                              max_seq_len=BLOCK_SIZE, norm="layernorm", norm_position=position))


def init_grad_norms(text: str, depth: int, position: str, seed: int, device) -> list[float]:
    """刚初始化的模型做一次前向 + 反向，返回第 0..depth-1 层（块内全部参数）的梯度范数。"""
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    model = build_model(tokenizer.vocab_size, depth, position).to(device)
    input_ids, labels = get_batch("train")  # (B, T)
    model(input_ids, labels=labels).loss.backward()
    norms = layer_grad_norms(model)  # {"layers.0": ..., "embed": ..., "norm": ...}
    return [norms[f"layers.{i}"] for i in range(depth)]


def train_once(text: str, depth: int, position: str, warmup: int, steps: int, seed: int, device) -> dict:
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    model = build_model(tokenizer.vocab_size, depth, position)
    return train_model(model, get_batch, steps=steps, lr=LR, warmup_steps=warmup, eval_every=max(1, steps // 10),
                       eval_batches=8, device=device,
                       desc=f"{LABELS[position]} L={depth} warmup={warmup} seed={seed}")


def final_val(history: dict) -> float:
    """最后一次验证损失；发散的运行记为 inf。"""
    if history["diverged_at"] is not None or not history["val_loss"]:
        return float("inf")
    return history["val_loss"][-1]


def main():
    exp = Experiment(__file__, description=(
        "归一化实验 3：Pre-LN vs Post-LN。初始化时的逐层梯度范数，以及 深度 × warmup 网格上的最终验证损失。"))
    depths = (4, 12)
    steps = 120 if exp.quick else 400
    warmups = (0, steps // 4)
    text = get_experiment_data("shakespeare")

    # ---- 1. 初始化时的逐层梯度范数 ----
    init = {}  # "Post-LN, L=12" → {"per_layer": 每个种子一条, "spread": 每个种子一个}
    for depth in depths:
        for position in POSITIONS:
            per_seed = [init_grad_norms(text, depth, position, seed, exp.device) for seed in exp.seeds]
            init[f"{LABELS[position]}, L={depth}"] = {
                "depth": depth, "position": position, "per_layer": per_seed,
                "spread": [max(n) / min(n) for n in per_seed],
                "last_over_first": [n[-1] / n[0] for n in per_seed]}
    exp.print_table(["model", "|grad| layer 0", "|grad| last layer", "last / first", "spread (max/min)"],
                    [[name, format_mean_std([n[0] for n in r["per_layer"]]),
                      format_mean_std([n[-1] for n in r["per_layer"]]),
                      format_mean_std(r["last_over_first"]), format_mean_std(r["spread"])]
                     for name, r in init.items()],
                    title="Per-layer gradient norm at initialisation (one backward pass)")

    # ---- 2. 深度 × warmup 网格 ----
    grid = {}  # "Post-LN, L=12, warmup=0" → {...}
    for depth in depths:
        for warmup in warmups:
            for position in POSITIONS:
                histories = [train_once(text, depth, position, warmup, steps, seed, exp.device) for seed in exp.seeds]
                finals = [final_val(h) for h in histories]
                grid[f"{LABELS[position]}, L={depth}, warmup={warmup}"] = {
                    "depth": depth, "warmup": warmup, "position": position, "final_val_loss": finals,
                    "mean": mean_std(finals)[0], "diverged_at": [h["diverged_at"] for h in histories],
                    "val_steps": histories[0]["val_steps"], "val_loss": histories[0]["val_loss"]}
    exp.print_table(["depth", "warmup", "Post-LN val loss", "Pre-LN val loss"],
                    [[d, w, format_mean_std(grid[f"Post-LN, L={d}, warmup={w}"]["final_val_loss"]),
                      format_mean_std(grid[f"Pre-LN, L={d}, warmup={w}"]["final_val_loss"])]
                     for d in depths for w in warmups],
                    title=f"Final val loss after {steps} steps (hidden {HIDDEN}, lr {LR:g}, seeds {exp.seeds})")
    exp.save_metrics({"config": {"depths": depths, "warmups": warmups, "steps": steps, "hidden": HIDDEN,
                                 "n_heads": N_HEADS, "lr": LR, "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE},
                      "init_grad": init, "grid": grid})

    # ---- 图：左 初始化梯度（深模型），中 深模型的验证损失曲线，右 网格柱状图 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for name, r in init.items():
        style = "-" if r["position"] == "post" else "--"
        axes[0].plot(range(r["depth"]), r["per_layer"][0], style, marker="o", label=name)
    axes[0].set(yscale="log", xlabel="layer", ylabel="||grad|| of block params (log)",
                title=f"Gradient norm per layer at init (seed {exp.seeds[0]})")
    axes[0].legend(fontsize=8)
    for name, r in grid.items():
        if r["depth"] == max(depths):
            axes[1].plot(r["val_steps"], r["val_loss"], "-" if r["position"] == "post" else "--", marker=".",
                         label=f"{LABELS[r['position']]}, warmup={r['warmup']}")
    axes[1].set(xlabel="step", ylabel="val loss", title=f"{max(depths)} layers: validation loss (seed {exp.seeds[0]})")
    axes[1].legend(fontsize=8)
    labels = [f"L={d}\nwu={w}" for d in depths for w in warmups]
    xs = range(len(labels))
    for offset, position in ((-0.2, "post"), (0.2, "pre")):
        heights = [grid[f"{LABELS[position]}, L={d}, warmup={w}"]["mean"] for d in depths for w in warmups]
        bars = axes[2].bar([x + offset for x in xs], heights, width=0.4, label=LABELS[position])
        axes[2].bar_label(bars, labels=[f"{h:.3f}" for h in heights], fontsize=7, padding=2)
    axes[2].set_xticks(list(xs), labels=labels)
    axes[2].set(ylabel="final val loss (mean over seeds)", title="Depth x warmup grid")
    axes[2].set_ylim(bottom=min(r["mean"] for r in grid.values()) - 0.3)
    axes[2].legend(fontsize=8)
    exp.save_figure(fig, "exp3_prenorm_vs_postnorm.png")

    # ---- 结论：全部由上面的测量算出 ----
    shallow, deep = depths
    no_wu, wu = warmups

    def loss(position, depth, warmup):
        return grid[f"{LABELS[position]}, L={depth}, warmup={warmup}"]["mean"]

    exp.conclude(f"{deep} 层、无 warmup 时，Pre-LN 的最终验证损失低于 Post-LN",
                 loss("pre", deep, no_wu) < loss("post", deep, no_wu),
                 f"Pre-LN {loss('pre', deep, no_wu):.4f} vs Post-LN {loss('post', deep, no_wu):.4f}")
    # warmup 的作用在浅层看：深层 Post-LN 在这个学习率下加了 warmup 也训不动（见下一条）
    post_gain = loss("post", shallow, no_wu) - loss("post", shallow, wu)
    pre_gain = loss("pre", shallow, no_wu) - loss("pre", shallow, wu)
    exp.conclude(f"{shallow} 层时 Post-LN 需要 warmup：加 {wu} 步 warmup 后损失下降，且降幅大于 Pre-LN 的",
                 post_gain > 0 and post_gain > pre_gain,
                 f"warmup 带来的损失下降：Post-LN {post_gain:+.4f}，Pre-LN {pre_gain:+.4f}")
    post_drop = loss("post", deep, wu) - loss("post", shallow, wu)
    pre_drop = loss("pre", deep, wu) - loss("pre", shallow, wu)
    exp.conclude(f"加深（{shallow} → {deep} 层，都用 warmup）对 Post-LN 的伤害比对 Pre-LN 大",
                 post_drop > pre_drop,
                 f"Post-LN {loss('post', shallow, wu):.4f} → {loss('post', deep, wu):.4f}（{post_drop:+.4f}）；"
                 f"Pre-LN {loss('pre', shallow, wu):.4f} → {loss('pre', deep, wu):.4f}（{pre_drop:+.4f}）")
    post_init, pre_init = init[f"Post-LN, L={deep}"], init[f"Pre-LN, L={deep}"]
    post_spread, pre_spread = mean_std(post_init["spread"])[0], mean_std(pre_init["spread"])[0]
    exp.conclude(f"初始化时 {deep} 层 Post-LN 的逐层梯度范数差距（max/min）大于 Pre-LN",
                 post_spread > pre_spread, f"spread：Post-LN {post_spread:.3g}，Pre-LN {pre_spread:.3g}")
    post_ratio, pre_ratio = mean_std(post_init["last_over_first"])[0], mean_std(pre_init["last_over_first"])[0]
    exp.conclude(f"初始化时 {deep} 层 Post-LN 靠近输出的层梯度比靠近输入的层大（last/first > 1），Pre-LN 的比值更接近 1",
                 post_ratio > 1 and abs(pre_ratio - 1) < abs(post_ratio - 1),
                 f"last/first：Post-LN {post_ratio:.3g}，Pre-LN {pre_ratio:.3g}")
    exp.finish()


if __name__ == "__main__":
    main()
