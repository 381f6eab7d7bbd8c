"""模块 01-normalization：实验 2–4 的 --quick 在子进程里从临时目录运行，检查 JSON 记录里测得的效应。

（实验 1 由 tests/test_experiments_tour.py 覆盖。）每个断言都从 JSON 里的测量重新算一遍，
并核对脚本打印的结论与测量一致——脚本若把结论写死，这里会失败。
"""
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment
from modules.common.noise import fewer_failures

MODULE = REPO_ROOT / "modules" / "01-foundation" / "01-normalization"
EXPERIMENTS = MODULE / "experiments"


def claim(record, fragment):
    return find_conclusion(record, fragment)["holds"]


def as_loss(value):
    """JSON 里发散（inf）的损失写成 null。"""
    return math.inf if value is None else value


@pytest.mark.experiment
def test_exp2_norm_comparison(tmp_path, experiment_env):
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp2_norm_comparison.py", tmp_path, experiment_env)
    m = record["metrics"]
    s, lrs, cap = m["summary"], m["config"]["lrs"], m["config"]["loss_cap"]
    assert set(s) == {"No-Norm", "Post-LN (LayerNorm)", "Pre-LN (LayerNorm)", "Pre-LN (RMSNorm)"}
    assert len(lrs) >= 3 and abs(cap - math.log(65)) < 1e-9
    # 学习率敏感度由逐学习率的损失重新算出（扫描上的平均 − 最低），与 JSON 里记的一致
    loss = {name: [v["by_lr"][f"{lr:g}"]["val_loss"][0] for lr in lrs] for name, v in s.items()}
    sens = {name: sum(v) / len(v) - min(v) for name, v in loss.items()}
    for name, value in sens.items():
        assert abs(value - s[name]["lr_sensitivity"][0]) < 1e-9 and all(x <= cap for x in loss[name])
    # 关键效应（quick：lr 3e-3 / 1e-2 / 3e-2，单种子按 8 个验证 batch 配对）：两个 Pre-LN 都比 No-Norm 更不挑学习率
    # （quick 种子 42/1/7/5/11/13 上都成立）
    c = find_conclusion(record, "两个 Pre-LN 的学习率敏感度都低于 No-Norm")
    assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and c["noise"]["n"] == 8, c
    for pre in ("Pre-LN (LayerNorm)", "Pre-LN (RMSNorm)"):
        assert sens[pre] < sens["No-Norm"], sens
    # quick 不判定的三条（脚本的 QUICK_UNDECIDED）：与 Post-LN 的两条主结论在种子 11 上未确立（Post-LN 在 3e-3 就卡住了一部分），
    # "对照：各取最优学习率"在 6 个种子上 ✅/❔/❌ 都有；不进结论，只打印测得的值（含批次噪声检验的 Δ）与原因
    undecided = m["quick_undecided"]
    fragments = ("两个 Pre-LN 的学习率敏感度都低于 Post-LN", "差的幅度随学习率变大", "各取最优学习率时，Pre-LN(LayerNorm)")
    assert len(undecided) == len(fragments) and stdout.count("quick 模式不判定") == len(fragments), undecided
    for fragment, u in zip(fragments, undecided):
        assert fragment in u["claim"] and "Δ=" in u["evidence"] and "42/1/7/5/11/13" in u["reason"], (fragment, u)
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
    # "差距随学习率变大"比扫描两端（最大 vs 最小学习率）：中间的 1e-2 是 Post-LN 的临界点，卡不卡住随种子变
    assert f"lr {lrs[-1]:g} 时的差距大于 lr {lrs[0]:g} 时" in undecided[1]["claim"], undecided[1]["claim"]
    # 最大学习率下 No-Norm 发散（梯度裁剪仍开着），带归一化的都不发散
    nan_steps = s["No-Norm"]["by_lr"][f"{lrs[-1]:g}"]["diverged_at"]
    assert claim(record, "No-Norm 在每个种子都发散") and all(d is not None for d in nan_steps), nan_steps
    normed = [d for name, v in s.items() if name != "No-Norm" for r in v["by_lr"].values() for d in r["diverged_at"]]
    assert claim(record, "都没有发散") and all(d is None for d in normed), normed
    # "RMSNorm ≈ LayerNorm"实验 2 两种模式都不判定：120 / 150 步时两者还在离开平台的途中，最优损失之差量的是哪一次先离开
    # （quick 种子 42 +0.30、种子 1 −0.12；完整模式 42–44 成立、1–3 与 4–6 未确立）；脚本打印测量值并指向实验 4
    # （400 步、单一学习率，它的测试断言等价成立；完整模式两组种子都成立）
    assert not [c for c in record["conclusions"] if "RMSNorm 与 LayerNorm" in c["claim"]], record["conclusions"]
    assert "不在这里判定" in stdout and "exp4_layernorm_vs_rmsnorm.py" in stdout, stdout[-2000:]
    curve = m["curves"][f"Pre-LN (RMSNorm) @ {lrs[0]:g}"][0]["train_loss"]
    assert len(curve) == m["config"]["steps"] and curve[-1] < curve[0]  # 确实在学


