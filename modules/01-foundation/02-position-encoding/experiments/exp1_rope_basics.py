"""实验 1：RoPE 就是旋转。

用 model/ 里 MiniMind 的 precompute_freqs_cis / apply_rotary_pos_emb：
  1. 画出一对维度 (x_i, x_{i+d/2}) 在不同位置被转过的角度：高频对转得快，低频对转得慢；
  2. 数值验证：旋转后 q·k 只取决于相对距离 m-n（对照：加性的正弦绝对位置编码没有这个性质）；
  3. 数值验证：旋转不改变向量长度；
  4. 画 q·k 随距离的变化：距离越远，平均分数越低（远程衰减），base 越大衰减越慢。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import apply_rotary_pos_emb, precompute_freqs_cis  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.lab_model import sinusoidal_table  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HEAD_DIM = 64
MINIMIND_BASE = 1e6  # MiniMind 的 rope_theta
LLAMA_BASE = 1e4  # 原始 RoPE / Llama-1 的 base


def rotate(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (N, hd) 的向量各自放在 positions[i] 处旋转。apply_rotary_pos_emb 要 (B, T, heads, hd)，这里把 N 当作 T。"""
    x4 = x[None, :, None, :]  # (1, N, 1, hd)
    rotated, _ = apply_rotary_pos_emb(x4, x4, cos[positions], sin[positions])
    return rotated[0, :, 0, :]  # (N, hd)


def relative_position_check(q, k, cos, sin, max_pos, n_pairs, generator):
    """对随机的 (m, n) 对，比较 score(m, n) 与 score(m - n + s, s)：RoPE 下应完全相同。"""
    m = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    n = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    shift = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    lo = torch.minimum(m, n)
    m2, n2 = m - lo + shift, n - lo + shift  # 同样的 m-n，整体平移到别处
    score_a = (rotate(q, m, cos, sin) * rotate(k, n, cos, sin)).sum(-1)
    score_b = (rotate(q, m2, cos, sin) * rotate(k, n2, cos, sin)).sum(-1)
    return (score_a - score_b).abs().max().item(), score_a.abs().mean().item()


def absolute_position_check(q, k, table, max_pos, n_pairs, generator):
    """对照：把正弦位置编码加到 q、k 上（GPT/Transformer 式），同一相对距离在不同绝对位置的分数差多少。"""
    m = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    n = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    shift = torch.randint(0, max_pos, (n_pairs,), generator=generator)
    lo = torch.minimum(m, n)
    m2, n2 = m - lo + shift, n - lo + shift
    score_a = ((q + table[m]) * (k + table[n])).sum(-1)
    score_b = ((q + table[m2]) * (k + table[n2])).sum(-1)
    return (score_a - score_b).abs().max().item(), score_a.abs().mean().item()


def score_vs_distance(base: float, distances: torch.Tensor, n_vectors: int, generator) -> torch.Tensor:
    """q = k（同一个随机向量）放在距离 d 的两处，平均 q·k / |q|² 随 d 的变化（d=0 时为 1）。"""
    cos, sin = precompute_freqs_cis(HEAD_DIM, int(distances.max()) + 1, rope_base=base)
    v = torch.randn(n_vectors, HEAD_DIM, generator=generator)
    zeros = torch.zeros(n_vectors, dtype=torch.long)
    rotated_k = rotate(v, zeros, cos, sin)  # k 在位置 0
    curve = []
    for d in distances:
        rotated_q = rotate(v, zeros + d, cos, sin)  # q 在位置 d
        curve.append(((rotated_q * rotated_k).sum(-1) / v.pow(2).sum(-1)).mean())
    return torch.stack(curve)


