"""03-training/08-reasoning 模块：四个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应与结论一致；
另有一个毫秒级的测试核对三种写法、验证器与 pass@k 的三种算法（不训练模型）。

实验自己生成加法题，不下载任何东西，所以不需要 experiment_env（../shared）。
"""
import os
import random
from math import comb

import pytest

from conftest import REPO_ROOT, exempt_conclusions, find_conclusion, load_experiment_module, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "08-reasoning" / "experiments"


def run_quick(script_name, tmp_path, *extra):
    env = dict(os.environ, MPLBACKEND="Agg")
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def test_formats_verifier_and_pass_at_k_estimators():
    """三种写法都能被 parse_answer 读回正确答案；实验 3 的格式检查只看形状；验证器接受标准草稿、拒绝任何一处改动；
    exp2 的 pass@k 三种算法与手算一致（无偏估计 = 1 − C(n−c,k)/C(n,k)，朴素估计每题不高于它）。"""
    lab = load_experiment_module(EXPERIMENTS, "addition_lab")
    exp2 = load_experiment_module(EXPERIMENTS, "exp2_test_time_compute")
    assert lab.render((367, 85, 3), "scratchpad") == "367+085=7+5+0=12;6+8+1=15;3+0+1=04;|0452\n"
    assert lab.render((367, 85, 3), "reverse") == "367+085=2540\n"
    rng = random.Random(0)
    for problem in lab.sample_problems(rng, 3, 50) + [(0, 0, 1), (999, 1, 3)]:
        for fmt in lab.FORMATS:
            assert lab.parse_answer(lab.answer_text(problem, fmt), fmt) == problem[0] + problem[1]
        good = lab.answer_text(problem, "scratchpad")
        assert lab.check_scratchpad(problem, good)
        i = rng.choice([k for k, ch in enumerate(good) if ch.isdigit()])  # 改动草稿或答案里的一个数字
        bad = good[:i] + str((int(good[i]) + 1) % 10) + good[i + 1:]
        assert not lab.check_scratchpad(problem, bad), (good, bad)

    # 实验 3 的直接答写法与格式检查：只看形状（算错但形状对也算合格），必须以换行结束
    assert lab.render((367, 85, 3), "direct") == "367+085=|0452\n"
    assert lab.parse_answer("|0452\n", "mixed") == 452 and lab.parse_answer("7+5+0=12;6+8+1=15;3+0+1=04;|0452", "mixed") == 452
    assert lab.well_formed((367, 85, 3), "|0452\n") and lab.well_formed((367, 85, 3), "|9999\n")
    assert lab.well_formed((367, 85, 3), "7+5+0=12;6+8+1=15;3+0+1=04;|0452\n")
    for bad in ("|0452", "|452\n", "7+5+0=12;6+8+1=15;|0452\n", "7+5+0=12;6+8+1=15;3+0+1=4;|0452\n", "0452\n"):
        assert not lab.well_formed((367, 85, 3), bad), bad

    problem = (47, 38, 2)
    good, wrong = lab.answer_text(problem, "scratchpad"), "7+8+0=15;4+3+1=08;|075"  # 答案抄错：草稿对、答案错
    replies = [wrong, wrong, wrong, good] * 4  # 16 条，4 条对
    row = exp2.evaluate_problem(problem, good, 20, replies, [20] * 16)
    assert row["c"] == 4 and row["greedy"] == 1.0
    assert row["majority@16"] == 0.0 and row["verifier@16"] == 1.0 and row["pass@4"] == 1.0
    assert row["verifier@16_tokens"] == 80  # 第 4 条通过验证器就停
    assert row["pass_k_unbiased"] == pytest.approx(1 - comb(12, 4) / comb(16, 4))
    assert row["pass_k_naive"] == pytest.approx(1 - 0.75 ** 4) and row["pass_k_naive"] < row["pass_k_unbiased"]
    assert row["pass_k_empirical"] == 1.0  # 每个不相交的 4 条一组里都恰有一条对


