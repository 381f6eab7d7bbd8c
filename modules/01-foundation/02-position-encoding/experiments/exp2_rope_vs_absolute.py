"""实验 2：五种位置编码，训练在短序列上，读更长的序列会怎样？

同一个 LabModel（只换 pos_encoding 开关）：RoPE、可学习绝对位置（GPT-2）、正弦绝对位置（原始 Transformer）、
ALiBi、不要位置编码（NoPE），都在字符级 TinyShakespeare 上以长度 L（默认 64）训练，
然后在验证集的同一批 4L 长的窗口上，分别取前 L、2L、4L 个 token 评估（长度之外的一切都相同）：
  - 可学习绝对位置的表只有 L 行，超出长度根本无法前向（报告 n/a）；
  - 每个位置各算一次 loss，画出"位置 → loss"曲线，看超出训练长度后谁变差、谁不变。
比较结论经 modules/common/noise.py 的噪声检验：完整模式按种子配对；quick 模式只有一个种子，
按验证窗口配对（同一批窗口，每个窗口一个平均 loss），只量到"换一批评估数据"的噪声。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.lab_model import LabConfig, LabModel  # noqa: E402
from modules.common.noise import compare_runs, noninferior_runs  # noqa: E402
from modules.common.text_data import BatchSampler, CharTokenizer, char_lm_batches, train_val_split  # noqa: E402
from modules.common.training import train_model  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

ENCODINGS = ("rope", "learned", "sinusoidal", "alibi", "none")
MULTIPLIERS = (1, 2, 4)
NONINFERIOR_MARGIN = 0.02  # "RoPE 不比可学习绝对位置差"允许的最大差距（nats），写代码时定好，不随结果调整


def add_args(parser):
    parser.add_argument("--train-len", type=int, default=64, help="训练序列长度 L（默认 64）；评估用 L、2L、4L")
    parser.add_argument("--steps", type=int, default=None, help="每个模型的训练步数（默认 quick 150 / full 400）")


def val_windows(text: str, length: int, n_windows: int, seed: int) -> torch.Tensor:
    """从验证集（文本最后 10%）随机截 n_windows 段长 length 的窗口：(n_windows, length)。"""
    tokenizer = CharTokenizer(text)
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    input_ids, _ = BatchSampler(val_ids, length, n_windows, seed).sample()
    return input_ids


@torch.no_grad()
def loss_by_position(model, windows: torch.Tensor, batch_size: int = 16) -> torch.Tensor | None:
    """每个窗口、每个位置的交叉熵：返回 (n_windows, T-1)，第 t 列是"看到位置 0..t、预测位置 t+1"的 loss。

    模型放不下这个长度（可学习位置表不够长）时返回 None。
    """
    model.eval()
    rows = []
    for chunk in windows.split(batch_size):
        try:
            logits = model(chunk).logits  # (B, T, V)
        except ValueError:  # 序列长度超过 max_seq_len：可学习的位置表里没有这些位置
            return None
        rows.append(F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none"))  # (B, T-1)
    model.train()
    return torch.cat(rows)


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "位置编码实验 2：RoPE / 可学习绝对位置 / 正弦 / ALiBi / NoPE 在长度 L 上训练，\n"
        "在 L、2L、4L 上评估验证 loss：谁能读比训练更长的序列？"))
    train_len = exp.args.train_len
    if train_len < 8:
        raise SystemExit(f"--train-len 至少为 8（收到 {train_len}），请换一个更大的长度")
    steps = exp.args.steps if exp.args.steps is not None else (150 if exp.quick else 400)
    if steps < 1:
        raise SystemExit(f"--steps 必须 >= 1（收到 {steps}）")
    n_windows = 32 if exp.quick else 64
    lengths = [m * train_len for m in MULTIPLIERS]
    text = get_experiment_data("shakespeare")
    windows = val_windows(text, lengths[-1], n_windows, seed=1234)  # (n_windows, 4L)；较短的长度取前缀
    set_style()

    # losses[enc][length] = 每个种子的平均 loss（None = 无法前向）；curves[enc] = 各种子在最长长度上的逐位置 loss
    # per_window[enc][length] = 第一个种子上每个验证窗口的平均 loss（quick 模式的配对噪声）
    losses = {enc: {length: [] for length in lengths} for enc in ENCODINGS}
    per_window = {enc: {} for enc in ENCODINGS}
    tails = {enc: [] for enc in ENCODINGS}  # 最长长度里、超出训练长度那一段（位置 >= L）的平均 loss
    curves = {enc: [] for enc in ENCODINGS}
    histories = {}
    for seed in exp.seeds:
        tokenizer, get_batch = char_lm_batches(text, train_len, batch_size=16, seed=seed, device=exp.device)
        for enc in ENCODINGS:
            Experiment.seed_everything(seed)
            # 可学习位置表只开到训练长度（它只能学到见过的位置）；其余编码没有"表长"的限制，开到 4L
            max_len = train_len if enc == "learned" else lengths[-1]
            config = LabConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, n_heads=4,
                               max_seq_len=max_len, pos_encoding=enc)
            model = LabModel(config).to(exp.device)
            hist = train_model(model, get_batch, steps=steps, lr=3e-3, eval_every=steps, device=exp.device,
                               desc=f"{enc} seed={seed}")
            histories[f"{enc}, seed={seed}"] = {"train_loss": hist["train_loss"], "val_loss": hist["val_loss"]}
            model.cpu()
            for length in lengths:
                window_losses = loss_by_position(model, windows[:, :length])  # (n_windows, length-1) 或 None
                losses[enc][length].append(None if window_losses is None else window_losses.mean().item())
                if window_losses is None:
                    continue
                if seed == exp.seeds[0]:
                    per_window[enc][length] = window_losses.mean(1).tolist()
                if length == lengths[-1]:
                    curves[enc].append(window_losses.mean(0))
                    tails[enc].append(window_losses[:, train_len - 1:].mean().item())  # 预测位置 >= L 的 token

    def cell(values):
        return "n/a" if None in values else format_mean_std(values)

    exp.print_table(["pos_encoding"] + [f"val loss @ {m}x ({m * train_len})" for m in MULTIPLIERS]
                    + [f"@{MULTIPLIERS[-1]}x, positions >= {train_len}"],
                    [[enc] + [cell(losses[enc][length]) for length in lengths] + [cell(tails[enc]) if tails[enc] else "n/a"]
                     for enc in ENCODINGS],
                    title=f"Validation loss, trained at length {train_len} ({steps} steps, {len(exp.seeds)} seed(s))")

    # 图：最长长度上的逐位置 loss（多种子取平均），竖线是训练长度
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for enc in ENCODINGS:
        if curves[enc]:
            mean_curve = torch.stack(curves[enc]).mean(0)
            smooth = F.avg_pool1d(mean_curve[None, None], 15, stride=1, padding=7, count_include_pad=False)[0, 0]
            ax.plot(range(1, len(smooth) + 1), smooth.numpy(), label=enc)
    ax.axvline(train_len, color="gray", ls="--", lw=1)
    ax.text(train_len, ax.get_ylim()[1], f" trained length {train_len}", va="top", fontsize=9, color="gray")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("val loss (smoothed over 15 positions)")
    ax.set_title(f"Loss by position at {lengths[-1]} tokens (learned absolute cannot run past {train_len})")
    ax.legend()
    exp.save_figure(fig, "exp2_loss_by_position.png")

    summary = {enc: {str(length): (None if None in v else {"mean": mean_std(v)[0], "std": mean_std(v)[1], "runs": v})
                     for length, v in losses[enc].items()} for enc in ENCODINGS}
    for enc in ENCODINGS:
        summary[enc]["tail"] = ({"mean": mean_std(tails[enc])[0], "std": mean_std(tails[enc])[1], "runs": tails[enc]}
                                if tails[enc] else None)
    exp.save_metrics({"train_len": train_len, "steps": steps, "n_windows": n_windows, "lengths": lengths,
                      "model": {"hidden_size": 64, "num_layers": 2, "n_heads": 4, "batch_size": 16, "lr": 3e-3},
                      "val_loss": summary,
                      "loss_by_position": {enc: torch.stack(c).mean(0).tolist() for enc, c in curves.items() if c},
                      "per_window_first_seed": {enc: {str(length): v for length, v in w.items()} for enc, w in per_window.items()},
                      "histories": histories})

    # ---- 结论（全部由上面的测量算出）----
    short, longest = str(lengths[0]), str(lengths[-1])

    def mean_at(enc, key):
        return summary[enc][key]["mean"] if summary[enc][key] else None

    learned_na = summary["learned"][str(lengths[1])] is None and summary["learned"][longest] is None
    exp.conclude(f"可学习绝对位置编码只能读训练长度以内的序列：{lengths[1]}、{lengths[-1]} 长的输入无法前向（n/a）",
                 learned_na and summary["learned"][short] is not None,
                 f"learned @ {short} = {mean_at('learned', short):.3f}；更长的长度报 n/a")
    single = len(exp.seeds) == 1

    def runs(enc, length):
        return losses[enc][length]

    def windows_of(enc, length):
        return per_window[enc][length] if single else None

    def degrade(enc):
        """1× → 4× 的 loss 增幅：每个种子一个值，以及第一个种子上每个窗口一个值。"""
        seeds = [at_long - at_short for at_long, at_short in zip(runs(enc, lengths[-1]), runs(enc, lengths[0]))]
        items = ([at_long - at_short for at_long, at_short in zip(per_window[enc][lengths[-1]], per_window[enc][lengths[0]])]
                 if single else None)
        return seeds, items

    rope_short, rope_long, rope_tail = mean_at("rope", short), mean_at("rope", longest), mean_at("rope", "tail")
    exp.conclude_verdict(f"普通 RoPE 超出训练长度会变差：{MULTIPLIERS[-1]}× 长度上的 val loss 高于 1×",
                         compare_runs(runs("rope", lengths[-1]), runs("rope", lengths[0]), "greater",
                                      windows_of("rope", lengths[-1]), windows_of("rope", lengths[0])),
                         evidence=f"rope：@{short} {rope_short:.3f} → @{longest} {rope_long:.3f}（超出部分 {rope_tail:.3f}）")
    degrades = {enc: degrade(enc) for enc in ENCODINGS if enc != "learned"}
    exp.conclude_verdict("ALiBi 的长度外推比 RoPE 好：从 1× 到 4× 的 loss 增幅更小",
                         compare_runs(degrades["alibi"][0], degrades["rope"][0], "less",
                                      degrades["alibi"][1], degrades["rope"][1]),
                         evidence="1×→4× 的增幅：" + "，".join(
                             f"{enc} {format_mean_std(d[0], 3)}" for enc, d in degrades.items()))
    exp.conclude_verdict(
        f"在训练长度以内，RoPE 不比可学习绝对位置差（1× 的 val loss 至多高 {NONINFERIOR_MARGIN}）",
        noninferior_runs(runs("rope", lengths[0]), runs("learned", lengths[0]), NONINFERIOR_MARGIN, "less",
                         windows_of("rope", lengths[0]), windows_of("learned", lengths[0])),
        evidence=f"rope {format_mean_std(runs('rope', lengths[0]), 3)} vs learned "
                 f"{format_mean_std(runs('learned', lengths[0]), 3)}")
    exp.finish()


if __name__ == "__main__":
    main()
