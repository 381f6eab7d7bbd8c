"""实验 4：FlashAttention 的想法——分块 + 在线 softmax + 反向重算——与普通注意力结果相同，峰值内存从 O(T²) 降到 O(T)。

  1. 正确性：float64 下分块注意力与手写注意力、F.scaled_dot_product_attention 的输出和 q/k/v 梯度相差 < 1e-12
     （算法上精确）；float32 下相差 < 1e-5（只是舍入顺序不同）。
  2. 峰值内存：前向 + 反向的峰值随序列长度 T 的增长，手写注意力 ∝ T²（存 T×T 的分数和概率），分块 ∝ T。
  3. FLOPs：用 torch.utils.flop_counter 数矩阵乘法。非因果时两者前向 FLOPs 完全相同（4·T²·hd 每头）；
     分块的反向多重算一次 q·kᵀ，前向+反向共 14 vs 12 份 T²·hd——用计算换内存。
纯 PyTorch 的分块循环比 SDPA 慢得多：这里看的是算法，不是速度（真正的 kernel 把块留在 SRAM 里才快）。

用法：python exp4_tiled_attention.py [--quick] [--block 64]
"""
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 tiled_attention / peak_memory

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from peak_memory import measure_allocations  # noqa: E402
from tiled_attention import naive_attention, tiled_attention  # noqa: E402

N_HEADS, HEAD_DIM = 4, 32


def add_args(parser):
    parser.add_argument("--block", type=int, default=64, help="分块大小（查询块与键块相同，默认 64）")


def random_qkv(T: int, dtype, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, N_HEADS, T, HEAD_DIM, generator=g, dtype=dtype).to(device).requires_grad_()
               for _ in range(3))
    grad_o = torch.randn(1, N_HEADS, T, HEAD_DIM, generator=g, dtype=dtype).to(device)
    return q, k, v, grad_o


def outputs_and_grads(attn, q, k, v, grad_o):
    o = attn(q, k, v)
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), grad_o)]


def max_errors(dtype, T: int, block: int, seed: int, device) -> dict:
    """分块注意力与两个参照（手写、SDPA）在输出和三个梯度上的最大绝对误差（取两种 causal 中的较大者）。"""
    errors = {"vs naive": 0.0, "vs sdpa": 0.0}
    for causal in (True, False):
        q, k, v, grad_o = random_qkv(T, dtype, seed, device)
        tiled = outputs_and_grads(lambda a, b, c: tiled_attention(a, b, c, block, causal), q, k, v, grad_o)
        refs = {"vs naive": outputs_and_grads(lambda a, b, c: naive_attention(a, b, c, causal), q, k, v, grad_o),
                "vs sdpa": outputs_and_grads(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal),
                                             q, k, v, grad_o)}
        for name, ref in refs.items():
            errors[name] = max(errors[name], max((x - y).abs().max().item() for x, y in zip(tiled, ref)))
    return errors


def forward_backward_peak(attn, T: int, seed: int, device) -> int:
    """一次前向 + 反向（q、k、v、grad_o 事先建好，不计入）的峰值字节数。"""
    q, k, v, grad_o = random_qkv(T, torch.float32, seed, device)
    _, peak, _ = measure_allocations(lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), grad_o), device)
    return peak


def count_flops(attn, T: int, seed: int, device) -> tuple[int, int]:
    """(前向 FLOPs, 前向+反向 FLOPs)：只数矩阵乘法（softmax 等逐元素运算不算）。"""
    q, k, v, grad_o = random_qkv(T, torch.float32, seed, device)
    with FlopCounterMode(display=False) as fwd:
        o = attn(q, k, v)
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(o, (q, k, v), grad_o)
    return fwd.get_total_flops(), fwd.get_total_flops() + bwd.get_total_flops()


def loglog_slope(xs, ys) -> float:
    """最后两个点之间 log y 对 log x 的斜率：≈2 是平方增长，≈1 是线性增长。"""
    return math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])