def test_exp1_addition_formats(tmp_path):
    """默认 3 位加法（进位链长到一次前向算不完的区间），quick 每步 512 个 token、1000 步：草稿写法在预算内起飞，
    plain 还接近 0（"scratchpad 高于 plain"在种子 42、1、7、5、11、13 上都 ✅）；倒序什么时候起飞随种子变，与它相比的两条 quick 不判定。"""
    record, stdout = run_quick("exp1_addition_formats.py", tmp_path)
    m = record["metrics"]
    assert m["digits"] == 3 and m["steps"] == 1000 and m["token_budget"] == 512
    assert len(m["curves"]["plain"]["steps"]) == 3
    curve = {fmt: m["curve_mean"][fmt][0] for fmt in ("plain", "reverse", "scratchpad")}
    c = find_conclusion(record, "scratchpad 的学习曲线（各检查点平均准确率）高于 plain")
    assert c["status"] == "holds" and curve["scratchpad"] > curve["plain"], c
    # 倒序在 quick 的预算里什么时候起飞随种子变（本机上种子 42 终点 0.015、13 刚起飞 0.115、1 已练成 0.975）：
    # "reverse 高于 plain"与"scratchpad 高于 reverse"比的是起飞早晚，判定随种子翻转，quick 不判定（QUICK_REVERSE_UNDECIDED）。
    # 完整模式 1200 步 × 1024 token：reverse 高于 plain 在种子 1–3 上 ✅、在 42–44 上 ❔（起飞早晚的训练噪声，
    # 每个种子平均两次训练时两组都 ✅），草稿与倒序按 token 打平（❔），见 teaching.md 实验 1
    exp1 = load_experiment_module(EXPERIMENTS, "exp1_addition_formats")
    expected = [(f"等 token 预算下，{better} 的学习曲线（各检查点平均准确率）高于 {worse}", reason)
                for (better, worse), reason in exp1.QUICK_REVERSE_UNDECIDED.items()]
    assert sorted((u["claim"], u["reason"]) for u in m["quick_undecided"]) == sorted(expected)
    for u in m["quick_undecided"]:
        assert "Δ=" in u["evidence"] and not [c for c in record["conclusions"] if c["claim"] == u["claim"]], u
    assert stdout.count("quick 模式不判定") == len(expected)
    ratio = m["problems_seen"]["scratchpad"][0] / m["problems_seen"]["plain"][0]
    c = find_conclusion(record, "scratchpad 见到的题不到 plain 的一半")
    assert c["holds"] and ratio < 0.5, c
    for fmt in ("plain", "reverse", "scratchpad"):
        c = find_conclusion(record, f"长度外推差：{fmt}")
        assert c["status"] == "holds" and m["final_longer"][fmt][0] < 0.1
    # 同分布上确实学到了东西：4 位题全错不是因为什么都没学会。界用实验事先定好的"全错"界 OOD_THRESHOLD = 0.1：
    # 草稿写法的同分布终点高于它、4 位题低于它（原来的界 0.3 是照种子 42、1、7 定的；本机 quick 种子 42/1/7/5/13 上
    # 同分布终点 0.96、0.76、0.92、0.27、0.395，4 位题都是 0）
    assert m["final_in_dist"]["scratchpad"][0] > 0.1 > m["final_longer"]["scratchpad"][0]


