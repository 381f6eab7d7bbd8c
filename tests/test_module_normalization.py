"""模块 01-normalization：实验 2–4 的 --quick 在子进程里从临时目录运行，检查 JSON 记录里测得的效应。

（实验 1 由 tests/test_experiments_tour.py 覆盖。）每个断言都从 JSON 里的测量重新算一遍，
并核对脚本打印的结论与测量一致——脚本若把结论写死，这里会失败。
"""
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, exempt_conclusions, find_conclusion, run_quick_experiment

MODULE = REPO_ROOT / "modules" / "01-foundation" / "01-normalization"
EXPERIMENTS = MODULE / "experiments"


def run_quick(script_name, tmp_path, env):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env)[0]


def claim(record, fragment):
    return find_conclusion(record, fragment)["holds"]


def as_loss(value):
    """JSON 里发散（inf）的损失写成 null。"""
    return math.inf if value is None else value


@pytest.mark.experiment
def test_exp2_norm_comparison(tmp_path, experiment_env):
    record = run_quick("exp2_norm_comparison.py", tmp_path, experiment_env)
    m = record["metrics"]
    s, lrs, cap = m["summary"], m["config"]["lrs"], m["config"]["loss_cap"]
    assert set(s) == {"No-Norm", "Post-LN (LayerNorm)", "Pre-LN (LayerNorm)", "Pre-LN (RMSNorm)"}
    assert len(lrs) >= 3 and abs(cap - math.log(65)) < 1e-9
    # 学习率敏感度由逐学习率的损失重新算出（扫描上的平均 − 最低），与 JSON 里记的一致
    loss = {name: [v["by_lr"][f"{lr:g}"]["val_loss"][0] for lr in lrs] for name, v in s.items()}
    sens = {name: sum(v) / len(v) - min(v) for name, v in loss.items()}
    for name, value in sens.items():
        assert abs(value - s[name]["lr_sensitivity"][0]) < 1e-9 and all(x <= cap for x in loss[name])
    # 关键效应（quick：lr 3e-3 / 1e-2 / 3e-2，单种子按 8 个验证 batch 配对）：
    # 两个 Pre-LN 比 Post-LN 和 No-Norm 都更不挑学习率
    for other in ("Post-LN (LayerNorm)", "No-Norm"):
        c = find_conclusion(record, f"两个 Pre-LN 的学习率敏感度都低于 {other}")
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and c["noise"]["n"] == 8, c
        for pre in ("Pre-LN (LayerNorm)", "Pre-LN (RMSNorm)"):
            assert sens[pre] < sens[other], sens
    # "Post-LN 的差距在大学习率处变大"：quick 单种子里 Post-LN 在哪个学习率开始卡住随种子变（种子 1 上 1e-2 还能训），
    # 不断言成立，只查结论与测量一致；三个种子的检验在完整模式里
    gap = [loss["Post-LN (LayerNorm)"][i] - loss["Pre-LN (LayerNorm)"][i] for i in range(len(lrs))]
    if claim(record, "差的幅度随学习率变大"):
        assert gap[-2] > gap[0], gap
    # 最大学习率下 No-Norm 发散（梯度裁剪仍开着），带归一化的都不发散
    nan_steps = s["No-Norm"]["by_lr"][f"{lrs[-1]:g}"]["diverged_at"]
    assert claim(record, "No-Norm 在每个种子都发散") and all(d is not None for d in nan_steps), nan_steps
    normed = [d for name, v in s.items() if name != "No-Norm" for r in v["by_lr"].values() for d in r["diverged_at"]]
    assert claim(record, "都没有发散") and all(d is None for d in normed), normed
    # 最优学习率上的比较：单种子时结论必须与测量一致（均值不更低就不可能"成立"）
    best = {name: v["best_loss"][0] for name, v in s.items()}
    lower = find_conclusion(record, "最优学习率上，Pre-LN(LayerNorm)")
    if best["Pre-LN (LayerNorm)"] >= best["Post-LN (LayerNorm)"]:
        assert lower["status"] != "holds", (lower, best)
    same = find_conclusion(record, "RMSNorm 与 LayerNorm 的最优验证损失相差不到")
    if abs(best["Pre-LN (RMSNorm)"] - best["Pre-LN (LayerNorm)"]) >= same["noise"]["margin"]:
        assert same["status"] != "holds", same
    curve = m["curves"][f"Pre-LN (RMSNorm) @ {lrs[0]:g}"][0]["train_loss"]
    assert len(curve) == m["config"]["steps"] and curve[-1] < curve[0]  # 确实在学


