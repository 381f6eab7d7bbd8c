"""实验 2：SwiGLU vs GELU vs ReLU，参数量相同的条件下谁更好？（Shazeer 2020, "GLU Variants Improve Transformer"）

同一个 LabModel，只换 ffn 开关：
  - swiglu：MiniMind 默认，三个矩阵，中间层 = 64·ceil(8/3·H/64)；
  - gelu / relu：经典两矩阵 MLP，ffn_param_matched=True 把中间层放大 1.5 倍，使 FFN 参数量与 SwiGLU 完全相等。
字符级 TinyShakespeare，相同步数、相同数据顺序、相同初始化种子；full 模式 3 个种子报告 mean ± std。
"SwiGLU 更好"拆成两条配对比较（SwiGLU vs GELU、SwiGLU vs ReLU），都过共享噪声检验：完整模式按种子配对，
quick 模式只有一个种子，按同一组验证 batch 配对。Shazeer 2020 测到的优势很小（同样参数下约 0.04 的 log-perplexity，
模型和训练步数都大得多）；小于这里的种子噪声时，诚实的结论是"这个规模上未确立"。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

VARIANTS = ("swiglu", "gelu", "relu")
HIDDEN, LAYERS, HEADS, BLOCK, BATCH, LR = 64, 2, 4, 64, 8, 3e-3  # 默认规模；GPU 上可用下面的参数放大


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 300 / full 600）")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size（默认 {HIDDEN}；须是 {2 * HEADS} 的倍数：{HEADS} 个头、每头维度为偶数）")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"层数（默认 {LAYERS}）")
    parser.add_argument("--lr", type=float, default=LR, help=f"峰值学习率（默认 {LR:g}；模型放大时通常要调小）")


def smooth(values: list[float], window: int = 10) -> list[float]:
    """滑动平均（两端用实际可用的点数），只用于画图。"""
    x = torch.tensor(values)[None, None]  # (1, 1, N)
    return F.avg_pool1d(x, window, stride=1, padding=window // 2, count_include_pad=False)[0, 0, :len(values)].tolist()


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "FFN 实验 2：参数量相同的 SwiGLU / GELU / ReLU FFN，相同训练预算下比较验证 loss，\n"
        "并判断差距是否超出种子噪声（Shazeer 2020）。"))
    steps = exp.args.steps or (300 if exp.quick else 600)
    if steps < 1:
        raise SystemExit(f"--steps 必须 >= 1（收到 {steps}）")
    hidden, layers, lr = exp.args.hidden, exp.args.layers, exp.args.lr
    if hidden < 2 * HEADS or hidden % (2 * HEADS) or layers < 1 or not lr > 0:
        raise SystemExit(f"--hidden 须是 {2 * HEADS} 的正整数倍、--layers >= 1、--lr > 0"
                         f"（收到 hidden={hidden}、layers={layers}、lr={lr:g}）")
    text = get_experiment_data("shakespeare")

    runs = {v: {"val_loss": [], "train_loss": [], "val_curves": [], "val_batches": None} for v in VARIANTS}
    params = {}
    for seed in exp.seeds:
        for variant in VARIANTS:
            # 每个变体重新建取批器：同一种子下各变体看到完全相同的训练 batch 顺序和验证 batch（才能按 batch 配对）
            tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
            Experiment.seed_everything(seed)
            config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=layers, n_heads=HEADS,
                               max_seq_len=BLOCK, ffn=variant, ffn_param_matched=True)
            model = LabModel(config).to(exp.device)
            mlp = model.model.layers[0].mlp
            params[variant] = {"intermediate_size": config.intermediate_size,
                               "ffn_per_layer": sum(p.numel() for p in mlp.parameters()), "total": model.num_params()}
            hist = train_model(model, get_batch, steps=steps, lr=lr, eval_batches=8, device=exp.device,
                               desc=f"{variant} seed={seed}")
            if hist["diverged_at"] is not None:
                raise SystemExit(f"{variant}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减小学习率后重试")
            runs[variant]["val_loss"].append(hist["val_loss"][-1])
            runs[variant]["val_batches"] = runs[variant]["val_batches"] or hist["final_val_batches"]  # 第一个种子
            runs[variant]["train_loss"].append(hist["train_loss"])
            runs[variant]["val_curves"].append(hist["val_loss"])
            val_steps = hist["val_steps"]

    stats = {v: mean_std(r["val_loss"]) for v, r in runs.items()}
    ranking = sorted(VARIANTS, key=lambda v: stats[v][0])
    exp.print_table(["ffn", "intermediate", "FFN params / layer", "total params", "final val loss", "rank"],
                    [[v, params[v]["intermediate_size"], params[v]["ffn_per_layer"], params[v]["total"],
                      format_mean_std(runs[v]["val_loss"]), ranking.index(v) + 1] for v in VARIANTS],
                    title=f"Parameter-matched FFN variants, {steps} steps, {len(exp.seeds)} seed(s)")
    exp.save_metrics({
        "steps": steps,
        "model": {"hidden_size": hidden, "num_layers": layers, "n_heads": HEADS, "block_size": BLOCK,
                  "batch_size": BATCH, "lr": lr},
        "params": params, "ranking": ranking,
        "val_loss": {v: {"mean": stats[v][0], "std": stats[v][1], "runs": runs[v]["val_loss"]} for v in VARIANTS},
        "val_batches_first_seed": {v: runs[v]["val_batches"] for v in VARIANTS},
        "val_steps": val_steps,
        "val_curves": {v: [sum(c[i] for c in r["val_curves"]) / len(r["val_curves"]) for i in range(len(val_steps))]
                       for v, r in runs.items()},
    })

    # ---- 图：训练 loss（平滑、种子平均）与验证 loss ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for v, r in runs.items():
        mean_train = [sum(c[i] for c in r["train_loss"]) / len(r["train_loss"]) for i in range(steps)]
        axes[0].plot(range(steps), smooth(mean_train), label=f"{v} ({params[v]['ffn_per_layer']} FFN params/layer)")
        mean_val = [sum(c[i] for c in r["val_curves"]) / len(r["val_curves"]) for i in range(len(val_steps))]
        axes[1].plot(val_steps, mean_val, marker=".", label=v)
    axes[0].set_title("Train loss (10-step moving average)")
    axes[1].set_title(f"Val loss (mean over {len(exp.seeds)} seed(s))")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    exp.save_figure(fig, "exp2_glu_variants.png")

    # ---- 结论（全部由测量算出）----
    exp.conclude("三种 FFN 在参数量完全相同时都能正常训练（loss 有限且低于初始的 ln(vocab)）",
                 all(torch.isfinite(torch.tensor(runs[v]["val_loss"])).all().item() for v in VARIANTS)
                 and all(stats[v][0] < torch.log(torch.tensor(float(tokenizer.vocab_size))).item() for v in VARIANTS),
                 "；".join(f"{v} {stats[v][0]:.4f}" for v in VARIANTS) + f"；ln(vocab)={torch.log(torch.tensor(float(tokenizer.vocab_size))).item():.3f}")
    print(f"\n本次排名（验证 loss 从低到高）：{' < '.join(ranking)}："
          + "；".join(f"{v} {format_mean_std(runs[v]['val_loss'])}" for v in ranking))
    for other in ("gelu", "relu"):
        exp.conclude_verdict(
            f"参数相同时 SwiGLU 的验证 loss 低于 {other.upper()}（Shazeer 2020）",
            compare_runs(runs["swiglu"]["val_loss"], runs[other]["val_loss"], "less",
                         runs["swiglu"]["val_batches"], runs[other]["val_batches"]),
            f"SwiGLU {format_mean_std(runs['swiglu']['val_loss'])} vs {other.upper()} "
            f"{format_mean_std(runs[other]['val_loss'])}；论文里的优势约 0.04（大得多的模型与步数）")
    exp.finish()


if __name__ == "__main__":
    main()
