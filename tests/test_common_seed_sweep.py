"""modules/common/seed_sweep.py：换种子重跑 quick 模式的维护者工具。"""
import pytest

from modules.common import seed_sweep


def test_table_marks_claims_that_change_with_the_seed():
    runs = {1: {"conclusions": [("A 比 B 好", "holds"), ("C 与 D 差不多", "holds")]},
            7: {"conclusions": [("A 比 B 好", "not_established"), ("C 与 D 差不多", "holds")]}}
    rows, flips = seed_sweep.sweep_table("x/exp1.py", [1, 7], runs)
    assert flips == 1
    assert rows[0] == "| x/exp1.py | A 比 B 好 | ✅ | ❔ | ⚠ 随种子变化 |"
    assert rows[1].endswith("| ✅ | ✅ |  |")
    # 旧式结论（只有 holds 布尔值）也能读
    assert seed_sweep.conclusion_status({"claim": "x", "holds": False}) == "fails"


def test_unknown_experiment_filter_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        seed_sweep.main(["--seeds", "1", "--only", "no_such_experiment"])
    assert exit_info.value.code == 2
    assert "没有实验的路径含" in capsys.readouterr().err


@pytest.mark.experiment
def test_sweep_runs_each_seed_and_writes_a_report(tmp_path, capsys):
    # 位置编码实验 3 是纯计算（不训练、不下载数据），几秒一次
    report = tmp_path / "sweep.md"
    code = seed_sweep.main(["--seeds", "1", "2", "--only", "exp3_multi_frequency", "--report", str(report)])
    assert code == 0, capsys.readouterr().out
    text = report.read_text(encoding="utf-8")
    assert "| 种子 1 | 种子 2 |" in text and "0 条结论随种子变化，0 次运行失败" in text
    assert report.with_suffix(".json").exists()
