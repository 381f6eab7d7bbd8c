"""实验 4：推理蒸馏——小学生在大老师"采样 + 验证器过滤"的推理轨迹上 SFT，和只学答案、学没过滤的轨迹、学标准草稿比。

DeepSeek-R1（2025）把 R1 的推理轨迹蒸馏进小模型：老师对每道题采样，用规则验证（拒绝采样）留下对的，
学生在这些轨迹上做普通 SFT。这里在加法上把这条流水线完整走一遍：
  老师   hidden 96、2 层，草稿写法在 1–2 位加法上训练 --teacher-steps 步（故意没学满：会犯错）
  轨迹   对题库里每道题，老师按温度 1 采样一条回答（"7+5+0=12;…|0452"）
  学生   hidden 64、2 层（比老师小），同一个初始化、同样的步数与每步条数，只换训练数据：
    filtered     老师的轨迹里通过验证器（addition_lab.check_scratchpad）的那些——拒绝采样 / R1 的做法
    unfiltered   老师的全部轨迹，不过滤（里面有算错的）
    answers      与 filtered 同一批题、同一批答案，但只留答案 "|0452"（去掉推理）
    ground_truth 题库里每道题的标准草稿（现实中通常没有：有的话就不需要老师了）
评估：留出的 2 位题，学生贪心解码的准确率，以及温度 1 采样一条的准确率（学生学到的分布本身）。
另外数一数过滤掉了哪些题：老师在有进位的题上更常出错、被验证器拒掉，所以过滤后的题库里有进位的题比例变低——
拒绝采样的覆盖偏差（学生恰恰少见了难题）。
quick（学生 300 步）不判定"过滤后的轨迹教出的学生高于不过滤的"两条（QUICK_TAKEOFF_NOISE）：学生还在起飞途中，单次训练之间的差
大于效应，quick 种子 42/1/7/5/2/11/13 上判定在 ✅、❔、❌ 之间翻转（同一个种子换一种 CPU 也会翻转）（原来测试里把它们列为豁免；看过种子 11 的判定之后改成 quick 不判定，
测得的值不变）。完整模式（800 步，学生练满）照常判定，两组种子上都成立。

    python exp4_reasoning_distillation.py --quick
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import addition_lab as lab  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare_runs  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

ARMS = ("filtered", "unfiltered", "answers", "ground_truth")
TEACHER_SIZE, STUDENT_SIZE = (96, 2), (64, 2)  # (hidden_size, num_layers)
MAX_DIGITS = 2
BATCH_SIZE = 64  # 学生每步的条数（各组相同：等步数 = 等条数，不等 token）
EVAL_BATCHES = 10
# 量老师通过率（覆盖偏差那条结论）时每道题采几条：学生的训练数据仍是每题一条（第 1 条），另外 3 条只用来量通过率。
# 每题只采一条时，一个种子的"无进位 − 有进位"通过率之差光采样误差就有约 ±0.03，与效应同量级；
# 每题 4 条把它降到约一半（R1 之类的流水线本来就对每道题多采几条）。条数按 CPU 预算定（多采的 3 条只占运行时间的几秒）
PASS_SAMPLES = 4
# quick 不判定"过滤后高于不过滤"两条的原因（交给 exp.conclude_verdict 的 quick_reason，完整模式照常判定）：
# quick 的学生只练 300 步、还在起飞途中，名次由起飞早晚决定；同一个老师、同一批轨迹只换学生的训练随机数（种子 7，3 次训练），
# filtered 的贪心 0.37、0.58、0.575，unfiltered 0.605、0.50、0.285——单次训练之间的差比两组之差还大，判定随种子翻转
QUICK_TAKEOFF_NOISE = ("quick 300 步时学生还在起飞途中，单次训练之间的差（种子 7 只换学生的训练随机数：filtered 贪心 0.37/0.58/0.575，"
                       "unfiltered 0.605/0.50/0.285）大于两组之差，一个种子量不到；判定随种子翻转")


def add_args(parser):
    parser.add_argument("--teacher-steps", type=int, default=300, help="老师的训练步数（默认 300，每步 1024 个训练 token）")
    parser.add_argument("--student-steps", type=int, default=None, help="学生的 SFT 步数（默认 quick 300、完整 800）")
    parser.add_argument("--pool", type=int, default=None, help="蒸馏题库的题数（默认 quick 600、完整 1000）")
    parser.add_argument("--temperature", type=float, default=1.0, help="老师采样轨迹的温度（默认 1）")


def has_carry(problem) -> bool:
    """竖式里至少有一次进位。"""
    a, b, d = problem
    return any(x + y >= 10 for x, y in zip(lab.digits_lsb_first(a, d), lab.digits_lsb_first(b, d)))


def pass_rate(passed, carry, with_carry: bool) -> float:
    """有进位（with_carry=True）或没有进位的那部分题里，老师的轨迹通过验证器的比例。"""
    kept = [ok for ok, c in zip(passed, carry) if c == with_carry]
    return sum(kept) / max(1, len(kept))


def carry_pass_batches(passed, carry):
    """题库切成 EVAL_BATCHES 段，每段里"无进位题的通过率"与"有进位题的通过率"：同一段内配对，
    作为 quick 模式单种子时的噪声单位（modules/common/noise.py 的 unit="batches"）。"""
    size = -(-len(passed) // EVAL_BATCHES)
    chunks = [(passed[i:i + size], carry[i:i + size]) for i in range(0, len(passed), size)]
    return ([pass_rate(p, c, False) for p, c in chunks], [pass_rate(p, c, True) for p, c in chunks])


def teacher_traces(teacher, pool, temperature, seed):
    """老师对 pool 里每道题采样一条回答（去掉换行）；pool 里重复的题各采各的。"""
    max_new = max(len(lab.answer_text(p, "scratchpad")) for p in pool) + 4
    replies, _ = lab.generate(teacher, [lab.prompt_text(p) for p in pool], max_new, temperature=temperature,
                              generator=torch.Generator().manual_seed(seed))
    return [r.split("\n")[0] for r in replies]


def distillation_sets(pool, traces) -> dict:
    """四组学生的训练数据：(题目, 回答) 文本对。"""
    verified = [(p, t) for p, t in zip(pool, traces) if lab.check_scratchpad(p, t)]
    return {"filtered": [(lab.prompt_text(p), t) for p, t in verified],
            "unfiltered": [(lab.prompt_text(p), t) for p, t in zip(pool, traces)],
            "answers": [(lab.prompt_text(p), "|" + t.rsplit("|", 1)[1]) for p, t in verified],
            "ground_truth": [(lab.prompt_text(p), lab.answer_text(p, "scratchpad")) for p in pool]}


def student_scores(student, problems, seed):
    """逐题 0/1：贪心解码答对、温度 1 采样一条答对（"mixed" 解析：草稿或直接答都能读）。"""
    prompts = [lab.prompt_text(p) for p in problems]
    max_new = max(len(lab.answer_text(p, "scratchpad")) for p in problems) + 4
    greedy, _ = lab.generate(student, prompts, max_new)
    sampled, _ = lab.generate(student, prompts, max_new, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    truth = [a + b for a, b, _ in problems]
    return ([float(lab.parse_answer(r, "mixed") == t) for r, t in zip(greedy, truth)],
            [float(lab.parse_answer(r, "mixed") == t) for r, t in zip(sampled, truth)])


def run_seed(seed, cfg, eval_problems):
    """一个种子：训练老师 → 采样轨迹 → 四组学生。返回这个种子的全部指标（逐题 0/1 留着做噪声估计）。"""
    exclude = frozenset(eval_problems)
    teacher = lab.new_model(seed, *TEACHER_SIZE)
    history = lab.train_format(teacher, "scratchpad", cfg["teacher_steps"], 1024, seed, MAX_DIGITS, exclude,
                               {"eval": eval_problems}, cfg["teacher_steps"])
    rng = random.Random(seed + 1)
    pool = [lab.sample_problems(rng, rng.randint(1, MAX_DIGITS), 1, exclude)[0] for _ in range(cfg["pool"])]
    traces = teacher_traces(teacher, pool, cfg["temperature"], seed)
    passed = [lab.check_scratchpad(p, t) for p, t in zip(pool, traces)]
    answer_right = [lab.parse_answer(t, "scratchpad") == a + b for t, (a, b, _) in zip(traces, pool)]
    carry = [has_carry(p) for p in pool]
    # 量通过率：每道题再采 PASS_SAMPLES − 1 条（另一个随机流，不进学生的数据），连同上面那条一起算
    # （按题排列：同一道题的 PASS_SAMPLES 条相邻，quick 模式切评估段时同一道题不会跨段）
    extra_pool = [p for p in pool for _ in range(PASS_SAMPLES - 1)]
    extra = teacher_traces(teacher, extra_pool, cfg["temperature"], seed + 1)
    extra_passed = [lab.check_scratchpad(p, t) for p, t in zip(extra_pool, extra)]
    k = PASS_SAMPLES - 1
    all_passed = [ok for i in range(len(pool)) for ok in [passed[i]] + extra_passed[i * k:(i + 1) * k]]
    all_carry = [c for c in carry for _ in range(PASS_SAMPLES)]
    row = {"teacher_greedy": history["eval"][-1], "pass_rate": sum(passed) / len(pool),
           "wrong_answer_share": 1 - sum(answer_right) / len(pool),
           "carry_pool": sum(carry) / len(pool),
           "carry_kept": sum(c for c, ok in zip(carry, passed) if ok) / max(1, sum(passed)),
           "pass_carry": pass_rate(all_passed, all_carry, True), "pass_no_carry": pass_rate(all_passed, all_carry, False),
           "pass_batches": carry_pass_batches(all_passed, all_carry), "students": {}}
    print(f"  [seed {seed}] 老师贪心准确率 {row['teacher_greedy']:.3f}；{len(pool)} 条轨迹通过验证器 {row['pass_rate']:.1%}，"
          f"答案错的 {row['wrong_answer_share']:.1%}", flush=True)
    if not any(passed):
        raise SystemExit(f"老师的 {len(pool)} 条轨迹没有一条通过验证器，filtered 与 answers 两组没有训练数据"
                         f"（老师只训练了 {cfg['teacher_steps']} 步：试试更大的 --teacher-steps）")
    for arm, pairs in distillation_sets(pool, traces).items():
        student = lab.new_model(seed + 1000, *STUDENT_SIZE)  # 各组同一个初始化
        losses = lab.train_on_pairs(student, pairs, cfg["student_steps"], BATCH_SIZE, seed)
        greedy, sampled = student_scores(student, eval_problems, seed)
        tokens = sum(len(p) + len(r) + 1 for p, r in pairs) / len(pairs) * BATCH_SIZE * cfg["student_steps"]
        row["students"][arm] = {"greedy": greedy, "sampled": sampled, "n_pairs": len(pairs),
                                "final_loss": sum(losses[-20:]) / len(losses[-20:]), "train_tokens": tokens}
        print(f"  [seed {seed}] 学生 {arm:<12} {len(pairs):>5} 条：贪心 {sum(greedy) / len(greedy):.3f}，"
              f"采样 {sum(sampled) / len(sampled):.3f}", flush=True)
    return row


def main():
    exp = Experiment(__file__, description="推理蒸馏：老师的过滤轨迹 / 不过滤 / 只学答案 / 标准草稿，等步数的学生准确率",
                     extra_args=add_args)
    a = exp.args
    cfg = {"teacher_steps": a.teacher_steps, "temperature": a.temperature,
           "student_steps": a.student_steps if a.student_steps is not None else (300 if exp.quick else 800),
           "pool": a.pool if a.pool is not None else (600 if exp.quick else 1000),
           "teacher_size": TEACHER_SIZE, "student_size": STUDENT_SIZE, "batch_size": BATCH_SIZE}
    if cfg["teacher_steps"] < 20 or cfg["student_steps"] < 20 or cfg["pool"] < 50 or not cfg["temperature"] > 0:
        raise SystemExit(f"需要 --teacher-steps >= 20、--student-steps >= 20、--pool >= 50、--temperature > 0"
                         f"（收到 {cfg['teacher_steps']}、{cfg['student_steps']}、{cfg['pool']}、{cfg['temperature']}）")
    eval_problems = lab.sample_problems(random.Random(2468), 2, 200)  # 留出的 2 位题：老师、题库、学生都没见过

    rows = []
    for seed in exp.seeds:
        exp.seed_everything(seed)
        rows.append(run_seed(seed, cfg, eval_problems))

    def student(arm, key):
        return [sum(r["students"][arm][key]) / len(eval_problems) for r in rows]

    def batches(arm, key):
        return lab.batch_means(rows[0]["students"][arm][key], EVAL_BATCHES)

    def teacher(key):
        return [r[key] for r in rows]

    exp.print_table(["teacher", "value"],
                    [["greedy accuracy (held-out 2-digit)", format_mean_std(teacher("teacher_greedy"), 3)],
                     ["traces passing the verifier", format_mean_std(teacher("pass_rate"), 3)],
                     ["traces with a wrong answer", format_mean_std(teacher("wrong_answer_share"), 3)],
                     [f"pass rate: problems without a carry ({PASS_SAMPLES} samples each)",
                      format_mean_std(teacher("pass_no_carry"), 3)],
                     [f"pass rate: problems with a carry ({PASS_SAMPLES} samples each)", format_mean_std(teacher("pass_carry"), 3)],
                     ["carry problems: whole pool", format_mean_std(teacher("carry_pool"), 3)],
                     ["carry problems: kept by the filter", format_mean_std(teacher("carry_kept"), 3)]],
                    title=f"老师（hidden {TEACHER_SIZE[0]}、{TEACHER_SIZE[1]} 层，{cfg['teacher_steps']} 步）与它的 "
                          f"{cfg['pool']} 条轨迹（温度 {cfg['temperature']}）")
    exp.print_table(["student data", "pairs", "train tokens", "greedy acc", "sampled acc (T=1)"],
                    [[arm, format_mean_std([r["students"][arm]["n_pairs"] for r in rows], 3),
                      format_mean_std([r["students"][arm]["train_tokens"] for r in rows], 3),
                      format_mean_std(student(arm, "greedy"), 3), format_mean_std(student(arm, "sampled"), 3)]
                     for arm in ARMS],
                    title=f"学生（hidden {STUDENT_SIZE[0]}、{STUDENT_SIZE[1]} 层），各 {cfg['student_steps']} 步 × "
                          f"{BATCH_SIZE} 条，留出 {len(eval_problems)} 道 2 位题（{len(exp.seeds)} 个种子）")
    exp.save_metrics({"config": cfg, "n_eval": len(eval_problems), "pass_samples": PASS_SAMPLES,
                      "teacher": {k: teacher(k) for k in ("teacher_greedy", "pass_rate", "wrong_answer_share", "pass_no_carry",
                                                          "pass_carry", "carry_pool", "carry_kept")},
                      "students": {arm: {"greedy": student(arm, "greedy"), "sampled": student(arm, "sampled"),
                                         "n_pairs": [r["students"][arm]["n_pairs"] for r in rows],
                                         "train_tokens": [r["students"][arm]["train_tokens"] for r in rows],
                                         "final_loss": [r["students"][arm]["final_loss"] for r in rows]}
                                   for arm in ARMS}})

    def versus(claim, better, worse, key, quick_reason=None):
        exp.conclude_verdict(claim, compare_runs(student(better, key), student(worse, key), "greater",
                                                 batches(better, key), batches(worse, key)),
                             evidence=f"{better} {format_mean_std(student(better, key), 3)} vs "
                                      f"{worse} {format_mean_std(student(worse, key), 3)}", quick_reason=quick_reason)

    versus("学推理轨迹（过滤后）的学生贪心准确率高于只学答案的学生（同一批题、同一批答案）", "filtered", "answers", "greedy")
    versus("过滤后的轨迹教出的学生，采样准确率高于不过滤的轨迹", "filtered", "unfiltered", "sampled",
           QUICK_TAKEOFF_NOISE + "：采样准确率在本机（AMD EPYC）上种子 42、1、7 ✅，13 ❔，11 ❌；之前的记录里 2、5 ❔、7 ❌")
    versus("过滤后的轨迹教出的学生，贪心准确率高于不过滤的轨迹", "filtered", "unfiltered", "greedy",
           QUICK_TAKEOFF_NOISE + "：贪心准确率在本机上种子 7 ✅，42、1、13 ❔，11 ❌；之前的记录里 2 ❔、7、5 ❌")
    versus("标准草稿教出的学生，贪心准确率高于过滤后的老师轨迹", "ground_truth", "filtered", "greedy")
    exp.conclude_verdict("老师在有进位的题上更常被验证器拒掉，所以过滤后的题库里有进位的题变少（拒绝采样的覆盖偏差）",
                         compare_runs(teacher("pass_no_carry"), teacher("pass_carry"), "greater",
                                      *rows[0]["pass_batches"]),
                         evidence=f"通过率：无进位 {format_mean_std(teacher('pass_no_carry'), 3)} vs 有进位 "
                                  f"{format_mean_std(teacher('pass_carry'), 3)}；有进位的题占比：全部 "
                                  f"{format_mean_std(teacher('carry_pool'), 3)} → 过滤后 "
                                  f"{format_mean_std(teacher('carry_kept'), 3)}")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(ARMS))
    for ax, key, title in ((axes[0], "greedy", "greedy decoding"), (axes[1], "sampled", "one sample at T=1")):
        means = [mean_std(student(arm, key)) for arm in ARMS]
        ax.bar(x, [m for m, _ in means], yerr=[s for _, s in means], capsize=4,
               color=["tab:green", "tab:red", "tab:gray", "tab:blue"])
        ax.set_xticks(list(x), ARMS)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out 2-digit accuracy")
        ax.set_title(f"student, {title}")
    exp.save_figure(fig, "exp4_reasoning_distillation.png")
    exp.finish()


if __name__ == "__main__":
    main()
