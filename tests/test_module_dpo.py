"""03-training/05-dpo 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应与结论是否一致。

这些实验只用仓库自带的分词器和 dataset/samples/ 的数据，不下载任何东西，所以不需要 experiment_env（../shared）。
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "05-dpo" / "experiments"


def run_quick(script_name, tmp_path, *extra):
    env = dict(os.environ, MPLBACKEND="Agg")
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def load_dpo_lab():
    """实验目录里的共用模块 dpo_lab（目录名带连字符，不能当包导入）。"""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    import dpo_lab
    return dpo_lab


def test_pair_stats_margin_matches_independent_logprobs():
    """奖励差与准确率对照独立算法：逐条、不 padding、用 F.cross_entropy 求回答 token 的对数概率之和，
    再按 DPO 的定义 β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))] 手算。"""
    import torch
    import torch.nn.functional as F

    lab = load_dpo_lab()
    tokenizer = lab.load_tokenizer()
    data = lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN)
    ref, policy = lab.new_model(tokenizer, 0).eval(), lab.new_model(tokenizer, 1).eval()  # 两个不同的模型
    indices, beta = [0, 3, 5, 8, 13], 0.3

    @torch.no_grad()
    def answer_logprob(model, ids, labels):
        n = int((ids != tokenizer.pad_token_id).sum())  # 去掉 padding，单条前向
        logits = model(ids[None, :n]).logits[0]  # (n, V)
        return -F.cross_entropy(logits[:-1].float(), labels[1:n], ignore_index=-100, reduction="sum").item()

    deltas, chosen = [], []
    for i in indices:
        item = data[i]
        lp = {(name, key): answer_logprob(model, item[f"{key}_ids"], item[f"{key}_labels"])
              for name, model in (("policy", policy), ("ref", ref)) for key in ("chosen", "rejected")}
        deltas.append((lp["policy", "chosen"] - lp["ref", "chosen"]) - (lp["policy", "rejected"] - lp["ref", "rejected"]))
        chosen.append(lp["policy", "chosen"])
    assert len(set(d > 0 for d in deltas)) == 2, deltas  # 有正有负：准确率的检查才有意义
    stats = lab.pair_stats(policy, ref, data, indices, beta, "cpu")
    assert stats["margin"] == pytest.approx(beta * np.mean(deltas), abs=1e-4)
    assert stats["log_ratio_margin"] == pytest.approx(np.mean(deltas), abs=1e-4)
    assert stats["accuracy"] == pytest.approx(np.mean([d > 0 for d in deltas]))
    assert stats["chosen_logp"] == pytest.approx(np.mean(chosen), abs=1e-3)
    assert stats["per_pair"]["log_ratio"] == pytest.approx(deltas, abs=1e-4)  # quick 模式逐对噪声检验用的值
    assert stats["per_pair"]["chosen_logp"] == pytest.approx(chosen, abs=1e-3)


def test_average_runs_averages_replicates_and_keeps_steps():
    """复制训练的平均（完整模式每个种子 R 次训练 → 一份结果）：浮点数与列表逐项平均，整数（步数）原样保留，
    R = 1 原样返回（quick 模式结果不变），步数对不上时报错。"""
    lab = load_dpo_lab()
    runs = [{"step": 10, "kl": 0.2, "per_pair": {"kl": [0.1, 0.3]}, "accuracy_refusal": None},
            {"step": 10, "kl": 0.4, "per_pair": {"kl": [0.3, 0.5]}, "accuracy_refusal": None}]
    averaged = lab.average_runs(runs)
    assert averaged["step"] == 10 and isinstance(averaged["step"], int)
    assert averaged["kl"] == pytest.approx(0.3) and averaged["per_pair"]["kl"] == pytest.approx([0.2, 0.4])
    assert averaged["accuracy_refusal"] is None
    assert lab.average_runs(runs[:1]) is runs[0]
    with pytest.raises(ValueError):
        lab.average_runs([{"step": 10}, {"step": 20}])


def test_dpop_loss_penalises_only_a_falling_chosen_likelihood():
    """trainer/train_dpo.py::dpo_loss 的 positive_lambda（DPOP，Pal et al. 2024）：默认 0 与标准 DPO 公式逐位相同；
    λ > 0 时只有 chosen 的对数概率低于参考模型的那一对多出 β·λ·(log π_ref(y_c) − log π(y_c)) 的惩罚，
    返回的 reward margin 不含惩罚项。"""
    import torch
    import torch.nn.functional as F

    from trainer.train_dpo import dpo_loss

    policy_chosen, policy_rejected = torch.tensor([-3.0, -6.0]), torch.tensor([-5.0, -9.0])
    ref_chosen, ref_rejected = torch.tensor([-4.0, -5.0]), torch.tensor([-4.0, -5.0])  # 第 1 对 chosen 升了，第 2 对降了 1
    beta, lam = 0.1, 50.0
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss, returned = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    assert torch.equal(returned, margin) and torch.equal(loss, -F.logsigmoid(margin).mean())
    dpop, returned = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, positive_lambda=lam)
    assert torch.equal(returned, margin)
    penalised = margin - beta * lam * torch.tensor([0.0, 1.0])
    assert dpop.item() == pytest.approx(-F.logsigmoid(penalised).mean().item())
    assert dpop > loss


def test_addition_training_pairs_exclude_the_heldout_problems():
    """DPOP 的 722 个加法偏好对来自 addition_split 的训练部分：与 160 道留出题不重叠，合起来是 0–20 的全部 882 道题。"""
    lab = load_dpo_lab()
    tokenizer = lab.load_tokenizer()
    sft = lab.SFTDataset(lab.SFT_PATH, tokenizer, lab.SEQ_LEN)
    dpo = lab.DPODataset(lab.DPO_PATH, tokenizer, lab.SEQ_LEN)
    train, heldout = lab.addition_split([sft.rows[i] for i in range(len(sft))], [dpo.rows[i] for i in range(len(dpo))])
    assert len(heldout) == lab.N_ADDITION_HELDOUT and not set(train) & set(heldout)
    assert len(train) + len(heldout) == lab.ADD_RANGE ** 2 * 2
    rows = lab.addition_pair_rows(train)
    assert len(rows) == len(train) == 722
    assert all(row["chosen"][-1]["content"] != row["rejected"][-1]["content"] for row in rows)


def load_full_reference(file_name):
    record = json.loads((EXPERIMENTS / "results" / "reference" / file_name).read_text(encoding="utf-8"))
    assert record["metadata"]["mode"] == "full" and len(record["metadata"]["seeds"]) == 3
    return record


def check_above_half_takes_the_weaker_test(record, fragment, seed_values, pair_fractions):
    """完整参考结果里"比例高于 0.5"的一条：每个种子都在同一组固定的对（题）上评估，按种子配对只量到训练噪声，
    判定必须是"按种子配对"与"逐对（每一对在所有种子 × 复制训练上判对的比例，对 0.5 检验）"两次检验里较弱的那个。
    两次检验都从 JSON 里的值重算。"""
    from modules.common.noise import compare, exceeds, weakest

    c = find_conclusion(record, fragment)
    by_seed = compare(seed_values, [0.5] * len(seed_values), "greater", "seeds")
    by_pair = exceeds(pair_fractions, 0.5, unit="batches")
    expected = weakest([by_seed, by_pair])
    assert c["status"] == expected.status and c["noise"]["unit"] == expected.unit, (fragment, c, by_seed, by_pair)
    assert c["noise"]["n"] == expected.n


def test_exp2_reference_accuracy_rows_also_pass_the_pair_level_test():
    """实验 2 完整参考结果里"β=… 在留出对上的偏好准确率高于 0.5"：逐对是 60 个留出对各自在 3 个种子 × 5 次训练上判对的比例。"""
    exp2 = load_full_reference("exp2_beta.json")
    m = exp2["metrics"]
    for beta in m["config"]["betas"]:
        assert len(m["pair_correct_mean"][str(beta)]) == m["config"]["n_heldout_pairs"] == 60
        check_above_half_takes_the_weaker_test(exp2, f"β={beta} 在留出对上的偏好准确率高于 0.5",
                                               m["per_beta"][str(beta)]["accuracy"], m["pair_correct_mean"][str(beta)])


def test_exp1_reference_above_half_rows_also_pass_the_pair_level_test():
    """实验 1 完整参考结果里七条"比例高于 0.5"：留出对的偏好准确率（60 对）、训练算术对的准确率（监控的 27 对），
    和 160 道没见过的加法题上的五个比例。逐对的比例：前两条是每一对在 3 个种子 × 10 次主 DPO 上判对的比例（JSON 的
    pair_correct_mean，它的均值必须等于各种子准确率的均值）；加法题不复制训练，是每道题在 3 个种子上的平均。"""
    exp1 = load_full_reference("exp1_dpo_basics.json")
    m = exp1["metrics"]
    heldout_fractions, train_fractions = m["pair_correct_mean"]["heldout"], m["pair_correct_mean"]["train_arithmetic"]
    assert len(heldout_fractions) == m["config"]["n_heldout_pairs"] == 60
    assert len(train_fractions) == len(m["kind_positions"]["train"]["arithmetic"])
    rows = [("留出对上的偏好准确率高于 0.5", np.array(m["curves"]["heldout"]["accuracy"])[:, -1], heldout_fractions),
            ("[对照] 训练过的算术对", np.array(m["curves"]["train"]["accuracy_arithmetic"])[:, -1], train_fractions)]
    for _, seed_values, pair_fractions in rows:
        assert np.mean(pair_fractions) == pytest.approx(np.mean(seed_values), abs=1e-6)
    for fragment, regime, key in (("会加法的参考模型（", "can_add", "ref_correct"),
                                  ("DPO 式的偏好训练学会了'算对'", "can_add_dpop_many", "dpo_correct"),
                                  ("对照：参考模型会加法、但用标准 DPO", "can_add", "dpo_correct"),
                                  ("对照：参考模型不会加法时（只在 sft.jsonl 上 SFT）", "cannot_add", "ref_correct"),
                                  ("对照：参考模型不会加法时，没见过的", "cannot_add", "dpo_correct")):
        per_problem = np.array(m["addition"][regime][key])  # (种子数, 160)
        assert per_problem.shape == (3, m["config"]["n_addition_heldout"])
        rows.append((fragment, per_problem.mean(axis=1), per_problem.mean(axis=0)))
    for fragment, seed_values, pair_fractions in rows:
        check_above_half_takes_the_weaker_test(exp1, fragment, seed_values, pair_fractions)


@pytest.mark.experiment
def test_exp1_margin_rises_and_generalises(tmp_path):
    """quick（种子 42）：每条结论的判定都用 JSON 里第一个种子的逐对值重算一遍（与实验同样的配对方式），
    成立的结论再断言效应本身的方向。"""
    from modules.common.noise import compare, exceeds

    record, stdout = run_quick("exp1_dpo_basics.py", tmp_path)
    m = record["metrics"]
    steps, beta, n_folds = m["eval_steps"], m["config"]["beta"], m["config"]["n_folds"]
    # quick 不复制训练（--replicates 默认 1）：唯一一次复制的 log KL 增长就是曲线上的增长
    assert m["config"]["replicates"] == 1
    kl_curve = np.array(m["curves"]["heldout"]["kl"])[0]
    assert m["replicate_heldout_log_kl_growth"] == [[pytest.approx(np.log(kl_curve[-1]) - np.log(kl_curve[1]))]]
    assert steps[0] == 0 and steps[-1] == m["config"]["dpo_steps"]
    train, heldout = m["curves"]["train"], m["curves"]["heldout"]
    # 第 0 步策略就是参考模型：奖励差与 KL 都恰好为 0
    assert np.allclose(np.array(train["margin"])[:, 0], 0) and np.allclose(np.array(heldout["kl"])[:, 0], 0)
    pairs = m["per_pair_first_seed"]
    early, late = str(steps[1]), str(steps[-1])

    def values(split, step, key, kind=None):
        v = pairs[split][step][key]
        return v if kind is None else [v[p] for p in m["kind_positions"][split][kind]]

    def margins(split, step):
        return [beta * d for d in values(split, step, "log_ratio")]

    def correct(split, step, kind=None):
        return [float(d > 0) for d in values(split, step, "log_ratio", kind)]

    def checked(fragment, verdict):
        c = find_conclusion(record, fragment)
        assert c["noise"]["unit"] == "batches" and c["status"] == verdict.status, (c, verdict)
        return verdict

    v = checked("第 10 步已为正", exceeds(margins("train", early), 0.0, unit="batches"))
    assert v.holds and np.mean(margins("train", early)) > 0
    v = checked("训练对上的奖励差随训练上升", compare(margins("train", late), margins("train", early), "greater", "batches"))
    assert v.holds and np.mean(margins("train", late)) > np.mean(margins("train", early))
    v = checked("留出对上的奖励差也上升", compare(margins("heldout", late), margins("heldout", early), "greater", "batches"))
    assert v.holds and np.mean(margins("heldout", late)) > np.mean(margins("heldout", early))
    # KL 在对数尺度上比较（逐对的 log KL）：种子 42、1、7、5 上都成立
    log_kl = {step: np.log(values("heldout", step, "kl")) for step in (early, late)}
    v = checked("KL 随训练增大", compare(log_kl[late], log_kl[early], "greater", "batches"))
    assert v.holds and np.mean(log_kl[late]) > np.mean(log_kl[early])
    assert np.mean(values("heldout", late, "kl")) > np.mean(values("heldout", early, "kl"))
    shift = {key: np.subtract(values("heldout", late, key), values("heldout", "0", key)) for key in ("chosen_logp", "rejected_logp")}
    v = checked("奖励差主要来自压低 rejected", compare(shift["rejected_logp"], shift["chosen_logp"], "less", "batches"))
    assert v.holds and shift["rejected_logp"].mean() < shift["chosen_logp"].mean() < 0  # chosen 自己也下降

    def folds(kind):
        c = correct("heldout", late, kind)
        return [np.mean(c[f::n_folds]) for f in range(n_folds)]

    v = checked("refusal 的留出准确率高于 wrong_fact", compare(folds("refusal"), folds("wrong_fact"), "greater", "batches"))
    assert v.holds and np.mean(correct("heldout", late, "refusal")) > 0.8  # "敷衍回答"这种表面特征推广得很好
    # quick 不判定的四条（原因见 exp1_dpo_basics.py 的 QUICK_HELDOUT_ACCURACY / QUICK_TRAIN_ARITHMETIC /
    # QUICK_REFUSAL_VS_ARITHMETIC / QUICK_DPOP_ADDITION）：不是结论，记进 quick_undecided，打印的 Δ 就是逐对（逐题）数据重算的
    undecided = m["quick_undecided"]
    assert len(undecided) == 4, [u["claim"] for u in undecided]
    add_first = m["addition"]["can_add_dpop_many"]["dpo_correct"][0]
    for fragment, verdict in (("留出对上的偏好准确率高于 0.5（随机猜）", exceeds(correct("heldout", late), 0.5, unit="batches")),
                              ("[对照] 训练过的算术对", exceeds(correct("train", late, "arithmetic"), 0.5, unit="batches")),
                              ("refusal 的留出准确率高于 arithmetic",
                               compare(folds("refusal"), folds("arithmetic"), "greater", "batches")),
                              ("DPO 式的偏好训练学会了'算对'", exceeds(add_first, 0.5, unit="batches"))):
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        entry = next(u for u in undecided if fragment in u["claim"])
        assert f"Δ={verdict.mean_delta:+.3g}" in entry["evidence"] and entry["reason"], entry
        # 方向与完整参考结果相同（quick 种子 42/1/7/5/11/13 上：前两条 +0.03～+0.28，DPOP 最低 0.537）
        assert verdict.mean_delta > 0, entry
    assert stdout.count("quick 模式不判定") == len(undecided)
    assert len(m["reference_prefers_chosen_by_kind"]["arithmetic"]) == 1

    # 算术：160 道参考模型和偏好训练都没见过的加法题，逐题的值（第一个种子），判定按题配对重算
    add = {regime: {key: m["addition"][regime][key][0]
                    for key in ("ref_correct", "dpo_correct", "policy_correct", "chosen_shift", "rejected_shift")}
           for regime in ("can_add", "can_add_dpop", "can_add_dpop_many", "cannot_add")}
    n_add = m["config"]["n_addition_heldout"]
    assert all(len(v) == n_add for r in add.values() for v in r.values())
    assert m["config"]["dpop_lambda"] == 50 and m["config"]["n_addition_train_pairs"] == 722
    can, cannot = add["can_add"], add["cannot_add"]
    dpop, dpop_many = add["can_add_dpop"], add["can_add_dpop_many"]
    assert dpop["ref_correct"] == dpop_many["ref_correct"] == can["ref_correct"]  # 三种设定从同一个参考模型出发
    # 会加法的参考模型在没见过的题上本来就多半答对（种子 42、1、7、5 上 0.80–0.86），不会加法的在 0.5 附近
    v = checked("会加法的参考模型（", exceeds(can["ref_correct"], 0.5, unit="batches"))
    assert v.holds and np.mean(can["ref_correct"]) > 0.7
    v = checked("会加法的参考模型比只在 sft.jsonl", compare(can["ref_correct"], cannot["ref_correct"], "greater", "batches"))
    assert v.holds and np.mean(can["ref_correct"]) > np.mean(cannot["ref_correct"])
    # "DPO 学会了'算对'"在文献的设定里（DPOP λ = 50，722 道加法题的偏好对、300 步）：quick 不判定（上面），完整模式判定
    # 对照（课程原来的设定）：标准 DPO 只在 78 个 dpo.jsonl 算术对上训练 50 步，准确率在 0.5 附近——
    # quick 种子 42、1、7、5、11、13 都是"未确立"，断言判定与重算一致且不是"成立"（完整种子 42–44 上低于 0.5，❌ 也是预期的一面）
    v = checked("对照：参考模型会加法、但用标准 DPO", exceeds(can["dpo_correct"], 0.5, unit="batches"))
    assert v.status != "holds", v
    # 机制（Pal et al. 2024）：同样的 78 对、50 步，标准 DPO 把 chosen 的对数概率压低，DPOP 的惩罚项挡住了这一点
    v = checked("DPOP 的惩罚项让 chosen 的似然不再被压低",
                compare(dpop["chosen_shift"], can["chosen_shift"], "greater", "batches"))
    assert v.holds and np.mean(dpop["chosen_shift"]) > np.mean(can["chosen_shift"]) and np.mean(can["chosen_shift"]) < -0.5
    # DPO（lr 3e-4、50 步）压低了参考模型已有的正确率（Pal et al. 2024 的失效模式）
    v = checked("DPO 反而压低了它已有的能力", compare(can["policy_correct"], can["ref_correct"], "less", "batches"))
    assert v.holds and np.mean(can["policy_correct"]) < np.mean(can["ref_correct"])
    # 对照：不会加法的参考模型自己是瞎猜，DPO 之后也是
    # 这两条对照预期"未确立"（瞎猜，比例在 0.5 附近）：quick 种子 42/1/7/5/11/13 上都是 ❔，所以断言的就是 ❔
    v = checked("对照：参考模型不会加法时（只在 sft.jsonl 上 SFT）", exceeds(cannot["ref_correct"], 0.5, unit="batches"))
    assert v.status == "not_established" and abs(np.mean(cannot["ref_correct"]) - 0.5) < 0.1, v
    v = checked("对照：参考模型不会加法时，没见过的", exceeds(cannot["dpo_correct"], 0.5, unit="batches"))
    assert v.status == "not_established", v


@pytest.mark.experiment
def test_exp2_larger_beta_stays_closer_to_reference(tmp_path):
    """quick（种子 42）：判定用 JSON 里第一个种子的逐对值重算（各 β 在同一组留出对上逐对配对）。"""
    from modules.common.noise import compare

    record, stdout = run_quick("exp2_beta.py", tmp_path)
    m = record["metrics"]
    betas = m["config"]["betas"]
    assert m["config"]["replicates"] == 1  # quick 不复制训练：结果与加入 --replicates 之前相同
    pairs = {b: m["per_pair_first_seed"][str(b)] for b in betas}
    kl = {b: float(np.mean(pairs[b]["kl"])) for b in betas}

    log_kl = {b: np.log(pairs[b]["kl"]) for b in betas}  # KL 在对数尺度上比较（逐对的 log KL）
    small, large = betas[0], betas[-1]
    # 两端：对数尺度上的差（完整参考 +0.98）是单次训练标准差（0.28）的 3.4 倍，一次训练就判得了；
    # quick 种子 42/1/7/5/2/3 上 +1.19/+0.90/+1.31/+0.78/+0.81/+0.53，都成立
    c = find_conclusion(record, "β 越大，策略离参考模型越近")
    v = compare(log_kl[large], log_kl[small], "less", "batches")
    assert c["noise"]["unit"] == "batches" and c["status"] == v.status == "holds", (c, v)
    assert kl[large] < 0.75 * kl[small], kl  # 参考运行里小一半以上
    # 梯度权重 σ(−β·Δ)（训练对上）随 β 变小：这是 KL 随 β 下降的机制
    weight = m["mean_gradient_weight"]
    assert all(0 < weight[str(b)] <= 0.5 + 1e-6 for b in betas), weight
    assert weight[str(large)] < weight[str(small)], weight
    # quick 不判定的几条（只打印测得的值，指向完整参考结果）：
    # - 相邻各档的 KL（含对照档）：效应只有单次训练标准差的 1.5–2.5 倍（完整参考每个种子 5 次训练：0.055 / 0.14 / 0.23），
    #   逐对 SE 只有 0.02–0.11。0.1 → 0.5 在 quick 种子 3 上 +0.03（未确立），同一参考模型换 5 次批次顺序 +0.01～+0.20；
    #   对照档在种子 3 上 −0.11（逐对判为不成立），换批次顺序 −0.11～+0.06——判定随批次顺序翻转。
    # - Δ 与四个 β 的准确率：60 个留出对的评估噪声（Δ 的逐对 SE 0.66–1.23，准确率 SE ≈ 0.06）与效应同量级，
    #   quick 种子 42/1/7/5/2/3 上判定不一（Δ 在种子 1、2 未确立；准确率在种子 42、1、3 上有未确立的）。
    not_judged = [f"β={higher} 的 KL 小于 β={lower}" for lower, higher in zip(betas, betas[1:])]
    not_judged += [f"β={small} 的 Δ 大于 β={large}"] + [f"β={b} 在留出对上的偏好准确率高于 0.5" for b in betas]
    undecided = m["quick_undecided"]
    assert len(undecided) == len(not_judged), [u["claim"] for u in undecided]
    for fragment in not_judged:
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        assert fragment in stdout, fragment
        entry = next(u for u in undecided if fragment in u["claim"])
        assert entry["reason"] and "Δ=" in entry["evidence"] and "SE=" in entry["evidence"], entry  # 测得的值与噪声
    assert stdout.count("quick 模式不判定") == len(not_judged)
    assert len(record["conclusions"]) == 1, [c["claim"] for c in record["conclusions"]]
    # 打印的值就是 JSON 里的单次测量
    printed_kl = {b: m["mean_kl"][str(b)] for b in betas}
    for lower, higher in zip(betas, betas[1:]):
        assert f"β={lower} → {printed_kl[lower]:.4f}, β={higher} → {printed_kl[higher]:.4f}" in stdout
    for b in betas:
        assert f"accuracy = {m['mean_accuracy'][str(b)]:.3g}" in stdout, b


@pytest.mark.experiment
def test_exp3_dpo_pushes_rejected_down_more_than_sft(tmp_path):
    record, stdout = run_quick("exp3_sft_vs_dpo.py", tmp_path)
    shifts = record["metrics"]["shifts"]
    n_pairs = {split: len(record["metrics"]["pair_shifts_first_seed"]["dpo"][split]["chosen"])
               for split in ("heldout", "train")}
    assert n_pairs["heldout"] == record["metrics"]["config"]["n_heldout_pairs"]

    def measured(fragment, split="heldout"):
        """经噪声检验的结论（单种子：同一组偏好对逐对配对）。"""
        c = find_conclusion(record, fragment)
        assert c["noise"]["unit"] == "batches" and c["noise"]["n"] == n_pairs[split], c
        return c

    for split in ("heldout", "train"):
        sft_r = np.mean(shifts["sft_chosen"][split]["rejected"])
        dpo_r = np.mean(shifts["dpo"][split]["rejected"])
        assert dpo_r < sft_r, (split, sft_r, dpo_r)
        assert measured(f"[{split}] DPO 把 rejected", split)["status"] == "holds"
    assert np.mean(shifts["sft_chosen"]["train"]["chosen"]) > 0  # 在 chosen 上做 SFT，训练过的 chosen 似然上升
    assert measured("拉开 chosen 与 rejected 的差距")["status"] == "holds"
    # issue 19：文献（Pal et al. 2024；Razin et al. 2024）的发现——margin 变大的同时 chosen 自己的似然下降，
    # 两条都作为测得的结论检验，在试过的 quick 种子（42、1、7）上都成立
    assert measured("margin 变大")["status"] == "holds"
    assert np.mean(shifts["dpo"]["heldout"]["gap"]) > 0
    for split in ("heldout", "train"):
        assert measured(f"[{split}] 与此同时，DPO 让 chosen 自己的对数概率下降", split)["status"] == "holds"
        assert np.mean(shifts["dpo"][split]["chosen"]) < 0

    # 按类型：判定用 JSON 里第一个种子的逐对变化重算（只取这一类的留出对，逐对配对）
    from modules.common.noise import exceeds

    m = record["metrics"]
    assert m["config"]["replicates"] == 1  # quick 不复制训练
    sft_pairs = m["pair_shifts_first_seed"]["sft_chosen"]["heldout"]

    def kind_check(fragment, kind):
        c = find_conclusion(record, fragment)
        rejected = [sft_pairs["rejected"][p] for p in m["heldout_kind_positions"][kind]]
        verdict = exceeds(rejected, 0.0, unit="batches")
        assert c["noise"]["unit"] == "batches" and c["noise"]["n"] == len(rejected), c
        assert c["status"] == verdict.status, (c, verdict)
        return verdict, rejected

    # arithmetic 对的好坏回答只差结果数字：SFT(chosen) 把 rejected 一起抬高，几乎和 chosen 一样多
    # （quick 种子 42、1、7、5 都成立；完整模式两组种子都成立）
    v, rejected = kind_check("[heldout arithmetic：好坏回答只差结果数字]", "arithmetic")
    chosen = [sft_pairs["chosen"][p] for p in m["heldout_kind_positions"]["arithmetic"]]
    assert v.holds and np.mean(rejected) > 0.5 * np.mean(chosen) > 0
    # quick 不判定的三条（原因见 exp3_sft_vs_dpo.py 的 QUICK_SFT_HELDOUT / QUICK_REFUSAL_CONTRAST）：SFT(chosen) 在留出对上
    # 的两条和 refusal 对照。不是结论，记进 quick_undecided，打印的 Δ 就是逐对数据重算的
    undecided = m["quick_undecided"]
    assert len(undecided) == 3, [u["claim"] for u in undecided]
    refusal = [sft_pairs["rejected"][p] for p in m["heldout_kind_positions"]["refusal"]]
    for fragment, pairs in (("[heldout] SFT(chosen) 抬高了 chosen", sft_pairs["chosen"]),
                            ("[heldout] SFT(chosen) 也把 rejected 一起抬高了", sft_pairs["rejected"]),
                            ("对照：[heldout refusal", refusal)):
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        entry = next(u for u in undecided if fragment in u["claim"])
        v = exceeds(pairs, 0.0, unit="batches")
        assert v.n == len(pairs) and f"Δ={v.mean_delta:+.3g}" in entry["evidence"] and entry["reason"], entry
    # 对照的机制（概率质量挪给 chosen 的说法）：SFT(chosen) 把 refusal 的 rejected 压低——quick 种子 42/1/7/5/11/13 上
    # 都为负（−0.33～−2.02），判定在 ❌ 与 ❔ 之间翻转
    assert np.mean(refusal) < 0, refusal
    assert stdout.count("quick 模式不判定") == len(undecided)


@pytest.mark.parametrize("script, args, fragment", [
    ("exp1_dpo_basics.py", ["--beta", "0"], "--beta 必须为正"),
    ("exp2_beta.py", ["--betas", "0.1"], "--betas 至少给两个正数"),
    ("exp3_sft_vs_dpo.py", ["--steps", "0"], "必须 >= 1"),
    ("exp1_dpo_basics.py", ["--replicates", "0"], "--replicates 必须 >= 1"),
    ("exp1_dpo_basics.py", ["--dpop-lambda", "-1"], "--dpop-lambda 必须 >= 0"),
])
def test_bad_arguments_exit_with_message(tmp_path, script, args, fragment):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--output-dir", str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
