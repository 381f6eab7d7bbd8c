"""实验 4：迷你版 scaling law——loss 随参数量 N、数据量 D、算力 C ≈ 6·N·D 怎样下降？

几个尺寸的真实 MiniMindForCausalLM（只改 hidden_size）× 几个 token 预算，在字符级 TinyShakespeare 上
各自完整训练（每个预算都有自己完整的 warmup + 余弦调度，Chinchilla 强调的做法），记录最终验证 loss：
  - N 取非嵌入参数量（Kaplan 2020 的约定），D = 训练 token 数，C = 6·N·D FLOPs；
  - 在"算力前沿"（同等或更少算力里 loss 最低的点）上用 numpy 拟合 L = a·C^(−α)，
    再拟合带不可约项的 L = E + a·C^(−α)，打印指数 α；
  - 诚实地说明这种 CPU 尺度的拟合有多可信：点很少、算力只跨一两个数量级。
"""
import math
import sys
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

LAYERS, HEADS, KV_HEADS, BLOCK, BATCH, LR = 2, 4, 2, 64, 8, 1e-2


def add_args(parser):
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=None,
                        help="模型宽度列表，须是 4 的倍数（默认 quick 32 64 96 / full 32 48 64 96）")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="训练步数列表，每步 8×64 个 token（默认 quick 40 80 160 / full 60 120 240）")


def build_model(hidden: int, vocab_size: int) -> MiniMindForCausalLM:
    config = MiniMindConfig(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV_HEADS, vocab_size=vocab_size, max_position_embeddings=256)
    return MiniMindForCausalLM(config)


def non_embedding_params(model: MiniMindForCausalLM) -> int:
    """总参数减去词嵌入（与 lm_head 共享，只算一次）：Kaplan 2020 发现用它拟合得更干净。"""
    return sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()


def compute_frontier(points: list[dict]) -> list[dict]:
    """按算力从小到大，只保留比所有更小算力的点 loss 都低的点（给定算力下能达到的最低 loss）。"""
    frontier, best = [], math.inf
    for p in sorted(points, key=lambda p: p["compute"]):
        if p["loss"] < best:
            frontier.append(p)
            best = p["loss"]
    return frontier


def fit_power_law(compute: np.ndarray, loss: np.ndarray) -> dict:
    """log L = log a − α·log C 的最小二乘直线；返回 a、α 和 log 空间的 R²。"""
    x, y = np.log(compute), np.log(loss)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    r2 = 1.0 - float(np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300))
    return {"a": float(math.exp(intercept)), "alpha": float(-slope), "r2": r2}


