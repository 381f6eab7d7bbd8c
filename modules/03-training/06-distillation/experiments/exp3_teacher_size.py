"""实验 3：老师越大越好吗？——同一个小学生，分别向三个大小不同的老师学（容量差距，Mirzadeh et al. 2020）。

每个种子：三个老师（small = 与学生同样大小 / medium / large，hidden 与层数递增）在字符级 TinyShakespeare 上
用相同步数、相同批次普通预训练（步数要够大老师拉开差距：160 步时 large 与 medium 还分不出来）；再把同一个学生（hidden 64、1 层，相同初始化、相同批次、相同步数）
分别用 α=1、T=1 蒸馏（trainer/train_distillation.py::distillation_loss），另有一个 α=0 的硬标签学生作基线。
比较：老师的验证 loss、学生的验证 loss（真实标签 CE）、学生与"自己的老师"的 argmax 一致率。
要检验的是文献里的容量差距（Mirzadeh et al. 2020；Cho & Hariharan 2019）：差距小时学生随老师变好，
差距大时老师再变好，学生的收益也停住甚至倒退。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 distill_lab（它再把仓库根目录放进 sys.path）

import matplotlib.pyplot as plt  # noqa: E402

from distill_lab import (  # noqa: E402
    BATCH, BLOCK, STUDENT_SIZE, eval_batches, evaluate, n_params, new_model, train_student, train_teacher,
    training_steps,
)
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

TEACHERS = {
    "small": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),  # = 学生
    "medium": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "large": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
}
ALPHA, TEMPERATURE = 1.0, 1.0  # 只学老师分布：一致率直接反映"学得像不像"（T 的影响见实验 2）
N_EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="每个老师、每个学生的训练步数（默认 quick 240 / full 480）")


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "蒸馏实验 3：三个大小不同的老师（相同训练步数）蒸馏同一个小学生（α=1, T=1）：\n"
        "老师 val loss、学生 val loss、学生与老师的一致率；外加一个只用硬标签的学生作基线。"))
    steps = training_steps(exp.args, exp.quick, quick_default=240, full_default=480)
    text = get_experiment_data("shakespeare")

    runs = {name: [] for name in TEACHERS}
    baseline = []  # 硬标签学生（α=0）：与老师无关，每个种子一个
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, _ = char_lm_batches(text, BLOCK, BATCH, seed=seed)
        vocab = tokenizer.vocab_size
        batches = eval_batches(text, N_EVAL_BATCHES, seed, exp.device)
        for name, size in TEACHERS.items():
            _, teacher_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
            teacher, _ = train_teacher(size, vocab, teacher_batches, steps, seed, exp.device,
                                       desc=f"teacher {name} seed={seed}")
            _, student_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
            student = new_model(STUDENT_SIZE, vocab, seed)
            train_student(student, teacher, student_batches, steps, temperature=TEMPERATURE, alpha=ALPHA,
                          device=exp.device, desc=f"student<-{name} seed={seed}")
            runs[name].append({"seed": seed, **evaluate(student, teacher, batches)})
            if name == "small":  # 硬标签基线：α=0 时老师不参与梯度，哪个老师都一样
                _, student_batches = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
                hard = new_model(STUDENT_SIZE, vocab, seed)
                train_student(hard, teacher, student_batches, steps, temperature=1.0, alpha=0.0,
                              device=exp.device, desc=f"hard seed={seed}")
                baseline.append(evaluate(hard, teacher, batches)["student_val_loss"])

    keys = ("teacher_val_loss", "student_val_loss", "agreement")
    summary = {name: {k: mean_std([r[k] for r in rs]) for k in keys} for name, rs in runs.items()}
    params = {name: n_params(new_model(size, vocab, 0)) for name, size in TEACHERS.items()}
    params["student"] = n_params(new_model(STUDENT_SIZE, vocab, 0))
    names = list(TEACHERS)
    teacher_loss = [summary[n]["teacher_val_loss"][0] for n in names]
    student_loss = [summary[n]["student_val_loss"][0] for n in names]
    best_teacher_for_student = min(names, key=lambda n: summary[n]["student_val_loss"][0])
    exp.save_metrics({
        "steps": steps, "alpha": ALPHA, "temperature": TEMPERATURE, "teachers": TEACHERS, "student": STUDENT_SIZE,
        "params": params, "runs": runs,
        "summary": {n: {k: {"mean": m, "std": s} for k, (m, s) in d.items()} for n, d in summary.items()},
        "hard_label_student_val_loss": {"mean": mean_std(baseline)[0], "std": mean_std(baseline)[1],
                                        "values": baseline},
        "best_teacher_for_student": best_teacher_for_student,
    })

    exp.print_table(
        ["teacher", "params", "teacher val loss", "student val loss", "agreement"],
        [[n, params[n], format_mean_std([r["teacher_val_loss"] for r in runs[n]]),
          format_mean_std([r["student_val_loss"] for r in runs[n]]),
          format_mean_std([r["agreement"] for r in runs[n]])] for n in names]
        + [["(hard labels)", "-", "-", format_mean_std(baseline), "-"]],
        title=f"学生 {params['student']} 参数，α={ALPHA}，T={TEMPERATURE:g}，每个模型 {steps} 步")

    set_style()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    labels = [f"{n}\n{params[n] / 1e3:.0f}k params" for n in names]
    ax1.errorbar(x, teacher_loss, yerr=[summary[n]["teacher_val_loss"][1] for n in names], marker="s", capsize=4,
                 label="teacher")
    ax1.errorbar(x, student_loss, yerr=[summary[n]["student_val_loss"][1] for n in names], marker="o", capsize=4,
                 label=f"student (alpha={ALPHA}, T={TEMPERATURE:g})")
    ax1.axhline(mean_std(baseline)[0], color="gray", ls="--", label="student, hard labels only")
    ax1.set_xticks(list(x), labels)
    ax1.set(title="Val loss (true labels)", ylabel="cross-entropy")
    ax1.legend()
    ax2.errorbar(x, [summary[n]["agreement"][0] for n in names], yerr=[summary[n]["agreement"][1] for n in names],
                 marker="o", capsize=4, color="#2ca02c")
    ax2.set_xticks(list(x), labels)
    ax2.set(title="Student top-1 agreement with its teacher", ylabel="fraction of positions")
    exp.save_figure(fig, "exp3_teacher_size.png")

    def verdict(a: str, b: str, key: str, direction: str):
        """a 组的 key 比 b 组更低（less）/更高（greater）：多种子按种子配对；单种子按同一组验证批配对。"""
        per_batch = {"teacher_val_loss": "teacher_val_batches", "student_val_loss": "student_val_batches",
                     "agreement": "agreement_batches"}[key]
        return compare_runs([r[key] for r in runs[a]], [r[key] for r in runs[b]], direction,
                            runs[a][0][per_batch], runs[b][0][per_batch])

    def means(key: str, pair) -> str:
        return " vs ".join(f"{n} {summary[n][key][0]:.4f}" for n in pair)

    # 单调的顺序（small > medium > large）要求每一步相邻的比较都超出噪声，所以每一步单独下结论
    for bigger, smaller in zip(names[1:], names):
        exp.conclude_verdict(f"老师 {bigger} 的验证 loss 低于老师 {smaller}（老师越大越好的一步）",
                             verdict(bigger, smaller, "teacher_val_loss", "less"),
                             "teacher val loss " + means("teacher_val_loss", (bigger, smaller)))
    # 容量差距：差距小（small → medium）时学生随老师变好；差距大（medium → large）时老师的改进传不到学生
    best_note = f"（三者均值最低的是跟 {best_teacher_for_student} 学的）"
    for better, other in (("medium", "small"), ("large", "small")):
        exp.conclude_verdict(f"跟 {better} 老师学的学生，验证 loss 低于跟 {other} 老师学的",
                             verdict(better, other, "student_val_loss", "less"),
                             "student val loss " + means("student_val_loss", (better, other)) + best_note)
    exp.conclude_verdict("对照：跟 large 老师学的学生，验证 loss 低于跟 medium 老师学的"
                         "（差距大时老师再变好，学生未必跟着变好）",
                         verdict("large", "medium", "student_val_loss", "less"),
                         "student val loss " + means("student_val_loss", ("large", "medium")) + best_note)

    def student_gains(better: str, worse: str):
        """换成更大的老师，学生 val loss 降了多少：每个种子一个值，以及（单种子时配对用的）逐批的值。"""
        per_seed = [w["student_val_loss"] - b["student_val_loss"] for b, w in zip(runs[better], runs[worse])]
        per_batch = [w - b for b, w in zip(runs[better][0]["student_val_batches"],
                                           runs[worse][0]["student_val_batches"])]
        return per_seed, per_batch

    far_seeds, far_batches = student_gains("large", "medium")  # 差距大的一步
    near_seeds, near_batches = student_gains("medium", "small")  # 差距小的一步
    exp.conclude_verdict("容量差距：老师 medium → large 一步给学生带来的改进，小于 small → medium 一步",
                         compare_runs(far_seeds, near_seeds, "less", far_batches, near_batches),
                         f"学生 val loss 的降幅：small → medium {sum(near_seeds) / len(near_seeds):+.4f}，"
                         f"medium → large {sum(far_seeds) / len(far_seeds):+.4f}；同时老师自己的降幅 "
                         f"{summary['small']['teacher_val_loss'][0] - summary['medium']['teacher_val_loss'][0]:+.4f}，"
                         f"{summary['medium']['teacher_val_loss'][0] - summary['large']['teacher_val_loss'][0]:+.4f}")
    for bigger, smaller in zip(names[1:], names):
        exp.conclude_verdict(f"学生与老师 {bigger} 的一致率低于与老师 {smaller}（老师越强越难模仿的一步）",
                             verdict(bigger, smaller, "agreement", "less"),
                             "agreement " + means("agreement", (bigger, smaller)))
    exp.finish()


if __name__ == "__main__":
    main()
