"""共享噪声检验（modules/common/noise.py）：三态判定、等价检验、单种子的批次噪声，以及无效应时的误判率。"""
import json
import math
import random
import subprocess
import sys

import pytest

from modules.common.noise import (FAILS, HOLDS, NOT_ESTABLISHED, compare, compare_runs, diverged_as, equivalent,
                                  equivalent_runs, exceeds, fewer_failures, noninferior, noninferior_runs, weakest)


def test_consistent_effect_beyond_noise_holds():
    v = compare([1.00, 1.02, 0.98], [1.20, 1.25, 1.19], "less")  # a 的 loss 在每个种子上都低约 0.2
    assert v.status == HOLDS and v.holds
    assert v.deltas == pytest.approx([0.20, 0.23, 0.21])
    assert v.mean_delta == pytest.approx(0.21333, abs=1e-4)
    assert v.se == pytest.approx(math.sqrt(((0.2 - 0.21333) ** 2 + (0.23 - 0.21333) ** 2 + (0.21 - 0.21333) ** 2) / 2 / 3),
                                 rel=1e-3)
    assert compare([1.20, 1.25, 1.19], [1.00, 1.02, 0.98], "greater").status == HOLDS


def test_effect_in_the_other_direction_fails():
    v = compare([1.20, 1.25, 1.19], [1.00, 1.02, 0.98], "less")
    assert v.status == FAILS and not v.holds and v.mean_delta < 0


def test_mixed_signs_or_small_mean_is_not_established():
    # 均值支持声明，但一个种子反向：不算成立
    assert compare([1.0, 1.0, 1.0], [1.3, 1.3, 0.99], "less").status == NOT_ESTABLISHED
    # 三个种子同号，但差值的离散远大于均值：不算成立（issue 19 里 1/√d 的例子就是这种）
    assert compare([1.0, 1.0, 1.0], [1.001, 1.30, 1.002], "less").status == NOT_ESTABLISHED


def test_one_pair_cannot_estimate_noise_and_nan_is_not_compared():
    v = compare([1.0], [2.0], "less")
    assert v.status == NOT_ESTABLISHED and v.n == 1 and "无法估计噪声" in v.describe()
    assert compare([1.0, float("nan"), 1.0], [2.0, 2.0, 2.1], "less").status == NOT_ESTABLISHED


def test_diverged_as_lets_a_nan_seed_count_as_the_stated_worst_value():
    high_lr, best = [4.0, float("nan"), 4.1], [2.0, 2.05, 1.98]  # 第二个种子发散成 NaN
    assert compare(high_lr, best, "greater").status == NOT_ESTABLISHED
    assert diverged_as(high_lr, 4.17) == [4.0, 4.17, 4.1]
    assert compare(diverged_as(high_lr, 4.17), best, "greater").status == HOLDS
    # 补进去的值不比声明需要的更差时，声明照样可以不成立：这个辅助函数不会凭空制造效应
    assert compare(diverged_as([2.0, float("nan"), 2.1], 2.0), [2.0, 2.05, 1.98], "greater").status == NOT_ESTABLISHED


def test_batch_noise_does_not_require_every_batch_to_agree():
    a = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98]
    b = [x + 0.08 for x in a]
    b[0] -= 0.1  # 一批反向：批次噪声下只看均值是否超出 2·SE
    v = compare(a, b, "less", unit="batches")
    assert v.status == HOLDS and "评估批次" in v.describe()
    assert compare(a, b, "less", unit="seeds").status == NOT_ESTABLISHED


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    assert equivalent([1.00, 1.01, 0.99], [1.005, 1.00, 0.995], margin=0.05).status == HOLDS
    # issue 19：GQA 比 MHA 好 0.057，"差不多（±0.05）"不能因为改进而算成立
    assert equivalent([1.0, 1.0, 1.0], [1.057, 1.06, 1.055], margin=0.05).status == FAILS
    assert equivalent([1.0, 1.0, 1.0], [0.96, 1.04, 1.00], margin=0.05).status == NOT_ESTABLISHED
    with pytest.raises(ValueError, match="margin"):
        equivalent([1.0, 2.0], [1.0, 2.0], margin=0)


