"""实验 1：三种浮点格式 fp32 / bf16 / fp16——能表示多大、多小、多细，以及"用它来累加"会出什么事。

不训练模型，几秒跑完。全部结论都是确定性的事实（同一台机器、同一版 PyTorch 每次结果一样），由本次运行算出：
  1. torch.finfo 量出的范围与精度：最大值、最小正规数、机器精度 eps（1 与下一个可表示数的距离）
  2. 一组样本值的往返误差：x → 格式 → float64。fp16 在 65504 之上溢出成 inf；bf16 的范围与 fp32 相同，但只有 8 位有效位
  3. 长求和：把 N 个约 1e-4 的小数依次加进一个累加器（每加一次就舍入到累加器的格式）。
     累加器的 ulp（当前值处相邻两个可表示数的距离）一旦超过最大加数的两倍，加上去的数全被舍入掉，和就"停滞"了。
     对照：fp16 的加数、fp32 的累加器（Micikevicius et al. 2017 的混合精度：低精度存与乘，高精度累加）
  4. 梯度下溢与 loss scaling：对数均匀分布在 [1e-10, 1e-2] 的"梯度"转成 fp16 有多少变成 0；先乘 2^S 再转呢？

    python exp1_number_formats.py --quick
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import math  # noqa: E402

import torch  # noqa: E402

from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLES = (0.1, 1 / 3, 3.14159265, 257.0, 1000.5, 65504.0, 70000.0, 1e-5, 1e-8, 3e38)
TERM = 1e-4  # 长求和里每个加数的平均大小
LOSS_SCALE_BITS = 16  # loss scaling 乘的 2^16（Micikevicius et al. 2017 在多数网络上用的量级）


def add_args(parser):
    parser.add_argument("--terms", type=int, default=None, help="长求和的最大项数（默认 quick 20000 / 完整 100000，>= 1000）")


def finfo_row(dtype: torch.dtype) -> dict:
    info = torch.finfo(dtype)
    return {"bits": info.bits, "mantissa_bits": round(-math.log2(info.eps)), "max": info.max,
            "smallest_normal": info.tiny, "eps": info.eps}


def round_trip(value: float, dtype: torch.dtype) -> float:
    """value 存进 dtype 再读回 float64。"""
    return torch.tensor(value, dtype=torch.float64).to(dtype).double().item()


def accumulate(terms: torch.Tensor, acc_dtype: torch.dtype, checkpoints: list[int]) -> dict[int, torch.Tensor]:
    """把 terms (N, R) 的每一行依次加进 R 个并行的累加器，每加一次就舍入到 acc_dtype（就像一个 acc_dtype 的寄存器）。
    返回 {n: 前 n 行加完后的 R 个部分和（float64）}。R 条独立的求和一起做，只是为了快。"""
    acc = torch.zeros(terms.shape[1], dtype=acc_dtype)  # (R,)
    wanted, out = set(checkpoints), {}
    for n, row in enumerate(terms, start=1):
        acc = (acc + row.to(acc_dtype)).to(acc_dtype)  # 相加后立刻舍入到累加器格式
        if n in wanted:
            out[n] = acc.double().clone()
    return out


def stagnation_value(acc_dtype: torch.dtype, max_term: float) -> float:
    """公式预测的停滞点：和 s ∈ [2^e, 2^(e+1)) 处的 ulp = 2^e · eps；就近舍入时，ulp/2 ≥ 加数的数加上去会被舍掉。
    比 ulp/2 大的加数仍会把和推高一个 ulp，所以和一直涨到"连最大的加数都小于 ulp/2"的那个 2 的幂才停住。"""
    eps = torch.finfo(acc_dtype).eps
    exponent = math.ceil(math.log2(2 * max_term / eps))  # 2^e · eps / 2 ≥ max_term 的最小 e
    return 2.0 ** exponent


def main():
    exp = Experiment(__file__, description="fp32 / bf16 / fp16 的范围、精度、往返误差，长求和的停滞，以及 loss scaling",
                     extra_args=add_args)
    n_terms = exp.args.terms or (20_000 if exp.quick else 100_000)
    if n_terms < 1000:
        raise SystemExit(f"--terms 至少 1000（收到 {n_terms}）：项数太少看不到停滞")

    # 1. 范围与精度
    info = {name: finfo_row(dtype) for name, dtype in FORMATS.items()}
    exp.print_table(["format", "bits", "mantissa bits", "max", "smallest normal", "eps"],
                    [[n, r["bits"], r["mantissa_bits"], f"{r['max']:.4g}", f"{r['smallest_normal']:.3g}", f"{r['eps']:.3g}"]
                     for n, r in info.items()], title="torch.finfo：范围与精度")

    # 2. 往返
    trips = {name: [round_trip(v, dtype) for v in SAMPLES] for name, dtype in FORMATS.items()}

    def rel(stored, v):
        return abs(stored - v) / abs(v) if math.isfinite(stored) else math.inf

    exp.print_table(["value"] + [f"{n} stored" for n in FORMATS] + [f"{n} rel err" for n in FORMATS],
                    [[f"{v:.9g}"] + [f"{trips[n][i]:.9g}" for n in FORMATS] + [f"{rel(trips[n][i], v):.2g}" for n in FORMATS]
                     for i, v in enumerate(SAMPLES)], title="往返：x → 格式 → float64")

    # 3. 长求和：R 条独立的求和，每条 N 个 U(0, 2·TERM) 的加数（均值 TERM）
    gen = torch.Generator().manual_seed(exp.seed)
    terms = torch.rand(n_terms, 8, generator=gen, dtype=torch.float64) * (2 * TERM)  # (N, R)
    checkpoints = sorted({int(round(10 ** (k / 4))) for k in range(12, int(4 * math.log10(n_terms)) + 1)} | {n_terms})
    exact = {n: terms[:n].sum(dim=0) for n in checkpoints}  # float64 的"真值"
    accumulators = {"fp32 acc": (torch.float32, terms), "bf16 acc": (torch.bfloat16, terms),
                    "fp16 acc": (torch.float16, terms),
                    # 混合精度的做法：加数先存成 fp16（误差 ≤ 2^-11），累加器是 fp32
                    "fp16 terms, fp32 acc": (torch.float32, terms.to(torch.float16).double())}
    sums = {name: accumulate(t, dtype, checkpoints) for name, (dtype, t) in accumulators.items()}
    errors = {name: [((s[n] - exact[n]).abs() / exact[n]).mean().item() for n in checkpoints] for name, s in sums.items()}
    exp.print_table(["N terms", "exact sum"] + [f"{name} rel err" for name in accumulators],
                    [[n, f"{exact[n].mean().item():.4g}"] + [f"{errors[name][i]:.2g}" for name in accumulators]
                     for i, n in enumerate(checkpoints)], title=f"长求和：每项约 {TERM:g}，8 条独立求和的平均相对误差")
    final = {name: sums[name][n_terms].mean().item() for name in accumulators}
    predicted = {name: stagnation_value(FORMATS[name.split()[0]], 2 * TERM) for name in ("bf16 acc", "fp16 acc")}
    exp.print_table(["accumulator", f"sum after {n_terms} terms", "exact", "predicted stall (ulp/2 > max term)"],
                    [[name, f"{final[name]:.4g}", f"{exact[n_terms].mean().item():.4g}",
                      f"{predicted[name]:.4g}" if name in predicted else "-"] for name in accumulators],
                    title="停滞点：公式 vs 实测")

    # 4. 梯度下溢与 loss scaling
    grads = 10 ** (torch.rand(100_000, generator=gen, dtype=torch.float64) * 8 - 10)  # 对数均匀 [1e-10, 1e-2]
    zero_plain = (grads.to(torch.float16) == 0).double().mean().item()
    scaled = (grads * 2 ** LOSS_SCALE_BITS).to(torch.float16)
    zero_scaled = (scaled == 0).double().mean().item()
    unscaled_err = ((scaled.double() / 2 ** LOSS_SCALE_BITS - grads).abs() / grads)[scaled != 0].median().item()
    zero_bf16 = (grads.to(torch.bfloat16) == 0).double().mean().item()
    exp.print_table(["case", "fraction flushed to 0"],
                    [["fp16, no scaling", f"{zero_plain:.3f}"], [f"fp16, loss scale 2^{LOSS_SCALE_BITS}", f"{zero_scaled:.3f}"],
                     ["bf16, no scaling", f"{zero_bf16:.3f}"]], title="log-uniform[1e-10, 1e-2] 的梯度转成低精度")

    exp.save_metrics({"config": {"terms": n_terms, "term_mean": TERM, "loss_scale_bits": LOSS_SCALE_BITS},
                      "finfo": info, "samples": list(SAMPLES), "round_trip": trips,
                      "sum": {"checkpoints": checkpoints, "rel_error": errors, "final": final,
                              "exact_final": exact[n_terms].mean().item(), "predicted_stagnation": predicted},
                      "underflow": {"fp16": zero_plain, "fp16_scaled": zero_scaled, "bf16": zero_bf16,
                                    "scaled_median_rel_err": unscaled_err}})

    # ---- 结论：全部由上面的测量算出 ----
    fp16_max = info["fp16"]["max"]
    overflow = trips["fp16"][SAMPLES.index(70000.0)]
    bf16_70000 = trips["bf16"][SAMPLES.index(70000.0)]
    exp.conclude("fp16 的最大值是 65504：70000 存进 fp16 变成 inf，bf16 能存（只是舍入）",
                 holds=fp16_max == 65504.0 and math.isinf(overflow) and math.isfinite(bf16_70000),
                 evidence=f"finfo(fp16).max={fp16_max:g}；70000 → fp16 {overflow}，→ bf16 {bf16_70000:g}")
    ratio_eps = info["bf16"]["eps"] / info["fp16"]["eps"]
    exp.conclude("bf16 用精度换范围：范围与 fp32 相当（最大值同一量级），eps 比 fp16 粗 8 倍（7 位 vs 10 位尾数）",
                 holds=ratio_eps == 8.0 and abs(math.log10(info["bf16"]["max"] / info["fp32"]["max"])) < 0.01,
                 evidence=f"eps：bf16 {info['bf16']['eps']:g}，fp16 {info['fp16']['eps']:g}（{ratio_eps:g}×）；"
                          f"max：bf16 {info['bf16']['max']:.3g}，fp32 {info['fp32']['max']:.3g}，fp16 {fp16_max:g}")
    i257 = SAMPLES.index(257.0)
    exp.conclude("257 在 bf16 里存不下：最近的可表示数是 256（8 位有效位在 256 附近的间隔是 2），fp16 能精确存",
                 holds=trips["bf16"][i257] == 256.0 and trips["fp16"][i257] == 257.0,
                 evidence=f"257 → bf16 {trips['bf16'][i257]:g}，fp16 {trips['fp16'][i257]:g}")
    true_sum = exact[n_terms].mean().item()
    for name in ("fp16 acc", "bf16 acc"):
        err = errors[name][-1]
        near = 0.5 <= final[name] / predicted[name] <= 2
        exp.conclude(f"{name.split()[0]} 累加器在长求和里停滞：{n_terms} 项后相对误差超过 50%，"
                     f"停在公式预测的位置（ulp/2 超过最大加数的第一个 2 的幂）附近（2 倍以内）",
                     holds=err > 0.5 and near,
                     evidence=f"实测和 {final[name]:.4g}（真值 {true_sum:.4g}，相对误差 {err:.2g}），预测停滞点 {predicted[name]:.4g}")
    mixed = errors["fp16 terms, fp32 acc"][-1]
    exp.conclude("混合精度：加数是 fp16、累加器是 fp32，长求和的相对误差低于 1e-3",
                 holds=mixed < 1e-3, evidence=f"{n_terms} 项后相对误差 {mixed:.2g}（fp16 累加器 {errors['fp16 acc'][-1]:.2g}）")
    exp.conclude(f"loss scaling：乘 2^{LOSS_SCALE_BITS} 后转 fp16，下溢成 0 的梯度比例比直接转至少少一半",
                 holds=zero_scaled <= 0.5 * zero_plain and zero_plain > 0,
                 evidence=f"直接转 fp16：{zero_plain:.1%} 变成 0；先乘 2^{LOSS_SCALE_BITS}：{zero_scaled:.1%}；"
                          f"bf16 不缩放：{zero_bf16:.1%}；缩放后再除回去的相对误差中位数 {unscaled_err:.2g}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name in accumulators:
        axes[0].loglog(checkpoints, [max(e, 1e-9) for e in errors[name]], marker="o", label=name)
    axes[0].set_xlabel("number of terms N")
    axes[0].set_ylabel("relative error of the sum")
    axes[0].set_title(f"sequential sum of terms ~{TERM:g}")
    axes[0].legend()
    for name in accumulators:
        axes[1].plot(checkpoints, [sums[name][n].mean().item() for n in checkpoints], marker="o", label=name)
    axes[1].plot(checkpoints, [exact[n].mean().item() for n in checkpoints], "k--", label="exact")
    for name, value in predicted.items():
        axes[1].axhline(value, ls=":", color="gray")
        axes[1].text(checkpoints[0], value, f"predicted stall ({name.split()[0]})", va="bottom", fontsize=8)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("number of terms N")
    axes[1].set_ylabel("accumulated sum")
    axes[1].set_title("the sum stalls once ulp/2 > largest term")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp1_number_formats.png")
    exp.finish()


if __name__ == "__main__":
    main()