def test_exp2_test_time_compute(tmp_path):
    """在第 300 步的检查点（能力边缘）上评估：投票高于单条采样、验证器高于投票、通过即停更省 token
    （quick：开发用的种子 42 之外，种子 1、7、5 上这三条都 ✅）；会两种解法的模型上投票高于贪心。"""
    record, _ = run_quick("exp2_test_time_compute.py", tmp_path)
    assert record["metrics"]["eval_step"] == 300 and record["metrics"]["steps"] == 400
    seeds = record["metrics"]["per_seed"]
    assert seeds["greedy"][0] < 0.95  # 检查点还没练满：有题可补
    c = find_conclusion(record, "多数投票 majority@16 的准确率高于单条采样")
    assert c["status"] == "holds" and seeds["majority@16"][0] > seeds["sample1"][0]
    c = find_conclusion(record, "验证器挑选 verifier@16 的准确率高于多数投票 majority@16")
    assert c["status"] == "holds" and seeds["verifier@16"][0] > seeds["majority@16"][0]
    assert seeds["verifier@16"][0] <= seeds["pass@16"][0]  # 只能从同样的 16 条里挑：不超过 pass@16
    c = find_conclusion(record, "验证器挑选（通过即停）每题生成的 token 少于 majority@16")
    assert c["status"] == "holds" and seeds["verifier@16_tokens"][0] < seeds["majority@16_tokens"][0]
    assert find_conclusion(record, "验证器通过的回答全部正确")["status"] == "holds"
    assert find_conclusion(record, "朴素估计")["status"] == "holds"
    assert seeds["pass_k_naive"][0] < seeds["pass_k_unbiased"][0]
    # 经验值与无偏估计估的是同一个量：不能显著地差出容差之外
    c = find_conclusion(record, "经验 pass@4（不相交分组直接数）与无偏估计相差不超过")
    assert c["status"] != "fails" and abs(seeds["pass_k_empirical"][0] - seeds["pass_k_unbiased"][0]) < 0.05
    # 会两种解法（草稿 / 直接答）的模型：对的草稿殊途同归、直接答的错误各错各的，投票高于贪心（quick 种子 42、1、7、5、3 上 ✅，
    # Δ = +0.40、+0.21、+0.21、+0.14、+0.11；种子 2 上 ❔：它的两种解法 700 步就都学会了，贪心已到 0.94、只有 0.23 的题贪心直接答）
    two = record["metrics"]["two_methods"]
    c = find_conclusion(record, "会两种解法（草稿 / 直接答）的模型上，多数投票 majority@16 的准确率高于贪心")
    assert c["status"] == "holds" and two["majority@16"][0] > two["greedy"][0]
    # 对照：只会一种解法的模型上投票与贪心打平（quick 种子 42、1、7、2、3 上 ❔，种子 5 上 ❌）：这个模型的答案众数就是贪心答案。
    # 只要求判定与测得的方向自洽
    c = find_conclusion(record, "对照：只会一种解法（草稿写法）的模型上，多数投票 majority@16 的准确率高于贪心")
    delta = seeds["majority@16"][0] - seeds["greedy"][0]
    assert (c["status"] == "holds") <= (delta > 0) and (c["status"] == "fails") <= (delta < 0), c
    # 逐题账目（两个模型）：投票 − 贪心 = 贪心错而投票对的题 − 贪心对而投票错的题（恒等式，核对诊断表的算法）；
    # 每个不同的答案对应的不同推理链不少于 1 条；只会草稿的模型从不直接答
    for acc, why in ((seeds, record["metrics"]["vote_vs_greedy"]), (two, record["metrics"]["two_methods_vote_vs_greedy"])):
        wrong = why["greedy_wrong"][0]
        assert acc["majority@16"][0] - acc["greedy"][0] == pytest.approx(
            why["fixed_of_greedy_wrong"][0] * wrong - why["broken_of_greedy_right"][0] * (1 - wrong))
        assert why["chains_per_answer"][0] >= 1 and why["fixed_of_greedy_wrong"][0] <= why["pass_of_greedy_wrong"][0]
    assert record["metrics"]["vote_vs_greedy"]["direct_share"][0] == 0
    assert 0 < record["metrics"]["two_methods_vote_vs_greedy"]["direct_share"][0] < 1


def test_exp3_rl_verifiable_rewards(tmp_path):
    """GRPO 只奖励答对（+ 格式）：2 位题上"先打草稿"的比例与回答长度都上升（quick 30 步：种子 42、1、7、5、2 上都 ✅）。
    题库题与留出题的准确率在种子 42、1、7、5 上 ✅，种子 2 上 ❔（它的 SFT 起点弱：留出 2 位题采样准确率 0.125，
    别的种子约 0.3，30 步里涨 +0.035/+0.078，在评估噪声以内），这两条只要求判定与方向自洽；格式合格率那条贴着天花板
    （起点不合格的只有 5–10%），本机上种子 42 ✅、11、13 ❔，之前的记录里 1、7 ❔、5、2 ✅：quick 不判定。"""
    record, stdout = run_quick("exp3_rl_verifiable_rewards.py", tmp_path)
    probes = record["metrics"]["probes"]

    def start_end(name, key):
        return probes[name][key][0][0], probes[name][key][0][-1]

    for claim, name, key in (("留出 2 位题上先打草稿的比例更高", "2digit", "think"),
                             ("留出 2 位题上的回答更长", "2digit", "length")):
        c = find_conclusion(record, claim)
        start, end = start_end(name, key)
        assert c["status"] == "holds" and end > start, (c, start, end)
    for claim, name, key in (("题库里 2 位题（训练过的题）上的准确率", "pool", "correct"),
                             ("留出 2 位题（没训练过的题）上的准确率", "2digit", "correct")):
        c = find_conclusion(record, claim)
        start, end = start_end(name, key)
        assert c["status"] != "fails" and (c["status"] == "holds") <= (end > start), c
    # 格式合格率贴着天花板（起点不合格的只有 5–10%），quick 不判定（QUICK_FORMAT_CEILING），只打印测得的值与原因
    exp3 = load_experiment_module(EXPERIMENTS, "exp3_rl_verifiable_rewards")
    claim = "GRPO 之后留出 2 位题上格式合格的回答更多"
    assert not [c for c in record["conclusions"] if c["claim"] == claim]
    undecided = record["metrics"]["quick_undecided"]
    assert [(u["claim"], u["reason"]) for u in undecided] == [(claim, exp3.QUICK_FORMAT_CEILING)]
    assert "Δ=" in undecided[0]["evidence"] and stdout.count("quick 模式不判定") == 1
    assert start_end("2digit", "well_formed")[0] > 0.85  # 起点已经贴着天花板
    # 为什么"先想比例的增幅：2 位 > 1 位"不成立（quick 种子 42、1、7、5 与完整模式两组种子都 ❔）：1 位题上先想同样有用——
    # 起点上先想的 1 位题采样答对率高于直接答的（完整模式种子 42–44 的起点见讲义），奖励里又没有让它少想的力量
    split = record["metrics"]["by_first_token"]["1digit"]
    assert split["think"]["correct"][0][0] > split["direct"]["correct"][0][0], split
    exempt_conclusions(record, {"先想比例的增幅": "两组题的先想比例都被推向 1（完整模式终点 0.92–0.99），增幅之差只剩起点之差；"
                                               "1 位题上先想也有用（上面的断言），所以这不是本设计能显示的效应，见讲义"})


