"""04-advanced/02-inference 实验 4（投机解码）：小工具对照手算与暴力枚举（毫秒级），--quick 在子进程里运行一次，
从 JSON 里的原始计数（每轮的草稿数与产出数、卡方频数、逐窗口时间）重算每一条结论，核对与打印的判定一致。

实验需要 TinyShakespeare（experiment_env 从回环服务器提供 ../shared/data）。计时结论不断言谁快（测试里不断言墙钟），
只核对判定与记录的时间一致；卡方与贪心一致性是确定性的（种子 42、固定的随机数生成器），断言它们成立。
"""
import math

import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.speculative import speculative_generate
from modules.common.noise import equivalent_runs
from modules.common.timing import compare_speed

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "02-inference" / "experiments"
VOCAB = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # 小模型的算子只有几十微秒，多线程没有好处


@pytest.fixture(scope="module")
def exp4():
    return load_experiment_module(EXPERIMENTS, "exp4_speculative_decoding")


def random_model(seed, hidden_size=32, num_hidden_layers=2) -> MiniMindForCausalLM:
    """权重放大到 std = 1/√fan_in 的随机小模型：输出明显依赖上下文（默认 0.02 初始化下几乎是均匀分布）。"""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                               max_position_embeddings=128))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
    return model.eval()


def test_formulas_match_hand_computation(exp4):
    assert exp4.expected_tokens_per_call(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert exp4.expected_tokens_per_call(0.0, 5) == 1.0 and exp4.expected_tokens_per_call(1.0, 4) == 5.0
    assert exp4.expected_tokens_per_call(0.9, 3) == pytest.approx(1 + 0.9 + 0.81 + 0.729)
    # Leviathan：E / (γc + 1)；计入验证代价 v 时 E / (γc + v)
    assert exp4.predicted_speedup(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert exp4.predicted_speedup(0.5, 2, 0.1, verify_cost=1.5) == pytest.approx(1.75 / 1.7)
    with pytest.raises(ValueError):
        exp4.expected_tokens_per_call(1.2, 2)
    p, q = torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.2, 0.3, 0.5]])
    assert exp4.overlap(p, q).tolist() == pytest.approx([0.5])
    assert exp4.overlap(p, p).tolist() == pytest.approx([1.0])


def test_weakest_prefers_worse_status_then_the_interval_closest_to_the_margin(exp4):
    from modules.common.noise import Verdict
    # 等价判定（带界 ±0.1）：exp4 用的是 modules/common/noise.py 的 weakest
    tight = Verdict("holds", "seeds", 3, 0.0, 0.001, margin=0.1)
    wide = Verdict("holds", "seeds", 3, 0.02, 0.01, margin=0.1)
    unclear = Verdict("not_established", "seeds", 3, 0.05, 0.02, margin=0.1)
    assert exp4.weakest([tight, wide]) is wide and exp4.weakest([tight, unclear, wide]) is unclear


def test_acceptance_counts_and_tested_positions_by_hand(exp4):
    # 每轮 [γ_r, 产出数]：全部接受 + 奖励；第一个就拒绝；接受 1 个后拒绝；γ=1 被拒绝；γ_r=0 的最后一轮（只有目标自己采样）
    rounds = [[2, 3], [2, 1], [2, 2], [1, 1], [0, 1]]
    counts = exp4.acceptance_counts(rounds)
    assert counts["accepted"] == 3 and counts["attempted"] == 6 and counts["drafted"] == 7
    assert counts["target_calls"] == 5 and counts["new_tokens"] == 8
    assert counts["per_attempt"] == pytest.approx(0.5) and counts["per_drafted"] == pytest.approx(3 / 7)
    assert counts["tokens_per_call"] == pytest.approx(8 / 5)
    assert counts["gamma_counts"] == {2: 3, 1: 1, 0: 1}
    assert exp4.tested_positions(rounds).tolist() == [True, True, False, True, True, True, True, False]
    assert exp4.predicted_tokens_per_call(0.5, counts["gamma_counts"]) == pytest.approx((3 * 1.75 + 1.5 + 1.0) / 5)
    assert exp4.predicted_tokens_per_call(0.5, {"2": 3, "1": 1, "0": 1}) == pytest.approx((3 * 1.75 + 1.5 + 1.0) / 5)


