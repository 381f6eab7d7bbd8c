"""实验 2：温度 T——什么时候升温有用？以及为什么 KL 项要乘 T²。

A. 温度扫描：每个种子在全部训练数据上训练一个老师（hidden 128、2 层），再用 α=1（只学老师分布）、
   T ∈ {1, 2, 4, 8} 各训练一个同样的学生（hidden 64、1 层，相同初始化、相同批次、相同步数），
   在两种转移集上各扫一遍：小转移集（16 条长 64 的序列，反复学几百遍；Hinton et al. 2015 说软标签与高温
   最有用的情形）与大转移集（4,096 条，每条平均只见一次多，对照）。比较学生的真实标签验证 loss 与一致率。
   另外量老师的分布在各个 T 下有多"软"（平均熵、top-1 之外的概率质量）：字符级老师在 T=1 时已经不尖。
B. T² 因子：固定一个验证批、固定老师与（大转移集上 T=1 训练出的）学生的 logits，用 autograd 求
   ∂KL_T/∂z_s 与 ∂(T²·KL_T)/∂z_s 的范数，T 从 1 到 16。
   理论：KL_T 对学生 logits 的梯度是 (softmax(z_s/T) − softmax(z_t/T)) / T，T 大时分子 ≈ (z_s − z_t)/(V·T)，
   所以不乘 T² 的梯度按 1/T² 缩小，乘上 T² 后与 T 无关。
两部分都调用 trainer/train_distillation.py::distillation_loss。
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 distill_lab（它再把仓库根目录放进 sys.path）

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from distill_lab import (  # noqa: E402
    BATCH, BLOCK, STUDENT_SIZE, TEACHER_SIZE, PrecomputedTeacher, eval_batches, evaluate, new_model, teacher_softness,
    train_student, train_teacher, training_steps, transfer_batches, transfer_set,
)
from modules.common.datasets import get_experiment_data  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.train_distillation import distillation_loss  # noqa: E402

SWEEP_T = [1.0, 2.0, 4.0, 8.0]
GRAD_T = [1.0, 2.0, 4.0, 8.0, 16.0]
TRANSFER = {"small": 16, "large": 4096}  # 转移集的序列条数（每条长 BLOCK），与实验 1 相同
N_EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="老师与每个学生的训练步数（默认 300）")


def kl_grad_norms(student_logits, teacher_logits, labels, temperatures) -> dict:
    """固定的 logits 上，对每个 T 求 ‖∂KL_T/∂z_s‖ 和 ‖∂(T²·KL_T)/∂z_s‖（α=1，所以 loss 就是 T²·KL）。"""
    out = {"T": list(temperatures), "without_T2": [], "with_T2": []}
    for T in temperatures:
        z = student_logits.detach().clone().requires_grad_(True)  # (B, L, V)
        loss, kl, _ = distillation_loss(z, teacher_logits, labels, T, alpha=1.0)  # loss = T²·KL
        (g_kl,) = torch.autograd.grad(kl, z, retain_graph=True)
        (g_loss,) = torch.autograd.grad(loss, z)
        out["without_T2"].append(g_kl.norm().item())
        out["with_T2"].append(g_loss.norm().item())
    return out


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "蒸馏实验 2：小转移集（16 条序列）与大转移集（4,096 条）上，温度 T ∈ {1,2,4,8} 下（α=1）学生的验证 loss\n"
        "与一致率、老师分布的熵；以及 KL 项对学生 logits 的梯度范数在乘 / 不乘 T² 时怎样随 T 变化（autograd 实测）。"))
    steps = training_steps(exp.args, exp.quick, quick_default=300, full_default=300)
    text = get_experiment_data("shakespeare")

    runs = {regime: {str(T): [] for T in SWEEP_T} for regime in TRANSFER}
    softness = {str(T): [] for T in SWEEP_T}  # 老师在验证批上的熵 / top-1 之外的质量，每个种子一项
    grads, teacher_losses = [], []
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        teacher, _ = train_teacher(TEACHER_SIZE, tokenizer.vocab_size, get_batch, steps, seed, exp.device,
                                   desc=f"teacher seed={seed}")  # 老师见过全部训练数据
        batches = eval_batches(text, N_EVAL_BATCHES, seed, exp.device)
        for T in SWEEP_T:
            softness[str(T)].append(teacher_softness(teacher, batches, T))
        for regime, n_sequences in TRANSFER.items():
            sequences = transfer_set(text, n_sequences, seed).to(exp.device)  # (K, BLOCK)
            cached_teacher = PrecomputedTeacher(teacher, sequences)
            for T in SWEEP_T:
                student = new_model(STUDENT_SIZE, tokenizer.vocab_size, seed)
                train_student(student, cached_teacher, transfer_batches(sequences, text, seed, exp.device), steps,
                              temperature=T, alpha=1.0, device=exp.device, desc=f"{regime}/T={T:g} seed={seed}")
                runs[regime][str(T)].append({"seed": seed, **evaluate(student, teacher, batches)})
                if regime == "large" and T == 1.0:  # B 部分用这个学生：一个"学过、但还没学像"的真实学生
                    input_ids, labels = batches[0]
                    with torch.no_grad():
                        s_logits, t_logits = student(input_ids).logits, teacher(input_ids).logits  # (B, L, V)
                    grads.append(kl_grad_norms(s_logits, t_logits, labels, GRAD_T))
        teacher_losses.append(runs["large"]["1.0"][-1]["teacher_val_loss"])

    # 每个种子的梯度范数除以它自己 T=1 的值，再在种子间平均：只看随 T 的变化
    rel = {k: [[g[k][i] / g[k][0] for g in grads] for i in range(len(GRAD_T))] for k in ("without_T2", "with_T2")}
    rel_mean = {k: [mean_std(v)[0] for v in rel[k]] for k in rel}
    # 相邻温度之间（T 翻倍）的比值：理论上不乘 T² 时趋近 1/4，乘 T² 时趋近 1
    step_ratio = {k: [rel_mean[k][i + 1] / rel_mean[k][i] for i in range(len(GRAD_T) - 1)] for k in rel}
    # 对数坐标下的斜率：log(g(16)/g(2)) / log(16/2)；理论 -2（不乘 T²）与 0（乘 T²）
    slope = {k: math.log(rel_mean[k][-1] / rel_mean[k][1]) / math.log(GRAD_T[-1] / GRAD_T[1]) for k in rel}

    keys = ("student_val_loss", "agreement")
    summary = {regime: {T: {key: mean_std([r[key] for r in rs]) for key in keys} for T, rs in by_T.items()}
               for regime, by_T in runs.items()}
    best_T = {regime: float(min(by_T, key=lambda T: by_T[T]["student_val_loss"][0]))
              for regime, by_T in summary.items()}
    softness_mean = {T: {k: mean_std([d[k] for d in ds])[0] for k in ("entropy", "mass_outside_top1")}
                     for T, ds in softness.items()}
    exp.save_metrics({
        "steps": steps, "sweep_T": SWEEP_T, "grad_T": GRAD_T, "transfer_sequences": TRANSFER, "runs": runs,
        "summary": {regime: {T: {key: {"mean": m, "std": s} for key, (m, s) in d.items()} for T, d in by_T.items()}
                    for regime, by_T in summary.items()},
        "teacher_val_loss": {"mean": mean_std(teacher_losses)[0], "values": teacher_losses},
        "teacher_softness": {"per_seed": softness, "mean": softness_mean,
                             "max_entropy_ln_V": math.log(tokenizer.vocab_size)},
        "best_T_by_val_loss": best_T,
        "grad_norms": {"per_seed": grads, "relative_mean": rel_mean, "ratio_per_doubling": step_ratio,
                       "loglog_slope_T2_to_T16": slope},
    })

    exp.print_table(["T", "teacher entropy (nats)", "teacher mass outside top-1"],
                    [[T, softness_mean[T]["entropy"], softness_mean[T]["mass_outside_top1"]] for T in softness_mean],
                    title=f"老师的分布在温度 T 下有多软（验证批上平均；均匀分布的熵 ln V = {math.log(tokenizer.vocab_size):.3f}）")
    exp.print_table(["T"] + [f"{regime} ({k} seqs): {col}" for regime, k in TRANSFER.items()
                             for col in ("val loss", "agreement")],
                    [[T] + [format_mean_std([r[key] for r in runs[regime][T]]) for regime in TRANSFER for key in keys]
                     for T in runs["small"]],
                    title=f"A. 温度扫描（α=1，每个学生 {steps} 步；老师 val loss {format_mean_std(teacher_losses)}）")
    exp.print_table(["T", "|dKL/dz| rel. to T=1", "|d(T^2 KL)/dz| rel. to T=1"],
                    [[T, rel_mean["without_T2"][i], rel_mean["with_T2"][i]] for i, T in enumerate(GRAD_T)],
                    title="B. KL 项对学生 logits 的梯度范数（相对 T=1）")

    set_style()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    Ts = SWEEP_T
    for ax, key, label in ((ax1, "student_val_loss", "val loss (true CE)"), (ax2, "agreement", "agreement")):
        for regime, marker in (("small", "o"), ("large", "s")):
            ax.errorbar(Ts, [summary[regime][str(T)][key][0] for T in Ts],
                        yerr=[summary[regime][str(T)][key][1] for T in Ts], marker=marker, capsize=4,
                        label=f"{regime} transfer set ({TRANSFER[regime]} seqs)")
        ax.set(xscale="log", xlabel="temperature T", ylabel=label, title=f"Student {label} vs T (alpha=1)")
        ax.set_xticks(Ts, [f"{T:g}" for T in Ts], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax1.axhline(mean_std(teacher_losses)[0], color="gray", ls="--", label="teacher")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    ax3.plot(GRAD_T, rel_mean["without_T2"], marker="o", label="KL only (no T^2)")
    ax3.plot(GRAD_T, rel_mean["with_T2"], marker="s", label="T^2 * KL")
    ax3.plot(GRAD_T, [1 / T ** 2 for T in GRAD_T], ls=":", color="gray", label="1/T^2")
    ax3.set(xscale="log", yscale="log", xlabel="temperature T", ylabel="grad norm / grad norm at T=1",
            title="Gradient w.r.t. student logits")
    ax3.set_xticks(GRAD_T, [f"{T:g}" for T in GRAD_T])
    ax3.xaxis.set_minor_formatter(NullFormatter())
    ax3.legend()
    exp.save_figure(fig, "exp2_temperature.png")

    ratio_no, ratio_with = step_ratio["without_T2"][-1], step_ratio["with_T2"][-1]
    exp.conclude("不乘 T² 时 KL 梯度随 T 按约 1/T² 缩小（T 从 8 到 16，比值接近 1/4）",
                 holds=bool(0.15 < ratio_no < 0.35),
                 evidence=f"T=16 / T=8 比值 {ratio_no:.3f}；T=16 时只剩 T=1 的 {rel_mean['without_T2'][-1]:.2e}；"
                          f"对数斜率（T=2→16）{slope['without_T2']:.2f}")
    exp.conclude("乘上 T² 后梯度尺度与 T 基本无关（T 从 8 到 16，比值接近 1）",
                 holds=bool(0.7 < ratio_with < 1.4),
                 evidence=f"T=16 / T=8 比值 {ratio_with:.3f}；T=16 时是 T=1 的 {rel_mean['with_T2'][-1]:.3f} 倍；"
                          f"对数斜率（T=2→16）{slope['with_T2']:.2f}")

    def losses(regime: str, T: float):
        """一组学生的 val loss：每个种子一个值，以及第一个种子的逐批值（单种子时按验证批配对）。"""
        rs = runs[regime][str(T)]
        return [r["student_val_loss"] for r in rs], rs[0]["student_val_batches"]

    def verdict(regime: str, T_a: float, T_b: float):
        """同一转移集上，T_a 的学生 val loss 低于 T_b 的学生。"""
        (a, a_batches), (b, b_batches) = losses(regime, T_a), losses(regime, T_b)
        return compare_runs(a, b, "less", a_batches, b_batches)

    def val(regime: str, T: float) -> float:
        return summary[regime][str(T)]["student_val_loss"][0]

    small = TRANSFER["small"]
    for T in (2.0, 4.0):
        exp.conclude_verdict(f"小转移集（{small} 条序列）上，T={T:g} 的学生验证 loss 低于 T=1 的学生",
                             verdict("small", T, 1.0),
                             f"val loss T={T:g} {val('small', T):.4f} vs T=1 {val('small', 1.0):.4f}"
                             f"（小转移集上均值最低的 T={best_T['small']:g}）")
    exp.conclude_verdict(f"对照：大转移集（{TRANSFER['large']} 条序列）上，T=1 的学生验证 loss 低于 T=4 的学生",
                         verdict("large", 1.0, 4.0),
                         f"val loss T=1 {val('large', 1.0):.4f} vs T=4 {val('large', 4.0):.4f}"
                         f"（大转移集上均值最低的 T={best_T['large']:g}）")

    def cost_of_heating(regime: str):
        """T=4 减 T=1 的 val loss（正数 = 升温变差）：每个种子一个值，以及第一个种子的逐批值。"""
        (hot, hot_batches), (cold, cold_batches) = losses(regime, 4.0), losses(regime, 1.0)
        return [h - c for h, c in zip(hot, cold)], [h - c for h, c in zip(hot_batches, cold_batches)]

    cost_small, cost_large = cost_of_heating("small"), cost_of_heating("large")
    exp.conclude_verdict("升温到 T=4 的代价（相对 T=1 的 val loss 之差）在小转移集上小于大转移集",
                         compare_runs(cost_small[0], cost_large[0], "less", cost_small[1], cost_large[1]),
                         f"T=4 − T=1：小转移集 {mean_std(cost_small[0])[0]:+.4f}，大转移集 {mean_std(cost_large[0])[0]:+.4f}")
    exp.finish()


if __name__ == "__main__":
    main()
