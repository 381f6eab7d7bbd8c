"""实验 4：上下文扩展——训练在 L 上的 RoPE 模型，怎样读 4L 长的序列？

先用普通 RoPE 在长度 L（默认 64）上训练一个 LabModel，然后不改任何权重、只重算 cos/sin 表，
用四种方式读 4L 长的验证序列（modules/common/lab_model.py 的 set_rope_scaling）：
  plain  直接外推：位置 L..4L-1 的转角训练时从没见过；
  pi     位置插值（Chen et al. 2023）：位置 m 当成 m/4，所有转角都回到训练范围；
  ntk    NTK-aware：base → base·4^(d/(d-2))，高频几乎不动、低频被压缩；
  yarn   MiniMind 的 inference_rope_scaling：低频按 1/4 插值，高频只轻微缩放。
每种方式再在 4L 长的序列上短暂微调几十步，看"缩放 + 少量微调"能恢复多少。
比较结论经 modules/common/noise.py 的噪声检验：完整模式按种子配对；quick 模式只有一个种子，
按验证窗口配对（同一批窗口，每个窗口一个平均 loss），只量到"换一批评估数据"的噪声。
"""
import copy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel, set_rope_scaling  # noqa: E402
from modules.common.noise import compare_runs, weakest  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, char_lm_batches, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

METHODS = (None, "pi", "ntk", "yarn")  # None = 直接外推
FACTOR = 4


def name_of(method):
    return method or "plain"


def add_args(parser):
    parser.add_argument("--train-len", type=int, default=64, help="训练长度 L（默认 64）；在 4L 上评估")
    parser.add_argument("--steps", type=int, default=None, help="在 L 上预训练的步数（默认 quick 300 / full 600）")
    parser.add_argument("--finetune-steps", type=int, default=None, help="在 4L 上微调的步数（默认 quick 30 / full 50）")


