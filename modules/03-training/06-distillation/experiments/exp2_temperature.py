"""实验 2：温度 T——什么时候升温有用？以及为什么 KL 项要乘 T²。

A. 温度扫描。Hinton et al. 2015 的情形是一个很自信的老师（MNIST 上几乎全部概率压在一个类别上）：错误类别的小概率
   在 T=1 时看不见，升温才显出来；软目标在转移集很小时最有用。旧版实验只用训练 300 步的老师，它在 T=1 时
   熵就有约 2 nats（65 个字符均匀分布的一半），暗知识已经摆在明面上，升温的好处在种子间噪声以内。
   所以这里每个种子训练两个老师（hidden 128、2 层，在全部训练数据上）：
   - soft 老师：训练 --steps 步（默认 300，与实验 1 的老师相同）；
   - confident 老师：在 soft 老师的拷贝上继续训练 --extra-teacher-steps 步（完整模式 900 步，共 1200 步；
     quick 模式 300 步），验证 loss 更低、T=1 时的熵更低（实测并过噪声检验）。
   学生（hidden 64、1 层，相同初始化、相同批次、相同步数，α=1 只学老师分布）：
   - 小转移集（16 条长 64 的序列，反复学几百遍）上，跟 confident 老师学，T ∈ {1, 2, 4, 8}：主结论；
   - 同一小转移集，跟 soft 老师学，T ∈ {1, 4}：对照（旧版设置），看升温的好处是否随老师变自信而变大；
   - 大转移集（4,096 条）上，跟 confident 老师学，T ∈ {1, 4}：对照（数据充足时升温不该有好处）。
   小转移集上单个学生怎样背下那 16 条序列很随机（T=1 的学生 val loss 在种子间差 0.5 nats，T≥4 的只差几个 0.01），
   这份训练噪声会盖住升温的效应。所以完整模式里每个种子在 --replicates 个（默认 4 个）不同的小转移集上各训练一组学生
   （转移集、学生初始化、批次顺序都由"种子 + 1000·r"决定，r = 0 就是种子本身），取平均作为这个种子的值；
   噪声检验仍按种子配对（3 个种子）。quick 模式默认 1 个（时间预算）。大转移集上学生间的差别小，只训练 1 个。
   比较学生的真实标签验证 loss 与一致率；另外量两个老师的分布在各个 T 下有多"软"（平均熵、top-1 之外的概率质量）。
B. T² 因子：固定一个验证批、固定 confident 老师与（大转移集上 T=1 训练出的）学生的 logits，用 autograd 求
   ∂KL_T/∂z_s 与 ∂(T²·KL_T)/∂z_s 的范数，T 从 1 到 16。
   理论：KL_T 对学生 logits 的梯度是 (softmax(z_s/T) − softmax(z_t/T)) / T，T 大时分子 ≈ (z_s − z_t)/(V·T)，
   所以不乘 T² 的梯度按 1/T² 缩小，乘上 T² 后与 T 无关。
两部分都调用 trainer/train_distillation.py::distillation_loss。
"""
import math
import sys
from statistics import mean
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
from modules.common.replicates import (  # noqa: E402
    REPLICATE_SEED_STRIDE, add_replicates_argument, replicate_seed, resolve_replicates,
)
from modules.common.text_data import char_lm_batches  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.train_distillation import distillation_loss  # noqa: E402

SWEEP_T = [1.0, 2.0, 4.0, 8.0]
CONTRAST_T = [1.0, 4.0]  # 两个对照组只比 T=1 与 T=4
GRAD_T = [1.0, 2.0, 4.0, 8.0, 16.0]
TRANSFER = {"small": 16, "large": 4096}  # 转移集的序列条数（每条长 BLOCK），与实验 1 相同
# 每组学生：(老师, 转移集, 温度)；"confident/small" 是主结论，另外两组是对照
GROUPS = {"confident/small": ("confident", "small", SWEEP_T), "soft/small": ("soft", "small", CONTRAST_T),
          "confident/large": ("confident", "large", CONTRAST_T)}