def test_noninferiority_has_one_bound():
    # issue 19：GQA 比 MHA 好 0.057——"最多差 0.05"的声明因此更稳，而不是不成立
    better = noninferior([1.0, 1.0, 1.0], [1.057, 1.06, 1.055], margin=0.05)
    assert better.status == HOLDS and better.one_sided and "不差于界 0.05" in better.describe()
    assert noninferior([1.10, 1.11, 1.09], [1.0, 1.0, 1.0], margin=0.05).status == FAILS
    assert noninferior([1.04, 1.06, 1.05], [1.0, 1.0, 1.0], margin=0.05).status == NOT_ESTABLISHED
    # 越大越好（准确率）：a 低于 b 超过 margin 才算更差
    assert noninferior([0.80, 0.81, 0.79], [0.82, 0.82, 0.82], margin=0.05, direction="greater").status == HOLDS
    assert noninferior([0.60, 0.61, 0.59], [0.82, 0.82, 0.82], margin=0.05, direction="greater").status == FAILS
    with pytest.raises(ValueError, match="margin"):
        noninferior([1.0, 2.0], [1.0, 2.0], margin=-1)
    one = noninferior_runs([1.0], [9.0], 0.05, a_batches=[1.00, 1.01, 0.99, 1.00], b_batches=[1.00, 1.00, 1.01, 0.99])
    assert one.unit == "batches" and one.status == HOLDS


def test_failure_rates_use_the_discordant_seeds():
    # 每个种子只有"失败 / 没失败"：看结果不同的种子，精确符号检验（McNemar）
    six_of_eight = fewer_failures([False] * 8, [True] * 6 + [False] * 2)  # 6 个不同的种子都支持：p = 1/64
    assert six_of_eight.status == HOLDS and six_of_eight.p_value == pytest.approx(1 / 64)
    assert "精确符号检验" in six_of_eight.describe() and six_of_eight.to_dict()["p_value"] == pytest.approx(1 / 64)
    # 4 个不同的种子都支持：p = 1/16 > 0.05，种子太少，未确立
    assert fewer_failures([False] * 6, [True] * 4 + [False] * 2).status == NOT_ESTABLISHED
    # 两边都失败的种子不算证据：3 个都失败 + 3 个都成功，没有一个不同的种子
    both = fewer_failures([True] * 3 + [False] * 3, [True] * 3 + [False] * 3)
    assert both.status == NOT_ESTABLISHED and both.p_value == 1.0
    # 反方向：a 更常失败
    assert fewer_failures([True] * 5 + [False], [False] * 6).status == FAILS
    # 5 支持、1 相反：p = 7/64 = 0.109，未确立
    assert fewer_failures([False] * 5 + [True], [True] * 5 + [False]).status == NOT_ESTABLISHED
    with pytest.raises(ValueError, match="个数相同"):
        fewer_failures([True], [True, False])


def test_weakest_decides_an_every_pair_claim():
    strong = compare([1.0, 1.0, 1.0], [2.0, 2.1, 1.9], "less")       # 成立，Δ 远大于噪声
    marginal = compare([1.0, 1.0, 1.0], [1.10, 1.12, 1.09], "less")  # 成立，但最勉强
    unclear = compare([1.0, 1.0, 1.0], [1.1, 0.9, 1.05], "less")     # 未确立
    reversed_ = compare([2.0, 2.1, 1.9], [1.0, 1.0, 1.0], "less")    # 反向超出噪声
    assert strong.holds and marginal.holds and unclear.status == NOT_ESTABLISHED and reversed_.status == FAILS
    assert weakest([strong, marginal]) is marginal
    assert weakest({"a": strong, "b": unclear, "c": marginal}) is unclear
    assert weakest([unclear, reversed_, strong]) is reversed_
    with pytest.raises(ValueError, match="至少"):
        weakest([])


def test_weakest_of_equivalences_is_the_one_nearest_its_margin():
    # 等价检验的"勉强"看区间离界多近，不看 |Δ|/SE：Δ=0.05 而噪声极小的那次 |Δ|/SE 最大，却最靠近界 0.1
    near_margin = equivalent([1.05, 1.051, 1.049], [1.0, 1.0, 1.0], 0.1)  # 区间 ≈ [0.048, 0.052]
    centred = equivalent([1.0, 1.01, 0.99], [1.0, 1.0, 1.0], 0.1)         # 区间 ≈ [−0.017, 0.017]
    assert near_margin.holds and centred.holds
    assert weakest([near_margin, centred]) is near_margin and weakest([centred, near_margin]) is near_margin


