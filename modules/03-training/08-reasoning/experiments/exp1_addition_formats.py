"""实验 1：小模型上的"思维链"——同一个加法任务，答案怎么写决定了学不学得会。

同一个字符级 LabModel（2 层、hidden 64，开关 = MiniMind），在 1–D 位加法（补零）上从头训练三次，
唯一的区别是 "=" 之后的写法（Lee et al. 2023）：
  plain       "67+85=" → "152"：先写最高位
  reverse     "67+85=" → "251"：倒着写，生成顺序 = 竖式进位的顺序
  scratchpad  "67+85=" → "7+5+0=12;6+8+1=15;|152"：先逐位写出竖式（Nye et al. 2021）再写答案
三者每步消耗同样多的训练 token（scratchpad 更长，所以见到的题更少）。每隔一段在留出的 D 位题（同分布）
和 D+1 位题（更长，训练里从没出现过）上测贪心准确率。

默认 D = 3：Lee et al. 的效应出现在"进位链长到一次前向算不完"的地方。D = 2 时进位链最多两步，
三种写法在这个小模型上都学得会，差距在种子噪声以内（`--digits 2` 可以自己对照，讲义里有两种设置的数字）。

quick 模式每步 512 个训练 token、1000 步（完整模式每步 1024 个、1200 步）：CPU 上这个小模型每步的耗时主要是固定开销，
半大的批次每步便宜一半多，同样的时间能多做一倍的更新；批次远小于临界批量时（McCandlish et al. 2018），
同样的训练 token 分成更多步学得更快——草稿写法在 quick 的预算里就能起飞（每步 1024 个、500 步时它在终点才刚起飞，随种子时有时无）。
倒序写法在 quick 的预算里什么时候起飞随种子变（本机上种子 42 还在地板上，13 刚起飞，1 已练成），所以"reverse 高于 plain"
"scratchpad 高于 reverse"两条在 quick 里比的是起飞早晚，判定随种子翻转：quick 不判定它们（QUICK_REVERSE_UNDECIDED，
看过种子 11、13、1 的判定之后的改动，测得的值不变），判定看完整模式。

    python exp1_addition_formats.py --quick
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import addition_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, exceeds  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

OOD_THRESHOLD = 0.1  # 事先定好："长度外推差" = 比训练更长的题上准确率低于 10%
EVAL_BATCHES = 10  # quick 模式单种子时，把留出题分成 10 批估计评估噪声
# quick 不判定两条与倒序相比的结论的原因（交给 exp.conclude_verdict 的 quick_reason，完整模式照常判定）：
# 倒序在 quick 的预算里什么时候起飞随种子（和 CPU 上的浮点细节）变，是训练噪声，一个种子量不到
QUICK_REVERSE_TAKEOFF = ("倒序在 quick 的预算里什么时候起飞随种子变：本机（AMD EPYC）上种子 42 终点 0.015（还在地板上）、"
                         "13 刚起飞（0.115）、1 已练成（0.975，曲线平均 0.625，高于草稿的 0.345）；之前的记录里种子 42、1、7 终点 "
                         "0.015、0.005、0.01。起飞早晚是训练噪声，一个种子量不到")
QUICK_REVERSE_UNDECIDED = {
    ("reverse", "plain"): f"{QUICK_REVERSE_TAKEOFF}：本机上 42 ❔、1、13 ✅，种子 11 ❔；之前的记录里 7、5 ❔、1 ❌",
    ("scratchpad", "reverse"): f"{QUICK_REVERSE_TAKEOFF}：本机上 42、13 ✅、1 ❌，种子 11 ✅；之前的记录里 42、1、7、5 ✅",
}


def add_args(parser):
    parser.add_argument("--digits", type=int, default=3, help="训练题的最大位数 D（默认 3；留出测 D 位与 D+1 位）")
    parser.add_argument("--steps", type=int, default=None, help="每种写法的训练步数（默认 quick 1000、完整 1200）")
    parser.add_argument("--token-budget", type=int, default=None,
                        help="每步训练 token 数（三种写法相同，默认 quick 512、完整 1024）")


def main():
    exp = Experiment(__file__, description="加法的三种写法（plain / reverse / scratchpad）在等 token 预算下的学习曲线与长度外推",
                     extra_args=add_args)
    digits = exp.args.digits
    steps = exp.args.steps if exp.args.steps is not None else (1000 if exp.quick else 1200)
    budget = exp.args.token_budget if exp.args.token_budget is not None else (512 if exp.quick else 1024)
    if not 1 <= digits <= 6 or steps < 20 or budget < 64:
        raise SystemExit(f"需要 1 <= --digits <= 6、--steps >= 20、--token-budget >= 64（收到 {digits}、{steps}、{budget}）")
    n_eval = 200 if exp.quick else 400
    # quick 只测 3 个检查点，省下解码时间；向上取整，最后一个检查点正好落在终点（train_format 在终点总会再测一次）
    eval_every = -(-steps // (3 if exp.quick else 6))

    # 留出题：同一批题给所有写法、所有种子（逐题配对），并从训练里排除
    rng = random.Random(1234)
    eval_sets = {"in_dist": lab.sample_problems(rng, digits, n_eval),
                 "longer": lab.sample_problems(rng, digits + 1, 60 if exp.quick else 200)}
    exclude = frozenset(eval_sets["in_dist"])

    def progress(fmt, step, accs, loss):
        print(f"  [{fmt}] step {step}: loss {loss:.3f}, " + ", ".join(f"{k} {v:.2f}" for k, v in accs.items()), flush=True)

    runs = {fmt: [] for fmt in lab.FORMATS}
    for seed in exp.seeds:
        for fmt in lab.FORMATS:
            exp.seed_everything(seed)
            model = lab.new_model(seed, hidden_size=64, num_layers=2)
            runs[fmt].append(lab.train_format(model, fmt, steps, budget, seed, digits, exclude, eval_sets,
                                              eval_every, progress))

    final = {fmt: [h["in_dist"][-1] for h in runs[fmt]] for fmt in lab.FORMATS}
    longer = {fmt: [h["longer"][-1] for h in runs[fmt]] for fmt in lab.FORMATS}
    # 学习曲线下的面积 = 各检查点准确率的平均：同样的 token 预算下"学得多快"（样本效率），不只看终点
    auc = {fmt: [sum(h["in_dist"]) / len(h["in_dist"]) for h in runs[fmt]] for fmt in lab.FORMATS}
    auc_batches = {fmt: lab.batch_means([sum(col) / len(col) for col in zip(*runs[fmt][0]["in_dist_correct"])],
                                        EVAL_BATCHES) for fmt in lab.FORMATS}
    problems = {fmt: [h["problems"] for h in runs[fmt]] for fmt in lab.FORMATS}
    rows = [[fmt, format_mean_std(problems[fmt], 5), format_mean_std(auc[fmt], 3), format_mean_std(final[fmt], 3),
             format_mean_std(longer[fmt], 3)] for fmt in lab.FORMATS]
    exp.print_table(["format", "problems_seen", "curve_mean", f"final_{digits}digit", f"final_{digits + 1}digit"], rows,
                    title=f"训练 {steps} 步 × {budget} token 的贪心准确率（{len(exp.seeds)} 个种子；curve_mean = 各检查点的平均）")
    exp.save_metrics({"digits": digits, "steps": steps, "token_budget": budget, "n_eval": n_eval,
                      "curves": {fmt: {"steps": runs[fmt][0]["steps"], "in_dist": [h["in_dist"] for h in runs[fmt]],
                                       "longer": [h["longer"] for h in runs[fmt]]} for fmt in lab.FORMATS},
                      "curve_mean": auc, "final_in_dist": final, "final_longer": longer, "problems_seen": problems})

    ev = {fmt: format_mean_std(auc[fmt], 3) for fmt in lab.FORMATS}
    for better, worse in (("scratchpad", "plain"), ("reverse", "plain"), ("scratchpad", "reverse")):
        exp.conclude_verdict(f"等 token 预算下，{better} 的学习曲线（各检查点平均准确率）高于 {worse}",
                             compare_runs(auc[better], auc[worse], "greater", auc_batches[better], auc_batches[worse]),
                             evidence=f"{better} {ev[better]} vs {worse} {ev[worse]}",
                             quick_reason=QUICK_REVERSE_UNDECIDED.get((better, worse)))
    sp_ratio = mean_std(problems["scratchpad"])[0] / mean_std(problems["plain"])[0]
    exp.conclude("等 token 预算下，scratchpad 见到的题不到 plain 的一半（每道题的回答更长）", holds=sp_ratio < 0.5,
                 evidence=f"见到的题数 scratchpad/plain = {sp_ratio:.2f}")
    for fmt in lab.FORMATS:
        longer_batches = lab.batch_means(runs[fmt][0]["longer_correct"][-1], EVAL_BATCHES)
        values = longer[fmt] if len(exp.seeds) >= 2 else longer_batches
        exp.conclude_verdict(f"长度外推差：{fmt} 在 {digits + 1} 位题上的准确率低于 {OOD_THRESHOLD}",
                             exceeds(values, OOD_THRESHOLD, "less", unit="seeds" if len(exp.seeds) >= 2 else "batches"),
                             evidence=f"{fmt} {format_mean_std(longer[fmt], 3)}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fmt in lab.FORMATS:
        tokens = [s * budget for s in runs[fmt][0]["steps"]]
        curves = [h["in_dist"] for h in runs[fmt]]
        means = [mean_std(col)[0] for col in zip(*curves)]
        axes[0].plot(tokens, means, marker="o", label=fmt)
    axes[0].set_xlabel("training tokens")
    axes[0].set_ylabel(f"greedy accuracy ({digits}-digit, held out)")
    axes[0].set_title("equal token budget")
    axes[0].legend()
    x = range(len(lab.FORMATS))
    axes[1].bar([i - 0.2 for i in x], [mean_std(final[f])[0] for f in lab.FORMATS], 0.4, label=f"{digits}-digit")
    axes[1].bar([i + 0.2 for i in x], [mean_std(longer[f])[0] for f in lab.FORMATS], 0.4, label=f"{digits + 1}-digit")
    axes[1].set_xticks(list(x), lab.FORMATS)
    axes[1].set_ylabel("final greedy accuracy")
    axes[1].set_title("length generalisation")
    axes[1].legend()
    exp.save_figure(fig, "exp1_addition_formats.png")
    exp.finish()


if __name__ == "__main__":
    main()
