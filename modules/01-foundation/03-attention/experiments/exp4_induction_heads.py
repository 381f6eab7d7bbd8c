"""实验 4：注意力怎样从上下文里"抄"答案？——induction head（归纳头）

数据：一段长度 L 的随机 token（没有任何规律）后面紧跟它的原样重复，总长 2L；每个 batch 的 L 随机取
[L_MIN, L_MAX]，所以"往回数固定 L-1 格去抄"这种纯位置的捷径不可靠。第一段无法预测（loss ≈ ln V），
第二段只要学会"找到当前 token 上一次出现的位置，抄它后面那个 token"就能预测得几乎完美。

模型：只有注意力、没有 FFN 的 LabModel（其余开关 = MiniMind：RMSNorm Pre-Norm、RoPE），1 层 vs 2 层，
同样的步数、学习率和种子。测量：
1. 每个位置的 loss：第一段 vs 重复段，"上下文复制收益" = 第一段 loss − 重复段 loss；
2. 每个头的 previous-token score（注意位置 t−1 的平均权重）和 induction score
   （重复段里注意位置 t−L+1、即上一次出现之后那个 token 的平均权重）。
完整模式另跑一个对照：训练时 L 固定为 24 的 1 层模型——此时位置捷径可用，看单层能否只靠 RoPE 抄出来。
Olsson et al. 2022 的说法：第 1 层的"前一 token 头"+ 第 2 层的 induction 头（K-composition）才能完成这件事。
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, record_attention  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import plot_attention_heatmap, set_style  # noqa: E402

VOCAB, L_MIN, L_MAX, EVAL_L = 48, 16, 32, 24
BATCH, HIDDEN, N_HEADS, LR = 32, 64, 4, 3e-3
EVAL_SEQS = 256
# 变体名 → (层数, 训练时固定的 L；None = 每个 batch 在 [L_MIN, L_MAX] 里随机取)
VARIANTS = {"1_layers": (1, None), "2_layers": (2, None)}
FIXED_L_CONTROL = {"1_layer_fixed_L": (1, EVAL_L)}  # 只在完整模式跑：L 固定时位置捷径可用
LABELS = {"1_layers": "1 layer", "2_layers": "2 layers", "1_layer_fixed_L": f"1 layer, trained with fixed L={EVAL_L}"}


def repeated_sequences(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """n 条"随机段 + 原样重复"的序列 → (n, 2*length)。"""
    segment = torch.randint(0, VOCAB, (n, length), generator=generator)  # (n, L)
    return torch.cat([segment, segment], dim=1)  # (n, 2L)


def make_get_batch(seed: int, device, fixed_length: int | None = None):
    """每次调用都生成新的随机序列（种子固定的生成器 → 可复现）；L 每个 batch 随机取，或固定为 fixed_length。"""
    generator = torch.Generator().manual_seed(seed)

    def get_batch(split):
        length = fixed_length or int(torch.randint(L_MIN, L_MAX + 1, (1,), generator=generator))
        x = repeated_sequences(BATCH, length, generator).to(device)  # (B, 2L)
        return x, x  # labels = input_ids，LabModel 内部右移一位

    return get_batch


def per_position_loss(model: LabModel, x: torch.Tensor) -> torch.Tensor:
    """x: (N, 2L) → (2L-1,)：第 i 项是"看到位置 0..i 之后预测位置 i+1"的平均交叉熵。"""
    with torch.no_grad():
        logits = model(x).logits  # (N, 2L, V)
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")  # (N, 2L-1)
    return loss.mean(dim=0).cpu()


def head_scores(weights: torch.Tensor, length: int) -> tuple[list[float], list[float]]:
    """weights: (N, nh, 2L, 2L) → 每个头的 (previous-token score, induction score)。

    previous-token：所有 t ≥ 1 上 w[t, t-1] 的平均；induction：重复段 t ∈ [L, 2L) 上 w[t, t-L+1] 的平均
    （t 处的 token 上一次出现在 t-L，它后面那个 token 在 t-L+1，正是 t+1 处该预测的答案）。
    """
    T = weights.shape[-1]
    t = torch.arange(1, T)
    prev = weights[:, :, t, t - 1].mean(dim=(0, 2))  # (nh,)
    t = torch.arange(length, T)
    induction = weights[:, :, t, t - length + 1].mean(dim=(0, 2))  # (nh,)
    return prev.tolist(), induction.tolist()


def main():
    exp = Experiment(__file__, description=(
        "注意力实验 4：随机序列重复一遍，1 层 vs 2 层纯注意力模型能否从上下文里把它抄出来；\n"
        "测每个位置的 loss、每个头的 previous-token score 与 induction score。"))
    device = exp.device
    steps = 2500 if exp.quick else 3000
    eval_x = repeated_sequences(EVAL_SEQS, EVAL_L, torch.Generator().manual_seed(exp.seed + 10_000)).to(device)
    L = EVAL_L

    variants = VARIANTS if exp.quick else {**VARIANTS, **FIXED_L_CONTROL}
    runs = {v: [] for v in variants}  # 变体 → 每个种子一条记录
    curves = {v: [] for v in variants}  # 变体 → 每个种子的逐位置 loss
    train_curves = {}
    example_attn = None  # 第一个种子的 2 层模型在第一条评估序列上的注意力
    for seed in exp.seeds:
        for v, (n_layers, fixed_length) in variants.items():
            Experiment.seed_everything(seed)
            model = LabModel(LabConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=n_layers, n_heads=N_HEADS,
                                       ffn="none", max_seq_len=2 * L_MAX)).to(device)
            hist = train_model(model, make_get_batch(seed, device, fixed_length), steps=steps, lr=LR,
                               warmup_steps=steps // 10, eval_every=steps, eval_batches=2, device=device,
                               desc=f"{LABELS[v]} seed {seed}")
            model.eval()
            pos_loss = per_position_loss(model, eval_x)  # (2L-1,)
            first = pos_loss[:L - 1].mean().item()  # 预测第一段的 token 1..L-1
            repeat = pos_loss[L:].mean().item()  # 预测重复段的 token L+1..2L-1（位置 L 的首个重复 token 无从得知）
            with torch.no_grad(), record_attention(model) as attn:
                model(eval_x)
            scores = {layer: dict(zip(("prev_token", "induction"), head_scores(w.cpu(), L))) for layer, w in attn.items()}
            runs[v].append({"seed": seed, "first_half_loss": first, "repeat_loss": repeat, "gain": first - repeat,
                            "head_scores": scores, "final_train_loss": hist["train_loss"][-1],
                            "params": model.num_params()})
            curves[v].append(pos_loss.tolist())
            if seed == exp.seed:
                train_curves[v] = hist["train_loss"]
                if v == "2_layers":
                    example_attn = {layer: w[0].cpu() for layer, w in attn.items()}  # (nh, 2L, 2L)
            print(f"  seed {seed} | {LABELS[v]}: first half {first:.3f}, repeat {repeat:.3f}, "
                  f"gain {first - repeat:.3f}", flush=True)

    # ---- 表 ----
    ln_v = math.log(VOCAB)
    rows = [[LABELS[v], runs[v][0]["params"], format_mean_std([r["first_half_loss"] for r in runs[v]], 3),
             format_mean_std([r["repeat_loss"] for r in runs[v]], 3), format_mean_std([r["gain"] for r in runs[v]], 3)]
            for v in variants]
    exp.print_table(["model", "params", "first-half loss", "repeat loss", "copy gain"], rows,
                    title=f"Attention-only, hidden {HIDDEN}, {N_HEADS} heads, {steps} steps; eval L={L}, ln V={ln_v:.3f}")

    def best(v, layer, kind):  # 每个种子里该层得分最高的头：[(head, score)]
        out = []
        for r in runs[v]:
            s = r["head_scores"][layer][kind]
            out.append((int(np.argmax(s)), max(s)))
        return out

    score_rows = []
    for v, (n_layers, _) in variants.items():
        for li in range(n_layers):
            layer = f"layers.{li}"
            for kind in ("prev_token", "induction"):
                b = best(v, layer, kind)
                score_rows.append([LABELS[v], layer, kind, ",".join(str(h) for h, _ in b),
                                   format_mean_std([s for _, s in b], 3)])
    exp.print_table(["model", "layer", "score", "best head per seed", "best score"], score_rows,
                    title="Best head per layer: previous-token score and induction score")

    # ---- 图 1：逐位置 loss + 训练曲线 ----
    set_style()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    positions = np.arange(1, 2 * L)  # 被预测 token 的位置
    for v in variants:
        c = np.array(curves[v])  # (seeds, 2L-1)
        m, s = c.mean(0), c.std(0)
        style = "--" if v in FIXED_L_CONTROL else "-"
        ax.plot(positions, m, style, marker=".", label=LABELS[v])
        ax.fill_between(positions, m - s, m + s, alpha=0.2)
        ax2.plot(train_curves[v], style, label=LABELS[v], alpha=0.8)
    ax.axhline(ln_v, color="gray", ls="--", label=f"ln V = {ln_v:.2f} (uniform guess)")
    ax.axvline(L - 0.5, color="black", ls=":", label="repeat starts")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"Per-position loss on [random {L} tokens][same {L} tokens again]")
    ax.legend(fontsize=8)
    ax2.axhline(ln_v, color="gray", ls="--")
    ax2.set_xlabel("step")
    ax2.set_ylabel("train loss (all positions)")
    ax2.set_title(f"Training loss, seed {exp.seed}")
    ax2.legend(fontsize=8)
    exp.save_figure(fig, "exp4_per_position_loss.png")

    # ---- 图 2：2 层模型里最好的前一 token 头与 induction 头 ----
    seed0 = runs['2_layers'][0]["head_scores"]
    prev_head = int(np.argmax(seed0["layers.0"]["prev_token"]))
    ind_head = int(np.argmax(seed0["layers.1"]["induction"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    plot_attention_heatmap(example_attn["layers.0"][prev_head], ax=axes[0],
                           title=f"layer 1 (layers.0) head {prev_head}: previous-token score "
                                 f"{seed0['layers.0']['prev_token'][prev_head]:.2f}")
    plot_attention_heatmap(example_attn["layers.1"][ind_head], ax=axes[1],
                           title=f"layer 2 (layers.1) head {ind_head}: induction score "
                                 f"{seed0['layers.1']['induction'][ind_head]:.2f}")
    for a in axes:
        a.axhline(L - 0.5, color="white", lw=0.6, ls=":")
        a.axvline(L - 0.5, color="white", lw=0.6, ls=":")
    exp.save_figure(fig, "exp4_induction_heatmaps.png")

    exp.save_metrics({"steps": steps, "lr": LR, "vocab": VOCAB, "train_L_range": [L_MIN, L_MAX], "eval_L": L,
                      "ln_vocab": ln_v, "runs": runs, "per_position_loss": curves})

    # ---- 结论（全部由上面的测量算出）----
    gain = {v: mean_std([r["gain"] for r in runs[v]]) for v in variants}
    repeat = {v: mean_std([r["repeat_loss"] for r in runs[v]]) for v in variants}
    def fmt(v, key):  # 某变体各种子的某项测量，格式化成 mean ± std
        return format_mean_std([r[key] for r in runs[v]], 3)

    exp.conclude("2 层模型的上下文复制收益比 1 层模型大 1 nat 以上",
                 gain["2_layers"][0] > gain["1_layers"][0] + 1.0,
                 f"第一段 − 重复段：2 层 {fmt('2_layers', 'gain')} nats，1 层 {fmt('1_layers', 'gain')} nats"
                 f"（ln V = {ln_v:.3f}）")
    exp.conclude("2 层模型把重复段的 loss 压到 0.5 nat 以下（几乎完美地抄写）",
                 repeat["2_layers"][0] < 0.5,
                 f"重复段 loss：2 层 {fmt('2_layers', 'repeat_loss')}，1 层 {fmt('1_layers', 'repeat_loss')}")
    one_layer_induction = [s for _, s in best("1_layers", "layers.0", "induction")]
    exp.conclude("1 层模型在重复段上也并非毫无收益（收益 > 0.3 nat：RoPE 让它能按相对距离模糊地往回抄）",
                 gain["1_layers"][0] > 0.3,
                 f"1 层收益 {fmt('1_layers', 'gain')} nats；它的最佳 induction score "
                 f"{format_mean_std(one_layer_induction, 3)}")
    prev_best = [s for _, s in best("2_layers", "layers.0", "prev_token")]
    ind_best = [s for _, s in best("2_layers", "layers.1", "induction")]
    # 前一 token 的功能可能由一个头承担，也可能分摊在两个头上（各 0.4 左右）：只看"最佳单头 > 0.5"随种子时成时不成
    # （issue 19）。K-composition 要的是"前一个 token 的信息进了残差流"，所以量第 1 层各头注意 t−1 的权重之和；
    # 平摊注意力时这个和是 n_heads × 平均 1/(t+1)，1 层模型（用不上前一 token 头）就停在这附近
    uniform_sum = N_HEADS * float(np.mean([1 / (t + 1) for t in range(1, 2 * L)]))

    def prev_sums(v, layer):
        return [sum(r["head_scores"][layer]["prev_token"]) for r in runs[v]]

    prev_sum, one_layer_sum = prev_sums("2_layers", "layers.0"), prev_sums("1_layers", "layers.0")
    exp.conclude(f"2 层模型的第 1 层把前一个 token 搬进残差流：每个种子里第 1 层各头注意 t−1 的权重之和 > 0.5"
                 f"（平摊注意力时 {uniform_sum:.2f}），而 1 层模型的这个和 < 0.5",
                 min(prev_sum) > 0.5 and max(one_layer_sum) < 0.5,
                 f"第 1 层权重之和：2 层模型 {format_mean_std(prev_sum, 3)}，1 层模型 {format_mean_std(one_layer_sum, 3)}，"
                 f"2 层模型的第 2 层 {format_mean_std(prev_sums('2_layers', 'layers.1'), 3)}；"
                 f"最佳单头的 previous-token score {format_mean_std(prev_best, 3)}")
    exp.conclude("2 层模型的第 2 层有 induction 头（最佳 induction score > 0.5）",
                 mean_std(ind_best)[0] > 0.5, f"各种子的最佳 induction score：{format_mean_std(ind_best, 3)}")
    if "1_layer_fixed_L" in runs:
        fixed_induction = [s for _, s in best("1_layer_fixed_L", "layers.0", "induction")]
        exp.conclude(f"对照：训练时 L 固定为 {EVAL_L}，1 层模型也能把重复段 loss 压到 0.5 nat 以下（纯位置捷径）",
                     repeat["1_layer_fixed_L"][0] < 0.5,
                     f"重复段 loss：固定 L 的 1 层 {fmt('1_layer_fixed_L', 'repeat_loss')}，"
                     f"随机 L 的 1 层 {fmt('1_layers', 'repeat_loss')}；"
                     f"固定 L 的 1 层最佳 induction score {format_mean_std(fixed_induction, 3)}")
    exp.finish()


if __name__ == "__main__":
    main()
