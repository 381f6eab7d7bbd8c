"""实验 4：LayerNorm vs RMSNorm——去掉"减均值"到底少了什么、省了什么？

三部分：
  1. 不变性（数值验证）：LayerNorm(x) = (x - μ)/σ·γ + β，对"所有特征加同一个常数"和"整体缩放"都不变；
     RMSNorm(x) = x / rms(x)·γ 只对缩放不变。再验证：输入先减去均值后，RMSNorm 与 LayerNorm 完全相同。
     RMSNorm 用 model/model_minimind.py 的 RMSNorm，LayerNorm 用 torch.nn.LayerNorm。
  2. 质量：Pre-LN 字符级语言模型，只换 LayerNorm / RMSNorm，同样预算（与实验 2 相同的设置和训练函数）。
  3. 速度：单个归一化层前向 + 反向的微基准，多轮取最快：可读 RMSNorm、手写反向 RMSNorm(fused=True)、
     torch.nn.functional.rms_norm（若有）、nn.LayerNorm。快不快以本机实测为准。
"""
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from exp2_norm_comparison import final_val, train_variant  # noqa: E402  同目录的实验 2：同一套训练设置
from model.model_minimind import RMSNorm  # noqa: E402
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

LM_LAYERS, LM_LR = 6, 3e-3  # 实验 2 改成学习率扫描之前的单一设置（block 64 等取 train_variant 的默认值）
INVARIANT_TOL = 1e-4  # 输出最大差 < 1e-4 算"不变"（float32 舍入误差量级）
CHANGED_TOL = 1e-2  # 输出最大差 > 1e-2 算"明显改变"


