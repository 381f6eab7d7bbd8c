"""实验统一的画图函数。标签、标题一律英文，不依赖中文字体；输入可以是 torch 张量、numpy 数组或列表。"""
import os
import sys

import matplotlib


def use_headless_backend_if_needed() -> None:
    """没有显示器时改用 Agg 后端（只存图不弹窗）；用户自己设了 MPLBACKEND 就尊重它。必须在导入 pyplot 之前调用。"""
    if os.environ.get("MPLBACKEND"):
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        matplotlib.use("Agg")


use_headless_backend_if_needed()

import matplotlib.pyplot as plt  # noqa: E402  （后端确定之后才能导入 pyplot）
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = "colorblind"
MAX_POINTS_PER_DISTRIBUTION = 20_000  # 画分布时每层最多取这么多点（等间隔抽样，结果确定）


def set_style() -> None:
    """seaborn whitegrid 风格 + 色盲友好调色板；字体保持默认（DejaVu Sans），不依赖中文字体。"""
    sns.set_theme(style="whitegrid", palette=PALETTE, rc={"figure.dpi": 100, "axes.titleweight": "bold"})


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def plot_attention_heatmap(weights, x_labels=None, y_labels=None, title: str = "Attention weights", ax=None) -> Figure:
    """注意力权重热力图。weights: (T_q, T_k)，行是 query，列是 key。"""
    w = _to_numpy(weights).squeeze()
    if w.ndim != 2:
        raise ValueError(f"weights 应是二维 (T_q, T_k)，收到形状 {w.shape}；多头请先选一个头")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.35 * w.shape[1], 0.8 + 0.35 * w.shape[0]))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), labels=list(x_labels), rotation=90)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), labels=list(y_labels))
    ax.grid(False)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(title)
    return ax.figure


def plot_activation_distribution(acts: dict, title: str = "Activation distribution per layer") -> Figure:
    """每层激活值的分布（小提琴图），横轴是层名，按字典顺序排列。"""
    if not acts:
        raise ValueError("acts 为空：需要 {层名: 激活值}")
    names = list(acts)
    samples = []
    for name in names:
        values = _to_numpy(acts[name]).ravel()
        if values.size > MAX_POINTS_PER_DISTRIBUTION:
            values = values[np.linspace(0, values.size - 1, MAX_POINTS_PER_DISTRIBUTION).astype(int)]
        samples.append(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 4))
    ax.violinplot(samples, showmedians=True)
    ax.set_xticks(range(1, len(names) + 1), labels=names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylabel("activation value")
    ax.set_title(title)
    return fig


def plot_gradient_flow(grad_norms: dict, title: str = "Gradient norm per layer", log_scale: bool = True,
                       layer_names=None) -> Figure:
    """每层梯度范数。

    - {层名: 范数}：一次运行，横轴是层名。
    - {运行名: [第 0 层范数, 第 1 层范数, ...]}：多次运行，各画一条线，横轴是层（layer_names 给出刻度名）。
    """
    if not grad_norms:
        raise ValueError("grad_norms 为空")
    fig, ax = plt.subplots(figsize=(7, 4))
    first = next(iter(grad_norms.values()))
    if np.ndim(_to_numpy(first)) == 0:
        names = list(grad_norms)
        ax.plot(range(len(names)), [float(_to_numpy(v)) for v in grad_norms.values()], marker="o")
        ax.set_xticks(range(len(names)), labels=names, rotation=30 if len(names) > 6 else 0)
    else:
        for run, norms in grad_norms.items():
            norms = _to_numpy(norms)
            ax.plot(range(len(norms)), norms, marker="o", label=str(run))
        if layer_names is not None:
            ax.set_xticks(range(len(layer_names)), labels=list(layer_names), rotation=30 if len(layer_names) > 6 else 0)
        ax.legend()
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("gradient norm")
    ax.set_title(title)
    return fig


def plot_loss_curves(curves: dict, title: str = "Loss curves", ylabel: str = "loss", log_y: bool = False) -> Figure:
    """多条曲线对比。curves: {名字: (steps, values)}。"""
    if not curves:
        raise ValueError("curves 为空：需要 {名字: (steps, values)}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(_to_numpy(steps), _to_numpy(values), label=str(name))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_bar_comparison(values: dict, title: str = "Comparison", ylabel: str = "value") -> Figure:
    """柱状对比，柱顶标数值。values: {名字: 数值}。"""
    if not values:
        raise ValueError("values 为空：需要 {名字: 数值}")
    names = [str(k) for k in values]
    heights = [float(_to_numpy(v)) for v in values.values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 2), 4))
    colors = sns.color_palette(PALETTE, len(names))
    bars = ax.bar(names, heights, color=colors)
    ax.bar_label(bars, labels=[f"{h:.4g}" for h in heights], padding=2)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(names) > 6:
        ax.tick_params(axis="x", labelrotation=30)
    return fig
