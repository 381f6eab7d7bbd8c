"""实验 2：MiniMind2 与 minimind-3 的 YaRN 有什么不同？在 4× 长度上谁读得更好？

第一部分（公式，不训练）：直接调用 model/ 里真实的 yarn_scale_minimind2 / yarn_scale_minimind3，
在两代各自的真实 head_dim（MiniMind2-26M: 64，minimind-3-64M: 96）与默认参数（factor 4 / 16）下，
画出每对维度的频率缩放系数；再用 precompute_freqs_cis(..., family=...) 生成的 cos/sin 表反推频率，核对一致。
YaRN 论文（Peng et al. 2023）在同样的 ramp 之外还有注意力温度 √(1/t) = 0.1·ln(s) + 1（mscale），
minimind-3 把它设成 attention_factor = 1.0（即不用）。

第二部分（训练）：在 L=64 个 token 上训练一个 RoPE LabModel，不改权重、只重算 cos/sin，
读 4L 长的验证序列：直接外推 / PI / MiniMind2 的 YaRN / minimind-3 的 YaRN / minimind-3 的 YaRN + 论文的 mscale，
四种缩放都用同一个 factor 4。
"""
import copy
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

from model.model_minimind import (  # noqa: E402
    YARN_DEFAULTS,
    MiniMindConfig,
    precompute_freqs_cis,
    yarn_scale_minimind2,
    yarn_scale_minimind3,
)
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, set_rope_scaling  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, char_lm_batches, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

FACTOR = 4
# 名字 → (LabConfig.rope_scaling, 是否再乘论文的 mscale)
METHODS = {"plain": (None, False), "pi": ("pi", False), "yarn minimind2": ("yarn", False),
           "yarn minimind3": ("yarn_minimind3", False), "yarn minimind3 + mscale": ("yarn_minimind3", True)}


def add_args(parser):
    parser.add_argument("--train-len", type=int, default=64, help="训练长度 L（默认 64）；在 4L 上评估")
    parser.add_argument("--steps", type=int, default=None, help="在 L 上训练的步数（默认 quick 300 / full 600）")