@pytest.mark.experiment
def test_exp3_prenorm_vs_postnorm(tmp_path, experiment_env):
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp3_prenorm_vs_postnorm.py", tmp_path, experiment_env)
    m, cfg = record["metrics"], record["metrics"]["config"]
    shallow, deep = cfg["depths"]
    wu = cfg["warmup_steps"]
    assert wu > 0 and deep >= 2 * shallow
    # ---- 初始化梯度（Xavier，论文的设定）：每个种子的 top/bottom 由逐层梯度重新算出 ----
    n_seeds, depth = len(cfg["init_seeds"]), cfg["init_depth"]
    assert n_seeds >= 5 and depth >= 12
    ratio = {}
    for name, r in m["init_shape"].items():
        assert len(r["per_layer"]) == n_seeds and all(len(n) == depth and min(n) > 0 for n in r["per_layer"])
        half = depth // 2
        ratio[name] = [(sum(n[-half:]) / sum(n[:half])) for n in r["per_layer"]]
        assert all(abs(a - b) < 1e-9 for a, b in zip(ratio[name], r["top_over_bottom"]))
    # Xiong et al. 图 3：Post-LN 越靠近输出梯度越大（每个种子都 > 1），Pre-LN 不是；0.02 初始化下这个形状几乎消失
    c = find_conclusion(record, "Post-LN 的 W2 梯度越靠近输出越大")
    assert c["status"] == "holds" and c["noise"]["n"] == n_seeds, c
    assert all(x > 1 for x in ratio["Post-LN, xavier"]), ratio
    c = find_conclusion(record, "Pre-LN 的 W2 梯度不随层向输出增大")
    assert c["status"] == "holds" and all(x < 1 for x in ratio["Pre-LN, xavier"]), (c, ratio)
    c = find_conclusion(record, "0.02 初始化下 Post-LN 的这种形状变弱")
    assert c["status"] == "holds" and all(abs(x - 1) < 0.1 for x in ratio["Post-LN, normal"]), (c, ratio)
    # 最后一层梯度随深度：Pre-LN 缩小（接近 1/√L），Post-LN 大致不变
    scaling, depths = m["init_scaling"], cfg["scaling_depths"]
    pre = [b / a for a, b in zip(scaling["Pre-LN"][f"L={depths[0]}"], scaling["Pre-LN"][f"L={depths[-1]}"])]
    post = [b / a for a, b in zip(scaling["Post-LN"][f"L={depths[0]}"], scaling["Post-LN"][f"L={depths[-1]}"])]
    c = find_conclusion(record, "Pre-LN 最后一层的梯度缩小得比 Post-LN 多")
    assert c["status"] == "holds" and all(p < q for p, q in zip(pre, post)), (c, pre, post)
    assert max(pre) < 0.5 < 0.7 < min(post), (pre, post)  # 1/√8 ≈ 0.35；Post-LN 的比值在 1 附近
    # ---- 训练失败率：失败的定义（看结果之前定好）由 JSON 里的最终损失重新算出 ----
    entropy, margin, threshold = cfg["unigram_entropy"], cfg["failure_margin"], cfg["failure_threshold"]
    assert margin == 0.1 and abs(threshold - (entropy - margin)) < 1e-12
    assert 3.2 < entropy < 3.4 and entropy < math.log(65), entropy  # TinyShakespeare 字符的一元熵 ≈ 3.31 nats
    seeds = cfg["failure_seeds"]
    assert seeds == [record["metadata"]["seed"] + i for i in range(len(seeds))]
    grid = m["grid"]
    assert set(grid) == {f"Post-LN, L={deep}, warmup=0", f"Post-LN, L={deep}, warmup={wu}", f"Pre-LN, L={deep}, warmup=0",
                         f"Post-LN, L={shallow}, warmup=0"}, list(grid)
    failed = {}
    for name, r in grid.items():
        finals = [as_loss(v) for v in r["final_val_loss"]]
        failed[name] = [v > threshold for v in finals]
        assert r["failed"] == failed[name] and r["n_failed"] == sum(failed[name]) and r["seeds"] == seeds, (name, r)
        # 两态：失败的运行停在字符频率的平台上（离一元熵不到 0.2；完整模式两组种子里最远 0.14），不是发散
        assert all(abs(v - entropy) < 0.2 for v, f in zip(finals, failed[name]) if f), (name, finals)
    pre_none = failed[f"Pre-LN, L={deep}, warmup=0"]
    # 三条失败率结论 quick 不下（quick_reason）：一个种子的精确符号检验永远只能是"未确立"（至少要 5 个结果不同的种子），
    # 脚本只打印这个种子上的结果与原因并指向完整模式；成立与否由下面的 test_exp3_reference_failure_rates 对参考结果断言
    assert len(seeds) == 1 and not [c for c in record["conclusions"] if "训练失败" in c["claim"]], record["conclusions"]
    undecided = m["quick_undecided"]
    assert len(undecided) == 3 and all("训练失败" in u["claim"] for u in undecided), undecided
    assert all(u["evidence"].startswith("失败 ") and "exp3_prenorm_vs_postnorm.json" in u["reason"] for u in undecided)
    assert stdout.count("quick 模式不判定") == 3, stdout[-2000:]
    # 测得的结果：不用 warmup 的 12 层 Pre-LN 训得动（完整模式两组种子 32 次里 0 次失败，最高 3.07 < 阈值 3.21）；
    # Post-LN 这个种子卡不卡住随种子变（约一半），不断言
    assert not any(pre_none), (pre_none, grid[f"Pre-LN, L={deep}, warmup=0"]["final_val_loss"])