def test_run_speculative_records_rounds_consistent_with_speculative_stats(exp4):
    target, draft = random_model(0), random_model(1, hidden_size=16, num_hidden_layers=1)
    prompt = torch.tensor([[1, 5, 3, 7]])
    for gamma, do_sample in ((1, True), (3, True), (4, False)):
        sequence, rounds = exp4.run_speculative(target, draft, prompt, gamma, do_sample, new_tokens=23, seed=5)
        reference, stats = speculative_generate(target, draft, prompt, max_new_tokens=23, num_draft_tokens=gamma,
                                                do_sample=do_sample, eos_token_id=-1,
                                                generator=torch.Generator().manual_seed(5))
        counts = exp4.acceptance_counts(rounds)
        assert torch.equal(sequence, reference)  # 钩子与 streamer 不改变生成
        assert (counts["accepted"], counts["drafted"], counts["target_calls"], counts["new_tokens"]) == \
               (stats.accepted, stats.drafted, stats.target_calls, stats.new_tokens) and stats.new_tokens == 23
        # 实验数出的 α（接受 / 检验）就是 model/speculative.py 报告的 acceptance_rate
        assert counts["attempted"] - counts["accepted"] == stats.rejected
        assert counts["per_attempt"] == pytest.approx(stats.acceptance_rate)
        assert all(0 <= gamma_r <= gamma for gamma_r, _ in rounds) and len(exp4.tested_positions(rounds)) == 23
        assert 0 < counts["accepted"] < counts["drafted"], (gamma, counts)  # 接受与拒绝都出现了


@torch.no_grad()
def test_exact_marginals_match_brute_force_enumeration(exp4):
    model = random_model(2)
    prompt = torch.tensor([[2, 6, 1]])

    def next_probs(ids):  # 不用 cache，每条序列从头前向：ids (N, L) → (N, V)
        return model(torch.tensor(ids)).logits[:, -1].softmax(-1)

    p1 = next_probs([[2, 6, 1]])[0]
    p2_given = next_probs([[2, 6, 1, a] for a in range(VOCAB)])  # (V, V)
    p3_given = next_probs([[2, 6, 1, a, b] for a in range(VOCAB) for b in range(VOCAB)])  # (V², V)
    p2 = sum(p1[a] * p2_given[a] for a in range(VOCAB))
    p3 = sum(p1[a] * p2_given[a, b] * p3_given[a * VOCAB + b] for a in range(VOCAB) for b in range(VOCAB))
    marginals = exp4.exact_marginals(model, prompt, 3)
    for exact, brute in zip(marginals, (p1, p2, p3)):
        assert torch.allclose(exact, brute, atol=1e-5) and exact.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(marginals[1], marginals[2], atol=1e-3)  # 各位置确实不同，错位会被发现


def test_chi_square_test_matches_hand_computation(exp4):
    # 不合并的情形（期望 30、30、40 都 >= 5；最小的一格单独成"合并格"）：χ² = 0 + 100/30 + 100/40，df=2 时 p = e^{-χ²/2}
    result = exp4.chi_square_test(torch.tensor([30, 20, 50]), torch.tensor([0.3, 0.3, 0.4]))
    assert result["stat"] == pytest.approx(100 / 30 + 100 / 40) and result["df"] == 2
    assert result["p_value"] == pytest.approx(math.exp(-result["stat"] / 2), rel=1e-6)
    # 合并：期望 2、2、46、50 → 前三格合并成 50（2+2 还不够 5），观测 44 vs 50、56 vs 50：χ² = 1.44，df=1
    result = exp4.chi_square_test(torch.tensor([3, 1, 40, 56]), torch.tensor([0.02, 0.02, 0.46, 0.50]))
    assert result["stat"] == pytest.approx(1.44) and result["df"] == 1 and result["cells"] == 2
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(1.44 / 2)), rel=1e-6)  # df=1：P(Z² > x)
    # 零假设下概率为 0 的 token 出现了：直接拒绝
    assert exp4.chi_square_test(torch.tensor([5, 5, 1]), torch.tensor([0.5, 0.5, 0.0]))["p_value"] == 0.0


def recomputed_formula_status(runs, mode, margin):
    """与实验相同的规则，从每轮计数重算"公式 ±margin"的判定（γ >= 2 里最不利的一个）。"""
    rank = {"fails": 0, "not_established": 1, "holds": 2}
    statuses = []
    for g in (2, 3, 4, 6, 8):
        key = f"{mode} gamma={g}"
        seeds = [r["gamma_runs"][key]["ratio"] for r in runs]
        prompts = [p["ratio"] for p in runs[0]["gamma_runs"][key]["per_prompt"]]
        statuses.append(equivalent_runs(seeds, [1.0] * len(seeds), margin, prompts, [1.0] * len(prompts)).status)
    return min(statuses, key=rank.__getitem__)