class FunctionalRMSNorm(nn.Module):
    """PyTorch 自带的 F.rms_norm（torch >= 2.4），权重与 model/ 的 RMSNorm 相同，只为计时对照。"""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def invariance_checks(dim: int, seed: int) -> dict:
    """对随机输入 x (64, dim) 做三种变换，返回各归一化输出的最大绝对差。"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, dim, generator=g) * 2 + 0.5  # (N, dim)：均值不为 0 的输入
    shift = torch.randn(64, 1, generator=g) * 3  # (N, 1)：每个 token 给所有特征加同一个常数
    norms = {"LayerNorm": nn.LayerNorm(dim), "RMSNorm": RMSNorm(dim)}
    out = {}
    with torch.no_grad():
        for name, norm in norms.items():
            y = norm(x)
            out[name] = {"shift": (norm(x + shift) - y).abs().max().item(),
                         "scale": (norm(7.5 * x) - y).abs().max().item()}
        centered = x - x.mean(-1, keepdim=True)
        out["RMSNorm(x - mean) vs LayerNorm(x)"] = (norms["RMSNorm"](centered) - norms["LayerNorm"](x)).abs().max().item()
    return out


def benchmark(norm: nn.Module, shape, repeats: int, iters: int) -> float:
    """前向 + 反向一次的最快时间（毫秒）：repeats 轮，每轮连跑 iters 次取平均，再取各轮最小值。"""
    x = torch.randn(*shape, requires_grad=True)  # (B, T, H)
    grad = torch.randn(*shape)
    for _ in range(3):  # 预热
        norm(x).backward(grad)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            norm(x).backward(grad)
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e3


def main():
    exp = Experiment(__file__, description=(
        "归一化实验 4：LayerNorm vs RMSNorm。不变性的数值验证、同预算语言模型的质量、前向+反向速度。"))
    steps = 150 if exp.quick else 400
    bench_shape = (8, 256, 512)  # (B, T, H)，与 MiniMind2-Small 的 hidden=512 相同
    repeats, iters = (5, 10) if exp.quick else (10, 20)

    # ---- 1. 不变性 ----
    inv = invariance_checks(dim=512, seed=exp.seed)
    exp.print_table(["norm", "max|f(x+c) - f(x)|", "max|f(7.5x) - f(x)|"],
                    [[name, inv[name]["shift"], inv[name]["scale"]] for name in ("LayerNorm", "RMSNorm")],
                    title="Invariance: shift every feature of a token by c, or scale x by 7.5")
    print(f"max|RMSNorm(x - mean(x)) - LayerNorm(x)| = {inv['RMSNorm(x - mean) vs LayerNorm(x)']:.3g}")

    # ---- 2. 质量：Pre-LN，LayerNorm vs RMSNorm ----
    text = get_experiment_data("shakespeare")
    quality = {}
    for name, norm in (("Pre-LN (LayerNorm)", "layernorm"), ("Pre-LN (RMSNorm)", "rmsnorm")):
        histories = [train_variant(text, norm, "pre", layers=LM_LAYERS, lr=LM_LR, steps=steps, seed=seed,
                                   device=exp.device, desc=f"{name} seed={seed}") for seed in exp.seeds]
        finals = [final_val(h) for h in histories]
        quality[name] = {"final_val_loss": finals, "mean": mean_std(finals)[0], "std": mean_std(finals)[1],
                         "tokens_per_s": [h["tokens_per_s"] for h in histories]}
    exp.print_table(["variant", "final val loss", "train tokens/s"],
                    [[n, format_mean_std(q["final_val_loss"]), format_mean_std(q["tokens_per_s"], 3)]
                     for n, q in quality.items()],
                    title=f"Pre-LN char LM, {LM_LAYERS} layers, lr {LM_LR:g}, {steps} steps, seeds {exp.seeds}")

    # ---- 3. 速度微基准 ----
    dim = bench_shape[-1]
    candidates = {"RMSNorm (readable)": RMSNorm(dim), "RMSNorm (fused backward)": RMSNorm(dim, fused=True),
                  "nn.LayerNorm": nn.LayerNorm(dim)}
    if hasattr(F, "rms_norm"):
        candidates["F.rms_norm"] = FunctionalRMSNorm(dim)
    speed = {name: benchmark(norm, bench_shape, repeats, iters) for name, norm in candidates.items()}
    layernorm_ms = speed["nn.LayerNorm"]
    exp.print_table(["implementation", "fwd+bwd ms (best)", "vs nn.LayerNorm"],
                    [[name, ms, f"{layernorm_ms / ms:.2f}x"] for name, ms in speed.items()],
                    title=f"Forward+backward of one norm layer on {tuple(bench_shape)}, best of {repeats}x{iters}")
    exp.save_metrics({"invariance": inv, "quality": quality, "speed_ms": speed,
                      "config": {"lm_layers": LM_LAYERS, "lm_lr": LM_LR, "steps": steps,
                                 "bench_shape": bench_shape, "repeats": repeats, "iters": iters}})

    # ---- 图：不变性（对数）+ 速度 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, name in enumerate(("LayerNorm", "RMSNorm")):
        values = [max(inv[name][k], 1e-9) for k in ("shift", "scale")]
        bars = axes[0].bar([i - 0.2, i + 0.2], values, width=0.35, color=["C0", "C1"])
        axes[0].bar_label(bars, labels=[f"{v:.1e}" for v in values], fontsize=8)
    axes[0].set_xticks([0, 1], labels=["LayerNorm", "RMSNorm"])
    axes[0].set(yscale="log", ylabel="max |f(x') - f(x)| (log)", title="Invariance: left = shift, right = scale")
    names = list(speed)
    bars = axes[1].barh(names, [speed[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    axes[1].bar_label(bars, labels=[f"{speed[n]:.2f} ms" for n in names], fontsize=8)
    axes[1].set(xlabel="ms per forward+backward (best)", title=f"Speed on {tuple(bench_shape)}")
    exp.save_figure(fig, "exp4_layernorm_vs_rmsnorm.png")

    # ---- 结论：全部由上面的测量算出 ----
    ln, rms = inv["LayerNorm"], inv["RMSNorm"]
    exp.conclude("LayerNorm 对平移（每个特征加同一常数）不变", ln["shift"] < INVARIANT_TOL, f"最大差 {ln['shift']:.3g}")
    exp.conclude("RMSNorm 对平移不是不变的", rms["shift"] > CHANGED_TOL, f"最大差 {rms['shift']:.3g}")
    exp.conclude("LayerNorm 与 RMSNorm 都对整体缩放不变", max(ln["scale"], rms["scale"]) < INVARIANT_TOL,
                 f"最大差：LayerNorm {ln['scale']:.3g}，RMSNorm {rms['scale']:.3g}")
    diff = inv["RMSNorm(x - mean) vs LayerNorm(x)"]
    exp.conclude("先减均值再做 RMSNorm，就等于 LayerNorm（γ=1、β=0 时）", diff < INVARIANT_TOL, f"最大差 {diff:.3g}")

    q_ln, q_rms = quality["Pre-LN (LayerNorm)"], quality["Pre-LN (RMSNorm)"]
    gap = q_rms["mean"] - q_ln["mean"]
    if len(exp.seeds) > 1:
        noise = 2 * max(q_ln["std"], q_rms["std"])
        exp.conclude("语言模型质量：RMSNorm 与 LayerNorm 的差距在种子噪声以内（|Δ| < 2 × 较大的种子 std）",
                     abs(gap) < noise, f"RMSNorm − LayerNorm = {gap:+.4f}，2 × std = {noise:.4f}")
    else:
        exp.conclude("语言模型质量：RMSNorm 与 LayerNorm 相差不到 0.05 nats（单种子，完整模式用 3 个种子判断噪声）",
                     abs(gap) < 0.05, f"RMSNorm − LayerNorm = {gap:+.4f}")
    exp.conclude("手写反向的 RMSNorm 比可读实现（autograd 逐步求导）快",
                 speed["RMSNorm (fused backward)"] < speed["RMSNorm (readable)"],
                 f"{speed['RMSNorm (fused backward)']:.3f} ms vs {speed['RMSNorm (readable)']:.3f} ms")
    best_rms = min((ms, name) for name, ms in speed.items() if "RMSNorm" in name or "rms_norm" in name)
    exp.conclude("在本机上，最快的 RMSNorm 实现比 nn.LayerNorm（PyTorch 原生融合内核）快",
                 best_rms[0] < layernorm_ms,
                 f"最快的 RMSNorm：{best_rms[1]} {best_rms[0]:.3f} ms；nn.LayerNorm {layernorm_ms:.3f} ms")
    exp.finish()


if __name__ == "__main__":
    main()
