"""03-training/04-lora 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "04-lora" / "experiments"


def run_quick(script_name, tmp_path, env, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def lora_unit(model: dict, targets) -> int:
    """rank 1 时 targets 上的 LoRA 参数量：每个 Linear 贡献 in + out，按层数累加（由模型尺寸独立算出）。"""
    h = model["hidden_size"]
    kv = h // model["num_attention_heads"] * model["num_key_value_heads"]
    inter = 64 * ((int(h * 8 / 3) + 63) // 64)  # MiniMind 的 FFN 中间维：8/3·h 向上取整到 64 的倍数
    sizes = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
             "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h}
    return model["num_hidden_layers"] * sum(sizes[t] for t in targets)


@pytest.mark.parametrize("script, bad", [("exp1_lora_rank.py", ["--ranks", "0", "4"]),
                                         ("exp2_where_to_adapt.py", ["--finetune-steps", "0"]),
                                         ("exp3_merge_and_forget.py", ["--pretrain-steps", "-1"]),
                                         ("exp3_merge_and_forget.py", ["--replicates", "0"])])
def test_bad_arguments_give_clear_message(tmp_path, script, bad):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--output-dir", str(tmp_path), *bad],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert "必须" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.experiment
def test_exp1_lora_trains_only_adapters_and_params_scale_with_rank(tmp_path, experiment_env):
    record, stdout = run_quick("exp1_lora_rank.py", tmp_path, experiment_env)
    m = record["metrics"]
    v = m["variants"]
    ranks = m["config"]["ranks"]
    assert set(v) == {"full FT"} | {f"LoRA r={r}" for r in ranks} and len(ranks) >= 2
    unit = lora_unit(m["config"]["model"], ["q_proj", "o_proj"])  # MiniMind 默认：方阵 Linear
    for r in ranks:
        lora = v[f"LoRA r={r}"]
        assert lora["frozen_unchanged"] is True  # 基座权重逐位不变
        assert lora["frozen_params"] == m["total_params"]
        assert lora["trainable_params"] == r * unit  # 与 rank 严格成正比
    assert v["full FT"]["trainable_params"] == m["total_params"]
    for name, item in v.items():  # AdamW 实测状态：exp_avg + exp_avg_sq，各 4 字节
        assert item["optimizer_state_bytes"] == 8 * item["trainable_params"], name
        assert item["step_ms"]["mean"] > 0
    # 每种微调都让留出对话的 loss 明显低于基座
    base_new = m["base"]["new_loss"]["mean"]
    assert all(item["new_loss"]["mean"] < base_new - 0.2 for item in v.values())
    assert find_conclusion(record, "逐位不变")["holds"] is True
    assert find_conclusion(record, "成正比")["holds"] is True
    assert find_conclusion(record, "AdamW 状态实测")["holds"] is True
    # 单种子：48 条新任务留出对话逐条配对，过共享噪声检验。"最大 rank 好于 rank 1"在种子 42、1、7 的 quick 都成立；
    # "全参数好于所有 LoRA"在 42、1 成立、7 未确立（Δ=0.194 < 2·SE=0.207）：quick 只要求它不反向，完整模式按种子检验
    assert find_conclusion(record, "最大 rank")["status"] == "holds"
    assert find_conclusion(record, "全参数微调的新任务 loss 低于")["status"] != "fails"
    # 计时结论（交替计时、逐窗口配对）：不写"必须成立"的计时测试（负载会让它时好时坏），只要求没有反向：
    # LoRA r=1 每步快到 2 倍以上、超出噪声，就说明基座没冻住或计时方法错了（种子 42、1、7 的 quick 都成立，1.21–1.28×）
    speed = find_conclusion(record, "每步的加速不到")
    assert speed["noise"]["unit"] == "windows" and speed["status"] != "fails", speed
    assert m["timing"]["method"].startswith("alternating")
    assert "AdamW state KiB" in stdout

def paired_margin(a, b):
    """声明"a 比 b 低"时逐条配对差值 b − a 的 (均值, 2·SE)：quick 单种子时噪声检验用的量，在测试里独立重算。"""
    deltas = [y - x for x, y in zip(a, b)]
    n = len(deltas)
    mean = sum(deltas) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1) / n)
    return mean, 2 * se


@pytest.mark.experiment
def test_exp2_all_linear_fits_best_at_equal_budget(tmp_path, experiment_env):
    record, stdout = run_quick("exp2_where_to_adapt.py", tmp_path, experiment_env)
    m = record["metrics"]
    p = m["placements"]
    model = m["config"]["model"]
    assert set(p) == {"q,v", "q,o (MiniMind default)", "q,k,v,o", "attn+FFN"}
    budget = m["budget_params"]
    assert budget == m["config"]["budget_rank"] * lora_unit(model, ["q_proj", "v_proj"])
    for name, item in p.items():
        assert item["trainable_params"] == item["rank"] * lora_unit(model, item["targets"]), name
        assert abs(item["trainable_params"] / budget - 1) <= 0.05, name
        assert item["new_loss"]["mean"] < m["base"]["new_loss"]["mean"] - 0.5, name  # 每种位置都学到了新任务
        assert len(item["new_batches_first_seed"]) == 48 and len(item["fit_batches_first_seed"]) == 230, name
    new = {name: item["new_loss"]["mean"] for name, item in p.items()}
    assert m["ranking"] == sorted(new, key=new.get)
    assert " < ".join(m["ranking"]) in stdout
    assert find_conclusion(record, "相差不超过 5%")["holds"] is True

    # 容量：拟合 loss（230 条训练对话逐条配对）。attn+FFN 好于 q,v、q,o 超出 2·SE，在种子 42、1、7 的 quick 都成立；
    # 好于 q,k,v,o 在 quick（120 步，离容量上限还远）里不稳：种子 1、7 成立，42 未确立（逐条对话 Δ=−0.008，
    # 2·SE=0.014）。所以 quick 只要求整条结论不反向；完整模式（200 步）按种子检验，见 README 的逐种子表
    fit = {name: item["fit_batches_first_seed"] for name, item in p.items()}
    for name in ("q,v", "q,o (MiniMind default)"):
        gain, bar = paired_margin(fit["attn+FFN"], fit[name])
        assert gain > bar, (name, gain, bar)
    assert find_conclusion(record, "训练对话的拟合 loss")["status"] != "fails"
    # 泛化：留出对话（48 条逐条配对）上 attn+FFN 好于 q,v 超出噪声（种子 42、1、7 都成立）；"好于其余每一种"quick 不判定
    # （原因见 exp2_where_to_adapt.py 的 QUICK_HELDOUT_BEST）：不是结论，记进 quick_undecided，打印了逐条对话的差与噪声
    held = {name: item["new_batches_first_seed"] for name, item in p.items()}
    gain, bar = paired_margin(held["attn+FFN"], held["q,v"])
    assert gain > bar, (gain, bar)
    assert not [c for c in record["conclusions"] if "留出对话的新任务 loss（泛化）" in c["claim"]]
    undecided = m["quick_undecided"]
    assert len(undecided) == 1 and "留出对话的新任务 loss（泛化）" in undecided[0]["claim"], undecided
    assert "n=48" in undecided[0]["evidence"] and undecided[0]["reason"], undecided
    assert stdout.count("quick 模式不判定") == 1
    gain, bar = paired_margin(held["q,k,v,o"], held["q,v"])
    assert find_conclusion(record, "q,k,v,o 全部挂")["status"] == "holds" and gain > bar, (gain, bar)
    # 远小于：逐条对话 (基座 − 最好) − 5 × (最差 − 最好) 超出噪声地为正
    best, worst = m["ranking"][0], m["ranking"][-1]
    base = m["base"]["new_batches_first_seed"]
    factor = m["config"]["spread_factor"]
    margin, bar = paired_margin([factor * (w - b) for w, b in zip(held[worst], held[best])],
                                [x - b for x, b in zip(base, held[best])])
    assert find_conclusion(record, "远小于")["status"] == "holds" and margin > bar, (margin, bar)


@pytest.mark.experiment
def test_exp3_merge_is_exact_and_forgetting_is_noise_tested(tmp_path, experiment_env):
    record, stdout = run_quick("exp3_merge_and_forget.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["config"]["comparison"] == "matched steps"
    for name, merge in m["merge"].items():
        w = merge["worst"]
        assert w["adapter_vs_base"] > 0.1, name  # 适配器确实改变了输出，下面的"相等"才有意义
        # fp32 舍入按 logits 的量级算相对差（绝对差在 quick 种子 5 上已到 1.2e-5：多次微调里取最坏的一次）
        assert max(w["merged_vs_adapter"], w["unmerged_vs_adapter"]) < 1e-5 * w["logit_scale"], name
        assert w["unmerged_weight_vs_base"] < 1e-6, name
        assert all(s["all_merged"] for s in merge["per_seed"])
    v = m["variants"]
    rise = {name: item["old_rise"]["mean"] for name, item in v.items()}
    assert all(item["new_drop"]["mean"] > 0.2 for item in v.values())  # 都学到了新任务
    assert find_conclusion(record, "只差 fp32 舍入")["holds"] is True
    assert all(r < 1e-5 for r in m["merge_relative_diff"].values())
    # 每个种子、每种微调做 R 次（quick 2 次）取平均：逐段的旧任务 loss 也是 R 次的平均
    assert m["config"]["replicates"] == 2
    assert all(len(item["replicates"][0]) == 2 for item in v.values())
    assert all(item["old_rise"]["values"][0] == pytest.approx(sum(r["old_rise"] for r in item["replicates"][0]) / 2)
               for item in v.values())
    # 遗忘的三条结论 quick 不判定，只打印测得的值、指向完整参考结果（完整模式按种子配对、4 次平均，两组种子都成立）。
    # 量出来的原因（30 步、2 次平均，种子 42/1/7/5/2/3）：全参数比 r=64 多出的遗忘按 56 段逐段配对是
    # +0.071/+0.120/+0.200/+0.196/+0.105/+0.034（逐段 SE 0.060–0.077，只有 7、5 成立）；r=64 比 r=8 多出的是
    # +0.039/+0.091/+0.047/+0.060/+0.017/+0.231（SE 0.012–0.034，种子 2 未确立）。同一基座上两次微调之间，
    # 全参数 − r=64 相差 0.02–0.17、r=64 − r=8 相差到 0.10，都比逐段 SE 大：逐段检验量不到的训练噪声。
    # 比值"上升 / 下降"没有可配对的单位，单种子无从判定。
    not_judged = ["全参数微调对旧任务的遗忘大于 LoRA", "代价也高于", "rank 越大"]
    undecided = m["quick_undecided"]
    assert len(undecided) == len(not_judged), [u["claim"] for u in undecided]
    for fragment in not_judged:
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
        assert fragment in stdout, fragment
        assert next(u for u in undecided if fragment in u["claim"])["reason"], fragment
    # 两条逐段配对的记下了逐段的差与噪声；比值那条只有 1 对测量
    for fragment in ("全参数微调对旧任务的遗忘大于 LoRA", "rank 越大"):
        evidence = next(u for u in undecided if fragment in u["claim"])["evidence"]
        assert "Δ=" in evidence and "n=56" in evidence, evidence
    assert "无法估计噪声" in next(u for u in undecided if "代价也高于" in u["claim"])["evidence"]
    assert stdout.count("quick 模式不判定") == len(not_judged)
    assert [c["claim"] for c in record["conclusions"]] == [find_conclusion(record, "只差 fp32 舍入")["claim"]]
    # 打印的是 JSON 里的值（R 次平均的旧任务上升）
    assert all(f"{name} {item['old_rise']['mean']:+.3f}" in stdout for name, item in v.items())
    # 逐段的旧任务 loss 记进 JSON（完整模式按种子配对时不用；留给读者自己做逐段比较）
    assert len(v["full FT"]["old_batches_first_seed"]) == 56
    # 量级上的检查（不是判定）：全参数的旧任务上升比 LoRA r=8 多 0.05 以上，在 quick 种子 42/1/7/5/2/3 上是
    # 0.127/0.168/0.199/0.172/0.230/0.308
    assert rise["full FT"] > rise["LoRA r=8"] + 0.05
