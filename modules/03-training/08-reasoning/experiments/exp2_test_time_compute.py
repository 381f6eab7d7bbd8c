"""实验 2：推理时多花算力——贪心、多数投票、验证器挑选，准确率随采样数 N 和生成 token 数怎么变。

起点：实验 1 的 scratchpad 写法，在 1–2 位加法上训练 400 步（实验 3 的起点就是这次训练的终点），
评估用的是它第 300 步的检查点（--eval-step）：这时模型正处在能力边缘（开发种子 42–44 上贪心准确率 0.475–0.87），
推理时多花的算力才有东西可补（到第 400 步有的种子贪心已到 0.965，多采样几乎无可补）。同一个检查点，对每道留出题：
  greedy       贪心解码一次
  majority@N   温度 0.7（--temperature）采样 N 条，取出现最多的答案（self-consistency, Wang et al. 2022）
  verifier@N   依次采样，验证器（addition_lab.check_scratchpad：逐步检查竖式、不用标准答案）通过就停；
               N 条都没通过就退回多数投票（best-of-N / 拒绝采样）
  pass@N       N 条里至少一条对（需要知道标准答案：是上限，不是能部署的方法）
pass@k 的两种算法对照：按不相交分组直接数（经验值） vs Chen et al. 2021 的无偏估计（trainer/rl/evaluate.py::pass_at_k），
以及朴素的 1 − (1 − c/n)^k（有偏，偏低）。

多数投票 vs 贪心（Wang et al. 2022 的 self-consistency）需要"多条不同的推理路径"：对的路殊途同归、错的路各错各的。
上面这个只会一种竖式的模型里，每个答案几乎只对应一条推理链、错误集中在同一个错答案上，投票追不上贪心（对照行）。
所以实验另训练一个"会两种解法"的模型：同样大小，训练集每道题随机一半写草稿、一半直接答（"|0452"，逐条混合，
不是实验 3 那种按步轮换），train_on_pairs 训练 --two-method-steps 步（默认 700），同样的留出题、同样温度采 16 条，
比较 majority@16 与贪心。这个设计是看过上面对照行一直 ❔（种子 42–44、1–3）之后定的；步数 700 在开发种子 42 上
从 400 / 700 / 1200 步里选（温度 0.7 时 majority@16 − 贪心 分别为 +0.08 / +0.52 / +0.035，贪心 0.08 / 0.295 / 0.92），
取的是贪心明显低于 1、草稿已经学会的能力边缘（同主模型选第 300 步的理由）；之后在种子 1–3 与从未看过的 4–6 上各跑一次确认。

    python exp2_test_time_compute.py --quick
"""
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import addition_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs, equivalent_runs  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from trainer.rl.evaluate import pass_at_k  # noqa: E402

N_MAX = 16  # 每题采样条数
NS = (1, 2, 4, 8, 16)
# 采样温度默认 0.7：Wang et al. 2022（self-consistency）采样推理路径用的就是 0.5–0.7 这一档；温度 1 的结果见 teaching.md
TEMPERATURE = 0.7
PASS_K = 4  # 经验 pass@k 与无偏估计对照用的 k
PASS_MARGIN = 0.03  # 事先定好的等价容差
EVAL_BATCHES = 10
# 评估第 300 步的检查点（看判定之前按种子 42–44 上的贪心准确率定下）：Wang et al. 2022、Snell et al. 2024 的收益
# 出现在模型常答错、但采样里还有对的答案的题上；练满的模型（贪心接近 1）没有东西可补
EVAL_STEP = 300
# "会两种解法"的模型：训练集里直接答的比例（事先定为各半）、每步的题数（约 1000 个 token，同主模型每步 1024 个 token）、
# 训练题库（3 万道 2 位题 + 3000 道 1 位题，不含评估题）
DIRECT_SHARE = 0.5
TWO_METHOD_BATCH = 48
TWO_METHOD_STEPS = 700
POOL_2_DIGIT, POOL_1_DIGIT = 30000, 3000


