"""04-advanced/04-evaluation 模块：实验里的小工具对照手算，四个实验的 --quick 在子进程里从别的工作目录运行，
检查测得的效应与结论。实验 2–4 只用仓库自带的 dataset/samples 训练分词器，不下载数据；实验 1 需要 TinyShakespeare
（experiment_env 从回环服务器提供 ../shared/data）。"""
import json
import math
import os

import numpy as np
import pytest

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from modules.common.noise import equivalent

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "04-evaluation" / "experiments"


def load_script(name):
    return load_experiment_module(EXPERIMENTS, name)


def run_quick(script_name, tmp_path, env=None, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env or dict(os.environ, MPLBACKEND="Agg"), extra)


def test_fact_items_are_reproducible_and_balanced():
    lab = load_script("eval_lab")
    items = lab.fact_items(400, seed=3)
    assert items == lab.fact_items(400, seed=3) and items != lab.fact_items(400, seed=4)
    assert len({it.question for it in items}) == 400  # 人名不重复：每道题是一条独立的事实
    for it in items:
        assert len(it.options) == 4 and len(set(it.options)) == 4
    counts = np.bincount([it.answer for it in items], minlength=4)
    assert counts.min() > 70, counts  # 答案位置大致均匀：瞎猜是 1/4
    assert lab.item_text(items[0]) == f"{items[0].question}\n答案：{items[0].options[items[0].answer]}"


def test_contamination_detectors_on_hand_made_cases():
    exp4 = load_script("exp4_contamination")
    assert exp4.auc([3, 4, 5], [0, 1, 2]) == 1.0 and exp4.auc([0, 1], [2, 3]) == 0.0
    assert exp4.auc([1, 2], [1, 2]) == pytest.approx(0.5)  # 分不开：平分算一半
    # Min-K%：10 个 token 取最低的 2 个平均
    assert exp4.min_k_prob([-0.1] * 8 + [-5.0, -3.0]) == pytest.approx(-4.0)
    corpus = exp4.char_ngrams("x" * 5 + "Where does Bengrigri live?\n答案：Tulo" + "y" * 5)
    assert exp4.overlap_share("Where does Bengrigri live?\n答案：Tulo", corpus) == 1.0
    assert exp4.overlap_share("Where does Kalomi live?\n答案：Selsel Numi", corpus) < 0.5


def test_token_logprobs_match_the_harness_sum():
    """Min-K% 用的逐 token 对数概率，加起来等于 loglik.score_requests 对同一段续写给出的总和。"""
    import torch

    from trainer.evaluation.loglik import score_requests
    lab = load_script("eval_lab")
    exp4 = load_script("exp4_contamination")
    tok = lab.samples_tokenizer()
    torch.manual_seed(0)
    model = lab.LabModel(lab.LabConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, n_heads=2)).eval()
    texts = ["Where does Bengrigri live?\n答案：Tulo", "short"]
    per_token = exp4.token_logprobs(model, tok, texts)
    for text, lps in zip(texts, per_token):
        ids = tok.encode(text)
        assert len(lps) == len(ids)
        (total, _), = score_requests(model, [([tok.bos_token_id], ids)], pad_id=tok.pad_token_id)
        assert sum(lps) == pytest.approx(total, abs=1e-4)


def test_error_bar_helpers():
    exp3 = load_script("exp3_error_bars")
    rng = np.random.default_rng(0)
    lo, hi = exp3.bootstrap_ci(np.array([1.0] * 60 + [0.0] * 40), rng, iters=2000)
    se = math.sqrt(0.6 * 0.4 / 99)
    assert lo == pytest.approx(0.6 - 1.96 * se, abs=0.02) and hi == pytest.approx(0.6 + 1.96 * se, abs=0.02)
    # n = (K + z_0.8)² · var / δ²：var 0.24 + 0.2356，δ 0.02，K = 2 → 9601（与实验的表一致）
    assert exp3.items_needed(0.6 * 0.4 + 0.62 * 0.38, 0.02) == 9601
    a, b = exp3.make_universe(rng, corr=0.8)
    assert a.mean() == pytest.approx(exp3.ACC_A, abs=1e-3) and b.mean() == pytest.approx(exp3.ACC_B, abs=1e-3)
    assert np.corrcoef(a, b)[0, 1] > 0.5  # 共享难度 → 逐题对错相关，配对才省题


