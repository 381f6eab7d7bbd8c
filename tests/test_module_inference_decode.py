"""04-advanced/02-inference 实验 2（解码的时间花在哪里）：小工具对照手算与 FlopCounterMode（毫秒级），
再在子进程里以缩小的 --quick 跑一遍，从 JSON 里的原始计时重新算出派生量与三态判定，核对与打印的结论一致。

不断言谁快（测试里不断言墙钟时间）：计时结论只核对"判定与记录的测量一致"。
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from modules.common.noise import compare, exceeds

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "02-inference" / "experiments"
SCRIPT = EXPERIMENTS / "exp2_decode_anatomy.py"


@pytest.fixture(scope="module")
def exp2():
    return load_experiment_module(EXPERIMENTS, "exp2_decode_anatomy")


def tiny_config(**overrides):
    return MiniMindConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    vocab_size=128), **overrides})


def test_line_fit_and_totals_match_hand_computation(exp2):
    assert exp2.fit_line([0, 1, 2, 3], [2, 5, 8, 11]) == pytest.approx((2.0, 3.0))
    # x̄ = 1、ȳ = 7/3：b = ((−1)(−4/3) + 0 + (1)(5/3)) / 2 = 1.5，a = 7/3 − 1.5
    assert exp2.fit_line([0, 1, 2], [1, 2, 4]) == pytest.approx((7 / 3 - 1.5, 1.5))
    assert exp2.generation_seconds(1.0, 2.0, 3) == pytest.approx(3 + 5 + 7)  # Σ_{p=1..3} (1 + 2p)
    assert exp2.generation_seconds(0.5, 0.0, 10) == pytest.approx(5.0)  # 斜率 0：线性
    assert exp2.sweep_positions(96) == [12, 24, 36, 48, 60, 72, 84, 96]
    assert exp2.sweep_positions(64, 4) == [16, 32, 48, 64]


def test_faster_by_uses_the_factor(exp2):
    a = [1.0, 1.1, 0.9, 1.0, 1.05]
    b = [3 * t for t in a]  # b 恰好慢 3 倍（每个窗口都是）：log 差值全是 log 3，SE = 0
    b[0] *= 1.01  # 给一点噪声，SE > 0
    assert exp2.faster_by(a, b, 2.0).status == "holds"
    assert exp2.faster_by(a, b, 4.0).status == "fails"
    assert exp2.faster_by(a, b, 1.0).mean_delta == pytest.approx(np.mean([math.log(y / x) for x, y in zip(a, b)]))


def test_cost_formulas_match_hand_computation_and_flop_counter(exp2):
    config = tiny_config(flash_attn=False)  # 手写注意力：QKᵀ 与 AV 走 aten.bmm，FlopCounterMode 数得到
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).eval()
    H, I, L = 64, config.intermediate_size, 2
    block, head = exp2.linear_params(model)
    # 每层：q (H×4·16) + k、v (H×2·16 各) + o (64×H) + 三个 FFN 矩阵 (3·H·I)
    assert block == L * (H * 64 + 2 * H * 32 + 64 * H + 3 * H * I) and head == 128 * H
    cost = exp2.forward_cost(config, block, head, n_new=3, n_past=5)
    assert cost["matmul_flops"] == 2 * block * 3 + 2 * head
    assert cost["attention_flops"] == 4 * L * 4 * 16 * (3 * 5 + 1 + 2 + 3)  # 新 token 分别看到 6、7、8 个
    assert cost["weight_bytes"] == 4 * (block + head) and cost["kv_bytes"] == 4 * 2 * L * 2 * 16 * 8
    # 解码一个 token（cache 里 5 个）：FlopCounterMode 量出的全部 FLOPs（Linear 的 mm + 注意力的 bmm）= 公式
    ids = torch.randint(3, 128, (1, 6))
    with torch.inference_mode():
        past = model(ids[:, :5], use_cache=True).past_key_values
    counted = exp2.counted_flops(model, ids[:, 5:], past)
    decode = exp2.forward_cost(config, block, head, n_new=1, n_past=5)
    assert counted["mm"] == decode["matmul_flops"] and counted["bmm"] == decode["attention_flops"]
    # 预填充：Linear 部分与公式一致（手写注意力算的是整块 T×T 再加掩码，比因果的对数多，不比）
    assert exp2.counted_flops(model, ids)["mm"] == exp2.forward_cost(config, block, head, n_new=6, n_past=0)["matmul_flops"]
    # 预填充 vs 逐 token 解码：解码把权重读 T 遍、lm_head 多算 T−1 次；注意力的 (query, key) 对数相同
    both = exp2.prefill_and_decode_cost(config, block, head, 6)
    assert both["decode"]["weight_bytes"] == 6 * both["prefill"]["weight_bytes"]
    assert both["decode"]["matmul_flops"] == both["prefill"]["matmul_flops"] + 2 * head * 5
    assert both["decode"]["attention_flops"] == both["prefill"]["attention_flops"]
    assert both["prefill"]["intensity"] == pytest.approx(both["prefill"]["flops"] / both["prefill"]["bytes"])
    assert both["prefill"]["intensity"] > 3 * both["decode"]["intensity"]


def test_timing_helpers_run_the_real_model(exp2, monkeypatch):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config()).eval()
    device = torch.device("cpu")
    calls = []
    decode, matmul = exp2.decode_with_matmul_only(model, torch.randint(3, 128, (1, 4)), 5, lambda: calls.append(1), device)
    assert len(decode) == len(matmul) == 4 and min(decode) > 0 and min(matmul) >= 0  # 第 0 步（预填充）已去掉
    assert len(calls) == 5  # 每生成一个 token 之后都做一次
    sweep = exp2.position_sweep(model, torch.randint(3, 128, (1, 12)), [1, 6, 12], windows=2, device=device, repeats=2)
    assert set(sweep) == {"cache", "no cache"}
    assert all(len(rows) == 2 and all(len(r) == 3 and min(r) > 0 for r in rows) for rows in sweep.values())
    # matmul-only：每个 nn.Linear（含 lm_head）恰好乘一次、每次只乘 1 个 token
    seen, real_linear = [], torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: seen.append((tuple(x.shape), w)) or real_linear(x, w))
    exp2.decode_matmuls(model)()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(seen) == len(linears) == 2 * 7 + 1 and all(w is m.weight for (_, w), m in zip(seen, linears))
    assert all(shape == (1, 1, w.shape[1]) for shape, w in seen)


def test_bad_arguments_give_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sizes", "baby,huge", "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--sizes" in proc.stderr and "huge" in proc.stderr


def consistent(status, delta_supports_claim: float) -> bool:
    """三态判定与测得的方向一致：成立时效应方向支持声明，不成立时方向相反。"""
    return (status != "holds" or delta_supports_claim > 0) and (status != "fails" or delta_supports_claim < 0)


def test_exp2_quick_verdicts_follow_the_recorded_timings(tmp_path):
    record, _ = run_quick_experiment(SCRIPT, tmp_path, dict(os.environ, MPLBACKEND="Agg"),
                                     ("--windows", "3", "--max-position", "24", "--prefill-len", "16",
                                      "--decode-tokens", "4", "--sizes", "baby,small"))
    m = record["metrics"]
    config, raw, s = m["config"], m["raw"][0], m["per_seed"][0]
    th = config["thresholds"]
    assert config["random_weights"] is True and config["threads"] == 1 and config["size_order"] == ["baby", "small"]
    assert len(m["raw"]) == 1  # quick：一个种子

    # 1. 斜率：从原始逐位置时间用 numpy 重新拟合
    positions = raw["positions"]
    assert positions == [3, 6, 9, 12, 15, 18, 21, 24]
    slopes = {k: [100e3 * np.polyfit(positions, run, 1)[0] for run in runs] for k, runs in raw["step_seconds"].items()}
    for k in slopes:
        assert len(raw["step_seconds"][k]) == 3 and s["slope_ms_per_100"][k] == pytest.approx(slopes[k], rel=1e-6, abs=1e-9)
    c = find_conclusion(record, "无 KV cache 时每步延迟随位置增长")
    v = exceeds(slopes["no cache"], 0.0, "greater", unit="windows")
    assert c["status"] == v.status and consistent(c["status"], np.mean(slopes["no cache"]))
    c = find_conclusion(record, "有 KV cache 时每步延迟几乎不随位置变")
    v = compare(slopes["cache"], [th["cache_slope_fraction"] * x for x in slopes["no cache"]], "less", unit="windows")
    assert c["status"] == v.status
    longest = {k: [run[-1] for run in runs] for k, runs in raw["step_seconds"].items()}
    c = find_conclusion(record, "最长位置（24）上，有 cache 的一步至少快")
    v = compare([math.log(th["longest_speedup"] * t) for t in longest["cache"]], [math.log(t) for t in longest["no cache"]],
                "less", unit="windows")
    assert c["status"] == v.status

    # 2. 预填充 vs 解码：确定性的两条必须成立；计时的那条从原始秒数重算
    c = find_conclusion(record, "预填充与逐 token 解码建出同一个 KV cache")
    assert c["status"] == "holds" and raw["kv_cache_max_diff"] < 1e-4
    c = find_conclusion(record, "FlopCounterMode 量出的矩阵乘 FLOPs 等于公式")
    assert c["status"] == "holds" and raw["counted_matmul_flops"] == raw["formula_matmul_flops"]
    block, head = raw["main_linear_params"]
    assert raw["formula_matmul_flops"]["prefill"] == 2 * block * 16 + 2 * head  # 26M、T=16
    pd = raw["prefill_decode_seconds"]
    assert s["prefill_tok_s"] == pytest.approx([16 / t for t in pd["prefill"]])
    c = find_conclusion(record, "同样 16 个 token，预填充的 tokens/s 至少是逐 token 解码的")
    v = compare([math.log(th["prefill_speedup"] * t) for t in pd["prefill"]], [math.log(t) for t in pd["decode"]],
                "less", unit="windows")
    assert c["status"] == v.status
    cost = m["cost"]
    assert cost["prefill"]["intensity"] > 5 * cost["decode"]["intensity"]  # T=16：约 T 倍（注意力与 lm_head 使它略小）
    probe = raw["probe_seconds"]
    mib = config["big_tensor_mib"] * 2**20
    balance = [2 * config["peak_matmul_n"] ** 3 / tm / (mib / tr) for tm, tr in zip(probe["matmul"], probe["read"])]
    assert s["balance_flop_per_byte"] == pytest.approx(balance)
    c = find_conclusion(record, "解码的算术强度低于本机平衡点")
    assert c["status"] == exceeds(balance, cost["decode"]["intensity"], "greater", unit="windows").status
    c = find_conclusion(record, "预填充（T=16）的算术强度高于本机平衡点")
    assert c["status"] == exceeds(balance, cost["prefill"]["intensity"], "less", unit="windows").status

    # 3. 各尺寸离 matmul-only 上限多远：比例从原始秒数重算，在 log 上检验
    fraction = {nm: [mm / d for mm, d in zip(raw["matmul_only_seconds"][nm], raw["decode_step_seconds"][nm])]
                for nm in ("baby", "small")}
    assert s["matmul_fraction"]["small"] == pytest.approx(fraction["small"])
    log_f = {nm: [math.log(f) for f in v] for nm, v in fraction.items()}
    c = find_conclusion(record, "最小的 baby 解码达不到 matmul-only 上限")
    assert c["status"] == exceeds(log_f["baby"], math.log(th["fraction"]), "less", unit="windows").status
    c = find_conclusion(record, "最大的 small 解码超过 matmul-only 上限")
    assert c["status"] == exceeds(log_f["small"], math.log(th["fraction"]), "greater", unit="windows").status
    c = find_conclusion(record, "small 的比例高于 baby")
    assert c["status"] == compare(log_f["small"], log_f["baby"], "greater", unit="windows").status
    bw_fraction = [raw["linear_weight_bytes"]["small"] / mm / (mib / tr)
                   for mm, tr in zip(raw["matmul_only_seconds"]["small"], probe["read"])]
    # "读权重的速度超过读带宽的一半"随机器负载变，quick 不判定（脚本的 QUICK_REASON_BANDWIDTH）：
    # 它不在结论里，而在 quick_undecided 里，带从原始秒数重算的噪声检验
    assert not [c for c in record["conclusions"] if "只做矩阵乘时读权重的速度" in c["claim"]]
    (u,) = m["quick_undecided"]
    assert u["claim"].startswith("最大的 small 只做矩阵乘时读权重的速度") and "负载" in u["reason"]
    assert exceeds([math.log(f) for f in bw_fraction], math.log(th["fraction"]), "greater",
                   unit="windows").describe() in u["evidence"]
    # 权重字节：4 字节 × 全部 Linear（含 lm_head）参数
    model = MiniMindForCausalLM(MiniMindConfig(**load_experiment_module(EXPERIMENTS, "exp2_decode_anatomy").SIZES["small"]))
    assert raw["linear_weight_bytes"]["small"] == 4 * sum(p.weight.numel() for p in model.modules()
                                                          if isinstance(p, torch.nn.Linear))
