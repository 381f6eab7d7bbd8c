"""实验 3：为什么 RoPE 要用一整组频率？（解析实验，不训练，几秒钟）

  1. 混叠：只用一个频率 θ=2π/P 时，相距一个周期 P 的两个位置转角完全相同，注意力分数也完全相同——
     模型分不清距离 d 和 d+P；MiniMind 的 32 个频率放在一起，整个 32K 上下文里没有两个距离的旋转相同。
  2. 波长：第 i 对维度转一圈要 2π/θ_i 个位置。画出 head_dim=64 时 base=1e4 与 MiniMind 的 1e6 的波长，
     对照 MiniMind YaRN 配置的原长度 2048 与最大位置 32768：有多少对维度在上下文里连一圈都转不完。
  3. 远程衰减的上界（RoFormer 3.4.3 节）：(1/d)·Σ_j |S_j|，S_j = Σ_{k<j} e^{i·r·θ_k}，画它随相对距离 r 的变化。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, apply_rotary_pos_emb, precompute_freqs_cis  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

HEAD_DIM = 64
MINIMIND_BASE = 1e6
LLAMA_BASE = 1e4
PERIOD = 16  # 单频率实验的周期（位置数）


def rope_frequencies(base: float, dim: int = HEAD_DIM) -> np.ndarray:
    """θ_i = base^(-2i/dim)，i = 0..dim/2-1（与 precompute_freqs_cis 相同的公式，float64）。"""
    return base ** (-np.arange(0, dim, 2) / dim)


def scores(q: torch.Tensor, k: torch.Tensor, m: torch.Tensor, n: torch.Tensor, cos, sin) -> torch.Tensor:
    """q、k: (N, hd)，分别放在位置 m、n: (N,)，用 MiniMind 的 apply_rotary_pos_emb 旋转后求点积：(N,)。"""
    q_rot, _ = apply_rotary_pos_emb(q[None, :, None, :], q[None, :, None, :], cos[m], sin[m])  # (1, N, 1, hd)
    _, k_rot = apply_rotary_pos_emb(k[None, :, None, :], k[None, :, None, :], cos[n], sin[n])
    return (q_rot * k_rot).sum(-1)[0, :, 0]


def rotation_distance(freqs: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """位置 d 与位置 0 的旋转有多不同：sqrt(mean_i |e^{i·d·θ_i} - 1|²)，0 表示旋转完全相同（分不清）。"""
    angles = np.outer(distances, freqs)  # (D, n_freqs)
    return np.sqrt((2 - 2 * np.cos(angles)).mean(axis=1))


def decay_bound(freqs: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """RoFormer 的远程衰减上界 (1/d)·Σ_{j=1}^{d/2} |S_j|，S_j = Σ_{k<j} e^{i·r·θ_k}；d = 2·len(freqs)。"""
    partial_sums = np.cumsum(np.exp(1j * np.outer(distances, freqs)), axis=1)  # (R, d/2)：S_1..S_{d/2}
    return np.abs(partial_sums).sum(axis=1) / (2 * len(freqs))


def main():
    exp = Experiment(__file__, description=(
        "位置编码实验 3（解析）：单一频率会混叠（相距一个周期的位置分不清），多频率不会；\n"
        "各维度的波长 vs 上下文长度（base 1e4 vs 1e6）；RoFormer 远程衰减上界随距离的变化。"))
    n_vectors, max_distance = (512, 32768) if exp.quick else (4096, 32768)
    gen = torch.Generator().manual_seed(exp.seed)
    set_style()

    # ---- 1. 混叠 ----
    # 单频率：一对维度（hd=2），θ = 2π/P；cos/sin 表按 apply_rotary_pos_emb 的"两半各一份"布局，float64
    theta = 2 * np.pi / PERIOD
    angles = torch.arange(4 * PERIOD, dtype=torch.float64)[:, None] * theta  # (4P, 1)
    cos1, sin1 = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)  # (4P, 2)
    q1 = torch.randn(n_vectors, 2, generator=gen, dtype=torch.float64)
    k1 = torch.randn(n_vectors, 2, generator=gen, dtype=torch.float64)
    m = torch.randint(0, PERIOD, (n_vectors,), generator=gen)
    n = torch.randint(0, PERIOD, (n_vectors,), generator=gen)
    single_a, single_b = scores(q1, k1, m, n, cos1, sin1), scores(q1, k1, m + PERIOD, n, cos1, sin1)
    single_diff = (single_a - single_b).abs().max().item()
    single_rot_diff = (cos1[PERIOD] - cos1[0]).abs().max().item() + (sin1[PERIOD] - sin1[0]).abs().max().item()

    # 多频率：MiniMind 的 32 个频率（hd=64, base=1e6），同样把 q 往后挪 P 个位置
    cos, sin = precompute_freqs_cis(HEAD_DIM, 4 * PERIOD, rope_base=MINIMIND_BASE)
    q = torch.randn(n_vectors, HEAD_DIM, generator=gen)
    k = torch.randn(n_vectors, HEAD_DIM, generator=gen)
    multi_a, multi_b = scores(q, k, m, n, cos, sin), scores(q, k, m + PERIOD, n, cos, sin)
    multi_rel_diff = ((multi_a - multi_b).abs().mean() / multi_a.abs().mean()).item()

    distances = np.arange(1, max_distance)
    minimind_freqs = rope_frequencies(MINIMIND_BASE)
    curves = {
        f"single frequency, period {PERIOD}": rotation_distance(np.array([theta]), distances),
        "MiniMind pair 0 only (theta=1)": rotation_distance(minimind_freqs[:1], distances),
        "all 32 MiniMind frequencies": rotation_distance(minimind_freqs, distances),
    }
    closest = {name: (int(distances[c.argmin()]), float(c.min())) for name, c in curves.items()}
    exp.print_table(["rotation set", "closest distance to 0 (d >= 1)", "rotation distance there (0 = identical)"],
                    [[name, d, v] for name, (d, v) in closest.items()],
                    title=f"Aliasing: which d in [1, {max_distance}) looks most like d = 0?")
    exp.print_table(["check", "value"], [
        [f"single frequency: max |score(m,n) - score(m+{PERIOD},n)|", single_diff],
        ["single frequency: max |R(P) - R(0)| entries", single_rot_diff],
        [f"64-dim MiniMind RoPE: mean |score(m,n) - score(m+{PERIOD},n)| / mean |score|", multi_rel_diff],
    ], title=f"Scores one period ({PERIOD} positions) apart, {n_vectors} random (q, k, m, n)")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    shown = distances <= 100  # 前 100 个距离就看得清周期；最小值是在整个 [1, max_distance) 上找的
    for name, c in curves.items():
        ax.plot(distances[shown], c[shown], "o-", ms=2, lw=1, label=f"{name}: min {closest[name][1]:.2g} at d={closest[name][0]}")
    ax.set_xlabel("relative distance d")
    ax.set_ylabel("rotation distance to d = 0")
    ax.set_title("Single frequency aliases (returns to 0); the multi-frequency set never does")
    ax.legend(fontsize=8)
    exp.save_figure(fig, "exp3_aliasing.png")

    # ---- 2. 波长 vs 上下文 ----
    yarn = MiniMindConfig(inference_rope_scaling=True).rope_scaling
    train_ctx, max_ctx = yarn["original_max_position_embeddings"], MiniMindConfig().max_position_embeddings
    wavelengths = {base: 2 * np.pi / rope_frequencies(base) for base in (LLAMA_BASE, MINIMIND_BASE)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for base, wl in wavelengths.items():
        ax.plot(np.arange(len(wl)), wl, "o-", ms=3, label=f"base={base:.0e}")
    for ctx, label in ((train_ctx, "YaRN original length"), (max_ctx, "max_position_embeddings")):
        ax.axhline(ctx, color="gray", ls="--", lw=1)
        ax.text(0, ctx * 1.15, f"{label} = {ctx}", fontsize=8, color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("dimension pair i (head_dim = 64)")
    ax.set_ylabel("wavelength 2*pi/theta_i (positions)")
    ax.set_title("RoPE wavelengths: pairs above a line never finish one turn within that context")
    ax.legend()
    exp.save_figure(fig, "exp3_wavelengths.png")
    incomplete = {f"{b:.0e}": {str(ctx): int((wl > ctx).sum()) for ctx in (train_ctx, max_ctx)}
                  for b, wl in wavelengths.items()}
    exp.print_table(["base", "shortest wavelength", "longest wavelength", f"pairs with wavelength > {train_ctx}",
                     f"pairs with wavelength > {max_ctx}"],
                    [[f"{b:.0e}", wl.min(), wl.max(), incomplete[f"{b:.0e}"][str(train_ctx)],
                      incomplete[f"{b:.0e}"][str(max_ctx)]] for b, wl in wavelengths.items()],
                    title=f"Wavelengths of the {HEAD_DIM // 2} dimension pairs")

    # ---- 3. 远程衰减上界 ----
    r = np.unique(np.concatenate([np.arange(0, 64), np.logspace(np.log10(64), np.log10(max_distance), 300).astype(int)]))
    bounds = {base: decay_bound(rope_frequencies(base), r) for base in (LLAMA_BASE, MINIMIND_BASE)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for base, b in bounds.items():
        ax.plot(r, b, lw=1, label=f"base={base:.0e}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("relative distance r = m - n")
    ax.set_ylabel("(1/d) * sum_j |S_j|")
    ax.set_title("RoFormer's long-term decay bound (head_dim = 64)")
    ax.legend()
    exp.save_figure(fig, "exp3_decay_bound.png")

    def mean_bound(b, lo, hi):
        return float(b[(r >= lo) & (r <= hi)].mean())

    near, far = (1, 16), (4096, max_distance)
    decay = {f"{base:.0e}": {"r=0": float(b[0]), "near": mean_bound(b, *near), "far": mean_bound(b, *far)}
             for base, b in bounds.items()}
    exp.print_table(["base", "bound at r=0", f"mean bound, r in {list(near)}", f"mean bound, r in {list(far)}"],
                    [[b, v["r=0"], v["near"], v["far"]] for b, v in decay.items()], title="Long-term decay bound")

    exp.save_metrics({
        "head_dim": HEAD_DIM, "period": PERIOD, "n_vectors": n_vectors, "max_distance": max_distance,
        "single_frequency_max_score_diff": single_diff, "single_frequency_rotation_diff": single_rot_diff,
        "single_frequency_typical_abs_score": single_a.abs().mean().item(),
        "multi_frequency_relative_score_diff": multi_rel_diff,
        "closest_to_zero": {name: {"distance": d, "rotation_distance": v} for name, (d, v) in closest.items()},
        "wavelengths": {f"{b:.0e}": wl.tolist() for b, wl in wavelengths.items()},
        "context": {"yarn_original": train_ctx, "max_position_embeddings": max_ctx},
        "pairs_longer_than_context": incomplete,
        "decay_bound": {f"{b:.0e}": {"r": r.tolist(), "bound": v.tolist()} for b, v in bounds.items()},
        "decay_summary": decay,
    })

    # ---- 结论 ----
    multi_name = "all 32 MiniMind frequencies"
    exp.conclude(f"单一频率会混叠：相距一个周期（{PERIOD}）的两个位置旋转相同、分数相同（差 < 1e-9，float64 舍入）",
                 single_diff < 1e-9 and single_rot_diff < 1e-9,
                 f"分数最大差 {single_diff:.1e}（分数量级 {single_a.abs().mean().item():.2f}），旋转矩阵元素最大差 {single_rot_diff:.1e}")
    exp.conclude(f"多频率分得清：MiniMind 的 64 维 RoPE 下，把 q 挪 {PERIOD} 个位置，分数平均变化 > 10%",
                 multi_rel_diff > 0.1, f"平均相对变化 {multi_rel_diff:.2f}")
    exp.conclude(f"在 [1, {max_distance}) 内，32 个频率的组合没有任何距离与 d=0 的旋转接近（旋转距离 > 0.1），单一频率则会回到 0",
                 closest[multi_name][1] > 0.1 and closest[f"single frequency, period {PERIOD}"][1] < 1e-9,
                 "；".join(f"{name}：最接近的 d={d}，距离 {v:.2e}" for name, (d, v) in closest.items()))
    n_low, n_high = incomplete["1e+04"][str(train_ctx)], incomplete["1e+06"][str(train_ctx)]
    exp.conclude(f"base 越大，在 {train_ctx} 个位置内转不完一圈的维度对越多（base=1e6 多于 1e4）",
                 n_high > n_low, f"base=1e4：{n_low}/{HEAD_DIM // 2} 对；base=1e6：{n_high}/{HEAD_DIM // 2} 对")
    lo, hi = decay["1e+04"], decay["1e+06"]
    exp.conclude("远程衰减：上界随相对距离变小（两种 base 下，远处的平均上界都低于近处）",
                 lo["far"] < lo["near"] and hi["far"] < hi["near"],
                 f"base=1e4：{lo['near']:.2f} → {lo['far']:.2f}；base=1e6：{hi['near']:.2f} → {hi['far']:.2f}（r=0 时 {lo['r=0']:.2f}）")
    exp.conclude(f"base 越大衰减越慢：r ∈ {list(far)} 时 base=1e6 的上界高于 base=1e4",
                 hi["far"] > lo["far"], f"{hi['far']:.2f} vs {lo['far']:.2f}")
    exp.finish()


if __name__ == "__main__":
    main()