def paper_mscale(factor: float) -> float:
    """YaRN 论文的注意力温度：q、k 各乘 √(1/t) = 0.1·ln(s) + 1（s <= 1 时为 1）。"""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def base_freqs(head_dim: int, rope_base: float) -> torch.Tensor:
    return 1.0 / (rope_base ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (hd/2,)


def freqs_from_table(head_dim: int, rope_base: float, rope_scaling: dict, family: str) -> torch.Tensor:
    """从 precompute_freqs_cis 生成的 cos/sin 表反推每对维度实际的角速度：位置 1 的转角 atan2(sin, cos)。"""
    end = 2 * rope_scaling["original_max_position_embeddings"]  # 超过训练长度，YaRN 才会生效
    cos, sin = precompute_freqs_cis(head_dim, end, rope_base, rope_scaling=rope_scaling, family=family)
    return torch.atan2(sin[1, : head_dim // 2], cos[1, : head_dim // 2])  # (hd/2,)，都 < π，atan2 不会绕圈


def scale_curves() -> dict:
    """两代各自默认配置下的缩放系数，以及同一 head_dim / factor 下的对比。全部来自 model/ 的真实函数。"""
    curves = {}
    for family in ("minimind2", "minimind3"):
        config = MiniMindConfig(family=family, inference_rope_scaling=True)
        yarn, hd, base = config.rope_scaling, config.head_dim, config.rope_theta
        freqs = base_freqs(hd, base)
        if family == "minimind2":
            scale = yarn_scale_minimind2(freqs, yarn)
        else:
            scale = yarn_scale_minimind3(hd, base, yarn)
        from_table = freqs_from_table(hd, base, yarn, family)
        curves[f"{family} default"] = {
            "family": family, "head_dim": hd, "rope_theta": base, "rope_scaling": yarn,
            "scale": scale.tolist(), "wavelength": (2 * math.pi / freqs).tolist(),
            "table_max_abs_err": (from_table - freqs * scale).abs().max().item(),
            "attention_factor": yarn.get("attention_factor", 1.0), "paper_mscale": paper_mscale(yarn["factor"])}
    # 同一 head_dim=64、factor=4、original 2048 下两种公式并排
    hd, base = 64, 1e6
    freqs = base_freqs(hd, base)
    same = {"original_max_position_embeddings": 2048, "factor": FACTOR}
    curves["minimind2 @hd64 s4"] = {"scale": yarn_scale_minimind2(freqs, {**YARN_DEFAULTS["minimind2"], **same}).tolist(),
                                    "wavelength": (2 * math.pi / freqs).tolist(), "head_dim": hd}
    curves["minimind3 @hd64 s4"] = {"scale": yarn_scale_minimind3(hd, base, {**YARN_DEFAULTS["minimind3"], **same}).tolist(),
                                    "wavelength": (2 * math.pi / freqs).tolist(), "head_dim": hd}
    return curves


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, list[float]]:
    """windows: (N, T)。返回每个预测位置的平均交叉熵 (T-1,)，以及每个窗口的平均交叉熵（N 个）：
    各方法读的是同一批窗口，后者可以按窗口配对，作为单种子时的评估噪声（modules/common/noise.py）。"""
    model.eval()
    rows = []
    for chunk in windows.split(batch_size):
        logits = model(chunk).logits  # (B, T, V)
        rows.append(F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none").cpu())  # (B, T-1)
    model.train()
    ce = torch.cat(rows)  # (N, T-1)
    return ce.mean(0), ce.mean(1).tolist()


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "minimind2→3 实验 2：两代 YaRN 的逐维频率缩放系数（来自真实函数），\n"
        "以及在 L 上训练的模型用直接外推 / PI / 两代 YaRN（同一 factor 4）读 4L 长序列的验证 loss。"))
    train_len = exp.args.train_len
    steps = exp.args.steps if exp.args.steps is not None else (300 if exp.quick else 600)
    if train_len < 8 or steps < 1:
        raise SystemExit(f"--train-len 至少为 8、--steps 至少为 1（收到 {train_len}、{steps}）")
    set_style()

    # ---------------- 第一部分：公式 ----------------
    curves = scale_curves()
    rows = []
    for name, c in curves.items():
        s = c["scale"]
        rows.append([name, c["head_dim"], len(s), f"{s[0]:.4f}", f"{s[-1]:.4f}", sum(v == 1.0 for v in s),
                     c.get("table_max_abs_err", "-")])
    exp.print_table(["curve", "head_dim", "pairs", "scale[0] (highest freq)", "scale[-1] (lowest freq)",
                     "pairs left at 1", "cos/sin table err"], rows, title="YaRN per-pair frequency scale (real functions)")
    m3 = curves["minimind3 default"]
    exp.print_table(["family", "factor s", "paper mscale 0.1 ln s + 1", "attention_factor used"],
                    [[c["family"], c["rope_scaling"]["factor"], f"{c['paper_mscale']:.4f}", c["attention_factor"]]
                     for c in (curves["minimind2 default"], m3)], title="Attention temperature (mscale)")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in ("minimind2 default", "minimind3 default"):
        c = curves[name]
        label = f"{name} (hd={c['head_dim']}, s={c['rope_scaling']['factor']})"
        axes[0].plot(c["wavelength"], c["scale"], marker=".", label=label)
    axes[0].axvline(2048, color="gray", ls="--", lw=1, label="original_max_position_embeddings=2048")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("wavelength 2*pi/theta_i (tokens)")
    axes[0].set_ylabel("frequency scale factor")
    axes[0].set_title("Default YaRN of each family")
    axes[0].legend(fontsize=8, loc="lower left")
    for name in ("minimind2 @hd64 s4", "minimind3 @hd64 s4"):
        axes[1].plot(np.arange(len(curves[name]["scale"])), curves[name]["scale"], marker=".", label=name)
    axes[1].axhline(1 / FACTOR, color="tab:gray", ls=":", lw=1, label=f"PI: 1/s = {1 / FACTOR}")
    axes[1].set_xlabel("dimension pair i (0 = highest frequency)")
    axes[1].set_ylabel("frequency scale factor")
    axes[1].set_title(f"Same head_dim=64, s={FACTOR}, original 2048")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp2_yarn_scale_factors.png")

    # ---------------- 第二部分：在 L 上训练，读 4L ----------------
    long_len = FACTOR * train_len
    n_windows = 32 if exp.quick else 64
    text = get_experiment_data("shakespeare")
    tokenizer = CharTokenizer(text)
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    windows, _ = BatchSampler(val_ids, long_len, n_windows, seed=1234).sample()  # (N, 4L)
    size = dict(hidden_size=128, num_layers=2, n_heads=4)
    mscale = paper_mscale(FACTOR)

    ref_loss, losses, curves_by_pos = [], {n: [] for n in METHODS}, {n: [] for n in METHODS}
    windows_loss = {}  # 第一个种子的逐窗口 loss：quick 模式（一个种子）按窗口配对做噪声检验
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        _, get_batch = char_lm_batches(text, train_len, batch_size=16, seed=seed, device=exp.device)
        model = LabModel(LabConfig(vocab_size=tokenizer.vocab_size, max_seq_len=train_len, **size)).to(exp.device)
        train_model(model, get_batch, steps=steps, lr=3e-3, eval_every=steps, device=exp.device,
                    desc=f"train L={train_len} seed={seed}")
        model.cpu()
        ref_per_pos, ref_windows = loss_by_position(model, windows[:, :train_len])
        ref_loss.append(ref_per_pos.mean().item())
        windows_loss.setdefault("reference", ref_windows)
        for name, (scaling, use_mscale) in METHODS.items():
            extended = set_rope_scaling(copy.deepcopy(model), long_len, scaling, factor=FACTOR if scaling else 1.0)
            if use_mscale:  # 论文的温度：cos/sin 都乘 mscale，q·k 就整体乘 mscale²（与 attention_factor 的做法相同）
                extended.model.freqs_cos *= mscale
                extended.model.freqs_sin *= mscale
            per_pos, per_window = loss_by_position(extended, windows)
            losses[name].append(per_pos.mean().item())
            windows_loss.setdefault(name, per_window)
            curves_by_pos[name].append(per_pos.tolist())

    names = list(METHODS)
    mean = {n: mean_std(losses[n])[0] for n in names}
    ref = mean_std(ref_loss)[0]
    exp.print_table(["method", f"val loss @ {long_len}", f"first {train_len} pos", f"pos {train_len}..{long_len - 1}"],
                    [[n, format_mean_std(losses[n]),
                      f"{np.mean(np.array(curves_by_pos[n])[:, :train_len - 1]):.4f}",
                      f"{np.mean(np.array(curves_by_pos[n])[:, train_len - 1:]):.4f}"] for n in names],
                    title=f"Trained at {train_len}, read at {long_len} (s={FACTOR}); reference @ {train_len}: "
                          f"{format_mean_std(ref_loss)}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    bars = axes[0].bar(x, [mean[n] for n in names], yerr=[mean_std(losses[n])[1] for n in names], capsize=3,
                       color=["tab:gray", "tab:orange", "tab:green", "tab:blue", "tab:purple"])
    axes[0].bar_label(bars, fmt="%.3f", fontsize=8)
    axes[0].axhline(ref, color="black", ls="--", lw=1, label=f"plain @ trained length {train_len}")
    axes[0].set_ylim(min(ref, min(mean.values())) - 0.1, max(mean.values()) + 0.15)
    axes[0].set_xticks(x, [n.replace(" ", "\n", 1).replace(" + ", "\n+ ") for n in names], fontsize=8)
    axes[0].set_ylabel(f"val loss over {long_len} tokens")
    axes[0].set_title(f"Read {FACTOR}x the training length")
    axes[0].legend(fontsize=8)
    window = 8  # 按 8 个位置做滑动平均，曲线更好读
    for name in names:
        per_pos = np.mean(np.array(curves_by_pos[name]), axis=0)
        smooth = np.convolve(per_pos, np.ones(window) / window, mode="valid")
        axes[1].plot(np.arange(len(smooth)) + window, smooth, label=name)
    axes[1].axvline(train_len, color="gray", ls="--", lw=1, label=f"training length {train_len}")
    axes[1].set_xlabel("position")
    axes[1].set_ylabel(f"loss ({window}-position moving average)")
    axes[1].set_title("Loss by position")
    axes[1].legend(fontsize=8)
    exp.save_figure(fig, "exp2_context_extension.png")

    def stats(values):
        return {"mean": mean_std(values)[0], "std": mean_std(values)[1], "runs": values}

    exp.save_metrics({"scale_curves": curves, "factor": FACTOR, "paper_mscale_at_factor": mscale,
                      "train_len": train_len, "long_len": long_len, "steps": steps, "n_windows": n_windows,
                      "model": {**size, "head_dim": size["hidden_size"] // size["n_heads"], "rope_theta": 1e6},
                      "reference_loss_at_train_len": stats(ref_loss), "loss_at_long_len": {n: stats(losses[n]) for n in names},
                      "loss_by_position": {n: np.mean(np.array(curves_by_pos[n]), axis=0).tolist() for n in names}})

    # ---- 结论（全部由上面的测量算出）----
    m2 = curves["minimind2 default"]
    exp.conclude("minimind-3 的 YaRN 让最高频维度保持不变（系数恰为 1），最低频维度恰好缩小 1/s",
                 m3["scale"][0] == 1.0 and abs(m3["scale"][-1] - 1 / m3["rope_scaling"]["factor"]) < 1e-7,
                 f"scale[0]={m3['scale'][0]:.6f}，scale[-1]={m3['scale'][-1]:.6f}，1/s={1 / m3['rope_scaling']['factor']:.6f}")
    a, b = np.array(curves["minimind2 @hd64 s4"]["scale"]), np.array(curves["minimind3 @hd64 s4"]["scale"])
    exp.conclude("同一 head_dim 与 factor 下，两代公式给出不同的缩放系数（MiniMind2 在高频区就开始缩放、在波长=训练长度处跳变）",
                 bool(np.abs(a - b).max() > 1e-3),
                 f"最大差 {np.abs(a - b).max():.3f}；MiniMind2 不为 1 的高频对数 {int(((a < 1) & (a > 1 / FACTOR)).sum())}，"
                 f"minimind-3 保持 1 的对数 {int((b == 1).sum())}")
    exp.conclude("precompute_freqs_cis 的 cos/sin 表与两个缩放函数一致（同一份实现）",
                 max(m2["table_max_abs_err"], m3["table_max_abs_err"]) < 1e-5,
                 f"最大误差 {max(m2['table_max_abs_err'], m3['table_max_abs_err']):.2e}")
    exp.conclude("minimind-3 不用论文的注意力温度：attention_factor=1，而论文的 mscale > 1",
                 m3["attention_factor"] == 1.0 and m3["paper_mscale"] > 1.0,
                 f"attention_factor={m3['attention_factor']}，论文 0.1·ln({m3['rope_scaling']['factor']})+1="
                 f"{m3['paper_mscale']:.4f}")

    def verdict(a: str, b: str, direction: str):
        """a 比 b 的 loss 更低（less）/更高（greater）：多种子按种子配对，单种子按窗口配对。"""
        a_seeds, b_seeds = (ref_loss if a == "reference" else losses[a]), (ref_loss if b == "reference" else losses[b])
        return compare_runs(a_seeds, b_seeds, direction, windows_loss[a], windows_loss[b])

    exp.conclude_verdict(f"直接外推到 {long_len} 比训练长度 {train_len} 内差", verdict("plain", "reference", "greater"),
                         f"{mean['plain']:.3f} vs {ref:.3f}")
    yarns = ["yarn minimind2", "yarn minimind3", "yarn minimind3 + mscale"]
    best = min(yarns, key=mean.get)  # 三种 YaRN 里均值最好的一种与直接外推比（挑选只在 3 个里进行）
    exp.conclude_verdict(f"不微调时，至少一种 YaRN 在 {FACTOR}× 长度上胜过直接外推", verdict(best, "plain", "less"),
                         "，".join(f"{n} {mean[n]:.3f}" for n in names) + f"（检验的是均值最好的：{best}）")
    exp.conclude_verdict("minimind-3 的 YaRN（论文 ramp）比 MiniMind2 的 YaRN 好",
                         verdict("yarn minimind3", "yarn minimind2", "less"),
                         f"{mean['yarn minimind3']:.3f} vs {mean['yarn minimind2']:.3f}")
    exp.conclude_verdict(f"加上论文的 mscale（{mscale:.3f}）比 minimind-3 的 attention_factor=1 更好",
                         verdict("yarn minimind3 + mscale", "yarn minimind3", "less"),
                         f"{mean['yarn minimind3 + mscale']:.3f} vs {mean['yarn minimind3']:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
