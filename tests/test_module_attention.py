"""03-attention 的实验 2、3：--quick 在子进程里运行，检查测得的关键效应。"""

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "01-foundation" / "03-attention" / "experiments"


def run_quick(name, tmp_path, env):
    return run_quick_experiment(EXPERIMENTS / name, tmp_path, env)[0]


def conclusion(record, fragment):
    return find_conclusion(record, fragment)


@pytest.mark.experiment
def test_attention_exp2_scaling_and_masking(tmp_path, experiment_env):
    record = run_quick("exp2_scaling_and_masking.py", tmp_path, experiment_env)
    m = record["metrics"]
    jac = m["softmax_jacobian"]
    dims = sorted(jac, key=int)
    assert jac[dims[-1]]["unscaled"]["jacobian_norm"] < 0.5 * jac[dims[0]]["unscaled"]["jacobian_norm"]
    base, unscaled, leaky = (m["runs"][n][0] for n in ("scaled + causal (MiniMind)", "unscaled (qk_scale=1)",
                                                       "no causal mask"))
    # 没有 mask：看得到答案时 loss 极低，只给前缀时比均匀瞎猜还差
    assert leaky["teacher_forced"] < 0.5 * base["teacher_forced"]
    assert leaky["honest"] > m["uniform_loss"] > base["honest"]
    assert abs(base["teacher_forced"] - base["honest"]) < 0.05
    # 不缩放：训练后注意力更尖
    assert unscaled["attn_entropy"] < base["attn_entropy"]
    assert conclusion(record, "低得可疑")["holds"] and conclusion(record, "只给前缀")["holds"]
    for fragment in ("雅可比随 d 变小", "两种评估一致"):
        assert conclusion(record, fragment)["status"] == "holds", fragment
    # √d 的作用要在它的前提下看（issue 19）：q、k 分量方差约 1 的 Xavier 初始化，不缩放的 logit 标准差约 8，
    # 初始化时注意力就已饱和（熵 0.55–0.58 vs 2.84–2.90），训练结束的 loss 更差（quick 种子 42/1/7 都成立，按 8 个验证 batch 配对）
    xavier, xavier_unscaled = (m["runs"][n][0] for n in ("scaled, Xavier init", "unscaled, Xavier init"))
    assert xavier_unscaled["attn_entropy_init"] < 0.5 * xavier["attn_entropy_init"]
    assert abs(unscaled["attn_entropy_init"] - base["attn_entropy_init"]) < 0.2  # 0.02 初始化：两者都接近均匀
    assert conclusion(record, "初始化时，Xavier 下不缩放")["holds"]
    c = conclusion(record, "Xavier 初始化，√d 推导的前提")
    assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and xavier_unscaled["final_val"] > xavier["final_val"], c


@pytest.mark.experiment
def test_attention_exp3_multihead(tmp_path, experiment_env):
    import math

    record = run_quick("exp3_multihead_attention.py", tmp_path, experiment_env)
    lm = record["metrics"]["lm"]
    mha, gqa, mqa = (lm[n][0] for n in ("4 heads (MHA)", "4 heads, 2 KV (GQA)", "4 heads, 1 KV (MQA)"))
    assert gqa["kv_bytes"] * 2 == mha["kv_bytes"] == mqa["kv_bytes"] * 4
    assert mqa["params"] < gqa["params"] < mha["params"]  # K/V 投影变小
    assert lm["1 head"][0]["params"] == mha["params"]  # 单头与多头同参数量
    assert all(r[0]["val_loss"] < math.log(65) - 1.0 for r in lm.values())  # 都学到了东西
    assert all(len(r[0]["val_batches"]) == 8 for r in lm.values())  # 同一批 8 个验证 batch，逐 batch 配对
    # 比较经噪声检验（单种子：验证 loss 按 batch 配对；头分工按后一半 probe batch 配对，选头只用前一半）。
    # 这三条在种子 42/1/7 的 quick 运行里都成立
    for fragment in ("4 个头的验证 loss 低于 1 个头", "GQA 用一半", "分了工"):
        c = conclusion(record, fragment)
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and c["noise"]["n"] == 8, c
    # "比 MHA 高不到 0.05"是单侧的不差于检验：比 MHA 好不算违背（issue 19：双侧的等价界在 GQA 好 0.057 时判为不成立）
    gqa_ok = conclusion(record, "GQA 用一半")
    assert gqa_ok["noise"]["one_sided"] and gqa["val_loss"] - mha["val_loss"] < 0.05, (gqa, mha)
    # MQA：种子 42、1、3 成立，种子 7 差 0.041、区间伸出界外（未确立）——只要求不是"不成立"
    mqa_ok = conclusion(record, "MQA 用四分之一")
    assert mqa_ok["status"] != "fails" and mqa_ok["noise"]["margin"] == 0.05 and mqa_ok["noise"]["one_sided"], mqa_ok
    # 分工检验可以失败：同一初始化模型用同样的方法量，max/min 接近 1
    spread = record["metrics"]["head_distance_log_spread"]
    assert abs(sum(spread["init"][0]) / len(spread["init"][0])) < 0.05