def plot_rotations(cos, sin, pairs, positions):
    """每个子图是一对维度：同一个二维向量在位置 0..P 被旋转到哪里。"""
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.4 * len(pairs), 4.4), layout="constrained")
    vec = torch.zeros(1, HEAD_DIM)
    for ax, i in zip(axes, pairs):
        vec.zero_()
        vec[0, i], vec[0, i + HEAD_DIM // 2] = 1.0, 0.3  # 只在第 i 对上有分量
        colors = plt.cm.viridis(np.linspace(0, 1, len(positions)))
        for color, pos in zip(colors, positions):
            r = rotate(vec, torch.tensor([pos]), cos, sin)[0]
            x, y = r[i].item(), r[i + HEAD_DIM // 2].item()
            ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
            ax.text(1.12 * x, 1.12 * y, str(pos), fontsize=8, ha="center", va="center", color=color)
        theta = 1.0 / (MINIMIND_BASE ** (2 * i / HEAD_DIM))
        ax.set_title(f"pair {i}: theta={theta:.3g} rad/pos")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_xlabel(f"dim {i}")
        ax.set_ylabel(f"dim {i + HEAD_DIM // 2}")
    fig.suptitle("RoPE rotates each 2-D pair by position * theta_i (labels = position)")
    return fig


def main():
    exp = Experiment(__file__, description=(
        "位置编码实验 1：RoPE 把每对维度按 位置×频率 旋转；验证 q·k 只依赖相对距离、旋转保持长度，\n"
        "并画出 q·k 随距离衰减的曲线（对比 base=1e4 与 MiniMind 的 1e6）。"))
    n_pairs, n_vectors, max_dist = (2000, 256, 2048) if exp.quick else (50000, 2048, 16384)
    # 相对位置检查的位置范围固定为 [0, 4096)：float32 里角度 m·θ 的舍入误差随 m 增大（约 m × 6e-8 弧度），
    # 位置越大，"同一相对距离"的两次计算之间的数值差也越大——这是浮点精度，不是 RoPE 的数学
    max_pos = 4096
    gen = torch.Generator().manual_seed(exp.seed)
    set_style()

    # 1. 旋转图
    cos, sin = precompute_freqs_cis(HEAD_DIM, max_pos, rope_base=MINIMIND_BASE)
    exp.save_figure(plot_rotations(cos, sin, pairs=[0, 4, 12], positions=list(range(9))), "exp1_rope_rotations.png")

    # 2. 相对位置性质（RoPE）vs 绝对位置编码
    q = torch.randn(n_pairs, HEAD_DIM, generator=gen)
    k = torch.randn(n_pairs, HEAD_DIM, generator=gen)
    rope_err, rope_scale = relative_position_check(q, k, cos, sin, max_pos // 2, n_pairs, gen)
    table = sinusoidal_table(max_pos, HEAD_DIM)
    abs_err, abs_scale = absolute_position_check(q, k, table, max_pos // 2, n_pairs, gen)

    # 3. 长度不变
    positions = torch.randint(0, max_pos, (n_pairs,), generator=gen)
    rotated = rotate(q, positions, cos, sin)
    norm_err = ((rotated.norm(dim=-1) - q.norm(dim=-1)).abs() / q.norm(dim=-1)).max().item()

    exp.print_table(["check", "max |difference|", "typical |score|"], [
        ["RoPE: score(m,n) vs score(m+s,n+s)", rope_err, rope_scale],
        ["additive sinusoidal: same comparison", abs_err, abs_scale],
        ["RoPE: relative change of |q|", norm_err, "-"],
    ], title=f"Relative-position property over {n_pairs} random (m, n, shift) triples, head_dim={HEAD_DIM}")

    # 4. 分数随距离的变化
    distances = torch.unique(torch.cat([torch.arange(0, 64), torch.logspace(np.log10(64), np.log10(max_dist), 60).long()]))
    curves = {base: score_vs_distance(base, distances, n_vectors, gen) for base in (LLAMA_BASE, MINIMIND_BASE)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for base, curve in curves.items():
        ax.plot(distances.numpy(), curve.numpy(), label=f"base={base:.0e}")
    ax.set_xscale("symlog", linthresh=16)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("relative distance m - n")
    ax.set_ylabel("mean q.k / |q|^2  (q = k)")
    ax.set_title("RoPE long-range decay: same vector, farther apart -> lower score")
    ax.legend()
    exp.save_figure(fig, "exp1_rope_score_vs_distance.png")

    def mean_score(curve, lo, hi):
        sel = (distances >= lo) & (distances <= hi)
        return curve[sel].mean().item()

    near, far = (1, 8), (max_dist // 4, max_dist)
    summary = {f"{base:.0e}": {"near": mean_score(c, *near), "far": mean_score(c, *far)} for base, c in curves.items()}
    exp.print_table(["base", f"mean score, d in {list(near)}", f"mean score, d in {list(far)}"],
                    [[b, v["near"], v["far"]] for b, v in summary.items()], title="Score vs distance (d=0 gives 1.0)")
    exp.save_metrics({
        "head_dim": HEAD_DIM, "n_pairs": n_pairs, "max_pos": max_pos,
        "rope_relative_max_abs_diff": rope_err, "absolute_relative_max_abs_diff": abs_err,
        "typical_abs_score": rope_scale, "rope_max_relative_norm_change": norm_err,
        "score_vs_distance": {f"{b:.0e}": {"distance": distances.tolist(), "score": c.tolist()} for b, c in curves.items()},
        "score_summary": summary,
    })

    # ---- 结论 ----
    exp.conclude("RoPE 下注意力分数只取决于相对距离：同一 m-n 平移到别处，分数只差 float32 舍入误差（相对差 < 1e-3）",
                 rope_err / rope_scale < 1e-3,
                 f"{n_pairs} 组的最大差 {rope_err:.2e}，分数本身的量级约 {rope_scale:.2f}（相对 {rope_err / rope_scale:.1e}）")
    exp.conclude("加性的正弦绝对位置编码没有这个性质：同一相对距离、不同绝对位置的分数明显不同（差 > 0.1）",
                 abs_err > 0.1, f"最大差 {abs_err:.3g}，是 RoPE 的 {abs_err / max(rope_err, 1e-12):.3g} 倍")
    exp.conclude("旋转不改变向量长度（相对变化 < 1e-5）", norm_err < 1e-5, f"最大相对变化 {norm_err:.2e}")
    low, high = summary[f"{LLAMA_BASE:.0e}"], summary[f"{MINIMIND_BASE:.0e}"]
    exp.conclude("远程衰减：同一向量相距越远，平均分数越低（两种 base 下远处的平均分数都低于近处）",
                 low["far"] < low["near"] and high["far"] < high["near"],
                 f"base=1e4：近 {low['near']:.3f} → 远 {low['far']:.3f}；base=1e6：近 {high['near']:.3f} → 远 {high['far']:.3f}")
    exp.conclude(f"base 越大衰减越慢：在 d∈{list(far)}，base=1e6 的平均分数高于 base=1e4（更适合长上下文）",
                 high["far"] > low["far"], f"{high['far']:.3f} vs {low['far']:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
