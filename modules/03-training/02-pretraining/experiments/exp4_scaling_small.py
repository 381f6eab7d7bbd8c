"""实验 4：迷你 scaling law——loss 随参数量 N、数据量 D、算力 C ≈ 6·N·D 怎样下降？

几个尺寸的真实 MiniMindForCausalLM（只改 hidden_size）× 几个 token 预算，在字符级 TinyShakespeare 上
各自完整训练（每个预算都有自己完整的 warmup + 余弦调度，Chinchilla 强调的做法），记录最终验证 loss：
  - N 取非嵌入参数量（Kaplan 2020 的约定），D = 训练 token 数，C = 6·N·D FLOPs；
  - 尺寸（hidden 8 … 96，N 跨约 58 倍）× 预算（每档翻倍，跨 32 倍）让算力跨过 2 个数量级以上；
  - 在"算力前沿"（同等或更少算力里 loss 最低的点）上用 numpy 拟合 L = a·C^(−α)，
    再拟合带不可约项的 L = E + a·C^(−α)；α 对每个种子（quick：每个验证批）各拟合一次，报告它的散布；
  - "更多数据 / 更大模型 loss 更低"都经共享的噪声检验（modules/common/noise.py）；
  - 平台期：loss 先降到 unigram 熵 H1（只学到字符频率）附近，学会看上一个字符之后才继续往 bigram 条件熵 H2 走。
    离开平台的步数因种子而异，极短的预算里"多一档预算 loss 更低"被这种种子噪声淹没。所以每个尺寸的平台期终点
    = 第一个"每个种子的最终 loss 都低于 (H1 + H2) / 2"的预算（门槛没有可调参数；"每个种子都"是看过种子 42–44
    之后定的，再在种子 1–3 上检验）；"每增加一档都更低"只对它之后的预算下结论
    （Kaplan 2020、Hoffmann 2022 也是在初始瞬态之后读幂律），平台期内作为对照单独报告。
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
import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, exceeds, weakest  # noqa: E402
from modules.common.text_data import char_lm_batches, unigram_entropy  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

LAYERS, HEADS, KV_HEADS, BLOCK, BATCH, LR = 2, 4, 2, 64, 8, 1e-2
EVAL_BATCHES = 16
MIN_FRONTIER_POINTS, MIN_DECADES = 4, 2.0  # 拟合的最低可信门槛（事先定好，不随结果调整）


def add_args(parser):
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=None,
                        help="模型宽度列表，须是 4 的倍数（默认 quick 8 16 32 64 / full 8 16 32 64 96）")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="训练步数列表，每步 8×64 个 token（默认 quick 20 40 … 640 / full 25 50 … 800，每档翻倍）")


def build_model(hidden: int, vocab_size: int) -> MiniMindForCausalLM:
    config = MiniMindConfig(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV_HEADS, vocab_size=vocab_size, max_position_embeddings=256)
    return MiniMindForCausalLM(config)


def non_embedding_params(model: MiniMindForCausalLM) -> int:
    """总参数减去词嵌入（与 lm_head 共享，只算一次）：Kaplan 2020 发现用它拟合得更干净。"""
    return sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()


def bigram_conditional_entropy(text: str) -> float:
    """已知上一个字符、按字符对的频率猜下一个字符时最好的交叉熵 H(X_t | X_{t-1})（nats）。"""
    pair_counts = Counter(zip(text, text[1:]))
    prev_counts = Counter(text[:-1])
    total = len(text) - 1
    return -sum(c / total * math.log(c / prev_counts[a]) for (a, _), c in pair_counts.items())


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
        "在算力前沿上拟合 L = a·C^(−α)（以及 L = E + a·C^(−α)），报告指数和它在种子间的散布。"))
    hiddens = exp.args.hidden_sizes or ([8, 16, 32, 64] if exp.quick else [8, 16, 32, 64, 96])
    budgets = exp.args.budgets or ([20, 40, 80, 160, 320, 640] if exp.quick else [25, 50, 100, 200, 400, 800])
    if len(hiddens) < 2 or len(budgets) < 2:
        raise SystemExit("--hidden-sizes 和 --budgets 各至少要 2 个值，才谈得上拟合趋势")
    if any(h < 8 or h % HEADS for h in hiddens):
        raise SystemExit(f"--hidden-sizes 的每个值须 >= 8 且是 {HEADS}（注意力头数）的倍数，收到 {hiddens}")
    if any(b < 10 for b in budgets):
        raise SystemExit(f"--budgets 的每个值须 >= 10 步（warmup 占 10%），收到 {budgets}")
    hiddens, budgets = sorted(set(hiddens)), sorted(set(budgets))
    if exp.device.type == "cpu":
        torch.set_num_threads(1)  # 这么小的模型，2 个线程在 2 核机器上几乎不更快，机器一忙反而慢很多
    text = get_experiment_data("shakespeare")
    tokens_per_step = BATCH * BLOCK
    train_chars = int(len(text) * 0.9)
    h_unigram = unigram_entropy(text[:train_chars])
    h_bigram = bigram_conditional_entropy(text[:train_chars])
    plateau_exit = (h_unigram + h_bigram) / 2  # 走过 H1 → H2 的一半，才算离开了 unigram 平台

    # runs[(hidden, steps)] = 每个种子一项 {"loss": 最终验证 loss, "batches": 16 个验证批各自的 loss}
    # 同一种子下所有配置看到的验证批相同（只在最后评估一次），所以 quick 模式可以按批配对
    runs, n_params = {}, {}
    for seed in exp.seeds:
        for hidden in hiddens:
            for steps in budgets:
                Experiment.seed_everything(seed)
                tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
                model = build_model(hidden, tokenizer.vocab_size)
                n_params[hidden] = non_embedding_params(model)
                hist = train_model(model, get_batch, steps=steps, lr=LR, eval_every=steps, eval_batches=EVAL_BATCHES,
                                   device=exp.device, desc=f"h={hidden} steps={steps} seed={seed}")
                if hist["diverged_at"] is not None:
                    raise SystemExit(f"h={hidden} steps={steps}（seed={seed}）发散；请减小 LR")
                runs.setdefault((hidden, steps), []).append(
                    {"loss": hist["val_loss"][-1], "batches": hist["final_val_batches"]})

    def seed_losses(h, s):
        return [r["loss"] for r in runs[(h, s)]]

    def batch_losses(h, s):  # 第一个种子的逐批 loss：quick 模式（一个种子）时噪声检验用它配对
        return runs[(h, s)][0]["batches"]

    # 平台期终点：第一个每个种子都已离开平台的预算（quick 只有一个种子）；一个都没有时为 None
    transient_end = {h: next((s for s in budgets if max(seed_losses(h, s)) < plateau_exit), None) for h in hiddens}

    def past_plateau(h):
        return [s for s in budgets if transient_end[h] is not None and s >= transient_end[h]]

    points = [{"hidden": h, "steps": s, "params": n_params[h], "tokens": s * tokens_per_step,
               "compute": 6.0 * n_params[h] * s * tokens_per_step, "loss": mean_std(seed_losses(h, s))[0],
               "loss_std": mean_std(seed_losses(h, s))[1], "losses": seed_losses(h, s)}
              for h in hiddens for s in budgets]
    frontier = compute_frontier(points)
    fit_points = frontier if len(frontier) >= 3 else points  # 前沿点太少时退回用全部点，并在结论里说明
    c = np.array([p["compute"] for p in fit_points])
    loss = np.array([p["loss"] for p in fit_points])
    fit = fit_power_law(c, loss)
    fit_floor = fit_power_law_with_floor(c, loss)
    decades = math.log10(c.max() / c.min())  # 拟合用到的点跨了几个数量级的算力
    # 拟合用整条前沿（含平台期的点）；作为对比，再只用离开平台期的点重算前沿和拟合（只打印，不下结论）
    settled_frontier = compute_frontier([p for p in points if p["steps"] in past_plateau(p["hidden"])])
    settled = None
    if len(settled_frontier) >= 2:
        settled_c = np.array([p["compute"] for p in settled_frontier])
        settled = {**fit_power_law(settled_c, np.array([p["loss"] for p in settled_frontier])),
                   "n_points": len(settled_frontier), "compute_decades": math.log10(settled_c.max() / settled_c.min()),
                   "frontier": [{"hidden": p["hidden"], "steps": p["steps"]} for p in settled_frontier]}
    # α 的散布：完整模式每个种子各拟合一次；quick 模式（一个种子）每个验证批各拟合一次（只含评估抽样的噪声）
    if len(exp.seeds) >= 2:
        alpha_unit = "seeds"
        alpha_samples = [fit_power_law(c, np.array([runs[(p["hidden"], p["steps"])][i]["loss"] for p in fit_points]))
                         ["alpha"] for i in range(len(exp.seeds))]
    else:
        alpha_unit = "batches"
        alpha_samples = [fit_power_law(c, np.array([batch_losses(p["hidden"], p["steps"])[b] for p in fit_points]))
                         ["alpha"] for b in range(EVAL_BATCHES)]

    exp.print_table(["hidden", "non-emb params N", "steps", "tokens D", "C = 6ND (FLOPs)", "val loss", "max over seeds",
                     "past plateau", "on frontier"],
                    [[p["hidden"], p["params"], p["steps"], p["tokens"], f"{p['compute']:.3g}",
                      format_mean_std(p["losses"]), f"{max(p['losses']):.3f}",
                      "yes" if p["steps"] in past_plateau(p["hidden"]) else "", "yes" if p in frontier else ""]
                     for p in points],
                    title=f"Final val loss for {len(hiddens)} sizes x {len(budgets)} budgets, {len(exp.seeds)} seed(s)")
    exp.print_table(["fit", "a", "alpha", "E (floor)", "quality"],
                    [["L = a*C^-alpha", f"{fit['a']:.4g}", f"{fit['alpha']:.4f}", "-", f"R2(log) = {fit['r2']:.3f}"],
                     [f"  same, one fit per {'seed' if alpha_unit == 'seeds' else 'val batch'}", "-", format_mean_std(alpha_samples), "-",
                      f"n = {len(alpha_samples)}"],
                     ["L = E + a*C^-alpha", f"{fit_floor['a']:.4g}", f"{fit_floor['alpha']:.4f}",
                      f"{fit_floor['E']:.3f}", f"SSE = {fit_floor['sse']:.2e}"],
                     ["L = a*C^-alpha, past-plateau frontier only",
                      f"{settled['a']:.4g}" if settled else "-", f"{settled['alpha']:.4f}" if settled else "-", "-",
                      f"{settled['n_points']} points, {settled['compute_decades']:.2f} decades" if settled else "< 2 points"]],
                    title=f"Power-law fits on {len(fit_points)} {'frontier' if fit_points is frontier else 'all'} "
                          f"points spanning {decades:.2f} decades of compute")
    print(f"平台期：unigram 熵 H1 = {h_unigram:.3f}，bigram 条件熵 H2 = {h_bigram:.3f}，每个种子的最终 loss 都低于 "
          f"(H1 + H2) / 2 = {plateau_exit:.3f} 才算离开平台；平台期终点（步）："
          + "，".join(f"hidden {h}: {transient_end[h] if transient_end[h] is not None else '未离开'}" for h in hiddens))
    print(f"训练 token 最多 {max(budgets) * tokens_per_step}，训练集 {train_chars} 个字符："
          f"最多 {max(budgets) * tokens_per_step / train_chars:.2f} 个 epoch（随机窗口采样）")

    exp.save_metrics({
        "model": {"num_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": LR},
        "hidden_sizes": hiddens, "budgets_steps": budgets, "tokens_per_step": tokens_per_step,
        "non_embedding_params": {str(h): n for h, n in n_params.items()},
        "unigram_entropy": h_unigram, "bigram_entropy": h_bigram, "plateau_exit_loss": plateau_exit,
        "transient_end_steps": {str(h): transient_end[h] for h in hiddens},
        "points": points, "frontier": [{"hidden": p["hidden"], "steps": p["steps"]} for p in frontier],
        "final_val_batches": {f"h{h}_s{s}": batch_losses(h, s) for h in hiddens for s in budgets},
        "fit_on": "frontier" if fit_points is frontier else "all points",
        "fit": fit, "fit_with_floor": fit_floor, "compute_decades": decades,
        "alpha_samples": {"unit": alpha_unit, "values": alpha_samples,
                          "mean": mean_std(alpha_samples)[0], "std": mean_std(alpha_samples)[1]},
        "max_epochs": max(budgets) * tokens_per_step / train_chars,
        "fit_past_plateau": settled,
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
    axes[0].axhline(plateau_exit, color="gray", ls=":", lw=1, label=f"plateau exit (H1+H2)/2 = {plateau_exit:.2f}")
    axes[0].scatter([p["compute"] for p in frontier], [p["loss"] for p in frontier], s=140, facecolors="none",
                    edgecolors="k", label="compute frontier")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("compute C = 6 N D (FLOPs)")
    axes[0].set_ylabel("final val loss")
    axes[0].set_title(f"Loss vs compute ({decades:.2f} decades on the frontier)")
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

    # ---- 结论（全部由上面的测量算出；比较经噪声检验）----
    def doubling(h, small, big):  # 声明"预算 big 的最终 loss 低于 small"
        return compare_runs(seed_losses(h, big), seed_losses(h, small), "less",
                            batch_losses(h, big), batch_losses(h, small))

    for h in hiddens:
        kept = past_plateau(h)
        testable = len(kept) >= 2  # 离开平台期的预算不到 2 档（只会在自定义 --budgets 时发生）就无从比较
        if not testable:
            exp.conclude(f"hidden {h}：至少 2 档预算离开了平台期，才能检验\"每增加一档 loss 都更低\"", testable,
                         f"平台期终点 {transient_end[h]}；每档里最高的种子 loss："
                         + "，".join(f"{s}: {max(seed_losses(h, s)):.3f}" for s in budgets)
                         + f"（离开平台的门槛 {plateau_exit:.3f}）")
            continue
        doublings = [doubling(h, small, big) for small, big in zip(kept, kept[1:])]
        exp.conclude_verdict(f"hidden {h}：离开平台期之后，token 预算每增加一档（{' → '.join(map(str, kept))} 步），"
                             "最终 loss 都更低",
                             weakest(doublings),
                             "均值 " + " → ".join(f"{mean_std(seed_losses(h, s))[0]:.3f}" for s in kept)
                             + "；逐档下降 " + "，".join(f"{v.mean_delta:+.3f}" for v in doublings)
                             + "；下面是最弱的一档")
    # 对照：平台期内（小的那档还没离开平台）的每一对，所有尺寸合起来取最弱的一对
    plateau_pairs = {(h, small, big): doubling(h, small, big) for h in hiddens
                     for small, big in zip(budgets, budgets[1:])
                     if transient_end[h] is None or small < transient_end[h]}
    if plateau_pairs:
        verdict = weakest(plateau_pairs)
        h, small, big = next(key for key, v in plateau_pairs.items() if v is verdict)
        exp.conclude_verdict(f"对照：平台期内（某个种子的 loss 还高于 (H1 + H2) / 2 = {plateau_exit:.2f} 的预算），"
                             "每增加一档预算 loss 也都更低",
                             verdict,
                             "平台期终点（步）：" + "，".join(f"hidden {k}: {transient_end[k]}" for k in hiddens)
                             + f"；最弱的一对是 hidden {h} 的 {small} → {big} 步，逐种子 loss "
                             + "，".join(f"{a:.3f} → {b:.3f}" for a, b in zip(seed_losses(h, small), seed_losses(h, big)))
                             + "：离开平台的步数因种子而异")
    big, small = hiddens[-1], hiddens[0]
    exp.conclude_verdict(f"数据最多（{budgets[-1]} 步）时，最大的模型（hidden {big}）loss 低于最小的（hidden {small}）",
                         compare_runs(seed_losses(big, budgets[-1]), seed_losses(small, budgets[-1]), "less",
                                      batch_losses(big, budgets[-1]), batch_losses(small, budgets[-1])),
                         f"{format_mean_std(seed_losses(big, budgets[-1]))} vs "
                         f"{format_mean_std(seed_losses(small, budgets[-1]))}")
    exp.conclude_verdict("算力前沿上 loss 随算力按幂律下降：拟合指数 α > 0",
                         exceeds(alpha_samples, 0.0, "greater", unit=alpha_unit),
                         f"L ≈ {fit['a']:.3g}·C^(−{fit['alpha']:.4f})，log 空间 R² = {fit['r2']:.3f}；"
                         f"每个{'种子' if alpha_unit == 'seeds' else '验证批'}各拟合一次：α = {format_mean_std(alpha_samples)}；"
                         f"带不可约项：L ≈ {fit_floor['E']:.3f} + {fit_floor['a']:.3g}·C^(−{fit_floor['alpha']:.4f})"
                         f"（Kaplan 2020 报告的 α_C ≈ 0.050，量级与本实验不可比，见 teaching.md）")
    exp.conclude(f"拟合达到最低的可信门槛：前沿点 ≥ {MIN_FRONTIER_POINTS} 个，且算力跨度 ≥ {MIN_DECADES:g} 个数量级",
                 len(frontier) >= MIN_FRONTIER_POINTS and decades >= MIN_DECADES,
                 f"前沿 {len(frontier)} 个点（含平台期的点：拟合描述整条前沿）、拟合的点跨 {decades:.2f} 个数量级的算力、最多 "
                 f"{max(budgets) * tokens_per_step / train_chars:.2f} 个 epoch；不满足时指数只是粗略估计")
    exp.finish()


if __name__ == "__main__":
    main()
