"""04-advanced/01-minimind2-to-3 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "01-minimind2-to-3" / "experiments"


def load_script(name):
    return load_experiment_module(EXPERIMENTS, name)


def test_count_spikes_counts_rises_above_running_min():
    count_spikes = load_script("exp1_qk_norm").count_spikes
    # 第 2 步比此前最低值 2.0 高 0.5，第 4 步比 1.0 高 0.4：两次尖峰，最大回升 0.5；第 0 步在 skip 之内
    spikes, worst = count_spikes([3.0, 2.0, 2.5, 1.0, 1.4], threshold=0.3, skip=1)
    assert spikes == 2 and worst == pytest.approx(0.5)
    assert count_spikes([3.0, 2.0, 1.0], threshold=0.3, skip=0)[0] == 0  # 单调下降没有尖峰


def test_late_rise_ignores_early_phase_and_smooths():
    late_rise = load_script("exp1_qk_norm").late_rise
    # 前 20% 的大尖峰（9.0）被丢掉；后段单调下降：回升为 0
    assert late_rise([9.0, 5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4, 3.3], start_fraction=0.2, window=2) == 0.0
    # 后段 [2, 1, 1, 3, 3]，2 步平滑得 [1.5, 1, 2, 3]：比此前最低点 1 高出 2
    assert late_rise([5.0, 2.0, 1.0, 1.0, 3.0, 3.0], start_fraction=1 / 6, window=2) == pytest.approx(2.0)


def test_fp16_overflow_counts_attention_rows_beyond_fp16_range():
    """q_proj / k_proj 放大 3000 倍后 |q·k| 远超 65504：fp16 的注意力分数出现 inf；正常初始化的模型一行也没有。"""
    import torch

    from modules.common.lab_model import LabConfig, LabModel

    fp16_overflow = load_script("exp1_qk_norm").fp16_overflow
    torch.manual_seed(0)
    data = torch.randint(0, 16, (4, 9))

    def get_batch(split):
        return data, data

    model = LabModel(LabConfig(vocab_size=16, hidden_size=32, num_layers=1, n_heads=2, max_seq_len=9))
    normal = fp16_overflow(model, get_batch, 2, "cpu")
    assert normal["attn_rows"] == [0.0, 0.0] and normal["model_tokens"] == [0.0, 0.0]
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(3000)
        model.model.layers[0].self_attn.k_proj.weight.mul_(3000)
    blown = fp16_overflow(model, get_batch, 2, "cpu")
    assert all(0 < f <= 1 for f in blown["attn_rows"]) and all(f > 0 for f in blown["model_tokens"])
    assert model.training  # 测完恢复训练模式


def test_load_stats_entropy_and_dead_experts():
    load_stats = load_script("exp3_moe_routing").load_stats
    balanced = load_stats(np.full(4, 0.25))
    assert balanced["norm_entropy"] == pytest.approx(1.0) and balanced["dead"] == 0 and balanced["max_share"] == 0.25
    collapsed = load_stats(np.array([1.0, 0.0, 0.0, 0.0]))
    assert collapsed["norm_entropy"] == pytest.approx(0.0) and collapsed["dead"] == 3
    assert load_stats(np.array([0.5, 0.3, 0.15, 0.05]))["dead"] == 1  # 0.05 < 公平份额 0.25 的 1/4


def test_paper_mscale_matches_yarn_formula():
    paper_mscale = load_script("exp2_yarn_versions").paper_mscale
    assert paper_mscale(16) == pytest.approx(0.1 * math.log(16) + 1)
    assert paper_mscale(1) == 1.0


def test_train_model_keeps_per_batch_val_losses_of_every_eval():
    """实验 3 的学习曲线按验证 batch 配对差距：train_model 的 val_batches 与 val_steps 一一对应，最后一项就是 final_val_batches。"""
    import torch

    from modules.common.lab_model import LabConfig, LabModel
    from modules.common.training import train_model

    torch.manual_seed(0)
    data = torch.randint(0, 16, (64, 9))

    def get_batch(split):
        rows = data[torch.randint(0, 64, (4,))]
        return rows, rows

    model = LabModel(LabConfig(vocab_size=16, hidden_size=32, num_layers=1, n_heads=2, max_seq_len=9))
    hist = train_model(model, get_batch, steps=6, lr=1e-3, eval_every=2, eval_batches=3, progress=False)
    assert hist["val_steps"] == [1, 3, 5] and len(hist["val_batches"]) == 3
    assert all(len(b) == 3 for b in hist["val_batches"]) and hist["val_batches"][-1] == hist["final_val_batches"]
    assert hist["val_loss"] == pytest.approx([sum(b) / 3 for b in hist["val_batches"]])


def test_lr_sensitivity_matches_wortsman_definition():
    lr_sensitivity = load_script("exp1_qk_norm").lr_sensitivity
    # 三个学习率的 loss 2.0 / 2.5 / 9.0，L0 = 4.0：9.0 按 4.0 计，E[min(L, L0)] − L* = (2.0 + 2.5 + 4.0)/3 − 2.0
    assert lr_sensitivity([2.0, 2.5, 9.0], init_loss=4.0) == pytest.approx(8.5 / 3 - 2.0)
    assert lr_sensitivity([2.0, 2.0], init_loss=4.0) == 0.0  # 处处一样好：完全不敏感
    assert lr_sensitivity([2.0, float("nan")], init_loss=4.0) == pytest.approx(1.0)  # 发散（NaN）按 L0 计


@pytest.mark.experiment
@pytest.mark.parametrize("seed", [42, 7])
def test_exp1_qk_norm_bounds_logits_and_trains_at_high_lr(tmp_path, experiment_env, seed):
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp1_qk_norm.py", tmp_path, experiment_env,
                                          extra_args=("--seed", str(seed)))
    m = record["metrics"]
    lo, hi = f"{min(m['lrs']):g}", f"{max(m['lrs']):g}"
    s = m["summary"]
    off, on = "no qk_norm (minimind2)", "qk_norm (minimind3)"
    # 最大学习率下：无 QK-norm 的 logit 比有 QK-norm 大两个数量级以上；有 QK-norm 时 logit 随学习率的增长倍数小得多
    assert s[f"{off} @ {hi}"]["final_max_logit"] > 100 * s[f"{on} @ {hi}"]["final_max_logit"]
    growth_off = s[f"{off} @ {hi}"]["final_max_logit"] / s[f"{off} @ {lo}"]["final_max_logit"]
    growth_on = s[f"{on} @ {hi}"]["final_max_logit"] / s[f"{on} @ {lo}"]["final_max_logit"]
    assert growth_off > 100 * growth_on
    # 熵坍缩：无 QK-norm 时所有头的平均熵不到有 QK-norm 时的一半（结论的噪声检验在下面断言），最尖的头几乎 one-hot
    # （熵 < 0.05 nats），有 QK-norm 时仍明显大于它
    assert s[f"{off} @ {hi}"]["final_mean_entropy"] < 0.5 * s[f"{on} @ {hi}"]["final_mean_entropy"]
    assert s[f"{off} @ {hi}"]["final_min_entropy"] < 0.05 < s[f"{on} @ {hi}"]["final_min_entropy"]
    # 最大学习率下有 QK-norm 的验证 loss 更低（是否超出噪声由下面"验证 loss 更低"那条结论的噪声检验断言；以前这里还要求
    # 低 0.1 以上——一个按开发机器定的界，2026-12-05 在另一种 CPU（AMD EPYC）上种子 42 只低 0.073，已去掉）；小学习率下两者相近
    assert s[f"{on} @ {hi}"]["val_loss"] < s[f"{off} @ {hi}"]["val_loss"]
    assert abs(s[f"{on} @ {lo}"]["val_loss"] - s[f"{off} @ {lo}"]["val_loss"]) < 0.2
    # 论文定义的学习率敏感度（从逐 LR 的验证 loss 独立重算）。"有 QK-norm 的更小"quick 不判定（种子 13 上反向），见下
    sens = {v: m["lr_sensitivity"][v][0] for v in (off, on)}
    for v in (off, on):
        losses = [s[f"{v} @ {lr:g}"]["val_loss"] for lr in m["lrs"]]
        capped = [min(x, m["init_loss"]) for x in losses]
        assert sens[v] == pytest.approx(sum(capped) / len(capped) - min(capped))
    # 逐步记录的 logit / 熵轨迹与训练步一一对应
    run = m["runs"][f"{off} @ {hi}"][0]
    assert (len(run["max_logit_trace"]) == len(run["mean_entropy_trace"]) == len(run["min_entropy_trace"])
            == len(run["train_loss"]) == m["steps"])
    # 末 10 步的统计量从轨迹重算；每步所有头的平均熵不小于最尖的头的熵
    assert run["final_mean_entropy"] == pytest.approx(sum(run["mean_entropy_trace"][-10:]) / 10)
    assert run["final_min_entropy"] == pytest.approx(min(run["min_entropy_trace"][-10:]))
    assert all(a >= b for a, b in zip(run["mean_entropy_trace"], run["min_entropy_trace"]))
    # 比较结论经噪声检验（单种子：logit、熵按末 10 个训练步配对，验证 loss 按 4 个验证 batch 配对）且必须成立
    for fragment in ("最大注意力 logit 高于", "学习率越大 logit 越大", "注意力熵坍缩", "验证 loss 更低"):
        c = find_conclusion(record, fragment)
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches", c
    # 两种回升量都是整条曲线上的一个数，单种子没有噪声可估（n = 1，噪声检验只能给"未确立"）：quick 不判定它们
    # （conclude_verdict 的 quick_reason），只打印测量值，完整模式按种子检验。后段回升从记录的训练 loss 独立重算
    late_rise = load_script("exp1_qk_norm").late_rise
    for v in (off, on):
        run_hi = m["runs"][f"{v} @ {hi}"][0]
        assert run_hi["late_rise"] == pytest.approx(late_rise(run_hi["train_loss"], m["late_start_fraction"], m["smooth_window"]))
    undecided = m["quick_undecided"]
    assert len(undecided) == 4 == stdout.count("quick 模式不判定")
    for fragment in ("早期尖峰", "训练后段"):
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        u = next(u for u in undecided if fragment in u["claim"])
        assert "只有 1 对测量" in u["evidence"] and "n = 1" in u["reason"], u
    # 学习率敏感度的两条：单次训练的差，4 个验证 batch 量不到训练噪声（quick 种子 13 上反向），只打印测得的值与原因
    for fragment in ("对学习率更不敏感", "学习率敏感度 E_lr"):
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        u = next(u for u in undecided if fragment in u["claim"])
        assert "Δ=" in u["evidence"] and "种子 13 上反向" in u["reason"], u
    # 对照：fp32 下的 NaN/inf 发散。预期的结果是"不成立"（fp32 的 softmax 先减最大值，logit 上十万也不溢出）：
    # 断言这个预期本身——每个学习率、两个变体都没有 diverged_at，结论判 ❌；哪次真的发散了，这个测试就失败
    assert all(r["diverged_at"] is None for runs in m["runs"].values() for r in runs)
    contrast = find_conclusion(record, "出现了发散")
    assert contrast["claim"].startswith("对照：fp32") and contrast["status"] == "fails" and not contrast["holds"]
    # fp16 注意力分数：无 QK-norm 在最大学习率下有一部分注意力行溢出成 inf，有 QK-norm 一行也没有
    # （|logit| < 100 时 |q·k| < 100·√hd，离 65504 很远）；小学习率下无 QK-norm 也不溢出
    fp16 = find_conclusion(record, "fp16 存储")
    assert fp16["status"] == "holds" and fp16["noise"]["unit"] == "batches", fp16
    assert all(f > 0 for f in m["runs"][f"{off} @ {hi}"][0]["fp16_attn_batches"])
    assert s[f"{on} @ {hi}"]["fp16_attn_overflow"] == 0 and s[f"{off} @ {lo}"]["fp16_attn_overflow"] == 0
    assert fp16["noise"]["mean_delta"] == pytest.approx(s[f"{off} @ {hi}"]["fp16_attn_overflow"])
    assert "QK-norm vs none" in stdout


@pytest.mark.experiment
def test_exp2_yarn_scale_factors_and_context_extension(tmp_path, experiment_env):
    record, _ = run_quick_experiment(EXPERIMENTS / "exp2_yarn_versions.py", tmp_path, experiment_env)
    m = record["metrics"]
    curves = m["scale_curves"]
    m2, m3 = curves["minimind2 default"], curves["minimind3 default"]
    # 两代的真实 head_dim 与默认 factor
    assert (m2["head_dim"], m2["rope_scaling"]["factor"]) == (64, 4)
    assert (m3["head_dim"], m3["rope_scaling"]["factor"]) == (96, 16)
    # minimind-3：最高频一对恰好不动，最低频恰好 1/s；缩放系数随维度单调不增
    assert m3["scale"][0] == 1.0 and m3["scale"][-1] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(m3["scale"], m3["scale"][1:]))
    # MiniMind2：高频区也被缩放（不为 1 也不为 1/s），低频区 1/s；与同 head_dim/factor 的 minimind-3 不同
    same2, same3 = np.array(curves["minimind2 @hd64 s4"]["scale"]), np.array(curves["minimind3 @hd64 s4"]["scale"])
    assert ((same2 < 1) & (same2 > 0.25 + 1e-6)).sum() >= 5
    assert np.abs(same2 - same3).max() > 0.3
    # cos/sin 表与缩放函数一致；minimind-3 不用论文的 mscale
    assert m2["table_max_abs_err"] < 1e-5 and m3["table_max_abs_err"] < 1e-5
    assert m3["attention_factor"] == 1.0 and m3["paper_mscale"] == pytest.approx(0.1 * math.log(16) + 1)
    # 在 64 上训练、读 256：直接外推变差；minimind-3 的 YaRN 比直接外推和 MiniMind2 的 YaRN 都好；PI 最差。
    # （MiniMind2 的 YaRN 是否胜过直接外推随种子变：种子 7 的 quick 运行里它更差，所以不断言。）
    loss = {k: v["mean"] for k, v in m["loss_at_long_len"].items()}
    assert loss["plain"] > m["reference_loss_at_train_len"]["mean"] + 0.1
    assert loss["yarn minimind3"] < min(loss["plain"], loss["yarn minimind2"])
    assert loss["pi"] == max(loss.values())
    # 比较结论经噪声检验（单种子：同一批 32 个窗口上逐窗口配对）且必须成立
    for fragment in ("直接外推到", "至少一种 YaRN", "比 MiniMind2 的 YaRN 好"):
        c = find_conclusion(record, fragment)
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and c["noise"]["n"] == m["n_windows"], c
    # mscale 的效应（约 0.01）只在窗口噪声下可分辨，换种子的噪声要看完整模式：这里只要求它经过了噪声检验
    assert find_conclusion(record, "加上论文的 mscale")["noise"]["unit"] == "batches"
    # 确定性的结论（公式与表）：必须成立
    for fragment in ("让最高频维度保持不变", "两代公式给出不同的缩放系数", "cos/sin 表与两个缩放函数一致", "不用论文的注意力温度"):
        assert find_conclusion(record, fragment)["status"] == "holds", fragment


@pytest.mark.experiment
@pytest.mark.parametrize("seed", [42, 1])
def test_exp3_moe_equal_active_params_and_aux_loss_balances(tmp_path, experiment_env, seed):
    from modules.common.noise import compare_runs

    record, stdout = run_quick_experiment(EXPERIMENTS / "exp3_moe_routing.py", tmp_path, experiment_env,
                                          extra_args=("--seed", str(seed)))
    m = record["metrics"]
    params, s = m["params"], m["summary"]
    # 激活参数相同（差别只有路由器的 E×H 权重），总参数 MoE 大得多
    hidden = m["model"]["hidden_size"]
    for v in params:
        assert abs(params[v]["active"] - params["dense"]["active"]) <= 2 * 4 * hidden
    assert params["moe3 top1 +aux"]["total"] > 2 * params["dense"]["total"]
    # 真实尺寸：minimind-3 MoE 总参数约 198M、激活约 64M（≈ 稠密 minimind-3），MiniMind2-26M ≈ 25.8M
    real = m["real_sizes"]
    assert real["minimind-3-MoE 198M-A64M"]["total"] == pytest.approx(198.4e6, rel=0.01)
    assert real["minimind-3-MoE 198M-A64M"]["active"] == pytest.approx(real["minimind-3 64M"]["total"], rel=0.01)
    assert real["MiniMind2-Small 26M"]["total"] == pytest.approx(25.8e6, rel=0.01)
    # 去掉 aux loss：minimind-3 的门（路由器根本学不动）与 MiniMind2 的门（富者愈富）负载都明显更不均衡
    for on, off in (("moe3 top1 +aux", "moe3 top1 no-aux"), ("moe2-gate top1 +aux", "moe2-gate top1 no-aux")):
        assert s[off]["norm_entropy"] < s[on]["norm_entropy"] - 0.05
        assert s[off]["max_share"] > s[on]["max_share"] + 0.1
        c = find_conclusion(record, "minimind-3 的门" if on.startswith("moe3") else "MiniMind2 的门")
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches", c
    for v in ("moe3 top1 +aux", "moe2-gate top1 +aux", "moe3 shared+top1 +aux"):
        assert s[v]["norm_entropy"] > 0.9 and s[v]["max_share"] < 0.45 and s[v]["dead"] == 0
    assert find_conclusion(record, "都没有死专家")["status"] == "holds"
    # 容量受限的任务（背 576 条随机事实）：激活参数相同，MoE 的总 FFN 宽 4 倍，答对的事实更多
    mem = m["memory"]
    mem_params, mem_dense, mem_moe = mem["params"], mem["runs"]["dense"][0], mem["runs"]["moe3 top1 +aux"][0]
    assert abs(mem_params["moe3 top1 +aux"]["active"] - mem_params["dense"]["active"]) <= 4 * mem["model"]["hidden_size"]
    assert mem_params["moe3 top1 +aux"]["total"] > 1.4 * mem_params["dense"]["total"]
    for run in (mem_dense, mem_moe):
        assert len(run["correct"]) == mem["n_facts"] == mem["n_a"] ** 2
        assert run["recall"] == pytest.approx(sum(run["correct"]) / len(run["correct"]))
    # 稠密学到了东西（远高于随机猜），但背不完：这是"容量受限"的前提
    assert 3 * mem["chance"] < mem_dense["recall"] < mem["full_recall"] == 0.9
    assert find_conclusion(record, "稠密背不完")["status"] == "holds"
    # MoE 多背对至少 5 个百分点；噪声检验按事实配对，从逐条事实的对错独立重算
    assert mem_moe["recall"] > mem_dense["recall"] + 0.05
    expected = compare_runs([mem_moe["recall"]], [mem_dense["recall"]], "greater", mem_moe["correct"], mem_dense["correct"])
    capacity = find_conclusion(record, "背对的事实多于稠密")
    assert capacity["status"] == expected.status == "holds" and capacity["noise"]["unit"] == "batches", capacity
    # 每个变体的负载份额是概率分布
    for runs in m["runs"].values():
        for layer_share in runs[0]["share"].values():
            assert sum(layer_share) == pytest.approx(1.0)
    # 学习曲线：10 个验证点，逐点的差距 = MoE − 稠密
    curve = m["curve"]
    dense, moe = curve["runs"]["dense"][0], curve["runs"]["moe3 top1 +aux"][0]
    assert len(curve["val_steps"]) == 10 and curve["val_steps"][-1] == m["steps"]
    assert curve["gaps"][0] == pytest.approx([a - b for a, b in zip(moe["val_curve"], dense["val_curve"])])
    # 数据受限的对照：quick 只训练 200 步，MoE 的专家各只见到约 1/4 的 token，大多还在"落后"阶段（完整模式 1500 步才追平）。
    # 这两条比较在 quick 种子之间翻转（对照：42、1、11 上 ❌，7 上 ✅；差距变小：42、1 上 ❔，7、11 上 ✅），quick 不判定
    # （quick_reason），只打印测量值；这里核对它们不在结论里，而在 quick_undecided 里，带从逐 batch 验证 loss 重算的 Δ
    undecided = {u["claim"]: u for u in m["quick_undecided"]}
    assert len(undecided) == 2 == stdout.count("quick 模式不判定")
    assert not [c for c in record["conclusions"] if "验证 loss 低于稠密" in c["claim"] or "差距随训练变小" in c["claim"]]
    contrast = next(u for claim, u in undecided.items() if "验证 loss 低于稠密" in claim)
    expected = compare_runs([moe["val_loss"]], [dense["val_loss"]], "less", moe["val_batches"], dense["val_batches"])
    assert contrast["claim"].startswith("对照：") and expected.describe() in contrast["evidence"]
    mid = curve["mid_index"]
    gap_batches = {j: [a - b for a, b in zip(moe["val_curve_batches"][j], dense["val_curve_batches"][j])] for j in (mid, -1)}
    expected = compare_runs([curve["gaps"][0][-1]], [curve["gaps"][0][mid]], "less", gap_batches[-1], gap_batches[mid])
    gap = next(u for claim, u in undecided.items() if "差距随训练变小" in claim)
    assert expected.describe() in gap["evidence"]
    # 共享专家版不差于宽专家版（非劣界在看结果前定为 0.05 nats）：从逐 batch 验证 loss 重算，并断言不等式本身
    margin = m["shared_margin"]
    assert margin == 0.05
    shared_run, wide_run = m["runs"]["moe3 shared+top1 +aux"][0], m["runs"]["moe3 top1 +aux"][0]
    expected = compare_runs([shared_run["val_loss"]], [wide_run["val_loss"] + margin], "less", shared_run["val_batches"],
                            [x + margin for x in wide_run["val_batches"]])
    shared = find_conclusion(record, "共享专家")
    assert shared["status"] == expected.status == "holds" and shared["noise"]["unit"] == "batches", shared
    assert s["moe3 shared+top1 +aux"]["val_loss"] < s["moe3 top1 +aux"]["val_loss"] + margin
    assert "Learning curve" in stdout


@pytest.mark.parametrize("script, args, flag", [
    ("exp1_qk_norm.py", ["--steps", "5"], "--steps"),
    ("exp2_yarn_versions.py", ["--train-len", "4"], "--train-len"),
    ("exp3_moe_routing.py", ["--ffn-size", "7"], "--ffn-size"),
])
def test_experiments_reject_bad_arguments(tmp_path, script, args, flag):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", *args, "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert flag in proc.stderr and "Traceback" not in proc.stderr