@pytest.mark.experiment
def test_exp3_prenorm_vs_postnorm(tmp_path, experiment_env):
    record = run_quick("exp3_prenorm_vs_postnorm.py", tmp_path, experiment_env)
    m = record["metrics"]
    shallow, deep = m["config"]["depths"]
    no_wu, wu = m["config"]["warmups"]
    assert no_wu == 0 and wu > 0 and deep >= 2 * shallow
    grid = {k: as_loss(v["mean"]) for k, v in m["grid"].items()}
    assert all(math.isfinite(v) and v < math.log(65) for v in grid.values()), grid  # 每个配置都学到了东西
    # 关键效应（学习率 1e-2、固定种子）：深层且无 warmup 时 Pre-LN 明显好于 Post-LN
    pre_deep, post_deep = grid[f"Pre-LN, L={deep}, warmup=0"], grid[f"Post-LN, L={deep}, warmup=0"]
    assert pre_deep < post_deep - 0.1, grid
    assert claim(record, "无 warmup 时，Pre-LN 的最终验证损失低于 Post-LN")
    # 其余结论与测量一致（没有写死）；初始化梯度的形状与 Xiong et al. 不同，见 teaching.md
    post = m["init_grad"][f"Post-LN, L={deep}"]["per_layer"][0]
    pre = m["init_grad"][f"Pre-LN, L={deep}"]["per_layer"][0]
    assert len(post) == len(pre) == deep and all(g > 0 for g in post + pre)
    assert claim(record, "逐层梯度范数差距") == (max(post) / min(post) > max(pre) / min(pre))
    # 初始化梯度是确定的（固定种子、不训练）：结论必须与逐层梯度本身一致
    assert claim(record, "靠近输出的层梯度") == (post[-1] / post[0] > 1 and abs(pre[-1] / pre[0] - 1)
                                               < abs(post[-1] / post[0] - 1))
    exempt_conclusions(record, {
        "需要 warmup": "两个均值之差的直接比较，还没经过噪声检验；warmup 的学习率区间要按 issue 19 重新设计",
        "加深": "两个均值之差的直接比较，还没经过噪声检验（issue 19）"})


@pytest.mark.experiment
def test_exp4_layernorm_vs_rmsnorm(tmp_path, experiment_env):
    record = run_quick("exp4_layernorm_vs_rmsnorm.py", tmp_path, experiment_env)
    m = record["metrics"]
    inv = m["invariance"]
    assert inv["LayerNorm"]["shift"] < 1e-4 and inv["LayerNorm"]["scale"] < 1e-4
    assert inv["RMSNorm"]["shift"] > 0.1  # 平移会改变 RMSNorm 的输出
    assert inv["RMSNorm"]["scale"] < 1e-4
    assert inv["RMSNorm(x - mean) vs LayerNorm(x)"] < 1e-4
    assert claim(record, "LayerNorm 对平移") and claim(record, "RMSNorm 对平移不是不变的")
    # 速度结论与测得的时间一致
    speed = m["speed_ms"]
    assert {"RMSNorm (readable)", "RMSNorm (fused backward)", "nn.LayerNorm"} <= set(speed)
    assert all(ms > 0 for ms in speed.values())
    assert claim(record, "手写反向的 RMSNorm 比可读实现") == (
        speed["RMSNorm (fused backward)"] < speed["RMSNorm (readable)"])
    best_rms = min(ms for name, ms in speed.items() if name != "nn.LayerNorm")
    assert claim(record, "最快的 RMSNorm 实现比 nn.LayerNorm") == (best_rms < speed["nn.LayerNorm"])
    q = m["quality"]
    assert all(math.isfinite(as_loss(v["mean"])) for v in q.values())
    assert claim(record, "都对整体缩放不变") and claim(record, "先减均值再做 RMSNorm")
    exempt_conclusions(record, {"语言模型质量": "\"差距在噪声以内\"要改用 equivalent() 的等价界（issue 19）；quick 单种子时只比较 0.05 的界"})


@pytest.mark.parametrize("script", ["exp2_norm_comparison.py", "exp3_prenorm_vs_postnorm.py",
                                    "exp4_layernorm_vs_rmsnorm.py"])
def test_help_runs_from_any_cwd(script, tmp_path):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


def test_exp2_rejects_bad_lr(tmp_path):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "exp2_norm_comparison.py"), "--quick", "--lrs", "1e-3", "-1", "1",
                           "--output-dir", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert "--lrs" in proc.stderr and "Traceback" not in proc.stderr


def test_reference_results_committed():
    """每个实验都有一份完整模式的参考结果（JSON + 图）。"""
    ref = EXPERIMENTS / "results" / "reference"
    for stem in ("exp1_gradient_vanishing", "exp2_norm_comparison", "exp3_prenorm_vs_postnorm",
                 "exp4_layernorm_vs_rmsnorm"):
        record = json.loads((ref / f"{stem}.json").read_text(encoding="utf-8"))
        assert record["metadata"]["mode"] == "full"
        for fig in record["metadata"]["figures"]:
            assert (ref / fig).is_file() and (ref / fig).stat().st_size < 300_000