def test_exceeds_a_constant():
    assert exceeds([0.61, 0.64, 0.60], 0.5).status == HOLDS
    assert exceeds([0.52, 0.47, 0.55], 0.5).status == NOT_ESTABLISHED
    assert exceeds([0.31, 0.33, 0.30], 0.5).status == FAILS


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="个数相同"):
        compare([1.0, 2.0], [1.0], "less")
    with pytest.raises(ValueError, match="direction"):
        compare([1.0], [1.0], "lower")
    with pytest.raises(ValueError, match="unit"):
        compare([1.0], [1.0], "less", unit="runs")


def test_false_claims_rarely_hold_and_real_effects_usually_do():
    """无效应时（两边同分布）3 个种子判为"成立"的比例应远低于 5%；效应为 2σ 时多数能判出来。"""
    rng = random.Random(0)
    trials = 4000

    def rate(effect):
        hits = 0
        for _ in range(trials):
            a = [rng.gauss(0, 1) for _ in range(3)]
            b = [x + effect + rng.gauss(0, 1) for x in a]
            hits += compare(a, b, "less").status == HOLDS
        return hits / trials

    assert rate(0.0) < 0.05
    assert rate(3.0) > 0.6


def test_experiment_records_the_verdict(tmp_path):
    script = tmp_path / "toy_verdict.py"
    script.write_text(
        "from modules.common.experiment_base import Experiment\n"
        "from modules.common.noise import compare, equivalent\n"
        "exp = Experiment(__file__, description='toy')\n"
        "exp.conclude_verdict('a lower', compare([1, 1.1, 0.9], [2, 2.1, 1.9], 'less'), evidence='e1')\n"
        "exp.conclude_verdict('a same', equivalent([1, 1.1, 0.9], [2, 2.1, 1.9], 0.1), evidence='e2')\n"
        "exp.conclude_verdict('mixed', compare([1, 1, 1], [2, 0.5, 1.2], 'less'), evidence='e3')\n"
        "exp.finish()\n", encoding="utf-8")
    from conftest import REPO_ROOT
    env = {"PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script), "--output-dir", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "toy_verdict.json").read_text(encoding="utf-8"))
    assert [c["status"] for c in record["conclusions"]] == [HOLDS, FAILS, NOT_ESTABLISHED]
    assert [c["holds"] for c in record["conclusions"]] == [True, False, False]
    assert record["conclusions"][0]["noise"]["unit"] == "seeds" and record["conclusions"][0]["noise"]["n"] == 3
    assert "✅ 成立：a lower" in proc.stdout and "❌ 本次运行不成立：a same" in proc.stdout
    assert "❔ 未确立（差异在噪声以内）：mixed" in proc.stdout
    assert "种子间噪声" in record["conclusions"][2]["evidence"]


def test_compare_runs_uses_seeds_when_there_are_several_and_batches_for_one_seed():
    many = compare_runs([1.0, 1.1, 0.9], [1.5, 1.6, 1.4], "less", a_batches=[1.0] * 4, b_batches=[0.0] * 4)
    assert many.unit == "seeds" and many.status == HOLDS
    one = compare_runs([1.0], [1.5], "less", a_batches=[1.0, 1.1, 0.9, 1.0], b_batches=[1.2, 1.3, 1.1, 1.25])
    assert one.unit == "batches" and one.status == HOLDS
    assert compare_runs([1.0], [1.5], "less").status == NOT_ESTABLISHED  # 一个种子、没有批次值：无从估计噪声


def test_equivalent_runs_uses_seeds_when_there_are_several_and_batches_for_one_seed():
    many = equivalent_runs([1.00, 1.01, 0.99], [1.00, 1.00, 1.00], 0.05, a_batches=[5.0] * 4, b_batches=[0.0] * 4)
    assert many.unit == "seeds" and many.status == HOLDS
    one = equivalent_runs([1.0], [9.0], 0.05, a_batches=[1.00, 1.01, 0.99, 1.00], b_batches=[1.00, 1.00, 1.01, 0.99])
    assert one.unit == "batches" and one.status == HOLDS
    far = equivalent_runs([1.0], [9.0], 0.05, a_batches=[2.0, 2.1, 1.9, 2.0], b_batches=[1.0, 1.0, 1.0, 1.0])
    assert far.status == FAILS
