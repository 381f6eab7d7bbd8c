"""实验 3：Pre-LN 与 Post-LN——初始化时的逐层梯度（Xiong et al. 2020），以及为什么 Post-LN 离不开 warmup。

两部分（都用 LayerNorm，只换归一化的位置：LabConfig(norm="layernorm", norm_position="pre"/"post")）：
  1. 初始化时的梯度（不训练，每个种子一次前向 + 反向）。按论文的量法取每层 FFN 第二个矩阵 W2（down_proj）的梯度范数，
     在论文的设定里测：Xavier 初始化（LabConfig(init="xavier")）、ReLU FFN；再换成 MiniMind 的 N(0, 0.02) 初始化对照。
     (a) 12 层模型的逐层形状：top/bottom = 上半部分层的平均梯度 / 下半部分层的平均梯度（> 1 表示越靠近输出越大）；
     (b) 最后一层的梯度随层数 L 怎么变：论文的理论是 Post-LN 与 L 无关，Pre-LN 按 1/√L 缩小。
     初始化的随机性就是这里的噪声：每个配置用 INIT_SEEDS 个种子（quick 模式也一样，单次反向很便宜），
     同一种子下各配置用同一个 batch，按种子配对比较。
  2. 深度 × warmup 网格：{浅, 深} × {无 warmup, warmup = 25% 步数} × {Pre-LN, Post-LN}，同样的学习率 1e-2 和步数，
     比较最终验证损失。完整模式按种子配对做噪声检验；quick 模式只有一个种子，按同一组验证 batch 配对。
数据：TinyShakespeare 字符级。为了在 CPU 上跑得动，模型很窄（hidden 64）、序列很短（block 32）。
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare, compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

POSITIONS = ("post", "pre")
LABELS = {"post": "Post-LN", "pre": "Pre-LN"}
INITS = ("xavier", "normal")  # 论文的 Xavier；MiniMind 的 N(0, 0.02)
BLOCK_SIZE, BATCH_SIZE = 32, 8
HIDDEN, N_HEADS = 64, 4
INIT_SEEDS = 8  # 初始化梯度用几个种子（每个只做一次前向 + 反向）
INIT_BATCH_SIZE = 32  # 初始化梯度用的 batch 大一些，数据抽样带来的梯度噪声小一些
INIT_DEPTH = 12  # 看逐层形状的模型深度
SCALING_DEPTHS = (3, 6, 12, 24)  # 看最后一层梯度随深度变化
# 学习率 1e-2：在 3e-3（与实验 2 相同）下 4 层与 12 层的 Post-LN、Pre-LN 差别都在噪声量级（见 teaching.md）；
# 学习率大一些，"Post-LN 离不开 warmup"才显现出来——这本身就是论文的要点：Post-LN 只能用更小的学习率或 warmup
LR = 1e-2


def init_w2_grads(batch, vocab_size: int, depth: int, position: str, init: str, seed: int, device) -> list[float]:
    """刚初始化的模型（LayerNorm、ReLU FFN）在 batch 上做一次前向 + 反向，返回第 0..depth-1 层 FFN 的 W2（down_proj）梯度范数。"""
    Experiment.seed_everything(seed)
    model = LabModel(LabConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_layers=depth, n_heads=N_HEADS,
                               max_seq_len=BLOCK_SIZE, norm="layernorm", norm_position=position, ffn="relu",
                               init=init)).to(device)
    input_ids, labels = batch  # (B, T)
    model(input_ids, labels=labels).loss.backward()
    return [layer.mlp.down_proj.weight.grad.norm().item() for layer in model.model.layers]


def top_over_bottom(norms: list[float]) -> float:
    """上半部分层的平均梯度 / 下半部分层的平均梯度：> 1 表示越靠近输出梯度越大。"""
    half = len(norms) // 2
    return (sum(norms[-half:]) / half) / (sum(norms[:half]) / half)


def train_once(text: str, depth: int, position: str, warmup: int, steps: int, seed: int, device) -> dict:
    Experiment.seed_everything(seed)
    tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, BATCH_SIZE, seed=seed, device=device)
    model = LabModel(LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=depth, n_heads=N_HEADS,
                               max_seq_len=BLOCK_SIZE, norm="layernorm", norm_position=position))
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
        "归一化实验 3：Pre-LN vs Post-LN。初始化时逐层 FFN W2 的梯度范数（Xavier 与 0.02 初始化），\n"
        "以及 深度 × warmup 网格上的最终验证损失。"))
    depths = (4, 12)
    steps = 120 if exp.quick else 400
    warmups = (0, steps // 4)
    text = get_experiment_data("shakespeare")
    init_seeds = [exp.seed + i for i in range(INIT_SEEDS)]
    init_batches = {}  # 种子 → (词表大小, 这个种子的一个训练 batch)；同一种子下各配置用同一个 batch
    for s in init_seeds:
        tokenizer, get_batch = char_lm_batches(text, BLOCK_SIZE, INIT_BATCH_SIZE, seed=s, device=exp.device)
        init_batches[s] = (tokenizer.vocab_size, get_batch("train"))

    # ---- 1a. 初始化时的逐层梯度（12 层）----
    shape = {}  # "Post-LN, xavier" → {"per_layer": 每个种子一条, "top_over_bottom": 每个种子一个}
    for init in INITS:
        for position in POSITIONS:
            per_seed = [init_w2_grads(init_batches[s][1], init_batches[s][0], INIT_DEPTH, position, init, s, exp.device)
                        for s in init_seeds]
            shape[f"{LABELS[position]}, {init}"] = {
                "position": position, "init": init, "per_layer": per_seed,
                "top_over_bottom": [top_over_bottom(n) for n in per_seed],
                "spread": [max(n) / min(n) for n in per_seed]}
    exp.print_table(["model, init", "|grad W2| layer 0", f"|grad W2| layer {INIT_DEPTH - 1}", "top / bottom",
                     "spread (max/min)"],
                    [[name, format_mean_std([n[0] for n in r["per_layer"]]),
                      format_mean_std([n[-1] for n in r["per_layer"]]),
                      format_mean_std(r["top_over_bottom"]), format_mean_std(r["spread"])]
                     for name, r in shape.items()],
                    title=f"FFN W2 gradient norm per layer at init, {INIT_DEPTH} layers ({INIT_SEEDS} init seeds)")

    # ---- 1b. 最后一层的梯度随深度（Xavier）----
    scaling = {}  # "Post-LN" → {"L=3": [每个种子], ...}
    for position in POSITIONS:
        scaling[LABELS[position]] = {
            f"L={d}": [init_w2_grads(init_batches[s][1], init_batches[s][0], d, position, "xavier", s,
                                       exp.device)[-1] for s in init_seeds]
            for d in SCALING_DEPTHS}
    exp.print_table(["model"] + [f"L={d}" for d in SCALING_DEPTHS],
                    [[name] + [format_mean_std(r[f"L={d}"]) for d in SCALING_DEPTHS] for name, r in scaling.items()],
                    title=f"|grad W2| of the last layer vs depth (xavier init, {INIT_SEEDS} init seeds)")

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
                    "final_val_batches": histories[0]["final_val_batches"],
                    "val_steps": histories[0]["val_steps"], "val_loss": histories[0]["val_loss"]}
    exp.print_table(["depth", "warmup", "Post-LN val loss", "Pre-LN val loss"],
                    [[d, w, format_mean_std(grid[f"Post-LN, L={d}, warmup={w}"]["final_val_loss"]),
                      format_mean_std(grid[f"Pre-LN, L={d}, warmup={w}"]["final_val_loss"])]
                     for d in depths for w in warmups],
                    title=f"Final val loss after {steps} steps (hidden {HIDDEN}, lr {LR:g}, seeds {exp.seeds})")
    exp.save_metrics({"config": {"depths": depths, "warmups": warmups, "steps": steps, "hidden": HIDDEN,
                                 "n_heads": N_HEADS, "lr": LR, "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE,
                                 "init_seeds": init_seeds, "init_batch_size": INIT_BATCH_SIZE, "init_depth": INIT_DEPTH,
                                 "scaling_depths": SCALING_DEPTHS},
                      "init_shape": shape, "init_scaling": scaling, "grid": grid})

    # ---- 图：初始化梯度（Xavier / 0.02）、最后一层梯度 vs 深度、网格柱状图 ----
    set_style()
    fig, axes = plt.subplots(1, 4, figsize=(23, 4.5))
    for ax, init in zip(axes[:2], INITS):
        for position in POSITIONS:
            r = shape[f"{LABELS[position]}, {init}"]
            mean_curve = [mean_std(col)[0] for col in zip(*r["per_layer"])]
            ax.plot(range(INIT_DEPTH), mean_curve, "-" if position == "post" else "--", marker="o",
                    label=LABELS[position])
        ax.set(yscale="log", xlabel="layer", ylabel="||grad W2|| (log)",
               title=f"At init, {init} init ({INIT_SEEDS} seeds)")
        ax.legend(fontsize=8)
    for position in POSITIONS:
        r = scaling[LABELS[position]]
        axes[2].plot(SCALING_DEPTHS, [mean_std(r[f"L={d}"])[0] for d in SCALING_DEPTHS],
                     "-" if position == "post" else "--", marker="o", label=LABELS[position])
    pre_first = mean_std(scaling["Pre-LN"][f"L={SCALING_DEPTHS[0]}"])[0]
    axes[2].plot(SCALING_DEPTHS, [pre_first * math.sqrt(SCALING_DEPTHS[0] / d) for d in SCALING_DEPTHS], ":",
                 color="gray", label="1/sqrt(L) from Pre-LN at L=3")
    axes[2].set(xscale="log", yscale="log", xlabel="number of layers L", ylabel="||grad W2|| of last layer",
                title="Last layer vs depth (xavier init)")
    axes[2].set_xticks(SCALING_DEPTHS, labels=[str(d) for d in SCALING_DEPTHS])
    axes[2].minorticks_off()
    axes[2].legend(fontsize=8)
    labels = [f"L={d}\nwu={w}" for d in depths for w in warmups]
    xs = range(len(labels))
    for offset, position in ((-0.2, "post"), (0.2, "pre")):
        heights = [grid[f"{LABELS[position]}, L={d}, warmup={w}"]["mean"] for d in depths for w in warmups]
        bars = axes[3].bar([x + offset for x in xs], heights, width=0.4, label=LABELS[position])
        axes[3].bar_label(bars, labels=[f"{h:.3f}" for h in heights], fontsize=7, padding=2)
    axes[3].set_xticks(list(xs), labels=labels)
    axes[3].set(ylabel="final val loss (mean over seeds)", title=f"Depth x warmup grid (lr {LR:g})")
    axes[3].set_ylim(bottom=min(r["mean"] for r in grid.values()) - 0.3)
    axes[3].legend(fontsize=8)
    exp.save_figure(fig, "exp3_prenorm_vs_postnorm.png")

    # ---- 结论：全部由上面的测量算出，比较都过噪声检验 ----
    # 初始化梯度：噪声来自初始化种子（INIT_SEEDS 个，按种子配对）
    post_x, pre_x = shape["Post-LN, xavier"]["top_over_bottom"], shape["Pre-LN, xavier"]["top_over_bottom"]
    ones = [1.0] * len(post_x)
    exp.conclude_verdict(f"Xavier 初始化时，{INIT_DEPTH} 层 Post-LN 的 W2 梯度越靠近输出越大（top/bottom > 1，Xiong et al. 图 3）",
                         compare(post_x, ones, "greater", unit="seeds"),
                         f"top/bottom {format_mean_std(post_x, 3)}")
    exp.conclude_verdict(f"Xavier 初始化时，{INIT_DEPTH} 层 Pre-LN 的 W2 梯度不随层向输出增大（top/bottom < Post-LN 的）",
                         compare(pre_x, post_x, "less", unit="seeds"),
                         f"Pre-LN {format_mean_std(pre_x, 3)} vs Post-LN {format_mean_std(post_x, 3)}")
    post_n = shape["Post-LN, normal"]["top_over_bottom"]
    exp.conclude_verdict(f"MiniMind 的 0.02 初始化下 Post-LN 的这种形状变弱：top/bottom 比 Xavier 时小",
                         compare(post_n, post_x, "less", unit="seeds"),
                         f"0.02 初始化 {format_mean_std(post_n, 3)} vs Xavier {format_mean_std(post_x, 3)}")
    shallow_d, deep_d = f"L={SCALING_DEPTHS[0]}", f"L={SCALING_DEPTHS[-1]}"
    post_ratio = [b / a for a, b in zip(scaling["Post-LN"][shallow_d], scaling["Post-LN"][deep_d])]
    pre_ratio = [b / a for a, b in zip(scaling["Pre-LN"][shallow_d], scaling["Pre-LN"][deep_d])]
    expected = math.sqrt(SCALING_DEPTHS[0] / SCALING_DEPTHS[-1])
    exp.conclude_verdict(f"加深（{shallow_d} → {deep_d}）时 Pre-LN 最后一层的梯度缩小得比 Post-LN 多"
                         f"（理论：Pre-LN ∝ 1/√L，Post-LN 与 L 无关）",
                         compare(pre_ratio, post_ratio, "less", unit="seeds"),
                         f"{deep_d} / {shallow_d}：Pre-LN {format_mean_std(pre_ratio, 3)}（1/√L 预测 {expected:.3f}），"
                         f"Post-LN {format_mean_std(post_ratio, 3)}")

    # 网格：完整模式按种子配对；quick 模式一个种子，按同一组验证 batch 配对
    shallow, deep = depths
    no_wu, wu = warmups

    def run(position, depth, warmup):
        return grid[f"{LABELS[position]}, L={depth}, warmup={warmup}"]

    def difference(a, b):
        """逐种子、逐验证 batch 的 a − b（两次运行的同一种子 / 同一 batch 配对）。"""
        return ([x - y for x, y in zip(a["final_val_loss"], b["final_val_loss"])],
                [x - y for x, y in zip(a["final_val_batches"], b["final_val_batches"])])

    pre, post = run("pre", deep, no_wu), run("post", deep, no_wu)
    exp.conclude_verdict(f"{deep} 层、无 warmup 时，Pre-LN 的最终验证损失低于 Post-LN",
                         compare_runs(pre["final_val_loss"], post["final_val_loss"], "less",
                                      pre["final_val_batches"], post["final_val_batches"]),
                         f"Pre-LN {format_mean_std(pre['final_val_loss'])} vs Post-LN {format_mean_std(post['final_val_loss'])}")
    # warmup 带来的损失下降（无 warmup − 有 warmup），Post-LN 与 Pre-LN 配对比较
    for depth in depths:
        post_gain = difference(run("post", depth, no_wu), run("post", depth, wu))
        pre_gain = difference(run("pre", depth, no_wu), run("pre", depth, wu))
        exp.conclude_verdict(f"{depth} 层时 Post-LN 更需要 warmup：加 {wu} 步 warmup 带来的损失下降大于 Pre-LN 的",
                             compare_runs(post_gain[0], pre_gain[0], "greater", post_gain[1], pre_gain[1]),
                             f"warmup 带来的下降：Post-LN {format_mean_std(post_gain[0])}，Pre-LN {format_mean_std(pre_gain[0])}")
    post_drop = difference(run("post", deep, wu), run("post", shallow, wu))
    pre_drop = difference(run("pre", deep, wu), run("pre", shallow, wu))
    exp.conclude_verdict(f"加深（{shallow} → {deep} 层，都用 warmup）对 Post-LN 的伤害比对 Pre-LN 大",
                         compare_runs(post_drop[0], pre_drop[0], "greater", post_drop[1], pre_drop[1]),
                         f"损失变化：Post-LN {format_mean_std(post_drop[0])}，Pre-LN {format_mean_std(pre_drop[0])}")
    exp.finish()


if __name__ == "__main__":
    main()