@pytest.mark.experiment
def test_exp1_ppl_prefers_small_vocab_bpb_does_not(tmp_path, experiment_env):
    record, _ = run_quick("exp1_ppl_vs_bpb.py", tmp_path, experiment_env)
    m = record["metrics"]
    small, big = (str(v) for v in (m["config"]["vocab_sizes"][0], m["config"]["vocab_sizes"][-1]))
    r_small, r_big = m["results"][small][0], m["results"][big][0]
    assert r_small["tokens"] == m["config"]["bytes"]  # V=259 没有合并：一个字节一个 token
    assert r_big["tokens"] < r_small["tokens"] / 2
    assert 1.0 < r_small["bpb"] < 8.0 and 1.0 < r_big["bpb"] < 8.0  # 学到了东西（均匀分布是 8 bit/字节）
    assert find_conclusion(record, "切出的 token 越少")["holds"]
    assert find_conclusion(record, "换算关系")["holds"]
    assert find_conclusion(record, "按 token 困惑度")["status"] == "holds"
    assert find_conclusion(record, "按 bits per byte")["status"] == "holds"


def test_partial_checkpoint_is_the_one_closest_to_half():
    exp2 = load_script("exp2_mc_scoring")
    assert exp2.partial_checkpoint({62: 0.28, 250: 0.27, 437: 0.42, 500: 0.545}) == 500
    assert exp2.partial_checkpoint({150: 0.31, 450: 0.40, 600: 0.71, 1200: 0.96}) == 450


def test_exp2_reference_shows_both_regimes():
    """完整模式的参考结果（种子 42–44，每个种子 300 道题、1200 步）：部分学会时 sum 比 norm 准，到顶后分不开。
    quick 到不了顶，对照只有完整模式有；种子 1–3 的同一组数字见 README。"""
    record = json.loads((EXPERIMENTS / "results" / "reference" / "exp2_mc_scoring.json").read_text(encoding="utf-8"))
    m = record["metrics"]
    acc = m["accuracy"]
    mean_acc = {s: float(np.mean(acc[s]["sum"] + acc[s]["norm"])) for s in acc}
    partial, last = str(m["regime"]["partial"]), str(m["config"]["checkpoints"][-1])
    assert partial == min(mean_acc, key=lambda s: abs(mean_acc[s] - 0.5)) and partial != last
    k = 2.92  # n = 3 个种子的 t 分位数
    delta = np.array(acc[partial]["sum"]) - np.array(acc[partial]["norm"])
    assert (delta > 0).all() and delta.mean() > k * delta.std(ddof=1) / math.sqrt(len(delta))
    assert find_conclusion(record, "长度归一化不总是更好")["status"] == "holds"
    # 对照：到顶（sum、norm 都 ≥ 0.9）后两者相差不到事先定好的 0.03（等价检验）。种子 42–44 上差 +0.016 ± 0.009，
    # 上界 0.041 超过 0.03：未确立（种子 1–3 上 +0.003，成立）。断言判定与按种子重算的等价检验一致、没有判反，
    # 并断言这一组真正要说的事：到顶后的差距远小于部分学会时
    assert m["regime"]["ceiling"] == int(last)
    assert min(np.mean(acc[last]["sum"]), np.mean(acc[last]["norm"])) >= m["regime"]["ceiling_threshold"]
    tie_verdict = equivalent(acc[last]["sum"], acc[last]["norm"], m["regime"]["tie_margin"], unit="seeds")
    contrast = find_conclusion(record, "对照：到顶后")
    assert contrast["status"] == tie_verdict.status != "fails"
    tie = np.array(acc[last]["sum"]) - np.array(acc[last]["norm"])
    assert abs(tie.mean()) < delta.mean() / 3  # 到顶后的差距远小于部分学会时