def test_exp3_reference_failure_rates():
    """提交的完整模式参考结果（16 个种子）：三条失败率结论都成立，且由记录的失败标记重新算出。"""
    record = json.loads((EXPERIMENTS / "results" / "reference" / "exp3_prenorm_vs_postnorm.json").read_text(encoding="utf-8"))
    cfg, grid = record["metrics"]["config"], record["metrics"]["grid"]
    shallow, deep = cfg["depths"]
    wu, threshold = cfg["warmup_steps"], cfg["failure_threshold"]
    assert len(cfg["failure_seeds"]) >= 12 and record["metadata"]["mode"] == "full"
    failed = {name: [as_loss(v) > threshold for v in r["final_val_loss"]] for name, r in grid.items()}
    post_none, post_wu = failed[f"Post-LN, L={deep}, warmup=0"], failed[f"Post-LN, L={deep}, warmup={wu}"]
    pre_none, post_shallow = failed[f"Pre-LN, L={deep}, warmup=0"], failed[f"Post-LN, L={shallow}, warmup=0"]
    for fragment, (a, b) in {"用 {wu} 步 warmup 比不用时更少训练失败".format(wu=wu): (post_wu, post_none),
                             "Pre-LN 比 Post-LN 更少训练失败": (pre_none, post_none),
                             "越深越难训": (post_shallow, post_none)}.items():
        c = [c for c in record["conclusions"] if fragment in c["claim"]]
        assert len(c) == 1 and c[0]["status"] == "holds", (fragment, c)
        verdict = fewer_failures(a, b)
        assert verdict.status == "holds" and verdict.p_value < 0.05 and sum(a) < sum(b), (fragment, a, b)


def test_lab_config_xavier_init_switch():
    """init="xavier" 只重置块内的线性层（std ≈ √(2/(fan_in+fan_out))），嵌入不变；与 scaled_init 互斥、拼错值报错。"""
    import torch

    from modules.common.lab_model import LabConfig, LabModel

    small = dict(hidden_size=64, num_layers=2, n_heads=4, max_seq_len=32, ffn="relu")
    torch.manual_seed(0)
    plain = LabModel(LabConfig(**small))
    torch.manual_seed(0)
    xavier = LabModel(LabConfig(**small, init="xavier"))
    assert torch.equal(plain.model.embed_tokens.weight, xavier.model.embed_tokens.weight)
    up = xavier.model.layers[0].mlp.up_proj.weight  # (256, 64)
    expected = math.sqrt(2 / sum(up.shape))
    assert abs(up.std().item() - expected) < 0.1 * expected and abs(plain.model.layers[0].mlp.up_proj.weight.std() - 0.02) < 0.002
    with pytest.raises(ValueError, match="scaled_init"):
        LabConfig(**small, init="xavier", scaled_init=True)
    with pytest.raises(ValueError, match="init"):
        LabConfig(**small, init="kaiming")