N_EVAL_BATCHES = 8


def add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="soft 老师与每个学生的训练步数（默认 300）")
    parser.add_argument("--extra-teacher-steps", type=int, default=None,
                        help="confident 老师在 soft 老师之上继续训练的步数（默认：完整模式 900，quick 300）")
    add_replicates_argument(parser, quick_default=1, full_default=4,
                            what="小转移集上的学生，各用不同的转移集与初始化")


def average_replicates(scores: list[dict]) -> dict:
    """同一个种子、同一组、同一个 T 的 R 个学生（R 个不同的小转移集）的 evaluate 结果取平均，作为这个种子的值。

    逐批的值（*_batches）也逐批平均：各学生读的是同一组验证批，quick 模式仍可按批配对。"""
    averaged = {key: mean([s[key] for s in scores]) for key in ("student_val_loss", "agreement")}
    for key in ("student_val_batches", "agreement_batches"):
        averaged[key] = [mean(per_batch) for per_batch in zip(*(s[key] for s in scores))]
    averaged["teacher_val_loss"] = scores[0]["teacher_val_loss"]  # 老师相同
    averaged["replicates"] = [{k: s[k] for k in ("sample_seed", "student_val_loss", "agreement")} for s in scores]
    return averaged


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
        "蒸馏实验 2：soft 老师（300 步）与继续训练得更自信的 confident 老师；小转移集（16 条序列）上 T ∈ {1,2,4,8}\n"
        "（α=1）学生的验证 loss 与一致率，两个对照组（soft 老师、大转移集 4,096 条）；以及 KL 项对学生 logits 的\n"
        "梯度范数在乘 / 不乘 T² 时怎样随 T 变化（autograd 实测）。"))
    steps = training_steps(exp.args, exp.quick, quick_default=300, full_default=300)
    extra_steps = exp.args.extra_teacher_steps
    if extra_steps is None:
        extra_steps = 300 if exp.quick else 900
    if extra_steps < 1:
        raise SystemExit(f"--extra-teacher-steps 至少 1（收到 {extra_steps}）")
    replicates = resolve_replicates(exp.args.replicates, exp.quick, quick_default=1, full_default=4)
    text = get_experiment_data("shakespeare")

    runs = {group: {str(T): [] for T in temps} for group, (_, _, temps) in GROUPS.items()}
    softness = {name: {str(T): [] for T in SWEEP_T} for name in ("soft", "confident")}  # 每个种子一项
    grads, teacher_losses = [], {"soft": [], "confident": []}
    for seed in exp.seeds:
        Experiment.seed_everything(seed)
        tokenizer, get_batch = char_lm_batches(text, BLOCK, BATCH, seed=seed, device=exp.device)
        soft_teacher, _ = train_teacher(TEACHER_SIZE, tokenizer.vocab_size, get_batch, steps, seed, exp.device,
                                        desc=f"soft teacher seed={seed}")  # 老师见过全部训练数据
        # 同一个老师、同一条数据流继续训练：更低的验证 loss、更尖的分布
        confident_teacher, _ = train_teacher(TEACHER_SIZE, tokenizer.vocab_size, get_batch, extra_steps, seed,
                                             exp.device, desc=f"confident teacher seed={seed}",
                                             start_from=soft_teacher)
        teachers = {"soft": soft_teacher, "confident": confident_teacher}
        batches = eval_batches(text, N_EVAL_BATCHES, seed, exp.device)
        for name, teacher in teachers.items():
            for T in SWEEP_T:
                softness[name][str(T)].append(teacher_softness(teacher, batches, T))
            teacher_losses[name].append(evaluate(teacher, teacher, batches)["student_val_loss"])
        for regime, n_sequences in TRANSFER.items():
            regime_groups = {group: spec for group, spec in GROUPS.items() if spec[1] == regime}
            scores = {group: {str(T): [] for T in temps} for group, (_, _, temps) in regime_groups.items()}
            for r in range(replicates if regime == "small" else 1):
                sample_seed = replicate_seed(seed, r)  # r = 0：种子本身
                sequences = transfer_set(text, n_sequences, sample_seed).to(exp.device)  # (K, BLOCK)
                for group, (name, _, temps) in regime_groups.items():
                    teacher = teachers[name]
                    cached_teacher = PrecomputedTeacher(teacher, sequences)
                    for T in temps:
                        student = new_model(STUDENT_SIZE, tokenizer.vocab_size, sample_seed)
                        train_student(student, cached_teacher, transfer_batches(sequences, text, sample_seed, exp.device),
                                      steps, temperature=T, alpha=1.0, device=exp.device,
                                      desc=f"{group}/T={T:g} seed={seed} sample={sample_seed}")
                        scores[group][str(T)].append({"sample_seed": sample_seed,
                                                      **evaluate(student, teacher, batches)})
                        if group == "confident/large" and T == 1.0:  # B 部分用这个学生：一个"学过、但还没学像"的真实学生
                            input_ids, labels = batches[0]
                            with torch.no_grad():
                                s_logits, t_logits = student(input_ids).logits, teacher(input_ids).logits  # (B, L, V)
                            grads.append(kl_grad_norms(s_logits, t_logits, labels, GRAD_T))
            for group, by_T in scores.items():
                for T, group_scores in by_T.items():
                    runs[group][T].append({"seed": seed, **average_replicates(group_scores)})

    # 每个种子的梯度范数除以它自己 T=1 的值，再在种子间平均：只看随 T 的变化
    rel = {k: [[g[k][i] / g[k][0] for g in grads] for i in range(len(GRAD_T))] for k in ("without_T2", "with_T2")}
    rel_mean = {k: [mean_std(v)[0] for v in rel[k]] for k in rel}
    # 相邻温度之间（T 翻倍）的比值：理论上不乘 T² 时趋近 1/4，乘 T² 时趋近 1
    step_ratio = {k: [rel_mean[k][i + 1] / rel_mean[k][i] for i in range(len(GRAD_T) - 1)] for k in rel}
    # 对数坐标下的斜率：log(g(16)/g(2)) / log(16/2)；理论 -2（不乘 T²）与 0（乘 T²）
    slope = {k: math.log(rel_mean[k][-1] / rel_mean[k][1]) / math.log(GRAD_T[-1] / GRAD_T[1]) for k in rel}

    keys = ("student_val_loss", "agreement")
    summary = {group: {T: {key: mean_std([r[key] for r in rs]) for key in keys} for T, rs in by_T.items()}
               for group, by_T in runs.items()}
    best_T = {group: float(min(by_T, key=lambda T: by_T[T]["student_val_loss"][0]))
              for group, by_T in summary.items()}
    softness_mean = {name: {T: {k: mean_std([d[k] for d in ds])[0] for k in ("entropy", "mass_outside_top1")}
                            for T, ds in by_T.items()} for name, by_T in softness.items()}
    teacher_mean = {name: format_mean_std(v) for name, v in teacher_losses.items()}
    # 同一个种子内 R 个学生之间的 val loss 标准差（再在种子间平均）：单个学生的训练噪声有多大
    replicate_std = {group: {T: mean_std([mean_std([x["student_val_loss"] for x in r["replicates"]])[1] for r in rs])[0]
                             for T, rs in by_T.items()}
                     for group, by_T in runs.items() if GROUPS[group][1] == "small"}
    exp.save_metrics({
        "steps": steps, "extra_teacher_steps": extra_steps, "replicates": replicates,
        "replicate_seed_stride": REPLICATE_SEED_STRIDE, "sweep_T": SWEEP_T, "contrast_T": CONTRAST_T,
        "grad_T": GRAD_T, "transfer_sequences": TRANSFER,
        "groups": {group: {"teacher": name, "transfer": regime, "T": temps}
                   for group, (name, regime, temps) in GROUPS.items()},
        "runs": runs,
        "summary": {group: {T: {key: {"mean": m, "std": s} for key, (m, s) in d.items()} for T, d in by_T.items()}
                    for group, by_T in summary.items()},
        "teacher_val_loss": {name: {"mean": mean_std(v)[0], "values": v} for name, v in teacher_losses.items()},
        "teacher_softness": {"per_seed": softness, "mean": softness_mean,
                             "max_entropy_ln_V": math.log(tokenizer.vocab_size)},
        "best_T_by_val_loss": best_T, "replicate_std": replicate_std,
        "grad_norms": {"per_seed": grads, "relative_mean": rel_mean, "ratio_per_doubling": step_ratio,
                       "loglog_slope_T2_to_T16": slope},
    })

    exp.print_table(["T"] + [f"{name}: {col}" for name in softness_mean for col in ("entropy (nats)", "mass outside top-1")],
                    [[T] + [softness_mean[name][T][k] for name in softness_mean
                            for k in ("entropy", "mass_outside_top1")] for T in softness_mean["soft"]],
                    title=f"两个老师的分布在温度 T 下有多软（验证批上平均；均匀分布的熵 ln V = "
                          f"{math.log(tokenizer.vocab_size):.3f}）；老师 val loss：soft（{steps} 步）"
                          f"{teacher_mean['soft']}，confident（再训练 {extra_steps} 步）{teacher_mean['confident']}")

    def cell(group: str, T: float, key: str) -> str:
        rs = runs[group].get(str(T))
        return format_mean_std([r[key] for r in rs]) if rs else "—"

    exp.print_table(["T"] + [f"{group}: {col}" for group in GROUPS for col in ("val loss", "agreement")],
                    [[T] + [cell(group, T, key) for group in GROUPS for key in keys] for T in SWEEP_T],
                    title=f"A. 温度扫描（α=1，每个学生 {steps} 步；small = {TRANSFER['small']} 条序列，"
                          f"每个种子平均 {replicates} 个转移集上的学生；large = {TRANSFER['large']} 条）")
    if replicates > 1:
        exp.print_table(["T"] + list(replicate_std), [[T] + [replicate_std[g].get(str(T), "—") for g in replicate_std]
                                                      for T in SWEEP_T],
                        title=f"小转移集：同一个种子内 {replicates} 个学生之间 val loss 的标准差（种子间平均）")
    exp.print_table(["T", "|dKL/dz| rel. to T=1", "|d(T^2 KL)/dz| rel. to T=1"],
                    [[T, rel_mean["without_T2"][i], rel_mean["with_T2"][i]] for i, T in enumerate(GRAD_T)],
                    title="B. KL 项对学生 logits 的梯度范数（相对 T=1）")

    set_style()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    styles = {"confident/small": "o-", "soft/small": "^--", "confident/large": "s:"}
    for ax, key, label in ((ax1, "student_val_loss", "val loss (true CE)"), (ax2, "agreement", "agreement")):
        for group, (name, regime, temps) in GROUPS.items():
            ax.errorbar(temps, [summary[group][str(T)][key][0] for T in temps],
                        yerr=[summary[group][str(T)][key][1] for T in temps], fmt=styles[group], capsize=4,
                        label=f"{name} teacher, {regime} transfer set ({TRANSFER[regime]} seqs)")
        ax.set(xscale="log", xlabel="temperature T", ylabel=label, title=f"Student {label} vs T (alpha=1)")
        ax.set_xticks(SWEEP_T, [f"{T:g}" for T in SWEEP_T], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
    for name, color in (("soft", "gray"), ("confident", "black")):
        ax1.axhline(mean_std(teacher_losses[name])[0], color=color, ls="--", lw=1, label=f"{name} teacher")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
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

    def entropies(name: str):
        """老师 T=1 时的熵：每个种子一个值，以及第一个种子的逐批值。"""
        ds = softness[name]["1.0"]
        return [d["entropy"] for d in ds], ds[0]["entropy_batches"]

    (conf_h, conf_h_batches), (soft_h, soft_h_batches) = entropies("confident"), entropies("soft")
    exp.conclude_verdict(f"继续训练 {extra_steps} 步的 confident 老师在 T=1 时的熵低于只训练 {steps} 步的 soft 老师",
                         compare_runs(conf_h, soft_h, "less", conf_h_batches, soft_h_batches),
                         f"T=1 熵 confident {mean_std(conf_h)[0]:.3f} vs soft {mean_std(soft_h)[0]:.3f} nats；"
                         f"老师 val loss confident {teacher_mean['confident']} vs soft {teacher_mean['soft']}")

    def losses(group: str, T: float):
        """一组学生的 val loss：每个种子一个值，以及第一个种子的逐批值（单种子时按验证批配对）。"""
        rs = runs[group][str(T)]
        return [r["student_val_loss"] for r in rs], rs[0]["student_val_batches"]

    def verdict(group: str, T_a: float, T_b: float):
        """同一组（同一老师、同一转移集）里，T_a 的学生 val loss 低于 T_b 的学生。"""
        (a, a_batches), (b, b_batches) = losses(group, T_a), losses(group, T_b)
        return compare_runs(a, b, "less", a_batches, b_batches)

    def val(group: str, T: float) -> float:
        return summary[group][str(T)]["student_val_loss"][0]

    small, large = TRANSFER["small"], TRANSFER["large"]
    averaging_note = f"小转移集每个种子平均 {replicates} 个学生"
    for T in (2.0, 4.0):
        exp.conclude_verdict(f"小转移集（{small} 条序列）、confident 老师：T={T:g} 的学生验证 loss 低于 T=1 的学生",
                             verdict("confident/small", T, 1.0),
                             f"val loss T={T:g} {val('confident/small', T):.4f} vs T=1 {val('confident/small', 1.0):.4f}"
                             f"（这一组均值最低的 T={best_T['confident/small']:g}；{averaging_note}）")
    exp.conclude_verdict(f"对照：小转移集、只训练 {steps} 步的 soft 老师（旧版设置）：T=4 的学生验证 loss 低于 T=1 的学生",
                         verdict("soft/small", 4.0, 1.0),
                         f"val loss T=4 {val('soft/small', 4.0):.4f} vs T=1 {val('soft/small', 1.0):.4f}（{averaging_note}）")
    exp.conclude_verdict(f"对照：大转移集（{large} 条序列）、confident 老师：T=1 的学生验证 loss 低于 T=4 的学生",
                         verdict("confident/large", 1.0, 4.0),
                         f"val loss T=1 {val('confident/large', 1.0):.4f} vs T=4 {val('confident/large', 4.0):.4f}")

    def heating_change(group: str):
        """T=4 减 T=1 的 val loss（负数 = 升温更好）：每个种子一个值，以及第一个种子的逐批值。"""
        (hot, hot_batches), (cold, cold_batches) = losses(group, 4.0), losses(group, 1.0)
        return [h - c for h, c in zip(hot, cold)], [h - c for h, c in zip(hot_batches, cold_batches)]

    conf_small, soft_small, conf_large = (heating_change(g) for g in ("confident/small", "soft/small",
                                                                       "confident/large"))
    exp.conclude_verdict("小转移集上，升温到 T=4 的好处（T=4 − T=1 的 val loss 之差更负）在 confident 老师下大于 soft 老师",
                         compare_runs(conf_small[0], soft_small[0], "less", conf_small[1], soft_small[1]),
                         f"T=4 − T=1：confident {mean_std(conf_small[0])[0]:+.4f}，soft {mean_std(soft_small[0])[0]:+.4f}"
                         f"（{averaging_note}）")
    exp.conclude_verdict("confident 老师：升温到 T=4 的 val loss 变化在小转移集上低于大转移集",
                         compare_runs(conf_small[0], conf_large[0], "less", conf_small[1], conf_large[1]),
                         f"T=4 − T=1：小转移集 {mean_std(conf_small[0])[0]:+.4f}，大转移集 {mean_std(conf_large[0])[0]:+.4f}"
                         f"（{averaging_note}）")
    exp.finish()


if __name__ == "__main__":
    main()
