"""实验 1：没有归一化时，深层网络的激活和梯度会指数级坍缩或爆炸。

一个 L 层的 [Norm →] Linear → ReLU 堆叠（故意不加残差，单独看归一化的作用）。
每层权重 ~ N(0, (g·√(2/d))²)：g=1 是 He 初始化，g<1 每层把信号缩小约 g 倍，g>1 放大约 g 倍。
对比 norm ∈ {none, rmsnorm, layernorm}，记录：
  - 前向：每层输出的标准差
  - 反向：损失对每层输出的梯度范数 ‖∂L/∂h_l‖
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from model.model_minimind import RMSNorm  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

NORMS = ("none", "rmsnorm", "layernorm")


def build_stack(depth: int, width: int, norm: str, gain: float) -> nn.ModuleList:
    """depth 个 [Norm →] Linear → ReLU 块；Norm 用 model/ 里 MiniMind 的 RMSNorm 或 PyTorch 的 LayerNorm。"""
    blocks = nn.ModuleList()
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        nn.init.normal_(linear.weight, std=gain * (2.0 / width) ** 0.5)
        if norm == "rmsnorm":
            blocks.append(nn.Sequential(RMSNorm(width), linear, nn.ReLU()))
        elif norm == "layernorm":
            blocks.append(nn.Sequential(nn.LayerNorm(width), linear, nn.ReLU()))
        else:
            blocks.append(nn.Sequential(linear, nn.ReLU()))
    return blocks


def measure(blocks: nn.ModuleList, x: torch.Tensor, target: torch.Tensor):
    """一次前向 + 反向，返回每层输出的 std 与 ‖∂L/∂h_l‖（l = 1..L）。"""
    hidden = []
    h = x
    for block in blocks:
        h = block(h)
        h.retain_grad()  # 保留中间激活的梯度，才能逐层看反向信号
        hidden.append(h)
    loss = nn.functional.mse_loss(h, target)
    loss.backward()
    act_std = [t.detach().std().item() for t in hidden]
    grad_norm = [t.grad.norm().item() for t in hidden]
    return act_std, grad_norm


def spread(values) -> float:
    """max/min：同一网络各层之间相差多少倍（1 = 完全一致）。"""
    lo = min(values)
    return float("inf") if lo == 0 else max(values) / lo


def main():
    exp = Experiment(__file__, description=(
        "归一化实验 1：深层 Linear+ReLU 堆叠中，没有归一化时激活与梯度逐层指数坍缩/爆炸，\n"
        "加上 RMSNorm（或 LayerNorm）后各层保持同一量级。"))
    depth, width, batch = (16, 128, 128) if exp.quick else (32, 512, 512)
    gains = (0.5, 1.5) if exp.quick else (0.5, 1.0, 1.5)
    device = exp.device

    x = torch.randn(batch, width, device=device)
    target = torch.randn(batch, width, device=device)
    results = {}
    rows = []
    for gain in gains:
        for norm in NORMS:
            torch.manual_seed(exp.seed)  # 每个变体用同一份初始权重的随机流，只差归一化
            blocks = build_stack(depth, width, norm, gain).to(device)
            act_std, grad_norm = measure(blocks, x, target)
            name = f"{norm}, g={gain}"
            results[name] = {"norm": norm, "gain": gain, "act_std": act_std, "grad_norm": grad_norm,
                             "act_spread": spread(act_std), "grad_spread": spread(grad_norm)}
            rows.append([norm, gain, act_std[0], act_std[-1], spread(act_std),
                         grad_norm[0], grad_norm[-1], spread(grad_norm)])

    exp.print_table(["norm", "gain", "std(h_1)", f"std(h_{depth})", "act spread",
                     "|dL/dh_1|", f"|dL/dh_{depth}|", "grad spread"], rows,
                    title=f"{depth}-layer Linear+ReLU stack (width {width}); spread = max/min over layers")
    exp.save_metrics({"depth": depth, "width": width, "batch": batch, "gains": list(gains), "runs": results})

    # ---- 图：每层激活 std 与梯度范数（对数坐标）----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    layers = range(1, depth + 1)
    styles = {"none": "-", "rmsnorm": "--", "layernorm": ":"}
    for name, r in results.items():
        axes[0].plot(layers, r["act_std"], styles[r["norm"]], marker=".", label=name)
        axes[1].plot(layers, r["grad_norm"], styles[r["norm"]], marker=".", label=name)
    for ax, ylabel, title in ((axes[0], "std of layer output", "Forward: activation std per layer"),
                              (axes[1], "||dL/dh|| (log)", "Backward: gradient norm per layer")):
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    axes[1].legend(fontsize=8, ncol=2)
    exp.save_figure(fig, "exp1_gradient_vanishing.png")

    # ---- 结论：全部由上面的测量算出 ----
    threshold = 100.0  # 层间相差 100 倍以上算"坍缩/爆炸"，10 倍以内算"保持同一量级"
    shrink, grow = results[f"none, g={min(gains)}"], results[f"none, g={max(gains)}"]
    exp.conclude(
        f"无归一化、g={min(gains)}：激活逐层坍缩（第 {depth} 层的 std 比第 1 层小 {threshold:.0f} 倍以上）",
        shrink["act_std"][0] / shrink["act_std"][-1] > threshold,
        f"std(h_1)={shrink['act_std'][0]:.3g}，std(h_{depth})={shrink['act_std'][-1]:.3g}，"
        f"相差 {shrink['act_std'][0] / shrink['act_std'][-1]:.3g} 倍")
    exp.conclude(
        f"无归一化、g={max(gains)}：激活逐层爆炸（第 {depth} 层的 std 比第 1 层大 {threshold:.0f} 倍以上）",
        grow["act_std"][-1] / grow["act_std"][0] > threshold,
        f"std(h_1)={grow['act_std'][0]:.3g}，std(h_{depth})={grow['act_std'][-1]:.3g}，"
        f"相差 {grow['act_std'][-1] / grow['act_std'][0]:.3g} 倍")
    exp.conclude(
        f"无归一化时反向梯度也随深度指数变化（层间梯度范数相差 {threshold:.0f} 倍以上）",
        min(shrink["grad_spread"], grow["grad_spread"]) > threshold,
        f"g={min(gains)} 时 grad spread={shrink['grad_spread']:.3g}，g={max(gains)} 时={grow['grad_spread']:.3g}")
    for norm in ("rmsnorm", "layernorm"):
        runs = {g: results[f"{norm}, g={g}"] for g in gains}
        worst_act = max(r["act_spread"] for r in runs.values())
        exp.conclude(
            f"加 {norm} 后，无论 g 取多少，前向各层激活 std 都保持同一量级（层间相差 < 2 倍）",
            worst_act < 2,
            f"所有 g 中最差的 act spread={worst_act:.3g}")
        bad_gains = [g for g in gains if g != 1.0]  # g=1 是 He 初始化，本身就不坍缩也不爆炸
        improvement = min(results[f"none, g={g}"]["grad_spread"] / runs[g]["grad_spread"] for g in bad_gains)
        exp.conclude(
            f"初始化偏离 He（g≠1）时，加 {norm} 后反向梯度的层间差距比不加时至少缩小 10 倍",
            improvement > 10,
            "grad spread：" + "；".join(f"g={g}: none {results[f'none, g={g}']['grad_spread']:.3g} → "
                                        f"{norm} {runs[g]['grad_spread']:.3g}" for g in bad_gains))
    # LayerNorm 除以 std，RMSNorm 除以 rms；ReLU 输出均值不为 0，std < rms，所以 LN 的反向每层多放大约 rms/std 倍
    ln, rms = results[f"layernorm, g={gains[0]}"], results[f"rmsnorm, g={gains[0]}"]
    relu_out = torch.relu(torch.randn(100_000))
    rms_over_std = (relu_out.pow(2).mean().sqrt() / relu_out.std()).item()
    per_layer = ln["grad_spread"] ** (1 / (depth - 1))
    exp.conclude(
        "RMSNorm 的层间梯度比 LayerNorm 更平：ReLU 输出均值非零，LN 除以 std（小于 rms），反向每层多放大约 rms/std 倍",
        ln["grad_spread"] > rms["grad_spread"],
        f"g={gains[0]}：grad spread LayerNorm {ln['grad_spread']:.3g} vs RMSNorm {rms['grad_spread']:.3g}；"
        f"LN 平均每层放大 {per_layer:.3f} 倍，ReLU(N(0,1)) 的 rms/std = {rms_over_std:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