@pytest.mark.experiment
def test_exp4_layernorm_vs_rmsnorm(tmp_path, experiment_env):
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp4_layernorm_vs_rmsnorm.py", tmp_path, experiment_env)
    m = record["metrics"]
    inv = m["invariance"]
    assert inv["LayerNorm"]["shift"] < 1e-4 and inv["LayerNorm"]["scale"] < 1e-4
    assert inv["RMSNorm"]["shift"] > 0.1  # 平移会改变 RMSNorm 的输出
    assert inv["RMSNorm"]["scale"] < 1e-4
    assert inv["RMSNorm(x - mean) vs LayerNorm(x)"] < 1e-4
    assert claim(record, "LayerNorm 对平移") and claim(record, "RMSNorm 对平移不是不变的")
    assert claim(record, "都对整体缩放不变") and claim(record, "先减均值再做 RMSNorm")
    # 质量：等价界 0.05（quick：同一批 8 个验证 batch 配对）；种子 42/1/7 的 quick 运行里都成立
    q = m["quality"]
    gap = q["Pre-LN (RMSNorm)"]["mean"] - q["Pre-LN (LayerNorm)"]["mean"]
    c = find_conclusion(record, "验证 loss 相差不到 0.05")
    assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and abs(gap) < 0.05, (c, gap)
    # 省了什么：确定的计数。逐步实现时 RMSNorm 少 8 个算子、读写少约 30%；手写反向只存 x̂ 一份激活
    t = m["traffic"]
    assert t["RMSNorm"]["ops"] < t["LayerNorm"]["ops"] and t["RMSNorm"]["bytes"] < 0.8 * t["LayerNorm"]["bytes"], t
    assert claim(record, "算子更少、读写的字节更少")
    saved, one_tensor = m["saved_bytes"], 8 * 256 * 512 * 4
    assert saved["RMSNorm (fused backward)"] < 1.1 * one_tensor < 1.9 * one_tensor < saved["RMSNorm (readable)"], saved
    assert claim(record, "手写反向为反向保存的激活")
    # 速度：交替计时过噪声检验。写法相同时 RMSNorm 快、融合的 nn.LayerNorm 比逐步的 RMSNorm 快——单独运行时差距都在
    # 1.4 倍以上、判定成立（quick 种子 5/11/13 上也都成立）。测试断言测得的方向（中位时间）且判定不是"不成立"：
    # 测试与别的测试并行跑，7 个窗口的噪声随机器负载变大——2026-12-06 的 CI 里"写法相同"测到 7.38 vs 5.30 ms（1.39 倍），
    # 判定却是 ❔。方向反了（RMSNorm 更慢）时这里照样失败。
    # 手写反向只快 1.0–1.3 倍，quick 不判定（7 个窗口在共享机器上量不稳：
    # 种子 42/1/7/5/11/13 上 ✅/❔/✅/❔/❔/✅），只打印测得的值与原因
    ms = m["median_ms"]
    for fragment, fast, slow in (("写法相同", "RMSNorm (readable)", "LayerNorm (readable)"),
                                 ("融合内核的 nn.LayerNorm", "nn.LayerNorm", "RMSNorm (readable)")):
        c = find_conclusion(record, fragment)
        assert c["status"] != "fails" and c["noise"]["unit"] == "windows" and ms[fast] < ms[slow], (c, ms)
        assert c["noise"]["mean_delta"] > 0, c  # 交替窗口的平均差值也在声明的方向上
    undecided = m["quick_undecided"]
    assert len(undecided) == 1 and "手写反向的 RMSNorm 比可读实现" in undecided[0]["claim"], undecided
    assert "ms vs" in undecided[0]["evidence"] and "✅/❔/✅/❔/❔/✅" in undecided[0]["reason"], undecided
    assert not [c for c in record["conclusions"] if "手写反向的 RMSNorm 比可读实现" in c["claim"]]
    assert stdout.count("quick 模式不判定") == 1, stdout[-2000:]


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