def test_exp4_reasoning_distillation(tmp_path):
    """推理蒸馏：学老师轨迹的学生远好于只学答案的学生、标准草稿好于过滤后的轨迹（quick 种子 42、1、7、5 上都 ✅）。
    老师在进位题上更常被拒取决于老师（只查自洽）；过滤 vs 不过滤在 quick 的 300 步里是起飞噪声，quick 不判定（理由见下）。"""
    exp4 = load_experiment_module(EXPERIMENTS, "exp4_reasoning_distillation")
    record, stdout = run_quick("exp4_reasoning_distillation.py", tmp_path)
    students, teacher = record["metrics"]["students"], record["metrics"]["teacher"]

    def acc(arm, key):
        return students[arm][key][0]

    c = find_conclusion(record, "只学答案的学生")
    assert c["status"] == "holds" and acc("filtered", "greedy") > acc("answers", "greedy"), c
    # 标准草稿 vs 过滤后的轨迹：开发机器上 quick 种子 42、1、7、5 都成立，2026-12-05 在另一种 CPU（AMD EPYC）上同一代码、
    # 同一种子 42 是 0.505 vs 0.500（未确立）——完整模式两组种子也都未确立（见讲义）：quick 只要求不反向
    c = find_conclusion(record, "标准草稿教出的学生")
    assert c["status"] != "fails", c
    # 覆盖偏差取决于老师错在哪里：完整模式种子 42–44 的 3 个老师里 2 个在进位题上更弱（每题 4 条量通过率：+0.106、−0.027、+0.093），
    # 3 个种子 ❔（见讲义）。这是老师本身的性质，quick 单种子只要求判定与测得的方向自洽
    c = find_conclusion(record, "老师在有进位的题上更常被验证器拒掉")
    gap = teacher["pass_no_carry"][0] - teacher["pass_carry"][0]
    assert (c["status"] == "holds") <= (gap > 0) and (c["status"] == "fails") <= (gap < 0), c
    assert record["metrics"]["pass_samples"] == 4
    # 过滤 vs 不过滤：quick 的学生只练 300 步，还在"起飞"途中，名次由起飞早晚决定，不由数据好坏决定。
    # 实测（种子 7，同一个老师、同一批轨迹，只换学生的初始化与取样顺序，3 次训练）：filtered 贪心 0.37、0.58、0.575，
    # unfiltered 0.605、0.50、0.285——单次训练之间相差 0.2–0.3，比两组之差还大；quick 种子 42/1/7/5/2/11 上判定翻转。
    # quick 不判定这两条（quick_reason），只打印测得的值与原因；完整模式 800 步时学生已练满，两组种子上都 ✅（results/reference/）
    not_judged = ("过滤后的轨迹教出的学生，采样准确率高于不过滤的轨迹", "过滤后的轨迹教出的学生，贪心准确率高于不过滤的轨迹")
    undecided = record["metrics"]["quick_undecided"]
    assert [u["claim"] for u in undecided] == list(not_judged)
    for u in undecided:
        assert u["reason"].startswith(exp4.QUICK_TAKEOFF_NOISE) and "Δ=" in u["evidence"], u
        assert not [c for c in record["conclusions"] if c["claim"] == u["claim"]], u
    assert stdout.count("quick 模式不判定") == len(not_judged)
    assert len(record["conclusions"]) == 3, [c["claim"] for c in record["conclusions"]]
    # 训练数据：answers 与 filtered 是同一批题；filtered 是 unfiltered 的子集
    assert students["answers"]["n_pairs"] == students["filtered"]["n_pairs"]
    assert students["filtered"]["n_pairs"][0] < students["unfiltered"]["n_pairs"][0]
