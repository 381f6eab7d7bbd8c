"""实验 1：去掉 FFN 会怎样？FFN 放大倍数（expansion ratio）越大越好吗？

同一个 LabModel（只换 ffn / ffn_ratio 两个开关），在字符级 TinyShakespeare 上训练相同步数：
  - ffn="none"：只有注意力的块（attention-only）；
  - ffn="swiglu"，中间层 = ratio × hidden，ratio ∈ {1, 2, 4, 8}（MiniMind 默认约 8/3）。
记录每个模型的参数量、验证 loss 和训练墙钟时间，看"多出来的容量"换来多少 loss、花了多少代价。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HIDDEN, LAYERS, HEADS, BLOCK, BATCH, LR = 64, 2, 4, 64, 8, 3e-3


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 100 / full 250）")


def variants(quick: bool) -> dict:
    """名字 → (ffn, ffn_ratio)。quick 只跑 none / 1× / 4×。"""
    ratios = (1, 4) if quick else (1, 2, 4, 8)
    return {"none": ("none", None), **{f"swiglu {r}x": ("swiglu", float(r)) for r in ratios}}


def ffn_params(model: LabModel) -> int:
    """所有块里 FFN（mlp）的参数量。"""
    return sum(p.numel() for layer in model.model.layers if layer.mlp is not None for p in layer.mlp.parameters())


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "FFN 实验 1：只有注意力（ffn=none）vs 带 SwiGLU FFN，以及 FFN 放大倍数 1×/2×/4×/8× 的扫描：\n"
        "相同训练步数下比较验证 loss、参数量和训练时间。"))
    steps = exp.args.steps or (100 if exp.quick else 250)
    if steps < 1:
        raise SystemExit(f"--steps 必须 >= 1（收到 {steps}）")
    text = get_experiment_data("shakespeare")
    configs = variants(exp.quick)

    # runs[name] = {"val_loss": [每个种子], "wall_s": [...], "curves": [...]}
    runs = {name: {"val_loss": [], "wall_s": [], "tokens_per_s": [], "curves": []} for name in configs}
    params = {}
    for seed in exp.seeds:
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        for name, (ffn, ratio) in configs.items():
            Experiment.seed_everything(seed)
            config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=LAYERS, n_heads=HEADS,
                               max_seq_len=BLOCK, ffn=ffn, ffn_ratio=ratio)
            model = LabModel(config).to(exp.device)
            params[name] = {"total": model.num_params(), "ffn": ffn_params(model),
                            "intermediate_size": 0 if ffn == "none" else config.intermediate_size}
            hist = train_model(model, get_batch, steps=steps, lr=LR, eval_batches=8, device=exp.device,
                               desc=f"{name} seed={seed}")
            if hist["diverged_at"] is not None:
                raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减小学习率或步数后重试")
            runs[name]["val_loss"].append(hist["val_loss"][-1])
            runs[name]["wall_s"].append(hist["wall_s"])
            runs[name]["tokens_per_s"].append(hist["tokens_per_s"])
            runs[name]["curves"].append({"val_steps": hist["val_steps"], "val_loss": hist["val_loss"]})

    mean = {name: mean_std(r["val_loss"])[0] for name, r in runs.items()}
    exp.print_table(
        ["model", "intermediate", "params (total)", "params (FFN)", "val loss", "wall s", "tokens/s"],
        [[name, params[name]["intermediate_size"], params[name]["total"], params[name]["ffn"],
          format_mean_std(r["val_loss"]), format_mean_std(r["wall_s"], 3), f"{mean_std(r['tokens_per_s'])[0]:.0f}"]
         for name, r in runs.items()],
        title=f"Char-level TinyShakespeare, hidden {HIDDEN}, {LAYERS} layers, {steps} steps, {len(exp.seeds)} seed(s)")
    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": HIDDEN, "num_layers": LAYERS, "n_heads": HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": LR},
        "params": params,
        "val_loss": {name: {"mean": mean_std(r["val_loss"])[0], "std": mean_std(r["val_loss"])[1], "runs": r["val_loss"]}
                     for name, r in runs.items()},
        "wall_s": {name: {"mean": mean_std(r["wall_s"])[0], "runs": r["wall_s"]} for name, r in runs.items()},
        "tokens_per_s": {name: mean_std(r["tokens_per_s"])[0] for name, r in runs.items()},
        "curves": {name: r["curves"] for name, r in runs.items()},
    })

    # ---- 图：左 val loss vs 参数量，右 val loss vs 墙钟时间；中间是验证曲线 ----
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in runs.items():
        loss_mean, loss_std = mean_std(r["val_loss"])
        axes[0].errorbar(params[name]["total"], loss_mean, yerr=loss_std, fmt="o", capsize=3, label=name)
        axes[1].errorbar(mean_std(r["wall_s"])[0], loss_mean, yerr=loss_std, fmt="o", capsize=3, label=name)
        curve = r["curves"][0]
        axes[2].plot(curve["val_steps"], [sum(c["val_loss"][i] for c in r["curves"]) / len(r["curves"])
                                          for i in range(len(curve["val_steps"]))], marker=".", label=name)
    axes[0].set_xlabel("total parameters")
    axes[0].set_title("Final val loss vs parameters")
    axes[1].set_xlabel("training wall time (s)")
    axes[1].set_title("Final val loss vs wall time")
    axes[2].set_xlabel("step")
    axes[2].set_title("Validation loss during training")
    for ax in axes:
        ax.set_ylabel("val loss")
        ax.legend(fontsize=8)
    exp.save_figure(fig, "exp1_feedforward.png")

    # ---- 结论（全部由上面的测量算出）----
    ffn_names = [n for n in configs if n != "none"]
    worst_ffn = max(ffn_names, key=lambda n: mean[n])
    none_std = mean_std(runs["none"]["val_loss"])[1]
    exp.conclude("相同步数下，任何一个带 FFN 的模型验证 loss 都低于只有注意力的模型",
                 all(mean[n] < mean["none"] for n in ffn_names),
                 f"attention-only {mean['none']:.4f}（±{none_std:.2g}）；带 FFN 中最差的 {worst_ffn} {mean[worst_ffn]:.4f}；"
                 f"参数量 {params['none']['total']} → {params[worst_ffn]['total']}")
    best = min(ffn_names, key=lambda n: mean[n])
    smallest, largest = ffn_names[0], ffn_names[-1]
    exp.conclude(f"放大倍数越大 loss 越低：{largest} 优于 {smallest}",
                 mean[largest] < mean[smallest],
                 f"{smallest} {mean[smallest]:.4f}（{params[smallest]['total']} 参数）vs "
                 f"{largest} {mean[largest]:.4f}（{params[largest]['total']} 参数）；本次最好的是 {best}")
    gains = [mean[a] - mean[b] for a, b in zip(ffn_names, ffn_names[1:])]
    if len(gains) >= 2:  # quick 模式只有两个倍数，判断不了"递减"，不下这条结论
        exp.conclude("收益递减：放大倍数每翻一倍，loss 都在下降，但降幅一次比一次小",
                     all(g > 0 for g in gains) and all(g2 <= g1 for g1, g2 in zip(gains, gains[1:])),
                     "相邻倍数之间的 loss 降幅：" + "，".join(f"{a}→{b}: {g:+.4f}" for a, b, g in
                                                     zip(ffn_names, ffn_names[1:], gains)))
    slow = mean_std(runs[largest]["wall_s"])[0] / mean_std(runs["none"]["wall_s"])[0]
    exp.conclude(f"容量有代价：{largest} 的训练时间比 attention-only 长",
                 slow > 1.0,
                 f"墙钟时间比 {slow:.2f}×（{mean_std(runs['none']['wall_s'])[0]:.1f} s → "
                 f"{mean_std(runs[largest]['wall_s'])[0]:.1f} s；与其他任务共享 CPU 时计时有噪声）")
    exp.finish()


if __name__ == "__main__":
    main()
