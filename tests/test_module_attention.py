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
    # 不缩放：注意力更尖
    assert unscaled["attn_entropy"] < base["attn_entropy"]
    assert conclusion(record, "低得可疑")["holds"] and conclusion(record, "只给前缀")["holds"]


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
    assert conclusion(record, "分了工")["holds"]  # 训练后各头的注意距离比初始化时更分化
