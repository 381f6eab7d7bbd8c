"""30 分钟导览的三个实验：--quick 在子进程里从别的工作目录运行，检查 JSON 记录和测得的效应。"""

import pytest

from conftest import REPO_ROOT, assert_all_hold, find_conclusion, run_quick_experiment

FOUNDATION = REPO_ROOT / "modules" / "01-foundation"


def run_quick(script, tmp_path):
    return run_quick_experiment(script, tmp_path)


def holds(record, fragment):
    return find_conclusion(record, fragment)["holds"]


@pytest.mark.experiment
def test_tour_gradient_vanishing(tmp_path):
    record, stdout = run_quick(FOUNDATION / "01-normalization/experiments/exp1_gradient_vanishing.py", tmp_path)
    runs = record["metrics"]["runs"]
    assert record["metrics"]["depth"] >= 10
    # 没有归一化：坍缩与爆炸都出现；有 RMSNorm：各层同量级
    assert runs["none, g=0.5"]["act_std"][-1] < runs["none, g=0.5"]["act_std"][0] / 100
    assert runs["none, g=1.5"]["act_std"][-1] > runs["none, g=1.5"]["act_std"][0] * 100
    assert runs["rmsnorm, g=0.5"]["act_spread"] < 2 and runs["rmsnorm, g=1.5"]["grad_spread"] < 10
    assert_all_hold(record)
    assert "✅" in stdout


@pytest.mark.experiment
def test_tour_rope_basics(tmp_path):
    record, _ = run_quick(FOUNDATION / "02-position-encoding/experiments/exp1_rope_basics.py", tmp_path)
    m = record["metrics"]
    assert m["rope_relative_max_abs_diff"] / m["typical_abs_score"] < 1e-3
    assert m["absolute_relative_max_abs_diff"] > 0.1
    assert m["rope_max_relative_norm_change"] < 1e-5
    assert holds(record, "只取决于相对距离") and holds(record, "没有这个性质") and holds(record, "远程衰减")
    assert holds(record, "base 越大衰减越慢") and holds(record, "旋转不改变向量长度")


@pytest.mark.experiment
def test_tour_attention_basics(tmp_path):
    record, stdout = run_quick(FOUNDATION / "03-attention/experiments/exp1_attention_basics.py", tmp_path)
    m = record["metrics"]
    assert max(m["max_abs_diff"].values()) < 1e-5
    weights = m["weights"]
    assert all(weights[i][j] == 0 for i in range(6) for j in range(i + 1, 6))
    sat = m["softmax_saturation"]
    dims = sorted(sat, key=int)
    assert sat[dims[-1]]["unscaled"]["entropy"] < sat[dims[0]]["unscaled"]["entropy"]
    assert_all_hold(record)
    assert "weights = softmax(masked)" in stdout  # 逐步打印了中间矩阵
