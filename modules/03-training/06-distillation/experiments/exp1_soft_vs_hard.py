"""实验 1：软标签 vs 硬标签——同样的 token 预算，跟着老师的分布学的学生，是不是更像老师、也学得更好？

每个种子先在字符级 TinyShakespeare 上训练一个老师（MiniMind，hidden 128、2 层），
再用完全相同的批次顺序、相同步数训练三个同样大小的学生（hidden 64、1 层）：
  - hard：α=0，只用真实的下一个字符（普通预训练）；
  - soft：α=1，T=1，只学老师的完整分布（软标签，不另加温度；温度的影响见实验 2）；
  - mix ：α=0.5，T=2，两项各一半（Hinton et al. 2015 与 trainer/train_distillation.py 的默认做法）。
损失一律是 trainer/train_distillation.py::distillation_loss。在固定的验证批上比较：
学生的真实标签交叉熵（val loss），以及学生 argmax 与老师 argmax 相同的位置占比（agreement）。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 distill_lab（它再把仓库根目录放进 sys.path）

import matplotlib.pyplot as plt  # noqa: E402

from distill_lab import (  # noqa: E402
    BATCH, BLOCK, STUDENT_SIZE, TEACHER_SIZE, eval_batches, evaluate, n_params, new_model, train_student,
    train_teacher, training_steps,
)
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

VARIANTS = {"hard": dict(alpha=0.0, temperature=1.0),  # α=0 时 T 不起作用
            "soft": dict(alpha=1.0, temperature=1.0),
            "mix": dict(alpha=0.5, temperature=2.0)}
N_EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="老师与每个学生的训练步数（默认 quick 100 / full 160）")


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "蒸馏实验 1：同样步数下，只用硬标签（α=0）、只用老师软标签（α=1, T=1）、两者各半（α=0.5）训练的学生，\n"
        "比较真实标签上的验证 loss 与和老师 argmax 的一致率。"))
    steps = training_steps(exp.args, exp.quick, quick_default=100, full_default=160)
    text = get_experiment_data("shakespeare")

    runs = {name: [] for name in VARIANTS}  # 每个变体每个种子一项
    teacher_losses, curves = [], {}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        teacher, _ = train_teacher(TEACHER_SIZE, tokenizer.vocab_size, get_batch, steps, seed, exp.device,
                                   desc=f"teacher seed={seed}")
        batches = eval_batches(text, N_EVAL_BATCHES, seed, exp.device)
        for name, cfg in VARIANTS.items():
            # 每个学生：同一个初始化（seed）、同一串训练批（重新建的 get_batch，种子相同）
            _, student_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
            student = new_model(STUDENT_SIZE, tokenizer.vocab_size, seed)
            hist = train_student(student, teacher, student_batches, steps, **cfg, device=exp.device,
                                 eval_every=max(1, steps // 10), desc=f"{name} seed={seed}")
            scores = evaluate(student, teacher, batches)
            runs[name].append({"seed": seed, **scores})
            if seed == exp.seed:
                curves[name] = {"steps": [s + 1 for s in hist["val_steps"]], "val_loss": hist["val_loss"]}
        teacher_losses.append(runs["hard"][-1]["teacher_val_loss"])

    summary = {name: {key: mean_std([r[key] for r in rs]) for key in ("student_val_loss", "agreement")}
               for name, rs in runs.items()}
    vocab = tokenizer.vocab_size
    exp.save_metrics({
        "steps": steps, "tokens_per_student": steps * BATCH * BLOCK, "variants": VARIANTS,
        "params": {"teacher": n_params(new_model(TEACHER_SIZE, vocab, 0)),
                   "student": n_params(new_model(STUDENT_SIZE, vocab, 0))},
        "teacher_val_loss": {"mean": mean_std(teacher_losses)[0], "std": mean_std(teacher_losses)[1],
                             "values": teacher_losses},
        "runs": runs,
        "summary": {name: {key: {"mean": m, "std": s} for key, (m, s) in d.items()} for name, d in summary.items()},
        "curves": curves,
    })

    exp.print_table(
        ["student", "alpha", "T", "val loss (true CE)", "agreement with teacher"],
        [[name, cfg["alpha"], cfg["temperature"],
          format_mean_std([r["student_val_loss"] for r in runs[name]]),
          format_mean_std([r["agreement"] for r in runs[name]])] for name, cfg in VARIANTS.items()],
        title=f"学生（{STUDENT_SIZE['hidden_size']}×{STUDENT_SIZE['num_hidden_layers']} 层），每个 {steps} 步；"
              f"老师 val loss {format_mean_std(teacher_losses)}")

    set_style()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        ax1.plot(c["steps"], c["val_loss"], marker="o", ms=3, label=f"{name} (alpha={VARIANTS[name]['alpha']})")
    ax1.axhline(teacher_losses[0], color="gray", ls="--", label="teacher")
    ax1.set(title=f"Student val loss (true labels), seed {exp.seed}", xlabel="step", ylabel="cross-entropy")
    ax1.legend()
    names = list(VARIANTS)
    means = [summary[n]["agreement"][0] for n in names]
    stds = [summary[n]["agreement"][1] for n in names]
    ax2.bar(names, means, yerr=stds, color=["#888888", "#1f77b4", "#2ca02c"], capsize=4)
    for i, m in enumerate(means):
        ax2.text(i, m, f"{m:.3f}", ha="center", va="bottom")
    ax2.set(title="Top-1 agreement with teacher (held-out)", ylabel="fraction of positions",
            ylim=(min(means) - 0.05, max(means) + 0.03))
    exp.save_figure(fig, "exp1_soft_vs_hard.png")

    def verdict(a: str, b: str, key: str, direction: str):
        """学生 a 的 key 比学生 b 更低（less）/更高（greater）：多种子按种子配对；单种子按同一组验证批配对。"""
        per_batch = {"student_val_loss": "student_val_batches", "agreement": "agreement_batches"}[key]
        return compare_runs([r[key] for r in runs[a]], [r[key] for r in runs[b]], direction,
                            runs[a][0][per_batch], runs[b][0][per_batch])

    hard, soft, mix = (summary[n] for n in ("hard", "soft", "mix"))
    exp.conclude_verdict("软标签学生（α=1, T=1）与老师的一致率高于硬标签学生（α=0）",
                         verdict("soft", "hard", "agreement", "greater"),
                         f"agreement soft {soft['agreement'][0]:.4f} vs hard {hard['agreement'][0]:.4f}")
    exp.conclude_verdict("软标签学生在真实标签上的验证 loss 也低于硬标签学生",
                         verdict("soft", "hard", "student_val_loss", "less"),
                         f"val loss soft {soft['student_val_loss'][0]:.4f} vs hard {hard['student_val_loss'][0]:.4f}"
                         f"（老师 {mean_std(teacher_losses)[0]:.4f}）")
    exp.conclude_verdict("各半混合（α=0.5, T=2）的验证 loss 低于硬标签学生",
                         verdict("mix", "hard", "student_val_loss", "less"),
                         f"val loss mix {mix['student_val_loss'][0]:.4f} vs hard {hard['student_val_loss'][0]:.4f}")
    exp.finish()


if __name__ == "__main__":
    main()