@pytest.mark.experiment
def test_exp4_speculative_decoding(tmp_path, experiment_env, exp4):
    record, _ = run_quick_experiment(EXPERIMENTS / "exp4_speculative_decoding.py", tmp_path, experiment_env)
    m = record["metrics"]
    config, runs = m["config"], m["runs"]
    assert runs[0]["training"]["target"]["val_loss"] < runs[0]["training"]["draft"]["val_loss"] < 3.3  # 目标更强，两者都学到了东西
    # 每个 (方式, γ)、每个 prompt：从计数重算接受率、token/前向与公式，必须与 JSON 里的值一致
    for key, summary in runs[0]["gamma_runs"].items():
        gamma = int(key.split("=")[1])
        for c in summary["per_prompt"]:
            assert c["new_tokens"] == config["new_tokens"] == c["accepted"] + c["target_calls"]  # 每轮产出 n_r + 1 个
            assert sum(c["gamma_counts"].values()) == c["target_calls"] and max(map(int, c["gamma_counts"])) == gamma
            assert c["accepted"] <= c["attempted"] <= c["drafted"] and 1 <= c["tokens_per_call"] <= gamma + 1
            formula = exp4.predicted_tokens_per_call(c["accepted"] / c["attempted"], c["gamma_counts"])
            assert c["ratio"] == pytest.approx(c["new_tokens"] / c["target_calls"] / formula)
        assert summary["per_drafted"] <= summary["per_attempt"]  # 拒绝之后的草稿也算进分母，只会更小
    for mode, label in (("sample", "T=1 采样：每个 γ >= 2"), ("greedy", "贪心：每个 γ >= 2")):
        c = find_conclusion(record, label)
        # 8 个 prompt × 64 个 token：种子 42、1、7、5 上都成立
        assert c["status"] == recomputed_formula_status(runs, mode, config["formula_margin"]) == "holds", c

    pooled = exp4.alpha_over_gammas(runs[0]["gamma_runs"])
    c = find_conclusion(record, "被检验位置上的平均 Σ min(p, q)")
    v = equivalent_runs([pooled["pooled"][0]], [pooled["pooled"][1]], config["alpha_margin"],
                        [a for a, _ in pooled["per_prompt"]], [b for _, b in pooled["per_prompt"]])
    assert c["status"] == v.status
    assert c["status"] == "holds" and abs(pooled["pooled"][0] - pooled["pooled"][1]) < config["alpha_margin"]
    # 验证集真实文本上的 Σ min(p, q)：quick 只打印、不下结论（完整模式的对照）；每个 batch 是不同的文本片段
    assert not [c for c in record["conclusions"] if "验证集真实文本" in c["claim"]]
    assert len(set(runs[0]["heldout_overlap"])) == len(runs[0]["heldout_overlap"]) == config["prompts"]
    assert find_conclusion(record, "贪心投机解码的输出与目标模型自己的贪心解码逐 token 相同")["status"] == "holds"

    times = m["timing"]["decode_seconds"]
    for g in config["timing_gammas"]:
        c = find_conclusion(record, f"γ={g} 的投机采样（T=1）比目标模型普通采样快")  # 不断言谁快：只核对判定与记录一致
        assert c["status"] == compare_speed(times[f"gamma={g}"], times["plain"]).status

    # 卡方：从频数与精确分布重算；投机采样与目标普通采样都不被拒绝，草稿自己的样本每个位置都被拒绝
    chi2 = m["chi2"][0]
    p_values = {}
    for source, per_position in chi2["counts"].items():
        assert all(sum(c) == config["samples"] for c in per_position)
        p_values[source] = [exp4.chi_square_test(torch.tensor(c), torch.tensor(p))["p_value"]
                            for c, p in zip(per_position, chi2["exact_target"])]
        assert p_values[source] == pytest.approx([t["p_value"] for t in chi2["tests"][source]], rel=1e-6, abs=1e-300)
    level = config["chi2_level"]
    for fragment, source, reject in (("投机采样（γ=2）的第 1、2、3 个新 token", "speculative", False),
                                     ("对照：目标模型普通采样", "plain target", False),
                                     ("负对照：草稿模型自己采样", "draft", True)):
        c = find_conclusion(record, fragment)
        assert c["status"] == "holds" and all((p < level) == reject for p in p_values[source]), (fragment, p_values)
