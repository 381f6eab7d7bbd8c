"""02-architecture/01-residual-connection 模块：两个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment
from modules.common.noise import noninferior

EXPERIMENTS = REPO_ROOT / "modules" / "02-architecture" / "01-residual-connection" / "experiments"


def run_quick(script_name, tmp_path, env, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


@pytest.mark.experiment
def test_exp1_residual_trains_and_keeps_gradients_balanced(tmp_path, experiment_env):
    record, stdout = run_quick("exp1_with_vs_without.py", tmp_path, experiment_env)
    m = record["metrics"]
    layers = m["model"]["num_layers"]
    val = {name: v["mean"] for name, v in m["val_loss"].items()}
    # 有残差的模型训练得动，没残差的停在一元模型熵附近
    assert val["residual"] < val["no residual"] - 0.3, val
    assert abs(val["no residual"] - m["unigram_entropy"]) < 0.3, (val, m["unigram_entropy"])
    assert val["residual"] < m["unigram_entropy"] - 0.3

    # 初始化时：有残差各层梯度同一量级（不到一个数量级）；没残差（有 RMSNorm）层间相差十倍以上，且第 0 层最大。
    # issue 19：旧的界 < 5 比"同一量级"严，quick 种子 11 上 12 层是 5.11；21 个种子上有残差 2.10–5.13、没残差 20.2–57.3
    res, nores = m["init"]["residual"]["grad_per_layer"], m["init"]["no residual"]["grad_per_layer"]
    assert len(res) == len(nores) == layers
    assert max(res) / min(res) < 10 < max(nores) / min(nores)
    assert max(nores) / min(nores) > 10 * (max(res) / min(res))
    assert nores[0] == max(nores) and nores[0] > 10 * res[0]
    # 连 norm 也去掉：经典的梯度消失
    assert max(m["init"]["no residual, no norm"]["grad_per_layer"]) < 1e-6
    # 训练中：没残差的第 0 层梯度坍缩，有残差的没有
    assert m["grad_end"]["residual"]["layer0"] > 100 * m["grad_end"]["no residual"]["layer0"]
    # 深度扫描：没残差的失衡随深度变大
    spread, depths = m["depth_sweep"]["spread"], m["depth_sweep"]["depths"]
    assert spread["no residual"][-1] > 100 * spread["no residual"][0]
    # 有残差时 spread 也随深度变大，但慢于线性（log-log 斜率 < 1；理论 ≈ 0.5）。issue 19：种子 7 的 24 层 spread 是 5.3，
    # 旧的"始终 < 5 倍"是个随手定的界；斜率在种子 42/1/7/2/3 上是 0.47/0.52/0.65/0.38/0.35，无残差 2.85–3.46
    def slope(v):
        return math.log(v[-1] / v[0]) / math.log(depths[-1] / depths[0])

    assert slope(spread["residual"]) < 1 < slope(spread["no residual"]), spread
    assert find_conclusion(record, "只随深度缓慢变大")["holds"] is True
    assert find_conclusion(record, "是深度把无残差模型弄坏的")["holds"] is True

    # 训练结果的比较经噪声检验（单种子：同一批 8 个验证 batch、最后 10% 的训练步逐步配对）且必须成立
    for fragment in ("有残差的模型验证 loss 明显更低", "停在一元模型熵附近", "第 0 层的梯度已经坍缩"):
        c = find_conclusion(record, fragment)
        assert c["status"] == "holds" and c["noise"]["unit"] == "batches" and c["noise"]["n"] >= 8, c
    # 初始化时的梯度对给定种子和探针 batch 是确定的：逐个种子检查的结论（种子 42/1/7 的 quick 运行里都成立）
    for fragment in ("同一量级", "梯度严重失衡", "教科书式的梯度消失"):
        assert find_conclusion(record, fragment)["holds"] is True, fragment
    assert "unigram entropy" in stdout


@pytest.mark.experiment
def test_exp2_stream_grows_and_scaled_init_tames_it(tmp_path, experiment_env, char_unigram_entropy):
    record, stdout = run_quick("exp2_residual_stream.py", tmp_path, experiment_env)
    m = record["metrics"]
    layers = m["model"]["num_layers"]
    untrained = m["anatomy"]["untrained"]
    assert len(untrained["stream_rms"]) == layers + 1 and len(untrained["attn_write"]) == layers
    # 默认初始化：主干 RMS 在最后一块之后大于第一块之后（累加和）
    assert untrained["stream_rms"][-1] > 1.5 * untrained["stream_rms"][1]
    # 初始化增长：默认随深度单调变大；scaled_init 每个深度都更小，最深处差距明显
    growth = m["init_growth"]["mean"]
    default, scaled = growth["default init"], growth["scaled init"]
    assert all(b > a for a, b in zip(default, default[1:])), default
    assert all(s < d for s, d in zip(scaled, default)), (scaled, default)
    assert default[-1] > 2 * scaled[-1]
    # 两种初始化都学到了字符频率以外的东西（明显低于一元熵，约 3.31）
    assert all(v["mean"] < char_unigram_entropy - 0.3 for v in m["val_loss"].values()), m["val_loss"]

    assert find_conclusion(record, "untrained 模型最后一块之后")["holds"] is True
    assert find_conclusion(record, "层数越多")["holds"] == all(b > a for a, b in zip(default, default[1:]))
    assert find_conclusion(record, "scaled_init（0.02/√(2L)）把初始化时的主干增长压小")["holds"] is True
    # "scaled_init 没有明显的 loss 优势"quick 不判定：120 步时两次单独训练的差随种子在 −0.09～+0.12 之间
    # （scaled − default，种子 42 / 1 / 7 / 5：+0.056 / −0.021 / +0.117 / −0.085），是训练噪声，批次噪声量不到；
    # 脚本只打印这个差，按种子配对的检验在完整模式里（test_exp2_reference_scaled_init_verdict）
    assert not [c for c in record["conclusions"] if "scaled_init 没有带来明显的 loss 优势" in c["claim"]]
    undecided = record["metrics"]["quick_undecided"]
    assert len(undecided) == 1 and "scaled_init 没有带来明显的 loss 优势" in undecided[0]["claim"], undecided
    assert "scaled" in undecided[0]["evidence"] and "+0.056/−0.021/+0.117/−0.085" in undecided[0]["reason"], undecided
    assert stdout.count("quick 模式不判定") == 1 and "判定见完整模式" in stdout, stdout[-2000:]
    assert find_conclusion(record, "主干是累加和：trained 模型")["status"] == "holds"
    assert find_conclusion(record, "第 0 块写得最多")["status"] == "holds"


def test_exp2_reference_scaled_init_verdict():
    """提交的完整模式参考结果：scaled_init 的 loss 优势用"不差于"检验（界 0.05，按 3 个种子配对）判定，判定由记录的
    每个种子的验证 loss 重新算出。8 层时两者之差在训练噪声以内（种子 42–44 与 1–3 都是"未确立"），断言它没有被判为
    "不成立"（即 scaled_init 没有超出噪声地好 0.05 以上）。"""
    record = json.loads((EXPERIMENTS / "results" / "reference" / "exp2_residual_stream.json").read_text(encoding="utf-8"))
    assert record["metadata"]["mode"] == "full" and len(record["metadata"]["seeds"]) == 3
    runs = {name: v["runs"] for name, v in record["metrics"]["val_loss"].items()}
    matches = [c for c in record["conclusions"] if "scaled_init 没有带来明显的 loss 优势" in c["claim"]]
    assert len(matches) == 1 and "0.05" in matches[0]["claim"], record["conclusions"]
    c = matches[0]
    verdict = noninferior(runs["default init"], runs["scaled init"], 0.05, "less")
    assert c["status"] == verdict.status != "fails", (c, runs)
    assert c["noise"]["unit"] == "seeds" and c["noise"]["one_sided"] and c["noise"]["margin"] == 0.05, c


@pytest.mark.parametrize("script", ["exp1_with_vs_without.py", "exp2_residual_stream.py"])
def test_rejects_too_few_steps(tmp_path, script):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--steps", "3",
                           "--output-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert "--steps" in proc.stderr and "Traceback" not in proc.stderr