@pytest.mark.experiment
def test_exp2_scoring_changes_accuracy(tmp_path):
    record, _ = run_quick("exp2_mc_scoring.py", tmp_path)
    m = record["metrics"]
    steps = m["config"]["checkpoints"]
    early, last = str(steps[0]), str(steps[-1])
    acc = m["accuracy"]
    assert abs(m["baselines"]["always_shortest"][0] - 0.25) < 0.1  # 答案长短没有系统偏向
    for fragment in ("sum 打分偏爱短选项", "norm 打分偏爱长选项", "sum 打分下训练", "用 letter 打分远不如", "偏爱某一个字母"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    assert m["picks_shortest"][early]["sum"][0] > 0.5
    # norm 下 500 步比 31 步准：种子 42、1、7、5 都超出逐题配对的噪声（Δ +0.287 / +0.157 / +0.410 / +0.167，2·SE ≈ 0.075）
    assert find_conclusion(record, "norm 打分下训练")["status"] == "holds"
    assert acc[last]["norm"][0] > acc[early]["norm"][0]

    # 部分学会的检查点按事先定好的规则选：sum 与 norm 的平均准确率最接近 0.5
    mean_acc = {s: (acc[s]["sum"][0] + acc[s]["norm"][0]) / 2 for s in acc}
    partial = str(m["regime"]["partial"])
    assert partial == min(mean_acc, key=lambda s: abs(mean_acc[s] - 0.5))
    assert 0.3 < mean_acc[partial] < 0.7  # 确实是"学会了一部分"：离瞎猜和满分都远（种子 42/1/7/5：0.455/0.483/0.450/0.488）
    # 这个模型上 sum 比 norm 准，超出逐题配对的噪声（300 道题，种子 42/1/7/5 都成立）
    claim = find_conclusion(record, "长度归一化不总是更好")
    delta = acc[partial]["sum"][0] - acc[partial]["norm"][0]
    assert claim["status"] == "holds" and claim["noise"]["mean_delta"] == pytest.approx(delta)
    assert delta > 2 * claim["noise"]["se"]
    assert m["picks_longest"][partial]["norm"][0] > m["picks_longest"][partial]["sum"][0]  # norm 被长选项拉走
    # quick 的步数到不了顶：到顶的对照（"对照：到顶后……"）只在完整模式里打印
    assert m["regime"]["ceiling"] is None and acc[last]["norm"][0] < m["regime"]["ceiling_threshold"]
    assert not [c for c in record["conclusions"] if c["claim"].startswith("对照")]


@pytest.mark.experiment
def test_exp3_error_bars(tmp_path):
    record, _ = run_quick("exp3_error_bars.py", tmp_path)
    run = record["metrics"]["runs"][0]
    assert run["items_needed"]["unpaired"] == 9601 and run["items_needed"]["paired"] < run["items_needed"]["unpaired"] / 3
    assert find_conclusion(record, "SE 公式")["holds"]
    for fragment in ("bootstrap 95% 区间", "道题分不出", "配对比较比不配对"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment


@pytest.mark.experiment
def test_exp4_contamination_inflates_and_is_detected(tmp_path):
    record, _ = run_quick("exp4_contamination.py", tmp_path)
    m = record["metrics"]
    top = f"{m['config']['leak_rates'][-1]:g}"
    assert m["accuracy_leaked"][top][0] > m["accuracy_clean"][top][0]
    assert abs(m["accuracy_clean"]["0"][0] - 0.25) < 0.15  # 随机造的事实：不泄漏就只能瞎猜
    for fragment in ("泄漏的题答得比", "Min-K% prob"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    # 总分的上涨：quick 原来训练 300 步时泄漏的题还没背下，种子 1、11 上在噪声以内；改成与完整模式一样的 400 步之后
    # （脚本 docstring 的"设计的修改"），泄漏题基本背下，quick 种子 42、1、7、5、11、13 上都超出噪声。断言它成立与不等式本身
    assert m["config"]["steps"] == 400
    jump = find_conclusion(record, "让总分上涨")
    assert jump["status"] == "holds" and m["accuracy"][top][0] > m["accuracy"]["0"][0], jump
    assert find_conclusion(record, "查出了全部逐字泄漏的题")["holds"]
    assert find_conclusion(record, "被 n-gram 重叠误判")["holds"]
    assert m["detection"][0]["auc_min_k"] > 0.7
