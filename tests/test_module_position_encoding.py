"""模块 02-position-encoding：exp2–exp4 的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, assert_all_hold, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "01-foundation" / "02-position-encoding" / "experiments"


def run_quick(name, tmp_path, env=None, extra=()):
    return run_quick_experiment(EXPERIMENTS / f"{name}.py", tmp_path, env, extra)


def conclusion(record, fragment):
    return find_conclusion(record, fragment)["holds"]


@pytest.mark.experiment
def test_exp2_rope_vs_absolute(tmp_path, experiment_env):
    record, stdout = run_quick("exp2_rope_vs_absolute", tmp_path, env=experiment_env)
    m = record["metrics"]
    L = m["train_len"]
    loss = m["val_loss"]
    # 可学习绝对位置：表只有 L 行，超出的长度报 n/a（JSON 里是 null），表内有真实的 loss
    assert loss["learned"][str(L)]["mean"] > 0
    assert loss["learned"][str(2 * L)] is None and loss["learned"][str(4 * L)] is None
    assert "n/a" in stdout
    # 其余四种都能读 4L；普通 RoPE 在 4L 上的 loss 高于 1×
    for enc in ("rope", "sinusoidal", "alibi", "none"):
        assert all(loss[enc][str(k * L)] is not None for k in (1, 2, 4))
    assert loss["rope"][str(4 * L)]["mean"] > loss["rope"][str(L)]["mean"]
    assert conclusion(record, "可学习绝对位置编码只能读训练长度以内")
    # 比较结论都经噪声检验（quick：32 个验证窗口配对），并且测得的方向就是声明的方向
    windows = m["per_window_first_seed"]
    assert all(len(windows[enc][str(L)]) == m["n_windows"] for enc in windows)
    assert find_conclusion(record, "普通 RoPE 超出训练长度会变差")["status"] == "holds"
    # ALiBi 外推几乎不变差（增幅约 0），RoPE 增幅明显为正
    degrade = {enc: loss[enc][str(4 * L)]["mean"] - loss[enc][str(L)]["mean"] for enc in ("rope", "alibi")}
    assert find_conclusion(record, "ALiBi 的长度外推比 RoPE 好")["status"] == "holds"
    assert degrade["alibi"] < degrade["rope"], degrade
    # 训练长度以内 RoPE 比 learned 低得多（quick 种子 42：2.64 vs 2.85）：单侧 0.02 的界远远满足
    assert find_conclusion(record, "RoPE 不比可学习绝对位置差")["status"] == "holds"
    assert loss["rope"][str(L)]["mean"] < loss["learned"][str(L)]["mean"]
    # 逐位置曲线：最长长度上每个位置一项（learned 没有）
    assert len(m["loss_by_position"]["rope"]) == 4 * L - 1 and "learned" not in m["loss_by_position"]


@pytest.mark.experiment
def test_exp3_multi_frequency(tmp_path):
    record, _ = run_quick("exp3_multi_frequency", tmp_path)
    m = record["metrics"]
    # 单频率的混叠是精确的（float64 舍入以内），多频率下分数明显不同
    assert m["single_frequency_max_score_diff"] < 1e-9 < m["single_frequency_typical_abs_score"]
    assert m["single_frequency_rotation_diff"] < 1e-9
    assert m["multi_frequency_relative_score_diff"] > 0.1
    closest = m["closest_to_zero"]
    assert closest["single frequency, period 16"]["distance"] == m["period"]
    assert closest["all 32 MiniMind frequencies"]["rotation_distance"] > 0.1
    # base 越大，转不完一圈的维度越多；上界随距离衰减
    pairs = m["pairs_longer_than_context"]
    assert pairs["1e+06"]["2048"] > pairs["1e+04"]["2048"]
    for summary in m["decay_summary"].values():
        assert summary["far"] < summary["near"] < summary["r=0"]
    assert_all_hold(record)


@pytest.mark.experiment
def test_exp4_context_extension(tmp_path, experiment_env):
    record, _ = run_quick("exp4_context_extension", tmp_path, env=experiment_env)
    m = record["metrics"]
    no_ft, ft = m["no_finetune"], m["finetuned"]
    assert set(no_ft) == set(ft) == {"plain", "pi", "ntk", "yarn"}
    assert m["long_len"] == 4 * m["train_len"]
    # 不微调：直接外推比训练长度内差
    assert no_ft["plain"]["mean"] > m["reference_loss_at_train_len"]["mean"]
    assert len(m["per_window_first_seed"]["no_ft/plain"]) == m["n_windows"]
    # 每条比较都经噪声检验（quick：32 个验证窗口配对），并且测得的方向就是声明的方向
    for fragment in ("直接外推会变差", "YaRN 在", "NTK-aware 胜过位置插值 PI", "每种方式的 loss 都下降",
                     "YaRN 仍好于直接外推再微调"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    assert no_ft["yarn"]["mean"] < no_ft["plain"]["mean"] and no_ft["ntk"]["mean"] < no_ft["pi"]["mean"]
    assert ft["yarn"]["mean"] < ft["plain"]["mean"]
    # 在长序列上微调后每种方式都变好
    for k in no_ft:
        assert ft[k]["mean"] < no_ft[k]["mean"], k


@pytest.mark.parametrize("name, args, message", [
    ("exp2_rope_vs_absolute", ["--train-len", "4"], "--train-len"),
    ("exp4_context_extension", ["--finetune-steps", "0"], "--finetune-steps"),
])
def test_bad_arguments_give_clear_message(tmp_path, name, args, message):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--output-dir",
                           str(tmp_path), *args], cwd=tmp_path, capture_output=True, text=True, encoding="utf-8",
                          timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