def add_args(parser):
    parser.add_argument("--steps", type=int, default=400, help="scratchpad 模型的训练步数（默认 400，同实验 3 的起点）")
    parser.add_argument("--eval-step", type=int, default=EVAL_STEP,
                        help=f"在第几步的检查点上评估（默认 {EVAL_STEP}：贪心准确率还明显低于 1 的能力边缘）")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="采样温度（默认 0.7）")
    parser.add_argument("--two-method-steps", type=int, default=TWO_METHOD_STEPS,
                        help=f"会两种解法（草稿 / 直接答）的第二个模型的训练步数（默认 {TWO_METHOD_STEPS}）")


def majority(answers: list):
    """出现最多的答案（None = 没写成形，不参与投票；平票取最先出现的）；全是 None 时返回 None。"""
    valid = [a for a in answers if a is not None]
    return Counter(valid).most_common(1)[0][0] if valid else None


def verifier_pick(problem, replies: list, answers: list, n_tokens: list, n: int):
    """依次看前 n 条：第一条通过验证器的就用它并停止采样；都没通过就退回多数投票。返回 (答案, 用掉的 token 数)。"""
    for i in range(n):
        if lab.check_scratchpad(problem, replies[i]):
            return answers[i], sum(n_tokens[:i + 1])
    return majority(answers[:n]), sum(n_tokens[:n])


def evaluate_problem(problem, greedy_reply, greedy_tokens, replies, n_tokens) -> dict:
    """一道题上各方法在各个 N 下的对错与 token 花费。"""
    a, b, _ = problem
    truth = a + b
    answers = [lab.parse_answer(r, "scratchpad") for r in replies]
    correct = [ans == truth for ans in answers]
    greedy_answer = lab.parse_answer(greedy_reply, "scratchpad")
    vote = majority(answers)
    # self-consistency 的前提：同一个答案有多条不同的推理链（Wang et al. 2022 的"殊途同归"）。
    # 数一数写成形的采样里有几个不同的答案、几条不同的推理链（整条回答去掉换行）
    formed = {(ans, r.split("\n")[0]) for ans, r in zip(answers, replies) if ans is not None}
    # 错误是分散还是集中：答错的采样里，最常见的那个错答案占多少（至少 2 条答错时才有意义）
    wrong = [ans for ans in answers if ans != truth]
    top_wrong = Counter(wrong).most_common(1)[0][1] / len(wrong) if len(wrong) >= 2 else None
    direct = [r.startswith("|") for r in replies]  # 直接答（不打草稿）的采样
    row = {"greedy": float(greedy_answer == truth), "greedy_tokens": greedy_tokens,
           "sample1": sum(correct) / len(correct), "c": sum(correct),
           "accepted": [lab.check_scratchpad(problem, r) for r in replies], "correct_each": correct,
           "vote_is_greedy": float(vote == greedy_answer),
           "vote_fixes": float(greedy_answer != truth and vote == truth),  # 贪心错、投票对
           "vote_breaks": float(greedy_answer == truth and vote != truth),  # 贪心对、投票错
           "distinct_answers": len({ans for ans, _ in formed}), "distinct_chains": len(formed),
           "top_wrong_share": top_wrong, "direct_share": sum(direct) / len(direct),
           "greedy_direct": float(greedy_reply.startswith("|")),
           "direct_correct": sum(d and ok for d, ok in zip(direct, correct)), "direct_n": sum(direct),
           "draft_correct": sum(ok and not d for d, ok in zip(direct, correct)), "draft_n": len(direct) - sum(direct)}
    for n in NS:
        row[f"majority@{n}"] = float(majority(answers[:n]) == truth)
        row[f"majority@{n}_tokens"] = sum(n_tokens[:n])
        pick, used = verifier_pick(problem, replies, answers, n_tokens, n)
        row[f"verifier@{n}"] = float(pick == truth)
        row[f"verifier@{n}_tokens"] = used
        row[f"pass@{n}"] = float(any(correct[:n]))
    groups = [correct[i:i + PASS_K] for i in range(0, N_MAX, PASS_K)]  # 不相交的 k 条一组
    row["pass_k_empirical"] = sum(any(g) for g in groups) / len(groups)
    row["pass_k_unbiased"] = pass_at_k(N_MAX, sum(correct), PASS_K)
    row["pass_k_naive"] = 1 - (1 - sum(correct) / N_MAX) ** PASS_K
    return row