@torch.no_grad()
def window_losses(model, windows: torch.Tensor, batch_size: int = 16) -> list[float]:
    """windows: (N, T) 的验证窗口；返回每个窗口的平均下一个 token 交叉熵（N 个数）。"""
    model.eval()
    rows = []
    for chunk in windows.split(batch_size):
        logits = model(chunk).logits  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none")  # (B, T-1)
        rows.append(loss.mean(1))
    model.train()
    return torch.cat(rows).tolist()


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "位置编码实验 4：在长度 L 上训练的 RoPE 模型，用直接外推 / 位置插值 PI / NTK-aware / YaRN\n"
        "读 4L 长的序列，比较验证 loss；再各自在 4L 上微调几十步。"))
    train_len = exp.args.train_len
    steps = exp.args.steps if exp.args.steps is not None else (300 if exp.quick else 600)
    ft_steps = exp.args.finetune_steps if exp.args.finetune_steps is not None else (30 if exp.quick else 50)
    if train_len < 8 or steps < 1 or ft_steps < 1:
        raise SystemExit(f"--train-len 至少为 8、--steps 与 --finetune-steps 至少为 1"
                         f"（收到 {train_len}、{steps}、{ft_steps}）")
    long_len = FACTOR * train_len
    n_windows = 32 if exp.quick else 64
    text = get_experiment_data("shakespeare")
    tokenizer = CharTokenizer(text)
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    windows, _ = BatchSampler(val_ids, long_len, n_windows, seed=1234).sample()  # (N, 4L)
    set_style()

    base_loss = []  # 每个种子：1×（前 L 个 token、普通 RoPE）的 loss，作为"训练长度内"的参照
    no_ft = {name_of(m): [] for m in METHODS}
    with_ft = {name_of(m): [] for m in METHODS}
    per_window = {}  # 第一个种子上每个窗口的 loss（quick 模式的配对噪声）："base"、"no_ft/<方式>"、"ft/<方式>"

    def record(values: list, key: str, losses: list[float], first_seed: bool):
        """把一个种子的窗口平均 loss 记进 values；第一个种子还留下每个窗口的值。"""
        values.append(sum(losses) / len(losses))
        if first_seed:
            per_window[key] = losses

    ft_curves = {name_of(m): [] for m in METHODS}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        _, get_short = char_lm_batches(text, train_len, batch_size=16, seed=seed, device=exp.device)
        config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, n_heads=4,
                           max_seq_len=train_len)
        model = LabModel(config).to(exp.device)
        train_model(model, get_short, steps=steps, lr=3e-3, eval_every=steps, device=exp.device,
                    desc=f"pretrain L={train_len} seed={seed}")
        model.cpu()
        first_seed = seed == exp.seeds[0]
        record(base_loss, "base", window_losses(model, windows[:, :train_len]), first_seed)

        for method in METHODS:
            extended = set_rope_scaling(copy.deepcopy(model), long_len, method, factor=FACTOR if method else 1.0)
            record(no_ft[name_of(method)], f"no_ft/{name_of(method)}", window_losses(extended, windows), first_seed)
            # 同样的微调数据与步数：4L 长的序列，batch 4（每步的 token 数与预训练相同）
            Experiment.seed_everything(seed)
            _, get_long = char_lm_batches(text, long_len, batch_size=4, seed=seed + 100, device=exp.device)
            hist = train_model(extended, get_long, steps=ft_steps, lr=1e-3, warmup_steps=2, eval_every=ft_steps,
                               device=exp.device, desc=f"finetune {name_of(method)} seed={seed}")
            extended.cpu()
            record(with_ft[name_of(method)], f"ft/{name_of(method)}", window_losses(extended, windows), first_seed)
            ft_curves[name_of(method)].append(hist["train_loss"])

    names = [name_of(m) for m in METHODS]
    exp.print_table(["method", f"val loss @ {long_len}, no fine-tune", f"after {ft_steps} fine-tune steps @ {long_len}"],
                    [[n, format_mean_std(no_ft[n]), format_mean_std(with_ft[n])] for n in names],
                    title=f"RoPE trained at {train_len}, read at {long_len} ({FACTOR}x); "
                          f"reference @ {train_len}: {format_mean_std(base_loss)}")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(names))
    for offset, (label, values) in zip((-0.2, 0.2), (("no fine-tune", no_ft), (f"+{ft_steps} steps @ {long_len}", with_ft))):
        means = [mean_std(values[n])[0] for n in names]
        stds = [mean_std(values[n])[1] for n in names]
        bars = ax.bar(x + offset, means, width=0.4, yerr=stds, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(mean_std(base_loss)[0], color="gray", ls="--", lw=1, label=f"plain RoPE @ trained length {train_len}")
    lo = min(min(mean_std(v)[0] for v in d.values()) for d in (no_ft, with_ft))
    hi = max(max(mean_std(v)[0] for v in d.values()) for d in (no_ft, with_ft))
    ax.set_ylim(min(lo, mean_std(base_loss)[0]) - 0.1, hi + 0.1)
    ax.set_xticks(x, names)
    ax.set_ylabel(f"val loss at {long_len} tokens")
    ax.set_title(f"Context extension {train_len} -> {long_len}: RoPE scaling methods")
    ax.legend(fontsize=8)
    exp.save_figure(fig, "exp4_context_extension.png")

    def stats(values):
        return {"mean": mean_std(values)[0], "std": mean_std(values)[1], "runs": values}

    exp.save_metrics({"train_len": train_len, "long_len": long_len, "factor": FACTOR, "steps": steps,
                      "finetune_steps": ft_steps, "n_windows": n_windows,
                      "model": {"hidden_size": 64, "num_layers": 2, "n_heads": 4, "rope_theta": config.rope_theta},
                      "reference_loss_at_train_len": stats(base_loss),
                      "no_finetune": {n: stats(v) for n, v in no_ft.items()},
                      "finetuned": {n: stats(v) for n, v in with_ft.items()},
                      "finetune_train_loss": ft_curves, "per_window_first_seed": per_window})

    # ---- 结论（全部由上面的测量算出）----
    single = len(exp.seeds) == 1
    values = {"base": base_loss, **{f"no_ft/{n}": v for n, v in no_ft.items()}, **{f"ft/{n}": v for n, v in with_ft.items()}}

    def verdict(a: str, b: str, direction: str = "less"):
        """a 比 b 的 loss 更低（"less"）/更高（"greater"）：完整模式按种子配对，quick 按验证窗口配对。"""
        return compare_runs(values[a], values[b], direction,
                            per_window[a] if single else None, per_window[b] if single else None)

    def shown(key: str) -> str:
        return format_mean_std(values[key], 3)

    exp.conclude_verdict(f"直接外推会变差：普通 RoPE 读 {long_len} 个 token 的 loss 高于训练长度 {train_len} 内",
                         verdict("no_ft/plain", "base", "greater"), evidence=f"{shown('no_ft/plain')} vs {shown('base')}")
    exp.conclude_verdict(f"不微调时，MiniMind 用的 YaRN 在 {FACTOR}× 长度上胜过直接外推",
                         verdict("no_ft/yarn", "no_ft/plain"),
                         evidence="不微调：" + "，".join(f"{n} {shown('no_ft/' + n)}" for n in names))
    exp.conclude_verdict(f"不微调时 NTK-aware 胜过位置插值 PI（PI 把高频也压缩了 {FACTOR} 倍，局部分辨率受损）",
                         verdict("no_ft/ntk", "no_ft/pi"), evidence=f"ntk {shown('no_ft/ntk')} vs pi {shown('no_ft/pi')}")
    exp.conclude_verdict(f"在 {long_len} 上微调 {ft_steps} 步，每种方式的 loss 都下降",
                         weakest([verdict(f"ft/{n}", f"no_ft/{n}") for n in names]),
                         evidence="，".join(f"{n} {shown('no_ft/' + n)}→{shown('ft/' + n)}" for n in names))
    exp.conclude_verdict("微调之后，YaRN 仍好于直接外推再微调（缩放省下的不只是微调步数）",
                         verdict("ft/yarn", "ft/plain"), evidence=f"yarn {shown('ft/yarn')} vs plain {shown('ft/plain')}")
    exp.finish()


if __name__ == "__main__":
    main()