def main():
    exp = Experiment(__file__, description=__doc__, extra_args=add_args)
    if exp.device.type not in ("cpu", "cuda"):  # MPS 没有可读的分配统计
        sys.exit(f"这个实验量内存只支持 cpu 和 cuda，收到 {exp.device}；请加 --device cpu")
    block = exp.args.block
    device = exp.device
    lengths = [128, 256, 512, 1024] if exp.quick else [256, 512, 1024, 2048, 4096]
    if not 8 <= block < lengths[0]:
        sys.exit(f"--block={block} 不合适：请取 8 到 {lengths[0] - 1} 之间的值（小于最短序列长度，才有分块可言）")

    # ---- 1. 正确性 ----
    err64 = max_errors(torch.float64, 3 * block + 5, block, exp.seed, device)  # 长度不整除 block：最后一块不满
    err32 = max_errors(torch.float32, 3 * block + 5, block, exp.seed, device)
    exp.print_table(["dtype", "max |Δ| vs naive", "max |Δ| vs SDPA"],
                    [["float64", err64["vs naive"], err64["vs sdpa"]], ["float32", err32["vs naive"], err32["vs sdpa"]]],
                    title="分块注意力的误差（输出与 dq/dk/dv，causal 与非 causal 取最大）")

    # ---- 2. 峰值内存随 T ----
    naive_causal = lambda a, b, c: naive_attention(a, b, c, causal=True)  # noqa: E731
    tiled_causal = lambda a, b, c: tiled_attention(a, b, c, block, causal=True)  # noqa: E731
    peaks = {"naive": [], "tiled": []}
    for T in lengths:
        peaks["naive"].append(forward_backward_peak(naive_causal, T, exp.seed, device))
        peaks["tiled"].append(forward_backward_peak(tiled_causal, T, exp.seed, device))
    mib = 2 ** 20
    exp.print_table(["T", "naive peak MiB", "tiled peak MiB", "naive/tiled"],
                    [[T, n / mib, t / mib, n / t] for T, n, t in zip(lengths, peaks["naive"], peaks["tiled"])],
                    title=f"前向+反向的峰值内存（1×{N_HEADS} 头×hd {HEAD_DIM}，causal，block {block}）")
    slopes = {name: loglog_slope(lengths, values) for name, values in peaks.items()}
    # T×T 的 float32 分数矩阵本身有多大：手写注意力的峰值应是它的几倍
    score_matrix = N_HEADS * lengths[-1] ** 2 * 4

    # ---- 3. FLOPs ----
    T_flops = lengths[1]
    flops = {}
    for causal in (False, True):
        flops[f"naive causal={causal}"] = count_flops(lambda a, b, c: naive_attention(a, b, c, causal), T_flops, exp.seed, device)
        flops[f"tiled causal={causal}"] = count_flops(lambda a, b, c: tiled_attention(a, b, c, block, causal),
                                                      T_flops, exp.seed, device)
    unit = N_HEADS * T_flops ** 2 * HEAD_DIM  # 一份 T²·hd（每头）
    exp.print_table(["variant", "fwd FLOPs / (nh·T²·hd)", "fwd+bwd FLOPs / (nh·T²·hd)"],
                    [[name, f / unit, fb / unit] for name, (f, fb) in flops.items()],
                    title=f"矩阵乘法 FLOPs（T={T_flops}）")

    exp.save_metrics({"block": block, "n_heads": N_HEADS, "head_dim": HEAD_DIM, "lengths": lengths,
                      "errors_float64": err64, "errors_float32": err32, "peak_bytes": peaks, "loglog_slope": slopes,
                      "score_matrix_bytes_at_max_T": score_matrix, "flops_T": T_flops, "flops": flops})

    # ---- 图 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, marker in (("naive", "o"), ("tiled", "s")):
        axes[0].loglog(lengths, [p / mib for p in peaks[name]], marker=marker, label=f"{name} (slope {slopes[name]:.2f})")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(lengths, [str(T) for T in lengths])
    axes[0].minorticks_off()
    axes[0].set_xlabel("sequence length T")
    axes[0].set_ylabel("peak memory of fwd+bwd (MiB)")
    axes[0].set_title("Peak memory: O(T^2) vs O(T)")
    axes[0].legend()
    names = list(flops)
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [flops[n][0] / unit for n in names], width=0.4, label="forward")
    axes[1].bar([i + 0.2 for i in x], [flops[n][1] / unit for n in names], width=0.4, label="forward+backward")
    axes[1].set_xticks(list(x), [n.replace(" causal=", "\ncausal=") for n in names], fontsize=8)
    axes[1].set_ylabel("matmul FLOPs / (nh * T^2 * hd)")
    axes[1].set_title(f"FLOPs at T={T_flops}")
    axes[1].set_ylim(0, 18)  # 给图例留出位置
    axes[1].legend(loc="upper right")
    exp.save_figure(fig, "exp4_tiled_attention.png")

    # ---- 结论（确定性：误差、分配字节数、FLOPs 都不随机）----
    exp.conclude("float64 下分块注意力与手写注意力、SDPA 的输出和梯度相差 < 1e-12（算法精确）",
                 max(err64.values()) < 1e-12, evidence=f"max |Δ| vs naive {err64['vs naive']:.2e}，vs SDPA {err64['vs sdpa']:.2e}")
    exp.conclude("float32 下分块注意力与手写注意力、SDPA 相差 < 1e-5（只是舍入顺序不同）",
                 max(err32.values()) < 1e-5, evidence=f"max |Δ| vs naive {err32['vs naive']:.2e}，vs SDPA {err32['vs sdpa']:.2e}")
    exp.conclude("手写注意力的峰值内存随 T 平方增长（log-log 斜率 > 1.7）",
                 slopes["naive"] > 1.7, evidence=f"T {lengths[-2]}→{lengths[-1]} 斜率 {slopes['naive']:.2f}")
    exp.conclude("分块注意力的峰值内存随 T 线性增长（log-log 斜率 < 1.3）",
                 slopes["tiled"] < 1.3, evidence=f"T {lengths[-2]}→{lengths[-1]} 斜率 {slopes['tiled']:.2f}")
    exp.conclude("最长序列上分块注意力的峰值小于一个 T×T 分数矩阵",
                 peaks["tiled"][-1] < score_matrix,
                 evidence=f"T={lengths[-1]}：tiled {peaks['tiled'][-1] / mib:.2f} MiB，naive {peaks['naive'][-1] / mib:.2f} MiB，"
                          f"一个 float32 的 {N_HEADS}×T×T 矩阵 {score_matrix / mib:.2f} MiB")
    f_naive, f_tiled = flops["naive causal=False"], flops["tiled causal=False"]
    exp.conclude("非因果时分块与手写注意力的前向 FLOPs 完全相同",
                 f_naive[0] == f_tiled[0], evidence=f"{f_naive[0]:,} vs {f_tiled[0]:,}")
    exp.conclude("分块的反向重算 q·kᵀ：前向+反向 FLOPs 是手写的 14/12 倍",
                 f_tiled[1] * 12 == f_naive[1] * 14, evidence=f"{f_tiled[1]:,} vs {f_naive[1]:,}（比值 {f_tiled[1] / f_naive[1]:.4f}）")
    fc_naive, fc_tiled = flops["naive causal=True"], flops["tiled causal=True"]
    exp.conclude("因果时分块整块跳过对角线右边的键块，前向 FLOPs 少于手写注意力",
                 fc_tiled[0] < fc_naive[0], evidence=f"{fc_tiled[0]:,} vs {fc_naive[0]:,}（{fc_tiled[0] / fc_naive[0]:.3f}）")
    exp.finish()


if __name__ == "__main__":
    main()
