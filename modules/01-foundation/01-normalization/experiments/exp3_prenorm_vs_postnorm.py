"""实验 3：Pre-LN 与 Post-LN——初始化时的逐层梯度（Xiong et al. 2020），以及为什么 Post-LN 离不开 warmup。

两部分（都用 LayerNorm，只换归一化的位置：LabConfig(norm="layernorm", norm_position="pre"/"post")）：
  1. 初始化时的梯度（不训练，每个种子一次前向 + 反向）。按论文的量法取每层 FFN 第二个矩阵 W2（down_proj）的梯度范数，
     在论文的设定里测：Xavier 初始化（LabConfig(init="xavier")）、ReLU FFN；再换成 MiniMind 的 N(0, 0.02) 初始化对照。
     (a) 12 层模型的逐层形状：top/bottom = 上半部分层的平均梯度 / 下半部分层的平均梯度（> 1 表示越靠近输出越大）；
     (b) 最后一层的梯度随层数 L 怎么变：论文的理论是 Post-LN 与 L 无关，Pre-LN 按 1/√L 缩小。
     初始化的随机性就是这里的噪声：每个配置用 INIT_SEEDS 个种子（quick 模式也一样，单次反向很便宜），
     同一种子下各配置用同一个 batch，按种子配对比较。
  2. 训练失败率（Xiong et al. 2020；Liu et al. 2020）：学习率 5e-3 下，Post-LN 要么正常训练，要么整段训练停在
     "只学到字符频率"的平台上（验证损失 ≈ 字符一元熵 3.31）——结果是两态的，所以这里数"失败"的种子，而不是比平均损失。
     失败的定义在看多种子结果之前定好：最终验证损失没有比训练集字符的一元熵低 FAILURE_MARGIN（0.1 nats）。
     四个配置各跑同一组种子（完整模式 16 个，quick 模式只跑第一个）：12 层 Post-LN 无 warmup / 有 warmup、12 层 Pre-LN 无 warmup、4 层 Post-LN 无 warmup；
     失败率按种子配对做精确符号检验（noise.fewer_failures）；quick 模式一个种子判不出失败率，只打印结果、不下这三条结论。
数据：TinyShakespeare 字符级。为了在 CPU 上跑得动，模型很窄（hidden 64）、序列很短（block 32）。
"""
import math
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare, fewer_failures  # noqa: E402
from modules.common.text_data import char_lm_batches, unigram_entropy  # noqa: E402
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
# 第二部分的区间（先用种子 42… 探测、定下，再在种子 1… 上检查；teaching.md 列出探测结果）：
# 学习率 5e-3 时 12 层 Post-LN 不用 warmup 多半卡住、用 100 步 warmup 很少卡住；1e-2 时连 warmup 也救不回 12 层 Post-LN，
# 3e-3 时 Post-LN 与 Pre-LN 只差噪声量级
LR = 5e-3
SHALLOW, DEEP = 4, 12
FAILURE_MARGIN = 0.1  # 失败：最终验证损失 > 字符一元熵 − 0.1（看结果之前定好）
# 精确符号检验至少要 5 个结果不同的种子才可能成立，完整模式用 16 个。quick 模式只跑完整模式的第一个种子、只打印结果、
# 不下失败率结论；同样的 200 步——缩到 100 步时，不用 warmup 的 Pre-LN 还没离开平台多远（3.04～3.22，阈值 3.21），
# "失败"就不再只是卡住
FAILURE_SEEDS = {"quick": 1, "full": 16}
STEPS, WARMUP_STEPS = 200, 100
# 失败率网格里的四个配置：(位置, 层数, 是否 warmup)
FAILURE_RUNS = (("post", DEEP, False), ("post", DEEP, True), ("pre", DEEP, False), ("post", SHALLOW, False))


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


def run_name(position: str, depth: int, warmup: int) -> str:
    return f"{LABELS[position]}, L={depth}, warmup={warmup}"