def run_seed(seed: int, steps: int, eval_step: int, problems: list, temperature: float) -> list[dict]:
    """训练 steps 步；在第 eval_step 步的检查点上对每道题贪心一次、按温度采样 N_MAX 条，返回逐题结果。"""
    model = lab.new_model(seed, hidden_size=64, num_layers=2)
    rows = []

    def at_checkpoint(fmt, step, accs, loss):
        print(f"  [seed {seed}] 训练 {step} 步：loss {loss:.3f}，贪心准确率（前 100 题）{accs['held_out']:.2f}", flush=True)
        if step == eval_step:
            rows.extend(evaluate_checkpoint(model, problems, temperature, seed))

    # 每 eval_step 步（和终点）测一次贪心准确率；第 eval_step 步的检查点上做完整评估，训练随后照常继续
    lab.train_format(model, "scratchpad", steps, 1024, seed, 2, frozenset(problems), {"held_out": problems[:100]},
                     eval_step, progress=at_checkpoint)
    return rows


def run_two_method_seed(seed: int, steps: int, problems: list, temperature: float) -> list[dict]:
    """会两种解法的模型：每道训练题随机一半写草稿、一半直接答（逐条混合），train_on_pairs 训练 steps 步，
    再同 evaluate_checkpoint 一样对每道留出题贪心一次、采样 N_MAX 条。"""
    rng = random.Random(seed)
    pool = lab.sample_problems(rng, 2, POOL_2_DIGIT, frozenset(problems)) + lab.sample_problems(rng, 1, POOL_1_DIGIT)
    pairs = [(lab.prompt_text(p), lab.answer_text(p, "direct" if rng.random() < DIRECT_SHARE else "scratchpad"))
             for p in pool]
    model = lab.new_model(seed, hidden_size=64, num_layers=2)
    losses = lab.train_on_pairs(model, pairs, steps, TWO_METHOD_BATCH, seed)
    print(f"  [seed {seed}] 两种解法的模型训练 {steps} 步：loss {losses[-1]:.3f}", flush=True)
    return evaluate_checkpoint(model, problems, temperature, seed)


def vote_vs_greedy(per_seed: list) -> dict:
    """逐题比较 majority@N_MAX 与贪心（每个键是每个种子一个值）：投票的答案与贪心相同的比例、贪心错的题里投票救回多少、
    贪心对的题里投票投错多少、每个不同答案对应几条推理链、错误多集中、直接答的采样与贪心的比例、两种解法各自的采样准确率。"""
    greedy_wrong = [sum(1 - r["greedy"] for r in rows) for rows in per_seed]

    def share(rows, correct_key, n_key):
        return sum(r[correct_key] for r in rows) / max(1, sum(r[n_key] for r in rows))

    def top_wrong(rows):
        shares = [r["top_wrong_share"] for r in rows if r["top_wrong_share"] is not None]
        return sum(shares) / max(1, len(shares))

    return {"vote_is_greedy": [mean_of(rows, "vote_is_greedy") for rows in per_seed],
            "greedy_wrong": [n / len(rows) for n, rows in zip(greedy_wrong, per_seed)],
            "fixed_of_greedy_wrong": [sum(r["vote_fixes"] for r in rows) / max(1, n)
                                      for n, rows in zip(greedy_wrong, per_seed)],
            "pass_of_greedy_wrong": [sum(r[f"pass@{N_MAX}"] for r in rows if r["greedy"] == 0) / max(1, n)
                                     for n, rows in zip(greedy_wrong, per_seed)],
            "broken_of_greedy_right": [sum(r["vote_breaks"] for r in rows) / max(1, len(rows) - n)
                                       for n, rows in zip(greedy_wrong, per_seed)],
            "chains_per_answer": [sum(r["distinct_chains"] for r in rows) / max(1, sum(r["distinct_answers"] for r in rows))
                                  for rows in per_seed],
            "top_wrong_share": [top_wrong(rows) for rows in per_seed],
            "direct_share": [mean_of(rows, "direct_share") for rows in per_seed],
            "greedy_direct": [mean_of(rows, "greedy_direct") for rows in per_seed],
            "direct_accuracy": [share(rows, "direct_correct", "direct_n") for rows in per_seed],
            "draft_accuracy": [share(rows, "draft_correct", "draft_n") for rows in per_seed]}


