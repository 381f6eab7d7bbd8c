"""实验 4：上下文扩展——训练在 L 上的 RoPE 模型，怎样读 4L 长的序列？

先用普通 RoPE 在长度 L（默认 64）上训练一个 LabModel，然后不改任何权重、只重算 cos/sin 表，
用四种方式读 4L 长的验证序列（modules/common/lab_model.py 的 set_rope_scaling）：
  plain  直接外推：位置 L..4L-1 的转角训练时从没见过；
  pi     位置插值（Chen et al. 2023）：位置 m 当成 m/4，所有转角都回到训练范围；
  ntk    NTK-aware：base → base·4^(d/(d-2))，高频几乎不动、低频被压缩；
  yarn   MiniMind 的 inference_rope_scaling：低频按 1/4 插值，高频只轻微缩放。
每种方式再在 4L 长的序列上短暂微调几十步，看"缩放 + 少量微调"能恢复多少。
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
def mean_loss(model, windows: torch.Tensor, batch_size: int = 16) -> float:
    """windows: (N, T) 的验证窗口上的平均下一个 token 交叉熵。"""
    model.eval()
    total = 0.0
    for chunk in windows.split(batch_size):
        logits = model(chunk).logits  # (B, T, V)
        total += F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="sum").item()
    model.train()
    return total / (len(windows) * (windows.shape[1] - 1))


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
        base_loss.append(mean_loss(model, windows[:, :train_len]))

        for method in METHODS:
            extended = set_rope_scaling(copy.deepcopy(model), long_len, method, factor=FACTOR if method else 1.0)
            no_ft[name_of(method)].append(mean_loss(extended, windows))
            # 同样的微调数据与步数：4L 长的序列，batch 4（每步的 token 数与预训练相同）
            Experiment.seed_everything(seed)
            _, get_long = char_lm_batches(text, long_len, batch_size=4, seed=seed + 100, device=exp.device)
            hist = train_model(extended, get_long, steps=ft_steps, lr=1e-3, warmup_steps=2, eval_every=ft_steps,
                               device=exp.device, desc=f"finetune {name_of(method)} seed={seed}")
            extended.cpu()
            with_ft[name_of(method)].append(mean_loss(extended, windows))
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
                      "finetune_train_loss": ft_curves})

    # ---- 结论（全部由上面的测量算出）----
    mean = {key: {n: mean_std(v)[0] for n, v in d.items()} for key, d in (("no_ft", no_ft), ("ft", with_ft))}
    ref = mean_std(base_loss)[0]
    scaled = [n for n in names if n != "plain"]
    best = min(scaled, key=lambda n: mean["no_ft"][n])
    exp.conclude(f"直接外推会变差：普通 RoPE 读 {long_len} 个 token 的 loss 高于训练长度 {train_len} 内",
                 mean["no_ft"]["plain"] > ref, f"{mean['no_ft']['plain']:.3f} vs {ref:.3f}")
    exp.conclude(f"不微调时，至少一种缩放（PI/NTK/YaRN）在 {FACTOR}× 长度上胜过直接外推",
                 mean["no_ft"][best] < mean["no_ft"]["plain"],
                 "不微调：" + "，".join(f"{n} {mean['no_ft'][n]:.3f}" for n in names) + f"（最好的缩放：{best}）")
    exp.conclude(f"不微调时 NTK-aware 胜过位置插值 PI（PI 把高频也压缩了 {FACTOR} 倍，局部分辨率受损）",
                 mean["no_ft"]["ntk"] < mean["no_ft"]["pi"],
                 f"ntk {mean['no_ft']['ntk']:.3f} vs pi {mean['no_ft']['pi']:.3f}")
    improved = [n for n in names if mean["ft"][n] < mean["no_ft"][n]]
    exp.conclude(f"在 {long_len} 上微调 {ft_steps} 步，每种方式的 loss 都下降",
                 len(improved) == len(names), f"下降的：{improved}；" + "，".join(
                     f"{n} {mean['no_ft'][n]:.3f}→{mean['ft'][n]:.3f}" for n in names))
    best_ft = min(scaled, key=lambda n: mean["ft"][n])
    exp.conclude("微调之后，最好的缩放方式仍不差于直接外推再微调",
                 mean["ft"][best_ft] <= mean["ft"]["plain"],
                 f"{best_ft} {mean['ft'][best_ft]:.3f} vs plain {mean['ft']['plain']:.3f}")
    exp.finish()


if __name__ == "__main__":
    main()
