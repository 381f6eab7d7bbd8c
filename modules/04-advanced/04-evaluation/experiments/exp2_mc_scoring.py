"""实验 2：打分方式会改变排名——同一批选择题、同一组模型，用 sum / norm / letter 三种打分（trainer/evaluation/multiple_choice.py）。

模型：同一次训练的 9 个时刻（steps/16 处一份"刚开始训练"的，之后每 steps/8 步一份），在虚构事实题上训练（eval_lab.fact_items；题目与训练文档同格式），
训练越久背下的事实越多——这是"能力不同的模型"的受控版本。题目就是它背的那些事实（像 MMLU 考的是预训练里学到的知识）。
记录：每种打分的准确率 ± 标准误、选中"最短/最长选项"的比例，以及瞎猜（1/4）和"永远选最短/最长"的基线。
letter 打分的提示要把四个选项都列出来，长好几倍，只在第一个和最后一个时刻算（省下 quick 的时间）。
完整模式 3 个种子（每个种子重新造题、重新训练）；quick 模式 1 个种子，噪声用逐题配对（unit="batches"）。

"sum 和 norm 哪个更准"取决于模型会多少（lm-eval 因此 acc、acc_norm 两个都报）。两个时刻按事先定好的规则从测量里选出，
不看结论：
    部分学会  sum 与 norm 平均准确率最接近 0.5 的检查点（对两种打分对称，不偏向任何一方）。
              模型对一部分题有把握、对另一部分在猜：sum 猜的时候吃"长选项多付几个 token"的亏，
              norm 猜的时候被"后几个词几乎确定的长地名"拉走——这里能看出哪种偏好代价更大。
    到顶      最后一个检查点，sum 与 norm 都 ≥ CEILING：几乎全会，两种打分都≈1，是分不开的对照。
              quick 的步数到不了顶，这条对照只在到顶时打印。
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_lab（目录名带连字符，不能当包导入）

import eval_lab  # noqa: E402  （它把仓库根目录放进 sys.path）
import numpy as np  # noqa: E402

from modules.common.experiment_base import Experiment, format_mean_std  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs, exceeds  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.evaluation.multiple_choice import MC_MODES, evaluate_mc  # noqa: E402

CHANCE = 1 / eval_lab.N_OPTIONS
CEILING = 0.9  # 最后一个检查点的 sum、norm 都不低于它才算"到顶"
TIE_MARGIN = 0.03  # 到顶时"分不开"：sum 与 norm 的准确率相差不到 0.03（事先定好）


def partial_checkpoint(mean_acc: dict) -> int:
    """{步数: sum 与 norm 的平均准确率（种子平均）} → 最接近 0.5 的步数："学会了一半"的模型。"""
    return min(mean_acc, key=lambda step: abs(mean_acc[step] - 0.5))


def length_pick_shares(items, predictions) -> dict:
    """逐题：预测是不是最短 / 最长的选项（按字符数）→ 0/1 列表。"""
    shortest = [int(p == int(np.argmin([len(o) for o in it.options]))) for it, p in zip(items, predictions)]
    longest = [int(p == int(np.argmax([len(o) for o in it.options]))) for it, p in zip(items, predictions)]
    return {"shortest": shortest, "longest": longest}


def seed_or_item_exceeds(per_seed, per_item, threshold, direction="greater"):
    """完整模式按种子、quick 模式（1 个种子）按逐题 0/1 值检验"超过常数 threshold"。"""
    if len(per_seed) >= 2:
        return exceeds(per_seed, threshold, direction, unit="seeds")
    return exceeds(per_item, threshold, direction, unit="batches")


def main():
    def extra_args(parser):
        parser.add_argument("--facts", type=int, default=300, help="虚构事实（= 题目）数，默认 300")
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认 quick 500，完整 1200）")

    exp = Experiment(__file__, description=(
        "评测实验 2：同一批选择题、同一组模型，sum / norm / letter 三种打分给出不同的准确率和排名；\n"
        "看长度偏好、瞎猜基线和排名在哪里翻转。"), extra_args=extra_args)
    steps = exp.args.steps or (500 if exp.quick else 1200)
    # 最早的一份在 steps/16：模型还没把地名当成整体学会，sum 的长度惩罚最明显（到 steps/8 它已经开始消退）
    checkpoints = sorted({max(1, steps // 16)} | {max(1, steps * k // 8) for k in range(1, 9)})
    early, last = checkpoints[0], checkpoints[-1]

    def modes_at(step):
        return MC_MODES if step in (early, last) else ("sum", "norm")

    if exp.args.facts < 20 or steps < 8:
        raise SystemExit(f"错误：--facts 至少 20、--steps 至少 8，收到 {exp.args.facts}、{steps}")
    tokenizer = eval_lab.samples_tokenizer()

    runs = []  # 每个种子：{step: {mode: evaluate_mc 结果 + 长度偏好}}
    for seed in exp.seeds:
        exp.seed_everything(seed)
        items = eval_lab.fact_items(exp.args.facts, seed)
        docs = [eval_lab.item_text(it) for it in items] * eval_lab.REPEATS
        stream = eval_lab.token_stream(tokenizer, docs, seed)
        _, snapshots = eval_lab.train_lm(tokenizer, stream, steps, seed, checkpoints=checkpoints,
                                         desc=f"seed {seed}")
        run = {}
        for step, model in snapshots.items():
            result = evaluate_mc(model, tokenizer, items, modes=modes_at(step), batch_size=64, max_len=128)
            for mode in modes_at(step):
                result[mode]["picks"] = length_pick_shares(items, result[mode]["predictions"])
            run[step] = result
        lengths = [[len(o) for o in it.options] for it in items]
        run["baselines"] = {"random": CHANCE,
                            "always_shortest": float(np.mean([it.answer == int(np.argmin(n)) for it, n in zip(items, lengths)])),
                            "always_longest": float(np.mean([it.answer == int(np.argmax(n)) for it, n in zip(items, lengths)]))}
        runs.append(run)
        print(f"种子 {seed}：" + "；".join(f"{s} 步 " + " ".join(f"{m}={run[s][m]['acc']:.3f}" for m in modes_at(s))
                                         for s in checkpoints))

    def per_seed(step, mode, key="acc"):
        return [r[step][mode][key] for r in runs]

    def share(step, mode, which):
        return [float(np.mean(r[step][mode]["picks"][which])) for r in runs]

    def per_item(step, mode):  # 只在 quick（单种子）时用：逐题对错
        return [int(c) for c in runs[0][step][mode]["correct"]]

    rows = []
    for step in checkpoints:
        for mode in modes_at(step):
            se = np.mean(per_seed(step, mode, "acc_stderr"))
            rows.append([step, mode, format_mean_std(per_seed(step, mode)), f"{se:.3f}",
                         format_mean_std(share(step, mode, "shortest"), 3), format_mean_std(share(step, mode, "longest"), 3)])
    exp.print_table(["train steps", "scoring", "accuracy", "stderr (one run)", "picks shortest", "picks longest"],
                    rows, title="Same items, same models, three scorings")
    base = {k: [r["baselines"][k] for r in runs] for k in runs[0]["baselines"]}
    exp.print_table(["baseline", "accuracy"], [[k, format_mean_std(v, 3)] for k, v in base.items()], title="Baselines")

    ranking = {mode: sorted([s for s in checkpoints if mode in modes_at(s)], key=lambda s: -np.mean(per_seed(s, mode)))
               for mode in MC_MODES}
    # 两个时刻的规则（见文件开头），只用准确率本身，不看 sum 与 norm 谁高
    mean_acc = {s: float(np.mean(per_seed(s, "sum") + per_seed(s, "norm"))) for s in checkpoints}
    partial = partial_checkpoint(mean_acc)
    at_ceiling = partial != last and min(np.mean(per_seed(last, "sum")), np.mean(per_seed(last, "norm"))) >= CEILING
    print(f"\n部分学会的检查点：{partial} 步（sum 与 norm 平均准确率 {mean_acc[partial]:.3f}，最接近 0.5）；"
          + (f"到顶的检查点：{last} 步" if at_ceiling else
             f"最后的 {last} 步还没到顶（sum、norm 都 ≥ {CEILING} 才算），不打印到顶的对照"))
    exp.print_table(["scoring", "model ranking (best first, by train steps)"],
                    [[m, " > ".join(str(s) for s in ranking[m])] for m in MC_MODES], title="Rankings")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.25
    for k, mode in enumerate(MC_MODES):
        steps_here = [s for s in checkpoints if mode in modes_at(s)]
        x = np.array([checkpoints.index(s) for s in steps_here]) + (k - 1) * width
        acc = [np.mean(per_seed(s, mode)) for s in steps_here]
        err = [np.mean(per_seed(s, mode, "acc_stderr")) for s in steps_here]
        shortest = [np.mean(share(s, mode, "shortest")) for s in steps_here]
        axes[0].bar(x, acc, width, yerr=err, capsize=3, label=mode)
        axes[1].bar(x, shortest, width, label=f"{mode}: shortest", color=f"C{k}", alpha=0.9)
        axes[1].bar(x, [np.mean(share(s, mode, "longest")) for s in steps_here], width, bottom=shortest,
                    color=f"C{k}", alpha=0.4, hatch="//", label=f"{mode}: longest")
    for ax in axes:
        ax.axhline(CHANCE, color="gray", linestyle=":", label="random guess 1/4")
        ax.set_xticks(np.arange(len(checkpoints)), [str(s) for s in checkpoints])
        ax.set_xlabel("train steps")
    axes[0].set(ylabel="accuracy (± stderr)", title="Accuracy by scoring method", ylim=(0, 1))
    axes[1].set(ylabel="share of predictions", title="Length preference: picks shortest / longest option", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, ncol=2)
    exp.save_figure(fig, "exp2_mc_scoring.png")

    exp.save_metrics({
        "config": {"facts": exp.args.facts, "steps": steps, "checkpoints": checkpoints, "repeats": eval_lab.REPEATS,
                   "vocab_size": tokenizer.vocab_size},
        "accuracy": {str(s): {m: per_seed(s, m) for m in modes_at(s)} for s in checkpoints},
        "stderr": {str(s): {m: per_seed(s, m, "acc_stderr") for m in modes_at(s)} for s in checkpoints},
        "picks_shortest": {str(s): {m: share(s, m, "shortest") for m in modes_at(s)} for s in checkpoints},
        "picks_longest": {str(s): {m: share(s, m, "longest") for m in modes_at(s)} for s in checkpoints},
        "baselines": base, "ranking": ranking,
        "regime": {"partial": partial, "ceiling": last if at_ceiling else None, "mean_sum_norm_acc": mean_acc,
                   "ceiling_threshold": CEILING, "tie_margin": TIE_MARGIN},
    })

    single = len(exp.seeds) == 1
    exp.conclude_verdict(
        f"sum 打分偏爱短选项：训练 {early} 步的模型选中最短选项的比例超过 1/4",
        seed_or_item_exceeds(share(early, "sum", "shortest"), runs[0][early]["sum"]["picks"]["shortest"], CHANCE),
        evidence=f"选中最短选项的比例 {format_mean_std(share(early, 'sum', 'shortest'), 3)}（无偏好时 1/4）")
    exp.conclude_verdict(
        f"norm 打分偏爱长选项：训练 {partial} 步（部分学会）的模型选中最长选项的比例超过 1/4",
        seed_or_item_exceeds(share(partial, "norm", "longest"), runs[0][partial]["norm"]["picks"]["longest"], CHANCE),
        evidence=f"选中最长选项的比例 {format_mean_std(share(partial, 'norm', 'longest'), 3)}（除以字符数后，"
                 f"长地名后面几个词几乎是确定的，平均每字符的代价反而更小）")
    for mode in ("sum", "norm"):
        exp.conclude_verdict(
            f"{mode} 打分下训练 {last} 步的模型比 {early} 步的好",
            compare_runs(per_seed(last, mode), per_seed(early, mode), "greater",
                         per_item(last, mode) if single else None, per_item(early, mode) if single else None),
            evidence=f"{format_mean_std(per_seed(last, mode), 3)} vs {format_mean_std(per_seed(early, mode), 3)}")
    exp.conclude_verdict(
        f"长度归一化不总是更好：部分学会的模型（训练 {partial} 步）sum 打分比 norm 准",
        compare_runs(per_seed(partial, "sum"), per_seed(partial, "norm"), "greater",
                     per_item(partial, "sum") if single else None, per_item(partial, "norm") if single else None),
        evidence=f"sum {format_mean_std(per_seed(partial, 'sum'), 3)} vs norm {format_mean_std(per_seed(partial, 'norm'), 3)}"
                 f"（两者平均 {mean_acc[partial]:.3f}，最接近 0.5 的检查点）；sum 选中最短选项的比例 "
                 f"{format_mean_std(share(partial, 'sum', 'shortest'), 3)}，norm 选中最长选项的比例 "
                 f"{format_mean_std(share(partial, 'norm', 'longest'), 3)}")
    if at_ceiling:
        exp.conclude_verdict(
            f"对照：到顶后（训练 {last} 步，sum 与 norm 都 ≥ {CEILING}）两者都≈1，分不开：相差不到 {TIE_MARGIN}",
            equivalent_runs(per_seed(last, "sum"), per_seed(last, "norm"), TIE_MARGIN,
                            per_item(last, "sum") if single else None, per_item(last, "norm") if single else None),
            evidence=f"sum {format_mean_std(per_seed(last, 'sum'), 3)} vs norm {format_mean_std(per_seed(last, 'norm'), 3)}；"
                     f"几乎每道题都有把握时，长度偏好没有机会起作用")
    exp.conclude_verdict(
        f"同一个模型（训练 {last} 步）用 letter 打分远不如 sum 打分：它会这道题，但不会\"按字母作答\"",
        compare_runs(per_seed(last, "sum"), per_seed(last, "letter"), "greater",
                     per_item(last, "sum") if single else None, per_item(last, "letter") if single else None),
        evidence=f"sum {format_mean_std(per_seed(last, 'sum'), 3)} vs letter {format_mean_std(per_seed(last, 'letter'), 3)}"
                 f"（瞎猜 {CHANCE:g}）；训练文档里从没出现过\"A. …\\nB. …\"这种列出选项的格式")
    top_letter = [max(np.bincount(r[last]["letter"]["predictions"], minlength=eval_lab.N_OPTIONS)) / len(
        r[last]["letter"]["predictions"]) for r in runs]
    preds = runs[0][last]["letter"]["predictions"]
    favourite = int(np.argmax(np.bincount(preds, minlength=eval_lab.N_OPTIONS)))
    exp.conclude_verdict(
        f"letter 打分下模型偏爱某一个字母：训练 {last} 步的模型最常选的字母占比超过 1/4",
        seed_or_item_exceeds(top_letter, [int(p == favourite) for p in preds], CHANCE),
        evidence=f"最常选的字母占 {format_mean_std(top_letter, 3)}（种子 {exp.seeds[0]} 最常选 "
                 f"{'ABCD'[favourite]}）；位置偏好让 letter 准确率取决于答案字母的分布，而不是模型会不会")
    exp.finish()


if __name__ == "__main__":
    main()
