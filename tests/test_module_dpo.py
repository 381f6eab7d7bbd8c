"""03-training/05-dpo 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应与结论是否一致。

这些实验只用仓库自带的分词器和 dataset/samples/ 的数据，不下载任何东西，所以不需要 experiment_env（../shared）。
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, exempt_conclusions, find_conclusion, run_quick_experiment

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


@pytest.mark.experiment
def test_exp1_margin_rises_and_generalises(tmp_path):
    record, _ = run_quick("exp1_dpo_basics.py", tmp_path)
    m = record["metrics"]
    steps = m["eval_steps"]
    assert steps[0] == 0 and steps[-1] == m["config"]["dpo_steps"]
    train, heldout = m["curves"]["train"], m["curves"]["heldout"]
    # 第 0 步策略就是参考模型：奖励差与 KL 都恰好为 0
    assert np.allclose(np.array(train["margin"])[:, 0], 0) and np.allclose(np.array(heldout["kl"])[:, 0], 0)
    margin = np.array(train["margin"]).mean(0)
    assert margin[-1] > margin[1] > 0, margin  # 训练对上的奖励差上升且为正
    acc = np.array(heldout["accuracy"]).mean(0)
    assert acc[-1] > 0.5, acc  # 留出对上的偏好准确率高于随机
    by_kind = m["heldout_accuracy_by_kind"]
    assert by_kind["refusal"] > 0.8, by_kind  # "敷衍回答"这种表面特征推广得很好
    assert find_conclusion(record, "refusal 的留出准确率高于")["holds"] == bool(
        by_kind["refusal"] > max(by_kind["arithmetic"], by_kind["wrong_fact"]))
    assert find_conclusion(record, "算术对")["holds"] == bool(by_kind["arithmetic"] > 0.5)
    kl = np.array(heldout["kl"]).mean(0)
    assert kl[-1] > 0
    # 结论与数字一致
    assert find_conclusion(record, "训练对上的奖励差随训练上升")["holds"] == bool(margin[-1] > margin[1] > 0)
    assert find_conclusion(record, "偏好准确率高于 0.5")["holds"] == bool(acc[-1] > 0.5)
    assert find_conclusion(record, "KL 随训练增大")["holds"] == bool(kl[-1] > kl[1] > 0)
    hm = np.array(heldout["margin"]).mean(0)
    assert find_conclusion(record, "留出对上的奖励差也上升")["holds"] == bool(hm[-1] > hm[1])
    exempt_conclusions(record, {"奖励差主要来自压低 rejected": "均值的直接比较；同一现象在 exp3 里经噪声检验"
                                                             "（留出对上 log p(chosen) 也下降、rejected 降得更多）"})


@pytest.mark.experiment
def test_exp2_larger_beta_stays_closer_to_reference(tmp_path):
    record, _ = run_quick("exp2_beta.py", tmp_path)
    m = record["metrics"]
    betas = m["config"]["betas"]
    kl = {b: float(np.mean(m["per_beta"][str(b)]["kl"])) for b in betas}
    delta = {b: float(np.mean(m["per_beta"][str(b)]["log_ratio_margin"])) for b in betas}
    assert all(v > 0 for v in kl.values()), kl
    # 最大的 β 的 KL 明显小于最小的 β（留了余量：至少小四分之一；参考运行里小一半以上）
    assert kl[betas[-1]] < 0.75 * kl[betas[0]], kl
    assert delta[betas[0]] > delta[betas[-1]], delta
    assert find_conclusion(record, "β 越大，策略离参考模型越近")["holds"] == bool(kl[betas[-1]] < kl[betas[0]])
    order = [kl[b] for b in betas]
    assert find_conclusion(record, "KL 随 β 单调下降")["holds"] == all(a > b for a, b in zip(order, order[1:]))
    assert find_conclusion(record, "推得越开")["holds"] == bool(delta[betas[0]] > delta[betas[-1]])
    exempt_conclusions(record, {"每个 β 在留出对上的偏好准确率都高于 0.5": "比例与 0.5 的直接比较，留出对只有几十对，"
                                                                         "还没经过噪声检验（issue 19）"})


@pytest.mark.experiment
def test_exp3_dpo_pushes_rejected_down_more_than_sft(tmp_path):
    record, _ = run_quick("exp3_sft_vs_dpo.py", tmp_path)
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
    # SFT(chosen) 在留出对上的两条效应（约 +0.2～+0.4 nat）与 60 个偏好对的噪声同一量级：quick 种子 42 上未确立、种子 1 上成立
    for fragment in ("SFT(chosen) 抬高了 chosen", "SFT(chosen) 也把 rejected"):
        assert measured(fragment)["status"] != "fails"


@pytest.mark.parametrize("script, args, fragment", [
    ("exp1_dpo_basics.py", ["--beta", "0"], "--beta 必须为正"),
    ("exp2_beta.py", ["--betas", "0.1"], "--betas 至少给两个正数"),
    ("exp3_sft_vs_dpo.py", ["--steps", "0"], "必须 >= 1"),
])
def test_bad_arguments_exit_with_message(tmp_path, script, args, fragment):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--output-dir", str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