def main():
    exp = Experiment(__file__, description=(
        "归一化实验 3：Pre-LN vs Post-LN。初始化时逐层 FFN W2 的梯度范数（Xavier 与 0.02 初始化），\n"
        "以及 Post-LN / Pre-LN 有无 warmup、不同深度时训练失败（停在字符频率平台）的比例。"))
    failure_seeds = [exp.seed + i for i in range(FAILURE_SEEDS["quick" if exp.quick else "full"])]
    text = get_experiment_data("shakespeare")
    entropy = unigram_entropy(text[: int(len(text) * 0.9)])  # 训练部分（char_lm_batches 的前 90%）
    threshold = entropy - FAILURE_MARGIN
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

    # ---- 2. 训练失败率：每个配置跑同一组种子 ----
    grid = {}  # "Post-LN, L=12, warmup=0" → {...}
    for position, depth, use_warmup in FAILURE_RUNS:
        warmup = WARMUP_STEPS if use_warmup else 0
        histories = [train_once(text, depth, position, warmup, STEPS, seed, exp.device) for seed in failure_seeds]
        finals = [final_val(h) for h in histories]
        failed = [f > threshold for f in finals]  # 发散（inf）也算失败
        grid[run_name(position, depth, warmup)] = {
            "depth": depth, "warmup": warmup, "position": position, "seeds": failure_seeds,
            "final_val_loss": finals, "failed": failed, "n_failed": sum(failed),
            "diverged_at": [h["diverged_at"] for h in histories],
            "val_steps": histories[0]["val_steps"], "val_curves": [h["val_loss"] for h in histories]}
    n = len(failure_seeds)
    exp.print_table(["model", "failed", "per seed (X = failed)", "val loss, trained runs", "val loss, failed runs"],
                    [[name, f"{r['n_failed']}/{n}", "".join("X" if f else "." for f in r["failed"]),
                      format_mean_std([v for v, f in zip(r["final_val_loss"], r["failed"]) if not f]) if r["n_failed"] < n else "-",
                      format_mean_std([v for v, f in zip(r["final_val_loss"], r["failed"]) if f]) if r["n_failed"] else "-"]
                     for name, r in grid.items()],
                    title=(f"Failed to train after {STEPS} steps (final val loss > unigram entropy {entropy:.3f} - "
                           f"{FAILURE_MARGIN:g} = {threshold:.3f}); hidden {HIDDEN}, lr {LR:g}, seeds {failure_seeds[0]}.."
                           f"{failure_seeds[-1]}"))
    exp.save_metrics({"config": {"depths": (SHALLOW, DEEP), "warmup_steps": WARMUP_STEPS, "steps": STEPS,
                                 "hidden": HIDDEN, "n_heads": N_HEADS, "lr": LR, "block_size": BLOCK_SIZE,
                                 "batch_size": BATCH_SIZE, "failure_seeds": failure_seeds,
                                 "unigram_entropy": entropy, "failure_margin": FAILURE_MARGIN,
                                 "failure_threshold": threshold,
                                 "init_seeds": init_seeds, "init_batch_size": INIT_BATCH_SIZE, "init_depth": INIT_DEPTH,
                                 "scaling_depths": SCALING_DEPTHS},
                      "init_shape": shape, "init_scaling": scaling, "grid": grid})

    # ---- 图：初始化梯度（Xavier / 0.02）、最后一层梯度 vs 深度、每个种子的最终损失、失败计数 ----
    set_style()
    fig, axes = plt.subplots(1, 5, figsize=(28, 4.5))
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
    names = list(grid)
    ticks = [name.replace(", warmup=", "\nwarmup=") for name in names]
    jitter = random.Random(0)
    for x, name in enumerate(names):
        r = grid[name]
        finite = [min(v, entropy + 0.5) for v in r["final_val_loss"]]  # 发散（inf）画在图的上沿
        xs_jit = [x + jitter.uniform(-0.15, 0.15) for _ in finite]
        axes[3].scatter(xs_jit, finite, c=["tab:red" if f else "tab:blue" for f in r["failed"]], s=18)
    axes[3].axhline(entropy, color="gray", linestyle=":", label=f"unigram entropy {entropy:.2f}")
    axes[3].axhline(threshold, color="tab:red", linestyle="--", label=f"failure threshold {threshold:.2f}")
    axes[3].set_xticks(range(len(names)), labels=ticks, fontsize=7)
    axes[3].set(ylabel="final val loss (one dot per seed)", title=f"Per-seed outcome (lr {LR:g}, {STEPS} steps)")
    axes[3].legend(fontsize=8)
    n_failed = [grid[name]["n_failed"] for name in names]
    bars = axes[4].bar(range(len(names)), n_failed, color=["tab:red" if "Post" in name else "tab:green" for name in names])
    axes[4].bar_label(bars, labels=[f"{k}/{len(failure_seeds)}" for k in n_failed], fontsize=8, padding=2)
    axes[4].set_xticks(range(len(names)), labels=ticks, fontsize=7)
    axes[4].set(ylabel="runs that failed to train", ylim=(0, len(failure_seeds) + 1),
                title=f"Failed runs out of {len(failure_seeds)} seeds")
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
    exp.conclude_verdict("MiniMind 的 0.02 初始化下 Post-LN 的这种形状变弱：top/bottom 比 Xavier 时小",
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

    # 失败率：同一种子下两个配置配对，精确符号检验只看结果不同的种子
    post_none, post_wu = grid[run_name("post", DEEP, 0)], grid[run_name("post", DEEP, WARMUP_STEPS)]
    pre_none, post_shallow = grid[run_name("pre", DEEP, 0)], grid[run_name("post", SHALLOW, 0)]
    failure_rule = f"失败 = 最终验证损失 > 字符一元熵 {entropy:.3f} − {FAILURE_MARGIN:g}"

    def failure_counts(a, b):
        return f"失败 {a['n_failed']}/{n} vs {b['n_failed']}/{n}（{failure_rule}）"

    # quick 不下这三条结论（共享的 quick_reason 机制：只打印本种子的结果与原因，记进 metrics["quick_undecided"]）：
    # 一个种子的失败率检验按设计只能是"未确立"，永远不会成立的结论是缺陷。要成立至少得有 5 个结果不同、全部支持声明的种子；
    # 12 层 Post-LN 不用 warmup 约一半种子失败，这需要 10 个以上的种子 × 4 个配置（12 层 200 步一次约 7 s CPU），远超 quick 的 60 s
    quick_reason = (f"quick 只跑 1 个种子，精确符号检验至少要 5 个结果不同的种子才可能成立，"
                    f"{FAILURE_SEEDS['full']} 个种子的判定见 results/reference/exp3_prenorm_vs_postnorm.json")
    exp.conclude_verdict(f"{DEEP} 层 Post-LN 用 {WARMUP_STEPS} 步 warmup 比不用时更少训练失败（卡在字符频率平台）",
                         fewer_failures(post_wu["failed"], post_none["failed"]), failure_counts(post_wu, post_none),
                         quick_reason=quick_reason)
    exp.conclude_verdict(f"{DEEP} 层、都不用 warmup 时，Pre-LN 比 Post-LN 更少训练失败",
                         fewer_failures(pre_none["failed"], post_none["failed"]), failure_counts(pre_none, post_none),
                         quick_reason=quick_reason)
    exp.conclude_verdict(f"不用 warmup 时，{SHALLOW} 层 Post-LN 比 {DEEP} 层 Post-LN 更少训练失败（越深越难训）",
                         fewer_failures(post_shallow["failed"], post_none["failed"]),
                         failure_counts(post_shallow, post_none), quick_reason=quick_reason)
    exp.finish()


if __name__ == "__main__":
    main()