def fit_power_law_with_floor(compute: np.ndarray, loss: np.ndarray) -> dict:
    """L = E + a·C^(−α)：在 [0, 0.99·min L) 上网格搜索不可约项 E，每个 E 对 log(L−E) 做直线拟合，取 L 空间误差最小的。"""
    best = None
    for floor in np.linspace(0.0, 0.99 * loss.min(), 200):
        fit = fit_power_law(compute, loss - floor)
        pred = floor + fit["a"] * compute ** (-fit["alpha"])
        sse = float(np.sum((loss - pred) ** 2))
        if best is None or sse < best["sse"]:
            best = {"E": float(floor), "a": fit["a"], "alpha": fit["alpha"], "sse": sse}
    return best


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "预训练实验 4：迷你 scaling law。几个尺寸的 MiniMind × 几个 token 预算，最终 loss vs N、vs C=6ND，\n"
        "在算力前沿上拟合 L = a·C^(−α)（以及 L = E + a·C^(−α)）并打印指数。"))
    hiddens = exp.args.hidden_sizes or ([32, 64, 96] if exp.quick else [32, 48, 64, 96])
    budgets = exp.args.budgets or ([40, 80, 160] if exp.quick else [60, 120, 240])
    if len(hiddens) < 2 or len(budgets) < 2:
        raise SystemExit("--hidden-sizes 和 --budgets 各至少要 2 个值，才谈得上拟合趋势")
    if any(h < 8 or h % HEADS for h in hiddens):
        raise SystemExit(f"--hidden-sizes 的每个值须 >= 8 且是 {HEADS}（注意力头数）的倍数，收到 {hiddens}")
    if any(b < 10 for b in budgets):
        raise SystemExit(f"--budgets 的每个值须 >= 10 步（warmup 占 10%），收到 {budgets}")
    hiddens, budgets = sorted(set(hiddens)), sorted(set(budgets))
    text = get_experiment_data("shakespeare")
    tokens_per_step = BATCH * BLOCK
    train_chars = int(len(text) * 0.9)

    # runs[(hidden, steps)] = [每个种子的最终验证 loss]
    runs, n_params = {}, {}
    for seed in exp.seeds:
        for hidden in hiddens:
            for steps in budgets:
                Experiment.seed_everything(seed)
                tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
                model = build_model(hidden, tokenizer.vocab_size)
                n_params[hidden] = non_embedding_params(model)
                hist = train_model(model, get_batch, steps=steps, lr=LR, eval_every=steps, eval_batches=16,
                                   device=exp.device, desc=f"h={hidden} steps={steps} seed={seed}")
                if hist["diverged_at"] is not None:
                    raise SystemExit(f"h={hidden} steps={steps}（seed={seed}）发散；请减小 LR")
                runs.setdefault((hidden, steps), []).append(hist["val_loss"][-1])

    points = [{"hidden": h, "steps": s, "params": n_params[h], "tokens": s * tokens_per_step,
               "compute": 6.0 * n_params[h] * s * tokens_per_step, "loss": mean_std(runs[(h, s)])[0],
               "loss_std": mean_std(runs[(h, s)])[1], "losses": runs[(h, s)]} for h in hiddens for s in budgets]
    frontier = compute_frontier(points)
    fit_points = frontier if len(frontier) >= 3 else points  # 前沿点太少时退回用全部点，并在结论里说明
    c = np.array([p["compute"] for p in fit_points])
    loss = np.array([p["loss"] for p in fit_points])
    fit = fit_power_law(c, loss)
    fit_floor = fit_power_law_with_floor(c, loss)
    decades = math.log10(max(p["compute"] for p in points) / min(p["compute"] for p in points))

    exp.print_table(["hidden", "non-emb params N", "steps", "tokens D", "C = 6ND (FLOPs)", "val loss", "on frontier"],
                    [[p["hidden"], p["params"], p["steps"], p["tokens"], f"{p['compute']:.3g}",
                      format_mean_std(p["losses"]), "yes" if p in frontier else ""] for p in points],
                    title=f"Final val loss for {len(hiddens)} sizes x {len(budgets)} budgets, {len(exp.seeds)} seed(s)")
    exp.print_table(["fit", "a", "alpha", "E (floor)", "quality"],
                    [["L = a*C^-alpha", f"{fit['a']:.4g}", f"{fit['alpha']:.4f}", "-", f"R2(log) = {fit['r2']:.3f}"],
                     ["L = E + a*C^-alpha", f"{fit_floor['a']:.4g}", f"{fit_floor['alpha']:.4f}",
                      f"{fit_floor['E']:.3f}", f"SSE = {fit_floor['sse']:.2e}"]],
                    title=f"Power-law fits on {len(fit_points)} {'frontier' if fit_points is frontier else 'all'} "
                          f"points spanning {decades:.2f} decades of compute")
    print(f"训练 token 最多 {max(budgets) * tokens_per_step}，训练集 {train_chars} 个字符："
          f"最多 {max(budgets) * tokens_per_step / train_chars:.2f} 个 epoch（随机窗口采样）")

    exp.save_metrics({
        "model": {"num_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": LR},
        "hidden_sizes": hiddens, "budgets_steps": budgets, "tokens_per_step": tokens_per_step,
        "non_embedding_params": {str(h): n for h, n in n_params.items()},
        "points": points, "frontier": [{"hidden": p["hidden"], "steps": p["steps"]} for p in frontier],
        "fit_on": "frontier" if fit_points is frontier else "all points",
        "fit": fit, "fit_with_floor": fit_floor, "compute_decades": decades,
        "max_epochs": max(budgets) * tokens_per_step / train_chars,
    })

    # ---- 图：左 L vs C（按尺寸着色，前沿与拟合线）；右 L vs N（每个预算一条线）----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, h in enumerate(hiddens):
        ps = [p for p in points if p["hidden"] == h]
        axes[0].errorbar([p["compute"] for p in ps], [p["loss"] for p in ps], yerr=[p["loss_std"] for p in ps],
                         fmt="o-", color=f"C{i}", alpha=0.7, capsize=3, label=f"hidden {h} (N={n_params[h]:,})")
    grid = np.logspace(math.log10(c.min()), math.log10(c.max()), 50)
    axes[0].plot(grid, fit["a"] * grid ** (-fit["alpha"]), "k--", label=f"fit a*C^-{fit['alpha']:.3f}")
    axes[0].plot(grid, fit_floor["E"] + fit_floor["a"] * grid ** (-fit_floor["alpha"]), "k:",
                 label=f"fit {fit_floor['E']:.2f} + a*C^-{fit_floor['alpha']:.3f}")
    axes[0].scatter([p["compute"] for p in frontier], [p["loss"] for p in frontier], s=140, facecolors="none",
                    edgecolors="k", label="compute frontier")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("compute C = 6 N D (FLOPs)")
    axes[0].set_ylabel("final val loss")
    axes[0].set_title("Loss vs compute")
    axes[0].legend(fontsize=7)
    for j, s in enumerate(budgets):
        ps = [p for p in points if p["steps"] == s]
        axes[1].plot([p["params"] for p in ps], [p["loss"] for p in ps], "o-", color=f"C{j}",
                     label=f"D = {s * tokens_per_step:,} tokens")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("non-embedding parameters N")
    axes[1].set_ylabel("final val loss")
    axes[1].set_title("Loss vs model size, per data budget")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp4_scaling_small.png")

    # ---- 结论（全部由上面的测量算出）----
    per_size = {h: [mean_std(runs[(h, s)])[0] for s in budgets] for h in hiddens}
    exp.conclude("每个尺寸的模型，token 预算（算力）越多最终 loss 越低",
                 all(all(b < a for a, b in zip(ls, ls[1:])) for ls in per_size.values()),
                 "；".join(f"h{h}: " + " → ".join(f"{v:.3f}" for v in ls) for h, ls in per_size.items()))
    exp.conclude("算力前沿上 loss 随算力按幂律下降：拟合指数 α > 0",
                 fit["alpha"] > 0,
                 f"L ≈ {fit['a']:.3g}·C^(−{fit['alpha']:.4f})，log 空间 R² = {fit['r2']:.3f}；带不可约项："
                 f"L ≈ {fit_floor['E']:.3f} + {fit_floor['a']:.3g}·C^(−{fit_floor['alpha']:.4f})"
                 f"（Kaplan 2020 报告的 α_C ≈ 0.050，量级与本实验不可比，见 teaching.md）")
    largest = [mean_std(runs[(h, budgets[-1])])[0] for h in hiddens]
    exp.conclude(f"数据最多（{budgets[-1]} 步）时，最大的模型 loss 低于最小的模型",
                 largest[-1] < largest[0],
                 f"h{hiddens[0]}: {largest[0]:.4f} vs h{hiddens[-1]}: {largest[-1]:.4f}")
    exp.conclude("拟合达到最低的可信门槛：前沿点 ≥ 4 个，且算力跨度 ≥ 2 个数量级",
                 len(frontier) >= 4 and decades >= 2.0,
                 f"前沿 {len(frontier)} 个点、算力跨 {decades:.2f} 个数量级、最多 "
                 f"{max(budgets) * tokens_per_step / train_chars:.2f} 个 epoch；不满足时指数只是粗略估计")
    exp.finish()


if __name__ == "__main__":
    main()
