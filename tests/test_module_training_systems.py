"""04-advanced/05-training-systems 模块：分块注意力与内存测量的单元测试，四个实验的 --quick 在子进程里运行并检查测得的效应。"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "05-training-systems" / "experiments"


def load_script(name):
    return load_experiment_module(EXPERIMENTS, name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, block", [(37, 8), (64, 64), (50, 100)])  # 最后一块不满 / 恰好一块 / 块比序列长
def test_tiled_attention_matches_naive_and_sdpa(causal, T, block):
    ta = load_script("tiled_attention")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad_o = torch.randn(2, 3, T, 16, generator=g, dtype=torch.float64)
    results = []
    for attn in (lambda: ta.tiled_attention(q, k, v, block, causal), lambda: ta.naive_attention(q, k, v, causal),
                 lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)):
        o = attn()
        results.append([o, *torch.autograd.grad(o, (q, k, v), grad_o)])
    for tiled, naive, sdpa in zip(*results):
        torch.testing.assert_close(tiled, naive, rtol=0, atol=1e-12)
        torch.testing.assert_close(tiled, sdpa, rtol=0, atol=1e-12)


def test_tiled_attention_saves_no_square_matrix():
    """前向只为反向保存 q、k、v、o 和 lse：没有任何 T×T 的张量。"""
    ta = load_script("tiled_attention")
    q, k, v = (torch.randn(1, 2, 96, 8, requires_grad=True) for _ in range(3))
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        ta.tiled_attention(q, k, v, block=32)
    assert len(shapes) == 5, shapes  # q、k、v、o、lse
    assert not any(len(s) >= 2 and s[-1] == s[-2] == 96 for s in shapes), shapes
    with pytest.raises(ValueError, match="block"):
        ta.tiled_attention(q, k, v, block=0)


def test_measure_allocations_counts_a_known_tensor():
    measure_allocations = load_script("peak_memory").measure_allocations

    def make():
        temp = torch.ones(1000, 1000)  # 4 MB，用完即丢
        kept = torch.ones(500, 1000)   # 2 MB，返回出去
        return kept + temp[:500]       # 结果 2 MB

    result, peak, retained = measure_allocations(make, torch.device("cpu"))
    assert retained == result.numel() * 4 == 2_000_000
    assert peak >= 8_000_000  # temp、kept 与结果同时存在
    with pytest.raises(ValueError, match="cpu"):
        measure_allocations(make, torch.device("meta"))


@pytest.mark.experiment
def test_exp1_memory_formula_matches_measured_allocations(tmp_path, experiment_env):
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp1_memory_accounting.py", tmp_path, experiment_env)
    m = record["metrics"]
    formula = {r["name"]: r for r in m["formula"]}
    # 真实尺寸的参数量（与 01-minimind2-to-3 的 exp3 一致）和每参数字节数
    assert formula["MiniMind2-Small 26M"]["params"] == pytest.approx(25.8e6, rel=0.01)
    assert formula["MiniMind2 104M"]["params"] == pytest.approx(104e6, rel=0.01)
    for r in formula.values():
        assert r["fp32_adam_bytes"] == 16 * r["params"]
        assert r["ours_bf16_bytes"] == 18 * r["params"]
        ranks = r["per_rank_state_bytes"]
        assert ranks["fsdp"] < ranks["zero1"] < ranks["ddp"]
    for run in m["measured"].values():
        assert abs(run["forward_retained"] / run["forward_expected"] - 1) < 0.02
        assert abs(run["after_step_retained"] / run["after_step_expected"] - 1) < 0.02
        assert run["after_step_expected"] == 12 * run["params"]
    for fragment in ("前向保留的字节数", "梯度 4P + 两个矩 8P", "整步峰值不低于", "激活都比参数状态"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    assert "实测 vs 公式" in stdout


@pytest.mark.experiment
def test_exp2_mixed_precision_losses_agree_and_scaling_prevents_underflow(tmp_path, experiment_env):
    record, _ = run_quick_experiment(EXPERIMENTS / "exp2_mixed_precision.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert set(m["val_loss"]) == {"fp32", "bf16 autocast", "fp16 + loss scaling", "fp16 no scaling"}
    # 20 步后学到了字符频率以上的东西（ln 65 ≈ 4.17）
    assert all(v[0] < 3.6 for v in m["val_loss"].values())
    shares = m["flush_share"]
    assert shares["activations"]["fp16 scale 1"] > 0 and shares["activations"]["fp16 scale 2^16"] == 0
    assert all(s["bf16 scale 1"] == 0 for s in shares.values())
    assert all(u > s for u, s in zip(m["autocast_zero_share"]["no scaling"], m["autocast_zero_share"]["scaled"]))
    for fragment in ("bf16 autocast 的验证 loss", "fp16 + loss scaling 的验证 loss"):
        c = find_conclusion(record, fragment)
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches", c
    for fragment in ("乘 2^16 后下溢的更少", "bf16 的指数范围", "不做 loss scaling 时变成 0"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment


@pytest.mark.experiment
def test_exp3_checkpointing_memory_follows_formula(tmp_path, experiment_env):
    record, _ = run_quick_experiment(EXPERIMENTS / "exp3_grad_checkpointing.py", tmp_path, experiment_env)
    m = record["metrics"]
    off, on = m["memory"]["off"], m["memory"]["on"]
    # 关闭时前向保留的字节数随层数近似成正比；打开时小一个数量级
    assert off[-1]["forward_kept"] > 3 * off[0]["forward_kept"]
    assert all(b["forward_kept"] * 5 < a["forward_kept"] for a, b in zip(off, on))
    for fragment in ("一整块激活", "只多保留一份块输入", "峰值都更低", "逐位相同", "少留一块激活减一份块输入", "峰值越低"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment
    # 只重算一半的块：前向保留的字节数落在全关与全开的正中间（公式是 k 的一次函数）
    kept = [entry["forward_kept"] for entry in m["partial_memory"]]
    assert m["checkpointed_blocks"] == [0, 4, 8] and abs(kept[1] - (kept[0] + kept[2]) / 2) < 0.02 * kept[0], kept
    # 计时结论：项目不写"必须快多少"的计时测试（负载让它时好时坏：种子 7 的 quick 在负载 14 时未确立）；
    # 这里只要求它们是交替计时窗口上的检验，且没有反向（多重算反而变快、超出噪声，就是实现出了错）
    for fragment in ("训练步变慢", "比全部重算快"):
        verdict = find_conclusion(record, fragment)
        assert verdict["noise"]["unit"] == "windows" and verdict["status"] != "fails", verdict


@pytest.mark.experiment
def test_exp4_tiled_attention_exact_and_linear_memory(tmp_path, experiment_env):
    record, _ = run_quick_experiment(EXPERIMENTS / "exp4_tiled_attention.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["errors_float64"]["vs naive"] < 1e-12 and m["errors_float32"]["vs sdpa"] < 1e-5
    peaks = m["peak_bytes"]
    assert peaks["naive"][-1] > 10 * peaks["tiled"][-1]
    assert m["loglog_slope"]["naive"] > 1.7 and m["loglog_slope"]["tiled"] < 1.3
    flops = m["flops"]
    assert flops["naive causal=False"][0] == flops["tiled causal=False"][0]
    for fragment in ("float64 下", "float32 下", "平方增长", "线性增长", "小于一个 T×T", "前向 FLOPs 完全相同",
                     "14/12", "整块跳过"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment


@pytest.mark.parametrize("script, args, flag", [
    ("exp2_mixed_precision.py", ["--steps", "2"], "--steps"),
    ("exp3_grad_checkpointing.py", ["--windows", "1"], "--windows"),
    ("exp4_tiled_attention.py", ["--block", "4"], "--block"),
])
def test_experiments_reject_bad_arguments(tmp_path, script, args, flag):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", *args, "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert flag in proc.stderr and "Traceback" not in proc.stderr
