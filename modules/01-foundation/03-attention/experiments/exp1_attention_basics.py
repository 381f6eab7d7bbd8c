"""实验 1：缩放点积注意力，一步一步算。

在一句 6 个词的小句子上，用单头注意力逐步计算
    Q, K, V → scores = QKᵀ → 除以 √d → 因果 mask → softmax 权重（热力图）→ 输出 = 权重 · V
再把同样的权重装进 model/ 里 MiniMind 的 Attention，验证逐步计算的结果与它完全一致。
最后说明为什么要除以 √d：维度越大，不缩放的分数方差越大，softmax 越接近 one-hot。
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.model_minimind import (  # noqa: E402
    Attention,
    MiniMindConfig,
    apply_rotary_pos_emb,
    precompute_freqs_cis,
)
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import plot_attention_heatmap, set_style  # noqa: E402

SENTENCE = "the cat sat on the mat".split()
D_MODEL = 16  # 词向量维度；单头，所以 head_dim 也是 16


def show(name: str, t: torch.Tensor):
    """打印一个小矩阵（保留 2 位小数）。"""
    print(f"\n{name}  shape={tuple(t.shape)}")
    for row in t.tolist():
        print("  " + " ".join(f"{v:7.2f}" for v in row))


def step_by_step(x, w_q, w_k, w_v, w_o, cos=None, sin=None, verbose=False):
    """x: (T, d)。返回 (输出 (T, d), 注意力权重 (T, T))。cos/sin 给出时先对 Q、K 做 RoPE。"""
    T, d = x.shape
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T  # 各 (T, d)：每个词"要找什么 / 能被怎样找到 / 带来什么内容"
    if cos is not None:
        q4, k4 = apply_rotary_pos_emb(q[None, :, None], k[None, :, None], cos, sin)
        q, k = q4[0, :, 0], k4[0, :, 0]
    scores = q @ k.T  # (T, T)：第 i 行 = 第 i 个词对每个词的匹配程度
    scaled = scores / math.sqrt(d)  # 除以 √d，把方差拉回 1 附近
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # 上三角 = 未来
    masked = scaled.masked_fill(mask, float("-inf"))  # 因果：看不到后面的词
    weights = masked.softmax(dim=-1)  # (T, T)，每行和为 1
    out = weights @ v  # (T, d)：按权重混合 V
    if verbose:
        show("Q = X Wq^T", q)
        show("scores = Q K^T", scores)
        show(f"scaled = scores / sqrt({d})", scaled)
        show("masked (future = -inf)", masked)
        show("weights = softmax(masked)", weights)
        show("output = weights V", out)
    return out @ w_o.T, weights


def softmax_saturation(dims, n_samples, generator):
    """q、k ~ N(0, I_d)，一个 query 对 16 个 key：不缩放 / 缩放时 softmax 的最大权重与熵。"""
    rows = {}
    for d in dims:
        q = torch.randn(n_samples, 1, d, generator=generator)
        k = torch.randn(n_samples, 16, d, generator=generator)
        raw = (q @ k.transpose(1, 2)).squeeze(1)  # (N, 16)
        stats = {}
        for name, scores in (("unscaled", raw), ("scaled", raw / math.sqrt(d))):
            w = scores.softmax(-1)
            entropy = -(w * w.clamp_min(1e-12).log()).sum(-1)
            stats[name] = {"score_std": scores.std().item(), "max_weight": w.max(-1).values.mean().item(),
                           "entropy": entropy.mean().item()}
        rows[d] = stats
    return rows


def main():
    exp = Experiment(__file__, description=(
        "注意力实验 1：在 6 个词的句子上逐步计算缩放点积注意力（Q、K、V、分数、缩放、因果 mask、softmax、输出），\n"
        "并验证与 model/ 的 MiniMind Attention 完全一致；再看不除以 √d 时 softmax 如何饱和。"))
    gen = torch.Generator().manual_seed(exp.seed)
    T = len(SENTENCE)
    vocab = sorted(set(SENTENCE))
    embedding = torch.randn(len(vocab), D_MODEL, generator=gen)  # 随机词向量（真实模型里是学出来的 embedding）
    x = embedding[[vocab.index(w) for w in SENTENCE]]  # (T, d)：两个 "the" 的向量相同

    # MiniMind 的 Attention：单头、单 KV 头，它的权重就是我们逐步计算用的权重
    config = MiniMindConfig(hidden_size=D_MODEL, num_attention_heads=1, num_key_value_heads=1,
                            vocab_size=len(SENTENCE), max_position_embeddings=64)
    attn = Attention(config).eval()
    w_q, w_k, w_v, w_o = (p.weight.detach() for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))

    print("句子：", " ".join(SENTENCE))
    out_manual, weights = step_by_step(x, w_q, w_k, w_v, w_o, verbose=True)

    # 1) 关掉 RoPE（cos=1, sin=0 就是不旋转）与 MiniMind Attention 对比，两条实现路径都比
    no_rope = (torch.ones(T, D_MODEL), torch.zeros(T, D_MODEL))
    with torch.no_grad():
        out_sdpa, _ = attn(x[None], no_rope)
        attn.flash = False
        out_explicit, _ = attn(x[None], no_rope)
        # 2) 打开 RoPE：逐步计算里也对 Q、K 旋转
        cos, sin = precompute_freqs_cis(D_MODEL, T)
        out_rope_model, _ = attn(x[None], (cos, sin))
    out_rope_manual, weights_rope = step_by_step(x, w_q, w_k, w_v, w_o, cos, sin)
    diffs = {
        "step-by-step vs Attention (SDPA path)": (out_manual - out_sdpa[0]).abs().max().item(),
        "step-by-step vs Attention (explicit path)": (out_manual - out_explicit[0]).abs().max().item(),
        "step-by-step + RoPE vs Attention + RoPE": (out_rope_manual - out_rope_model[0]).abs().max().item(),
    }
    exp.print_table(["comparison", "max |difference|"], [[k, v] for k, v in diffs.items()],
                    title="Our step-by-step attention vs model/ Attention")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    plot_attention_heatmap(weights, SENTENCE, SENTENCE, title="Causal attention weights (no RoPE)", ax=axes[0])
    plot_attention_heatmap(weights_rope, SENTENCE, SENTENCE, title="Same projections + RoPE", ax=axes[1])
    exp.save_figure(fig, "exp1_attention_weights.png")

    # 3) 为什么除以 √d
    dims = (16, 64, 256) if exp.quick else (16, 64, 256, 1024, 4096)
    saturation = softmax_saturation(dims, 500 if exp.quick else 5000, gen)
    exp.print_table(["d", "score std (unscaled)", "max weight (unscaled)", "entropy (unscaled)",
                     "score std (scaled)", "max weight (scaled)", "entropy (scaled)"],
                    [[d, s["unscaled"]["score_std"], s["unscaled"]["max_weight"], s["unscaled"]["entropy"],
                      s["scaled"]["score_std"], s["scaled"]["max_weight"], s["scaled"]["entropy"]]
                     for d, s in saturation.items()],
                    title="Softmax over 16 keys, q,k ~ N(0, I_d): entropy ln(16) = 2.77 means uniform")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("unscaled", "scaled"):
        ax.plot(list(dims), [saturation[d][name]["entropy"] for d in dims], marker="o", label=name)
    ax.axhline(math.log(16), color="gray", ls="--", lw=0.8, label="uniform (ln 16)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("head dimension d")
    ax.set_ylabel("mean softmax entropy (nats)")
    ax.set_title("Without 1/sqrt(d), softmax saturates as d grows")
    ax.legend()
    exp.save_figure(fig, "exp1_softmax_saturation.png")

    exp.save_metrics({"sentence": SENTENCE, "d_model": D_MODEL, "weights": weights, "weights_rope": weights_rope,
                      "max_abs_diff": diffs, "softmax_saturation": {str(d): s for d, s in saturation.items()}})

    # ---- 结论 ----
    worst = max(diffs.values())
    exp.conclude("逐步计算（QKᵀ/√d → 因果 mask → softmax → ·V）与 MiniMind 的 Attention（SDPA 与显式两条路径，含/不含 RoPE）结果一致",
                 worst < 1e-5, f"最大差 {worst:.2e}")
    future = weights.triu(diagonal=1).abs().max().item()
    row_sum_err = (weights.sum(-1) - 1).abs().max().item()
    exp.conclude("因果 mask 生效：每个词对它后面的词权重为 0，且每行权重和为 1",
                 future == 0 and row_sum_err < 1e-6, f"未来位置最大权重 {future}，行和最大偏差 {row_sum_err:.1e}")
    lo, hi = saturation[dims[0]], saturation[dims[-1]]
    exp.conclude(f"不缩放时，d 从 {dims[0]} 增到 {dims[-1]}，分数标准差按 √d 增长、softmax 越来越接近 one-hot（熵下降）",
                 hi["unscaled"]["entropy"] < lo["unscaled"]["entropy"] and hi["unscaled"]["score_std"] > lo["unscaled"]["score_std"],
                 f"分数 std {lo['unscaled']['score_std']:.2f} → {hi['unscaled']['score_std']:.2f}；"
                 f"熵 {lo['unscaled']['entropy']:.2f} → {hi['unscaled']['entropy']:.2f}；"
                 f"最大权重 {lo['unscaled']['max_weight']:.2f} → {hi['unscaled']['max_weight']:.2f}")
    scaled_entropies = [saturation[d]["scaled"]["entropy"] for d in dims]
    exp.conclude("除以 √d 后，分数标准差保持在 1 附近，softmax 熵不随 d 变化（各 d 之间相差 < 0.1 nat）",
                 max(scaled_entropies) - min(scaled_entropies) < 0.1,
                 f"缩放后的熵：{', '.join(f'd={d}: {e:.3f}' for d, e in zip(dims, scaled_entropies))}")
    exp.finish()


if __name__ == "__main__":
    main()
