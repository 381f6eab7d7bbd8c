"""实验 1：软标签 vs 硬标签——学生只见到很少的数据时，老师的分布能补回多少？

Hinton et al. 2015 的语音实验：只用 3% 的训练数据时，硬标签训练的模型严重过拟合（测试准确率 44.5%），
而学老师软标签的模型几乎追平了用全部数据训练的模型（57.0% vs 58.9%）。这里在字符级 TinyShakespeare 上重做这件事：

每个种子先在全部训练数据上训练一个老师（MiniMind，hidden 128、2 层），再在两种转移集（学生能看到的输入）上，
用完全相同的步数、相同的初始化训练三个同样大小的学生（hidden 64、1 层）：
  - 小转移集：16 条长 64 的序列（1,024 个字符，约为训练切分的 0.1%），反复学几百遍；
  - 大转移集：4,096 条序列，每条平均只见一次多（对照：数据充足时）。
三个学生：hard（α=0，只用真实的下一个字符）、soft（α=1，T=1，只学老师分布）、
mix（α=0.5，T=2，两项各一半，trainer/train_distillation.py 的默认配方）。
损失一律是 trainer/train_distillation.py::distillation_loss。在固定的验证批上比较：
学生的真实标签交叉熵（val loss），以及学生 argmax 与老师 argmax 相同的位置占比（agreement）。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 distill_lab（它再把仓库根目录放进 sys.path）

import matplotlib.pyplot as plt  # noqa: E402

from distill_lab import (  # noqa: E402
    BATCH, BLOCK, STUDENT_SIZE, TEACHER_SIZE, PrecomputedTeacher, eval_batches, evaluate, n_params, new_model,
    train_student, train_teacher, training_steps, transfer_batches, transfer_set,
)
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

VARIANTS = {"hard": dict(alpha=0.0, temperature=1.0),  # α=0 时 T 不起作用
            "soft": dict(alpha=1.0, temperature=1.0),
            "mix": dict(alpha=0.5, temperature=2.0)}
LARGE_TRANSFER = 4096  # 大转移集的序列条数：300 步 × 16 条/批，每条平均只见 1.2 次
N_EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="老师与每个学生的训练步数（默认 300）")
    parser.add_argument("--small-transfer", type=int, default=16,
                        help=f"小转移集的序列条数（每条长 {BLOCK}，默认 16；必须在 1 到 {LARGE_TRANSFER // 4} 之间）")


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "蒸馏实验 1：小转移集（16 条序列）与大转移集（4,096 条）上，只用硬标签（α=0）、只用老师软标签（α=1, T=1）、\n"
        "两者各半（α=0.5, T=2）训练的学生：真实标签上的验证 loss 与和老师 argmax 的一致率。"))
    steps = training_steps(exp.args, exp.quick, quick_default=300, full_default=300)
    small = exp.args.small_transfer
    if not 1 <= small <= LARGE_TRANSFER // 4:
        raise SystemExit(f"--small-transfer 必须在 1 到 {LARGE_TRANSFER // 4} 之间（收到 {small}）：它要远小于大转移集")
    regimes = {"small": small, "large": LARGE_TRANSFER}  # 转移集的序列条数
    text = get_experiment_data("shakespeare")

    runs = {regime: {name: [] for name in VARIANTS} for regime in regimes}  # 每个转移集、每个学生、每个种子一项
    teacher_losses, curves = [], {}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        teacher, _ = train_teacher(TEACHER_SIZE, tokenizer.vocab_size, get_batch, steps, seed, exp.device,
                                   desc=f"teacher seed={seed}")  # 老师见过全部训练数据
        batches = eval_batches(text, N_EVAL_BATCHES, seed, exp.device)
        for regime, n_sequences in regimes.items():
            sequences = transfer_set(text, n_sequences, seed).to(exp.device)  # (K, BLOCK)
            cached_teacher = PrecomputedTeacher(teacher, sequences)
            for name, cfg in VARIANTS.items():
                # 每个学生：同一个初始化（seed）、同一串训练批（重新建的 get_batch，种子相同）
                student = new_model(STUDENT_SIZE, tokenizer.vocab_size, seed)
                hist = train_student(student, cached_teacher, transfer_batches(sequences, text, seed, exp.device),
                                     steps, **cfg, device=exp.device, eval_every=max(1, steps // 10),
                                     desc=f"{regime}/{name} seed={seed}")
                runs[regime][name].append({"seed": seed, **evaluate(student, teacher, batches)})
                if seed == exp.seed:
                    curves.setdefault(regime, {})[name] = {"steps": [s + 1 for s in hist["val_steps"]],
                                                           "val_loss": hist["val_loss"]}
        teacher_losses.append(runs["small"]["hard"][-1]["teacher_val_loss"])

    keys = ("student_val_loss", "agreement")
    summary = {regime: {name: {key: mean_std([r[key] for r in rs]) for key in keys} for name, rs in by_name.items()}
               for regime, by_name in runs.items()}
    vocab = tokenizer.vocab_size
    exp.save_metrics({
        "steps": steps, "tokens_per_student": steps * BATCH * BLOCK, "variants": VARIANTS,
        "transfer_sequences": regimes, "transfer_chars": {r: k * BLOCK for r, k in regimes.items()},
        "params": {"teacher": n_params(new_model(TEACHER_SIZE, vocab, 0)),
                   "student": n_params(new_model(STUDENT_SIZE, vocab, 0))},
        "teacher_val_loss": {"mean": mean_std(teacher_losses)[0], "std": mean_std(teacher_losses)[1],
                             "values": teacher_losses},
        "runs": runs,
        "summary": {regime: {name: {key: {"mean": m, "std": s} for key, (m, s) in d.items()}
                             for name, d in by_name.items()} for regime, by_name in summary.items()},
        "curves": curves,
    })

    exp.print_table(
        ["transfer set", "student", "alpha", "T", "val loss (true CE)", "agreement with teacher"],
        [[f"{regime} ({n_sequences} seqs)", name, cfg["alpha"], cfg["temperature"],
          format_mean_std([r["student_val_loss"] for r in runs[regime][name]]),
          format_mean_std([r["agreement"] for r in runs[regime][name]])]
         for regime, n_sequences in regimes.items() for name, cfg in VARIANTS.items()],
        title=f"学生（{STUDENT_SIZE['hidden_size']}×{STUDENT_SIZE['num_hidden_layers']} 层），每个 {steps} 步；"
              f"老师 val loss {format_mean_std(teacher_losses)}")

    set_style()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    colors = {"hard": "#888888", "soft": "#1f77b4", "mix": "#2ca02c"}
    for regime, style in (("small", "-"), ("large", ":")):
        for name, c in curves[regime].items():
            ax1.plot(c["steps"], c["val_loss"], ls=style, marker="o", ms=3, color=colors[name],
                     label=f"{regime}: {name}")
    ax1.axhline(teacher_losses[0], color="black", ls="--", lw=1, label="teacher")
    ax1.set(title=f"Student val loss (true labels), seed {exp.seed}", xlabel="step", ylabel="cross-entropy")
    ax1.legend(ncol=2, fontsize=8)
    width = 0.27
    for i, name in enumerate(VARIANTS):
        means = [summary[r][name]["student_val_loss"][0] for r in regimes]
        stds = [summary[r][name]["student_val_loss"][1] for r in regimes]
        xs = [j + (i - 1) * width for j in range(len(regimes))]
        ax2.bar(xs, means, width, yerr=stds, capsize=3, color=colors[name], label=name)
        for x, m in zip(xs, means):
            ax2.text(x, m, f"{m:.2f}", ha="center", va="bottom", fontsize=8)
    ax2.axhline(mean_std(teacher_losses)[0], color="black", ls="--", lw=1, label="teacher")
    ax2.set_xticks(range(len(regimes)), [f"{r} transfer set\n({k} seqs)" for r, k in regimes.items()])
    ax2.set(title="Final student val loss (true labels)", ylabel="cross-entropy")
    ax2.legend()
    exp.save_figure(fig, "exp1_soft_vs_hard.png")

    per_batch = {"student_val_loss": "student_val_batches", "agreement": "agreement_batches"}

    def verdict(regime: str, a: str, b: str, key: str, direction: str):
        """同一转移集上学生 a 的 key 比学生 b 更低（less）/更高（greater）：多种子按种子配对；单种子按验证批配对。"""
        ra, rb = runs[regime][a], runs[regime][b]
        return compare_runs([r[key] for r in ra], [r[key] for r in rb], direction,
                            ra[0][per_batch[key]], rb[0][per_batch[key]])

    def soft_gain(regime: str):
        """硬标签学生减软标签学生的 val loss（正数 = 软标签更好）：每个种子一个值，以及第一个种子的逐批值。"""
        hard, soft = runs[regime]["hard"], runs[regime]["soft"]
        seeds = [h["student_val_loss"] - s["student_val_loss"] for h, s in zip(hard, soft)]
        batches_ = [h - s for h, s in zip(hard[0]["student_val_batches"], soft[0]["student_val_batches"])]
        return seeds, batches_

    def val(regime: str, name: str) -> float:
        return summary[regime][name]["student_val_loss"][0]

    s_small = summary["small"]
    exp.conclude_verdict(f"小转移集（{small} 条序列）上，软标签学生（α=1, T=1）与老师的一致率高于硬标签学生（α=0）",
                         verdict("small", "soft", "hard", "agreement", "greater"),
                         f"agreement soft {s_small['soft']['agreement'][0]:.4f} "
                         f"vs hard {s_small['hard']['agreement'][0]:.4f}")
    exp.conclude_verdict("小转移集上，软标签学生在真实标签上的验证 loss 低于硬标签学生",
                         verdict("small", "soft", "hard", "student_val_loss", "less"),
                         f"val loss soft {val('small', 'soft'):.4f} vs hard {val('small', 'hard'):.4f}"
                         f"（老师 {mean_std(teacher_losses)[0]:.4f}）")
    exp.conclude_verdict("小转移集上，各半混合（α=0.5, T=2）的验证 loss 低于硬标签学生",
                         verdict("small", "mix", "hard", "student_val_loss", "less"),
                         f"val loss mix {val('small', 'mix'):.4f} vs hard {val('small', 'hard'):.4f}")
    exp.conclude_verdict(f"对照：大转移集（{LARGE_TRANSFER} 条序列）上，软标签学生的验证 loss 也低于硬标签学生",
                         verdict("large", "soft", "hard", "student_val_loss", "less"),
                         f"val loss soft {val('large', 'soft'):.4f} vs hard {val('large', 'hard'):.4f}")
    gain_small, gain_large = soft_gain("small"), soft_gain("large")
    exp.conclude_verdict("软标签相对硬标签的好处（val loss 之差）在小转移集上大于大转移集",
                         compare_runs(gain_small[0], gain_large[0], "greater", gain_small[1], gain_large[1]),
                         f"hard − soft：小转移集 {mean_std(gain_small[0])[0]:+.4f}，大转移集 {mean_std(gain_large[0])[0]:+.4f}")
    exp.finish()


if __name__ == "__main__":
    main()