def evaluate_checkpoint(model, problems: list, temperature: float, seed: int) -> list[dict]:
    """当前模型：每题贪心一次、按温度采样 N_MAX 条（generator 用 seed 固定），逐题交给 evaluate_problem。"""
    max_new = len(lab.answer_text(problems[0], "scratchpad")) + 4
    prompts = [lab.prompt_text(p) for p in problems]
    greedy, greedy_tokens = lab.generate(model, prompts, max_new)
    generator = torch.Generator().manual_seed(seed)
    # 每题 N_MAX 条：把题目重复 N_MAX 次一起采样，第 i 题的样本是 [i*N_MAX, (i+1)*N_MAX)
    sampled, sampled_tokens = lab.generate(model, [p for p in prompts for _ in range(N_MAX)], max_new,
                                           temperature=temperature, generator=generator)
    return [evaluate_problem(p, greedy[i], greedy_tokens[i], sampled[i * N_MAX:(i + 1) * N_MAX],
                             sampled_tokens[i * N_MAX:(i + 1) * N_MAX]) for i, p in enumerate(problems)]


def mean_of(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def main():
    exp = Experiment(__file__, description="推理时扩展：贪心 / 多数投票 / 验证器 best-of-N 随 N 的准确率与 token 花费；pass@k 估计",
                     extra_args=add_args)
    steps, eval_step, temperature = exp.args.steps, exp.args.eval_step, exp.args.temperature
    two_method_steps = exp.args.two_method_steps
    if steps < 20 or not 1 <= eval_step <= steps or not temperature > 0 or two_method_steps < 20:
        raise SystemExit(f"需要 --steps >= 20、1 <= --eval-step <= --steps、--temperature > 0、--two-method-steps >= 20"
                         f"（收到 {steps}、{eval_step}、{temperature}、{two_method_steps}）")
    n_problems = 100 if exp.quick else 200
    problems = lab.sample_problems(random.Random(4321), 2, n_problems)

    per_seed, two_method = [], []
    for seed in exp.seeds:
        exp.seed_everything(seed)
        per_seed.append(run_seed(seed, steps, eval_step, problems, temperature))
        two_method.append(run_two_method_seed(seed, two_method_steps, problems, temperature))

    def seeds_of(key, runs=per_seed):
        return [mean_of(rows, key) for rows in runs]

    def batches_of(key, runs=per_seed):
        return lab.batch_means([r[key] for r in runs[0]], EVAL_BATCHES)

    table = [["greedy", 1, format_mean_std(seeds_of("greedy"), 3), format_mean_std(seeds_of("greedy_tokens"), 3)]]
    for n in NS:
        for method in ("majority", "verifier"):
            table.append([f"{method}@{n}", n, format_mean_std(seeds_of(f"{method}@{n}"), 3),
                          format_mean_std(seeds_of(f"{method}@{n}_tokens"), 3)])
        table.append([f"pass@{n} (oracle)", n, format_mean_std(seeds_of(f"pass@{n}"), 3), "-"])
    exp.print_table(["method", "N", "accuracy", "tokens/problem"], table,
                    title=f"{n_problems} 道留出的 2 位加法，第 {eval_step} 步的检查点，温度 {temperature}（{len(exp.seeds)} 个种子）")
    exp.print_table(["estimator", f"pass@{PASS_K}"],
                    [["empirical (disjoint groups)", format_mean_std(seeds_of("pass_k_empirical"), 3)],
                     ["unbiased (Chen 2021)", format_mean_std(seeds_of("pass_k_unbiased"), 3)],
                     ["naive 1-(1-c/n)^k", format_mean_std(seeds_of("pass_k_naive"), 3)]],
                    title=f"pass@{PASS_K} 的三种算法（每题 {N_MAX} 条采样）")
    # 投票何时超过贪心：两个模型逐题比较 majority@N_MAX 与贪心
    vote_why, vote_why_two = vote_vs_greedy(per_seed), vote_vs_greedy(two_method)
    labels = {"vote_is_greedy": f"majority@{N_MAX} answer == greedy answer (share of problems)",
              "greedy_wrong": "greedy wrong (share of problems)",
              "pass_of_greedy_wrong": f"  of those: the right answer among the {N_MAX} samples (pass@{N_MAX})",
              "fixed_of_greedy_wrong": f"  of those: majority@{N_MAX} right",
              "broken_of_greedy_right": f"greedy right: majority@{N_MAX} wrong",
              "chains_per_answer": "distinct reasoning chains per distinct answer",
              "top_wrong_share": "wrong samples on the most common wrong answer (share)",
              "direct_share": "samples that answer directly, no draft (share)",
              "greedy_direct": "greedy answers directly (share of problems)",
              "direct_accuracy": "  accuracy of direct-answer samples",
              "draft_accuracy": "  accuracy of draft samples"}
    exp.print_table(["measure", "one method (draft)", "two methods (draft / direct)"],
                    [[labels[k], format_mean_std(vote_why[k], 3), format_mean_std(vote_why_two[k], 3)] for k in labels]
                    + [["greedy accuracy", format_mean_std(seeds_of("greedy"), 3),
                        format_mean_std(seeds_of("greedy", two_method), 3)],
                       [f"majority@{N_MAX} accuracy", format_mean_std(seeds_of(f"majority@{N_MAX}"), 3),
                        format_mean_std(seeds_of(f"majority@{N_MAX}", two_method), 3)],
                       ["one sample accuracy", format_mean_std(seeds_of("sample1"), 3),
                        format_mean_std(seeds_of("sample1", two_method), 3)]],
                    title=f"投票何时超过贪心：只会一种解法（第 {eval_step} 步） vs 会两种解法（{two_method_steps} 步），"
                          f"逐题比较 majority@{N_MAX} 与贪心（{len(exp.seeds)} 个种子）")
    keys = ["greedy", "greedy_tokens", "sample1", "pass_k_empirical", "pass_k_unbiased", "pass_k_naive"]
    keys += [f"{m}@{n}{suffix}" for n in NS for m in ("majority", "verifier") for suffix in ("", "_tokens")]
    keys += [f"pass@{n}" for n in NS]
    two_keys = ["greedy", "sample1", f"majority@{N_MAX}", f"pass@{N_MAX}"]
    exp.save_metrics({"steps": steps, "eval_step": eval_step, "n_problems": n_problems, "n_samples": N_MAX,
                      "temperature": temperature, "two_method_steps": two_method_steps,
                      "per_seed": {k: seeds_of(k) for k in keys}, "vote_vs_greedy": vote_why,
                      "two_methods": {k: seeds_of(k, two_method) for k in two_keys},
                      "two_methods_vote_vs_greedy": vote_why_two})

    top = f"@{N_MAX}"
    ev = {k: format_mean_std(seeds_of(k), 3) for k in keys}
    exp.conclude_verdict(f"多数投票 majority{top} 的准确率高于单条采样",
                         compare_runs(seeds_of(f"majority{top}"), seeds_of("sample1"), "greater",
                                      batches_of(f"majority{top}"), batches_of("sample1")),
                         evidence=f"majority{top} {ev[f'majority{top}']} vs 单条采样 {ev['sample1']}")
    exp.conclude_verdict(f"会两种解法（草稿 / 直接答）的模型上，多数投票 majority{top} 的准确率高于贪心",
                         compare_runs(seeds_of(f"majority{top}", two_method), seeds_of("greedy", two_method), "greater",
                                      batches_of(f"majority{top}", two_method), batches_of("greedy", two_method)),
                         evidence=f"majority{top} {format_mean_std(seeds_of(f'majority{top}', two_method), 3)} vs greedy "
                                  f"{format_mean_std(seeds_of('greedy', two_method), 3)}；贪心直接答的题占 "
                                  f"{format_mean_std(vote_why_two['greedy_direct'], 3)}")
    exp.conclude_verdict(f"对照：只会一种解法（草稿写法）的模型上，多数投票 majority{top} 的准确率高于贪心",
                         compare_runs(seeds_of(f"majority{top}"), seeds_of("greedy"), "greater",
                                      batches_of(f"majority{top}"), batches_of("greedy")),
                         evidence=f"majority{top} {ev[f'majority{top}']} vs greedy {ev['greedy']}；投票答案与贪心相同的题占 "
                                  f"{format_mean_std(vote_why['vote_is_greedy'], 3)}")
    exp.conclude_verdict(f"验证器挑选 verifier{top} 的准确率高于多数投票 majority{top}",
                         compare_runs(seeds_of(f"verifier{top}"), seeds_of(f"majority{top}"), "greater",
                                      batches_of(f"verifier{top}"), batches_of(f"majority{top}")),
                         evidence=f"verifier{top} {ev[f'verifier{top}']} vs majority{top} {ev[f'majority{top}']}")
    exp.conclude_verdict(f"验证器挑选（通过即停）每题生成的 token 少于 majority{top}",
                         compare_runs(seeds_of(f"verifier{top}_tokens"), seeds_of(f"majority{top}_tokens"), "less",
                                      batches_of(f"verifier{top}_tokens"), batches_of(f"majority{top}_tokens")),
                         evidence=f"{ev[f'verifier{top}_tokens']} vs {ev[f'majority{top}_tokens']} token/题")
    accepted = [(acc, ok) for rows in per_seed for r in rows for acc, ok in zip(r["accepted"], r["correct_each"])]
    n_accepted = sum(acc for acc, _ in accepted)
    exp.conclude("验证器通过的回答全部正确（精确率 1：只做逐位检查就足以证明答案）",
                 holds=n_accepted > 0 and all(ok for acc, ok in accepted if acc),
                 evidence=f"{n_accepted} 条通过，其中答错 {sum(1 for acc, ok in accepted if acc and not ok)} 条；"
                          f"答对但草稿有错的 {sum(1 for acc, ok in accepted if ok and not acc)} 条")
    exp.conclude_verdict(f"经验 pass@{PASS_K}（不相交分组直接数）与无偏估计相差不超过 {PASS_MARGIN}",
                         equivalent_runs(seeds_of("pass_k_empirical"), seeds_of("pass_k_unbiased"), PASS_MARGIN,
                                         batches_of("pass_k_empirical"), batches_of("pass_k_unbiased")),
                         evidence=f"经验 {ev['pass_k_empirical']} vs 无偏 {ev['pass_k_unbiased']}")
    naive_low = all(r["pass_k_naive"] <= r["pass_k_unbiased"] + 1e-12 for rows in per_seed for r in rows)
    exp.conclude("朴素估计 1−(1−c/n)^k 每道题都不高于无偏估计（偏低）",
                 holds=naive_low and mean_of(per_seed[0], "pass_k_naive") < mean_of(per_seed[0], "pass_k_unbiased"),
                 evidence=f"朴素 {ev['pass_k_naive']} vs 无偏 {ev['pass_k_unbiased']}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, style in (("majority", "o-"), ("verifier", "s-"), ("pass", "^--")):
        accs = [mean_std(seeds_of(f"{method}@{n}"))[0] for n in NS]
        axes[0].plot(NS, accs, style, label=f"{method}@N" + (" (oracle)" if method == "pass" else ""))
        if method != "pass":
            tokens = [mean_std(seeds_of(f"{method}@{n}_tokens"))[0] for n in NS]
            axes[1].plot(tokens, accs, style, label=f"{method}@N")
    greedy_acc = mean_std(seeds_of("greedy"))[0]
    axes[0].axhline(greedy_acc, color="gray", linestyle=":", label="greedy")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("samples per problem N")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    axes[1].plot([mean_std(seeds_of("greedy_tokens"))[0]], [greedy_acc], "k*", markersize=12, label="greedy")
    axes[1].set_xlabel("generated tokens per problem")
    axes[1].set_ylabel("accuracy")
    axes[1].legend()
    exp.save_figure(fig, "exp2_test_time_compute.png")
    exp.finish()


if __name__ == "__main__":
    main()
