"""03-training/07-rl 模块：估计式的独立核对（枚举），以及各实验的 --quick 在子进程里从别的工作目录运行，
检查测得的效应与结论是否一致。实验只用仓库自带的分词器和 dataset/samples/ 的数据，不下载任何东西。
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "07-rl" / "experiments"


def load_experiment(name):
    """实验目录名带连字符，不能当包导入：把目录放进 sys.path 再导入脚本（只定义函数，不运行 main）。"""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return __import__(name)


def run_quick(script_name, tmp_path, *extra):
    env = dict(os.environ, MPLBACKEND="Agg")
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def test_best_of_n_estimator_matches_enumeration():
    """无偏 best-of-n 估计 = 对 N_max 条样本的所有 n 元子集逐个"按 proxy 选最高、取它的 gold"再平均。"""
    exp1 = load_experiment("exp1_reward_model")
    gen = torch.Generator().manual_seed(0)
    gold = torch.randint(0, 2, (3, 7), generator=gen).float()
    proxy = torch.randn(3, 7, generator=gen)
    result = exp1.best_of_n(gold, proxy, [1, 2, 3, 7])
    for n in (1, 2, 3, 7):
        for p in range(3):
            picks = [gold[p, max(subset, key=lambda i: proxy[p, i].item())].item()
                     for subset in itertools.combinations(range(7), n)]
            assert result[n][0][p].item() == pytest.approx(np.mean(picks))
    assert torch.allclose(result[1][0], gold.mean(1).double())  # n=1 就是随机采一条
    assert torch.allclose(result[7][1], proxy.max(1).values.double())  # n=N_max 就是 proxy 最高的那条
    assert exp1.bon_kl(1) == 0 and exp1.bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)


def test_zero_group_prediction_matches_enumeration():
    """"随机 G 条全对或全错"的概率对照枚举所有 G 元子集；切成不相交组的实测值是它的一个样本。"""
    exp2 = load_experiment("exp2_advantages")
    counts = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])  # K=8 条里 2 条答对
    measured, predicted = exp2.zero_group_share(counts, 8, 4)
    subsets = list(itertools.combinations(range(8), 4))
    brute = np.mean([counts[list(s)].sum().item() in (0, 4) for s in subsets])
    assert predicted == pytest.approx(brute)
    assert measured == 0.5  # 组 (1,0,0,1) 有对有错，组 (0,0,0,0) 全错


@pytest.mark.experiment
def test_exp1_reward_model_and_overoptimisation(tmp_path):
    record, _ = run_quick("exp1_reward_model.py", tmp_path)
    m = record["metrics"]
    ns, pairs = m["config"]["ns"], m["config"]["pairs"]
    acc = {n: np.mean(m["pair_accuracy"][str(n)]) for n in pairs}
    gold = {n: np.mean(m["gold"][str(n)]) for n in ns}
    proxy = {n: np.mean(m["proxy"][str(n)]) for n in ns}
    oracle = {n: np.mean(m["oracle"][str(n)]) for n in ns}
    assert acc[pairs[-1]] > 0.7, acc  # 全部 960 对：留出成对准确率（quick 种子 42、1、7、5 上 0.94、0.82、0.93、0.96）
    # 按 proxy 选得越狠，proxy 的期望越高（best-of-n 的期望随 n 不减）；oracle（pass@n）同样不减
    assert all(proxy[a] <= proxy[b] + 1e-9 for a, b in zip(ns, ns[1:])), proxy
    assert all(oracle[a] <= oracle[b] + 1e-9 for a, b in zip(ns, ns[1:])), oracle
    peak = max(ns, key=lambda n: gold[n])
    assert 1 < peak < ns[-1], gold  # gold 先升后降：峰值既不在 N=1，也不在 N_max
    assert oracle[ns[-1]] > 0.9 and gold[ns[-1]] < 0.5, (gold, oracle)
    # 结论 3–5 检验的是 B 半题目上的数（N* 在 A 半上选出）：不等式本身按 B 半重算
    n_star, n_max = m["config"]["n_star"], ns[-1]
    b_gold = {n: np.mean(m["half_b_gold"][str(n)]) for n in ns}
    b_proxy = {n: np.mean(m["half_b_proxy"][str(n)]) for n in ns}
    assert acc[pairs[-1]] > acc[pairs[0]], acc
    assert b_gold[n_star] > b_gold[1], b_gold
    assert b_proxy[n_max] > b_proxy[n_star], b_proxy
    for fragment in ("偏好对越多", "好于随机猜", "提高了验证器判对的比例", "proxy 分数继续上升"):
        c = find_conclusion(record, fragment)
        assert c["noise"]["unit"] == "batches", c
        assert c["status"] == "holds", c  # quick 种子 42、1、7、5 上都成立
    # B 半上 gold 从 N* 回落的方向在种子 42、1、7、5 上都出现（0.339→0.234、0.208→0.141、0.244→0.203、0.322→0.188）；
    # 超出逐题噪声的是 42、1、5，种子 7（Δ=0.041，逐题 SE 0.035，64 道检验题）在噪声以内、判为未确立，所以只断言"不是 fails"。
    # 完整模式（300 题、3 个种子）在种子 42–44 与 1–3 上都成立，见 results/reference/
    assert b_gold[n_max] < b_gold[n_star], b_gold
    assert find_conclusion(record, "过度优化")["status"] != "fails"
    gap = find_conclusion(record, "oracle（按 gold 选")
    assert gap["holds"] == bool(oracle[ns[-1]] - gold[ns[-1]] > oracle[2] - gold[2]) and gap["holds"]


@pytest.mark.experiment
def test_exp2_advantage_estimators(tmp_path):
    record, stdout = run_quick("exp2_advantages.py", tmp_path)
    m = record["metrics"]
    zero = {int(g): np.mean(v["measured"]) for g, v in m["zero_adv_groups"].items()}
    assert all(zero[a] > zero[b] for a, b in zip(sorted(zero), sorted(zero)[1:])), zero  # G 越大越少
    by_task, acc_task = m["zero_adv_groups_by_task"], m["start_accuracy_by_task"]
    # 起点答对率最低的任务零优势组多于最高的（全错的组更多）。只比两端：中间两个任务的答对率可能几乎相同（quick 种子 5：
    # min 0.128、max 0.131），那时谁的零优势组多取决于逐题答对率的分布，不只是平均值
    by_accuracy = sorted(acc_task, key=lambda t: np.mean(acc_task[t]))
    hardest, easiest = by_accuracy[0], by_accuracy[-1]
    assert np.mean(by_task[hardest]["8"]) > np.mean(by_task[easiest]["8"]), (by_task, acc_task)
    var = {e: np.mean(v) for e, v in m["grad_variance"].items()}
    assert var["none+1"] > 3 * var["mean"], var  # 种子 42、1、7 上都是 7–9 倍
    held = {e: np.mean(v) for e, v in m["heldout_sampled_accuracy"].items()}
    assert held["none+1"] < 0.05 < held["start"], held  # 奖励偏移 + 无基线：策略坍缩到错误答案
    for fragment in ("组越大，零优势组越少", "实测与 p^G", "不改变优势", "奖励偏移让梯度更吵",
                     "mean-centred (Dr. GRPO) 训练后", "std-normalised (GRPO) 训练后", "奖励偏移时基线有用"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    # 0/1 奖励、quick 起点答对率约 0.15 时基线接近 0："减均值降低方差"在 quick 种子 42、1、7 上都在噪声以内、11 上成立
    # （mean 约小 12%），完整模式（起点答对率约 0.27、16 批 × 128 条、3 个种子）上成立（小 27%）：quick 不判定它
    # （QUICK_SMALL_BASELINE），只打印测得的值与原因；方向从未反过来
    exp2 = load_experiment("exp2_advantages")
    claim = "奖励 0/1 时减均值也降低梯度方差：mean 的方差小于 none"
    assert not [c for c in record["conclusions"] if c["claim"] == claim]
    assert [(u["claim"], u["reason"]) for u in m["quick_undecided"]] == [(claim, exp2.QUICK_SMALL_BASELINE)]
    assert "Δ=" in m["quick_undecided"][0]["evidence"] and stdout.count("quick 模式不判定") == 1
    assert var["mean"] < var["none"], var
    # "有基线训练得更好"：quick 种子 42、7 上反向（none 更高）、种子 1 与完整模式在噪声以内——这个设定下没有测到
    assert find_conclusion(record, "有基线（mean）比无基线（none，奖励 0/1）")["status"] != "holds"


@pytest.mark.experiment
@pytest.mark.parametrize("seed", [42, 7])  # 7：quick 扫描里多条结论判定最弱的开发种子
def test_exp3_kl_and_clipping(tmp_path, seed):
    exp3 = load_experiment("exp3_kl_clip")
    record, stdout = run_quick("exp3_kl_clip.py", tmp_path, "--seed", str(seed))
    m = record["metrics"]
    assert m["config"]["replicates"] == 1  # quick 每种设置只训练一次
    held = {k: {name: np.mean(v) for name, v in metrics.items()} for k, metrics in m["heldout"].items()}
    assert held["start"]["kl"] < 1e-6, held["start"]  # 起点就是参考模型：精确 KL 为 0
    assert held["beta_large"]["kl"] < held["beta0"]["kl"], held
    assert all(abs(held[k]["reply_len"] - 2.0) < 0.5 for k in ("start", "beta0", "beta_large")), held  # 数字 + <|im_end|>
    assert np.mean(m["curves"]["beta0"]["clip_fraction"][0]) > 0
    for fragment in ("在策略上（比率恒为 1）裁剪不起作用", "重复优化时有 token 被裁剪", "β=1 训练后留出题上的 KL",
                     "回答长度不受 β 影响"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment  # quick 种子 42、1、7、5、2、11、13 上都成立
    # 单批探针：两边从同一个起点、对同一批采样出发，第一次优化时比率恒为 1、裁剪不起作用，所以第 1 次后的 KL 完全相同；
    # 第 μ 次优化后不裁剪的步长更大（log 的均值，按批配对）——quick 种子 42、1、7、5、2 上都成立
    probe = {k: np.array(v[0]) for k, v in m["probe"].items()}  # (批数, μ)
    assert probe["clip"].shape == (m["config"]["probe_batches"], m["config"]["probe_iterations"]) == probe["no_clip"].shape
    assert np.allclose(probe["clip"][:, 0], probe["no_clip"][:, 0], rtol=1e-4, atol=1e-7), probe
    assert find_conclusion(record, "裁剪限制每批采样上走多远")["status"] == "holds"
    assert np.log(probe["no_clip"][:, -1]).mean() > np.log(probe["clip"][:, -1]).mean(), probe
    # quick 不判定的六条（Experiment.conclude_verdict 的 quick_reason：只打印单次训练测得的值与原因，记进 quick_undecided；
    # 原因见 exp3_kl_clip.py 开头、QUICK_TRAINING_NOISE 与 QUICK_ENTROPY_NOISE）。它们比较两次独立训练，差值里有训练噪声，
    # 逐题检验量不到：quick 种子 42/1/7/5/2 上"不裁剪会把策略推坏"在 7、5 上反向，"KL 的代价"在 42、7 上、
    # "β=0 的 RL 提高了准确率"在 2 上在逐题噪声以内；两条熵的结论在 42/1/7/5/2 上成立、种子 11 上都反向（β=0 的训练冲离起点）。
    # 完整模式按种子配对照常判定
    not_judged = {"β=0.04 的 KL 小于 β=0": exp3.QUICK_TRAINING_NOISE,
                  "β=0 的 RL 提高了留出题的采样准确率": exp3.QUICK_TRAINING_NOISE,
                  "KL 的代价：β=1 训练后的留出准确率低于 β=0": exp3.QUICK_TRAINING_NOISE,
                  "不裁剪会把策略推坏": exp3.QUICK_TRAINING_NOISE,
                  "没有 KL 时熵坍缩": exp3.QUICK_ENTROPY_NOISE, "大 β 减缓熵坍缩": exp3.QUICK_ENTROPY_NOISE}
    undecided = m["quick_undecided"]
    assert len(undecided) == len(not_judged), [u["claim"] for u in undecided]
    for fragment, reason in not_judged.items():
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        entry = [u for u in undecided if fragment in u["claim"]]
        assert len(entry) == 1 and entry[0]["reason"] == reason and "Δ=" in entry[0]["evidence"], (fragment, entry)
        assert fragment in stdout, fragment
    assert stdout.count("quick 模式不判定") == len(not_judged)
    assert len(record["conclusions"]) == 5, [c["claim"] for c in record["conclusions"]]


# 完整参考结果（R = 2，种子 42–44）里各条的判定：讲义的判定表照录这些；1–3 与 4–6 的判定只写在讲义里（不提交 JSON）
EXP3_REFERENCE_STATUS = {"在策略上（比率恒为 1）裁剪不起作用": "holds", "重复优化时有 token 被裁剪": "holds",
                         "β=1 训练后留出题上的 KL": "holds", "β=0.04 的 KL 小于 β=0": "not_established",
                         "没有 KL 时熵坍缩": "holds", "大 β 减缓熵坍缩": "holds", "β=0 的 RL 提高了留出题的采样准确率": "holds",
                         "KL 的代价": "holds", "裁剪限制每批采样上走多远": "holds",
                         "不裁剪会把策略推坏": "not_established", "回答长度不受 β 影响": "holds"}


def test_exp3_reference_averages_replicates_and_verdicts_recompute():
    """实验 3 的完整参考结果：每个种子、每种设置训练 FULL_REPLICATES（= 2）次，每个种子的留出值是这 R 次的平均；
    各条判定从 JSON 里的种子值重算（按种子配对），与记录的一致，也与讲义判定表里 42–44 一列一致。"""
    from modules.common.noise import compare, equivalent

    exp3 = load_experiment("exp3_kl_clip")
    record = json.loads((EXPERIMENTS / "results" / "reference" / "exp3_kl_clip.json").read_text(encoding="utf-8"))
    m = record["metrics"]
    assert record["metadata"]["mode"] == "full" and record["metadata"]["seeds"] == [42, 43, 44]
    assert m["config"]["replicates"] == exp3.FULL_REPLICATES == 2 and exp3.QUICK_REPLICATES == 1
    held = m["heldout"]
    for name, per_metric in m["heldout_replicates"].items():
        for metric, runs in per_metric.items():
            assert [len(r) for r in runs] == [2, 2, 2], (name, metric)
            assert np.allclose(held[name][metric], np.mean(runs, axis=1)), (name, metric)
    recomputed = {"β=0.04 的 KL 小于 β=0": compare(held["beta_small"]["kl"], held["beta0"]["kl"], "less", "seeds"),
                  "β=1 训练后留出题上的 KL": compare(held["beta_large"]["kl"], held["beta0"]["kl"], "less", "seeds"),
                  "没有 KL 时熵坍缩": compare(held["beta0"]["entropy"], held["start"]["entropy"], "less", "seeds"),
                  "大 β 减缓熵坍缩": compare(held["beta_large"]["entropy"], held["beta0"]["entropy"], "greater", "seeds"),
                  "β=0 的 RL 提高了留出题的采样准确率":
                      compare(held["beta0"]["accuracy"], held["start"]["accuracy"], "greater", "seeds"),
                  "KL 的代价": compare(held["beta_large"]["accuracy"], held["beta0"]["accuracy"], "less", "seeds"),
                  "不裁剪会把策略推坏": compare(held["no_clip"]["accuracy"], held["beta0"]["accuracy"], "less", "seeds"),
                  "回答长度不受 β 影响": equivalent(held["beta0"]["reply_len"], held["beta_large"]["reply_len"],
                                               exp3.LENGTH_MARGIN, "seeds")}
    for fragment, verdict in recomputed.items():
        assert find_conclusion(record, fragment)["status"] == verdict.status, fragment
    assert len(record["conclusions"]) == len(EXP3_REFERENCE_STATUS)
    assert {f: find_conclusion(record, f)["status"] for f in EXP3_REFERENCE_STATUS} == EXP3_REFERENCE_STATUS


@pytest.mark.experiment
def test_exp4_bill_ppo_grpo_dpo(tmp_path):
    record, stdout = run_quick("exp4_rl_bill.py", tmp_path)
    m = record["metrics"]
    bill = {k: v[0] for k, v in m["bill"].items()}
    assert [bill[k]["backbones"] for k in ("ppo", "grpo", "dpo")] == [3, 2, 2], bill
    assert [bill[k]["grad_passes"] for k in ("ppo", "grpo", "dpo")] == [2, 1, 1], bill
    assert bill["dpo"]["generated_tokens"] == 0 < bill["grpo"]["generated_tokens"], bill
    assert bill["ppo"]["adam_state_mb"] == pytest.approx(2 * bill["grpo"]["adam_state_mb"], rel=1e-3), bill  # critic 多一个 H→1 的头
    # PPO 带梯度的 token 是 actor 与 critic 各过一遍同一批序列：偶数，且多于只过一遍的 GRPO
    assert bill["ppo"]["grad_tokens"] % 2 == 0 and bill["ppo"]["grad_tokens"] > bill["grpo"]["grad_tokens"], bill
    for fragment in ("内存里的模型", "DPO 每次更新不生成 token", "每次更新带梯度的前向"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    updates, steps = m["config"]["updates"], m["eval_steps"]
    trained = ("grpo", "ppo", "dpo", "dpo_lr_rl")
    assert all(len(m["seconds_per_update"][k][0]) == updates for k in trained)  # 每次更新都在轮流计时的窗口里
    # 曲线平均从曲线重新算一遍：评测点之间线性插值，[0, U] 次更新上的平均 = 梯形公式；
    # 同样时间的平均：横轴换成这个方法的累计秒数，在 [0, GRPO 的总用时] 上平均（独立地用细网格 + np.interp 算）
    curve = {k: np.array(m["curves"][k][0]) for k in trained}
    for k in trained:
        assert len(curve[k]) == len(steps) and curve[k][0] == m["start_accuracy"][0]
        trapezoid = (curve[k][1:] + curve[k][:-1]).mean() / 2
        assert m["curve_mean_updates"][k][0] == pytest.approx(trapezoid, abs=1e-3), k
    budget = sum(m["seconds_per_update"]["grpo"][0])
    grid = np.linspace(0, budget, 20001)
    for k in ("grpo", "ppo"):
        clock = np.concatenate([[0.0], np.cumsum(m["seconds_per_update"][k][0])])[steps]
        assert m["curve_mean_grpo_time"][k][0] == pytest.approx(np.interp(grid, clock, curve[k]).mean(), abs=1e-3), k
    gap_updates = m["curve_mean_updates"]["ppo"][0] - m["curve_mean_updates"]["grpo"][0]
    gap_time = m["curve_mean_grpo_time"]["ppo"][0] - m["curve_mean_grpo_time"]["grpo"][0]
    # DPO 的 lr 是 RL 的 1/10（对照 dpo_lr_rl 用 RL 的 lr）。12 次 × 32 对用掉几遍偏好对随种子变（种子 42 造出的对
    # 一遍没用完，种子 1、7、13 只造出 342–365 对，要重新打乱再用一部分）：核对账单表标题里报的遍数是照实算的
    assert m["config"]["dpo_lr"] == pytest.approx(m["config"]["lr"] / 10), m["config"]
    passes = updates * 32 / m["dpo_pairs"][0]
    assert any(f"即 {passes:.2f} 遍" in title for title in m["tables"]), list(m["tables"])
    # quick 种子 42、1、7、5、2 上都成立：GRPO 每次更新比 PPO 快 2.1–2.3 倍（PPO 多一个 critic 的前向反向）；
    # DPO（lr 1e-4）学会了训练对上的偏好（偏好准确率 0.66、0.63、0.66、0.66、0.63，都超出逐对噪声）
    for fragment in ("每次更新 GRPO 比 PPO 快", "DPO 在偏好对上学到了偏好"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    # 对照：这个任务的回答只有 1–2 个 token，生成很便宜，DPO 又对整条序列算完整词表的 logits：DPO 每次更新从没测出比 GRPO 快
    # （quick 种子 42、1、5 上两轮都是 DPO 更慢、判为不成立，7、2 一轮不成立、一轮在噪声以内）
    assert find_conclusion(record, "对照：回答只有 1–2 个 token")["status"] != "holds"
    # D：同一批题、同样 64 条回答，每条写满 LONG_REPLY 个 token 时 DPO 省掉的生成才显出来（DPO 每次更新更快），
    # 生成占 GRPO 每次更新的比例也比短回答时高（quick 种子 42、1、7、5、2 各两轮："DPO 更快"都成立，"比例变大"42、7、5 成立、1、2 时而未确立）。
    # 从计时重新算中位数，断言不等式本身。
    # "比例变大"的判定只有 4 个窗口、又是两次计时之比：负载均值约 4 时在 pytest 里两次运行都判为未确立（窗口间 SE 0.28，
    # 中位数 0.26 → 0.40），完整模式 18 个窗口在两组种子上都成立——这里只要求不反向，比例的中位数不等式照样断言
    cost = {k: [t for c in m["reply_length_cost"] for t in c[k]] for k in m["reply_length_cost"][0]}
    assert all(len(v) == m["config"]["cost_windows"] for v in cost.values()), {k: len(v) for k, v in cost.items()}
    dpo_faster = find_conclusion(record, f"回答写满 {m['long_reply']} 个 token 时，每次更新 DPO 比 GRPO 快")
    assert dpo_faster["status"] == "holds" and np.median(cost["dpo_long"]) < np.median(cost["grpo_long"]), dpo_faster
    share = {k: np.median(np.divide(cost[f"generate_{k}"], cost[f"grpo_{k}"])) for k in ("short", "long")}
    heavier = find_conclusion(record, "DPO 省掉的生成随回答变长而变重")
    assert heavier["status"] != "fails" and share["long"] > share["short"], (heavier, share)
    # 按时间量，PPO 相对 GRPO 的优势缩小：PPO 每次更新贵 2 倍多，GRPO 的用时里它只做了约一半的更新。
    # quick 种子 42、1、7、5、2 各跑两轮，十次里九次判为成立，种子 7 有一次在逐题噪声以内（时间轴是实测秒数，带计时噪声）；
    # 完整模式两组种子上都成立。这里要求不反向，并断言不等式本身
    shrink = find_conclusion(record, "按训练时间量，PPO 相对 GRPO 的优势比按更新次数量时小")
    assert shrink["status"] != "fails" and gap_time < gap_updates, (shrink, gap_time, gap_updates)
    # C 的其余五条比较在 quick（12 次更新、按留出题配对）里差值小，判定随种子在 ✅ 与 ❔ 之间变（exp4_rl_bill.py 的 QUICK_UNDECIDED：
    # GRPO 高于起点 42、1、5 ✅，7、2、11 ❔；PPO 高于起点 7 ❔；DPO 高于起点只在 5、2 ✅；PPO 的曲线高于 GRPO 只在 2、11 ✅；
    # GRPO 的曲线高于 DPO 在 1、5 ✅）与对照 lr 1e-3 的 DPO（下面）：quick 不判定，只打印测得的值与原因，记进 quick_undecided。
    # 完整模式（30 次更新、3 个种子）42–44 与 1–3 上这几条都成立（results/reference/exp4_rl_bill.json）
    exp4 = load_experiment("exp4_rl_bill")
    not_judged = {f"GRPO 训练 {updates} 次": ("grpo", "start"), f"PPO 训练 {updates} 次": ("ppo", "start"),
                  "DPO（lr 1e-4，RL 的 1/10）训练": ("dpo", "start"), "PPO 的学习曲线高于 GRPO": ("ppo", "grpo"),
                  "GRPO 的学习曲线高于 DPO": ("grpo", "dpo"),
                  # 对照档（大 lr 下 DPO 会不会崩随种子与训练随机数变）：quick 种子 42、1、7、5、2、11 都判为高于起点，
                  # 13 上 12 次内就崩了（❌）；完整模式 42–44 未确立、1–3 成立。一个种子的 quick 判不了它
                  "对照：DPO 用 RL 的 lr 1e-3 时": ("dpo_lr_rl", "start")}
    assert set(not_judged.values()) == set(exp4.QUICK_UNDECIDED)
    undecided = m["quick_undecided"]
    assert len(undecided) == len(not_judged), [u["claim"] for u in undecided]
    for fragment, pair in not_judged.items():
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        entry = [u for u in undecided if fragment in u["claim"]]
        assert len(entry) == 1 and entry[0]["reason"] == exp4.quick_reason(*pair) and "Δ=" in entry[0]["evidence"], entry
    assert stdout.count("quick 模式不判定") == len(not_judged)
    # lr 1e-4 的 DPO：偏好来自压低 rejected（chosen 几乎不动），按偏好对配对；断言测得的均值，不只是记下的状态
    shift = m["dpo_logprob_shift"][0]
    c = find_conclusion(record, "lr 1e-4：DPO 拉开的差距来自压低 rejected")
    assert c["status"] == "holds" and shift["rejected"] < shift["chosen"], (c, shift)


@pytest.mark.parametrize("script, args, fragment", [
    ("exp1_reward_model.py", ["--max-n", "12"], "--max-n 必须是"),
    ("exp1_reward_model.py", ["--pairs", "960"], "--pairs 至少给两个"),
    ("exp2_advantages.py", ["--steps", "0"], "需要 --steps >= 1"),
    ("exp3_kl_clip.py", ["--steps", "0"], "需要 --steps >= 1"),
    ("exp4_rl_bill.py", ["--updates", "5"], "需要 --updates 是"),
])
def test_bad_arguments_exit_with_message(tmp_path, script, args, fragment):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--output-dir", str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
