"""04-advanced/02-inference 实验 1（KV cache 字节、MHA/GQA/MQA/MLA 的质量、MHA → GQA uptraining）：
转换函数与字节公式对照手算（毫秒级），再在子进程里跑一次默认的 --quick（从别的工作目录），
检查 JSON 里量出的字节与独立算的公式一致、打印的每条三态判定能从 JSON 里的逐批次 loss 重新算出来并且成立
（quick 的每条结论在种子 42、1、7、5 上都成立；只在完整模式里下的结论断言它们没有出现在 quick 里）。
MLA 本身（吸收形式 = 显式形式、缓存形状、与窗口/记录路径的配合）的测试在 tests/test_lab_model.py 的末尾。
"""
import json

import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from modules.common.lab_model import LabConfig, LabModel
from modules.common.noise import compare_runs, noninferior_runs

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "02-inference" / "experiments"


@pytest.fixture(scope="module")
def exp1():
    return load_experiment_module(EXPERIMENTS, "exp1_kv_cache")


def test_group_kv_heads_by_hand(exp1):
    # 4 个头、head_dim 2、hidden 3：k_proj 的第 h 个头是第 2h、2h+1 行，行值都填成 h（v_proj 填成 10h）
    k = torch.arange(4.0).repeat_interleave(2)[:, None].expand(8, 3).clone()
    sd = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 3), "model.layers.0.self_attn.k_proj.weight": k,
          "model.layers.0.self_attn.v_proj.weight": 10 * k, "model.norm.weight": torch.ones(3)}
    pooled = exp1.mean_pool_kv_heads(sd, n_kv_heads=2, n_heads=4)
    # 第 0 组 = 头 0、1（平均 0.5），第 1 组 = 头 2、3（平均 2.5）：与 repeat_kv 的分组一致（不是 0、2 / 1、3）
    assert pooled["model.layers.0.self_attn.k_proj.weight"][:, 0].tolist() == [0.5, 0.5, 2.5, 2.5]
    assert pooled["model.layers.0.self_attn.v_proj.weight"][:, 0].tolist() == [5.0, 5.0, 25.0, 25.0]
    first = exp1.group_kv_heads(sd, 4, 2, "first")
    assert first["model.layers.0.self_attn.k_proj.weight"][:, 0].tolist() == [0.0, 0.0, 2.0, 2.0]
    assert exp1.mean_pool_kv_heads(sd, 1, n_heads=4)["model.layers.0.self_attn.k_proj.weight"][:, 0].tolist() == [1.5, 1.5]
    assert torch.equal(pooled["model.norm.weight"], sd["model.norm.weight"])  # 其余参数原样
    for bad in (dict(n_kv_heads=3, n_heads=4), dict(n_kv_heads=2, n_heads=None)):
        with pytest.raises(ValueError):
            exp1.mean_pool_kv_heads(sd, **bad)
    gqa = dict(sd, **{"model.layers.0.self_attn.k_proj.weight": k[:4]})  # 已经是 GQA 的 state_dict
    with pytest.raises(ValueError):
        exp1.mean_pool_kv_heads(gqa, 1, n_heads=4)


def test_mean_pooling_identical_heads_keeps_the_model_exactly(exp1):
    # 组内的 K/V 头本来就相同时，mean-pool 后的 GQA 与原 MHA 是同一个函数；分组弄错就不相等
    torch.manual_seed(0)
    config = LabConfig(hidden_size=32, num_layers=2, n_heads=4, max_seq_len=16)
    mha = LabModel(config).eval()
    with torch.no_grad():
        for layer in mha.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                heads = proj.weight.view(2, 2, 8, 32)  # (组, 组内, hd, H)
                heads[:, 1] = heads[:, 0]
    x = torch.randint(0, 65, (2, 12))
    gqa = LabModel(LabConfig(hidden_size=32, num_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)).eval()
    gqa.load_state_dict(exp1.mean_pool_kv_heads(mha, 2), strict=True)
    assert torch.allclose(gqa(x).logits, mha(x).logits, atol=1e-6)
    mqa = LabModel(LabConfig(hidden_size=32, num_layers=2, n_heads=4, n_kv_heads=1, max_seq_len=16)).eval()
    mqa.load_state_dict(exp1.mean_pool_kv_heads(mha, 1), strict=True)
    assert not torch.allclose(mqa(x).logits, mha(x).logits, atol=1e-4)  # 两组不同的头被平均：函数变了
    # MiniMindForCausalLM 也能直接转（头数从 num_attention_heads 读）
    mm = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            num_key_value_heads=4, vocab_size=20))
    assert exp1.mean_pool_kv_heads(mm, 2)["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)


def test_cache_bytes_and_param_matching_by_hand(exp1):
    assert exp1.formula_kv_bytes(8, 2, 64, 2, 10) == 2 * 8 * 2 * 64 * 2 * 10 == 40960
    assert exp1.formula_latent_bytes(8, 256, 32, 4, 10) == 8 * 288 * 4 * 10
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (1, 7))
    mm = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                            num_key_value_heads=2, vocab_size=20))
    assert exp1.measured_kv_bytes(mm, ids) == 2 * 3 * 2 * 8 * 4 * 7  # 2·L·n_kv·hd·4 字节·T
    assert exp1.measured_kv_bytes(mm.to(torch.bfloat16), ids) == 2 * 3 * 2 * 8 * 2 * 7
    mla = LabModel(LabConfig(vocab_size=20, hidden_size=32, num_layers=3, n_heads=4, attention="mla",
                             kv_latent_dim=12, rope_head_dim=4))
    assert exp1.measured_latent_bytes(mla, ids) == 3 * (12 + 4) * 4 * 7
    # 参数对齐：H=64、4 层、4 头。GQA(n_kv=2) 每层 K/V 少 2·64·32 = 4096 个参数 → FFN 中间层 +4096/(3·64) ≈ +21
    base = LabConfig(hidden_size=64, num_layers=4, n_heads=4)
    gqa = exp1.param_matched_config(base, n_kv_heads=2)
    mqa = exp1.param_matched_config(base, n_kv_heads=1)
    assert (base.intermediate_size, gqa.intermediate_size, mqa.intermediate_size) == (192, 213, 224)
    n = LabModel(base).num_params()
    assert LabModel(mqa).num_params() == n and n - LabModel(gqa).num_params() == 4 * (4096 - 21 * 3 * 64)


@pytest.mark.experiment
def test_quick_run_measures_bytes_and_the_quality_effects(tmp_path, experiment_env, exp1):
    # 默认的 quick（150 步、uptraining 38 步）：字节与公式、每条三态判定都从 JSON 里的逐批次 loss 重算；
    # 在种子 42、1、7、5 上都成立的结论断言成立，并断言不等式本身
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp1_kv_cache.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["config"]["steps"] == 150 and m["config"]["uptrain_steps"] == 38
    sizes = {"float32": 4, "bfloat16": 2}
    shapes = {"MiniMind2-26M": (8, 64, 8), "char LM (trained)": (4, 16, 4)}  # (L, hd, n_heads)
    assert len(m["cache_bytes"]) == 12
    for row in m["cache_bytes"]:  # 公式在测试里独立重算
        L, hd, nh = shapes[row["shape"]]
        if row["attention"].startswith("MLA"):
            dc, dr = (256, 32) if row["shape"] == "MiniMind2-26M" else (32, 8)
            expected = L * (dc + dr) * sizes[row["dtype"]] * 64
        else:
            n_kv = {"MHA": nh, "GQA n_kv=2": 2, "MQA": 1}[row["attention"]]
            expected = 2 * L * n_kv * hd * sizes[row["dtype"]] * 64
        assert row["measured"] == row["formula"] == expected
    assert find_conclusion(record, "真实缓存张量的字节 = 公式")["holds"]
    params = {k: v[0] for k, v in m["params"].items()}
    assert find_conclusion(record, "总参数量与 MHA 相差")["holds"]
    assert all(abs(params[n] / params["MHA"] - 1) < 0.005 for n in ("GQA", "MQA", "MLA"))

    batches = m["val_batches_seed0"]
    assert all(len(v) == 16 for v in batches.values())
    for name, v in batches.items():  # 记录的平均 loss 就是逐批次 loss 的平均
        assert m["val_loss"][name][0] == pytest.approx(sum(v) / 16)
    margin = m["config"]["noninferiority_margin"]

    def mean(name):
        return m["val_loss"][name][0]

    def check(fragment, verdict):  # 判定与 JSON 里的数字重算的一致，并且成立
        c = find_conclusion(record, fragment)
        assert c["status"] == verdict.status == "holds", (fragment, verdict)

    def cmp(a, b, direction):
        return compare_runs([mean(a)], [mean(b)], direction, batches[a], batches[b])

    def noninferior(a, b):
        return noninferior_runs([mean(a)], [mean(b)], margin, "less", batches[a], batches[b])

    # quick 的 150 步里各模型离开平台期有早有晚：MQA 反而更好（对照）；同参数量的三条质量结论只在完整模式里下
    check("对照：quick（150 步", cmp("MQA", "MHA", "less"))
    assert mean("MQA") < mean("MHA")
    for fragment in ("(n_kv=2，cache 为 MHA 的 1/2) 的验证 loss 不比 MHA", "的验证 loss 高于 MHA（Shazeer", "MLA（cache 为 MHA 的"):
        assert not [c for c in record["conclusions"] if fragment in c["claim"]], fragment
    check("刚用 mean-pool 转成 GQA", cmp("GQA mean-pool converted", "MHA", "greater"))
    assert mean("GQA mean-pool converted") > mean("MHA") + 0.1
    # 刚转成 MQA 时谁好：quick 里随种子变，只在完整模式里下结论（对照）
    assert not [c for c in record["conclusions"] if "还没 uptraining" in c["claim"]]
    # 转成 MQA 并 uptraining 之后 mean-pool 好于第一个头：quick 不判定（种子 3 上反向，见 QUICK_REASON_MQA_UPTRAIN），只打印
    (u,) = [u for u in m["quick_undecided"] if "mean-pool 好于只留第一个头（Ainslie 2023 图 5）" in u["claim"]]
    expected = cmp("MQA mean-pool uptrained", "MQA first-head uptrained", "less")
    assert expected.describe() in u["evidence"] and "种子 3 上反向" in u["reason"], u
    assert not [c for c in record["conclusions"] if "mean-pool 好于只留第一个头" in c["claim"]]
    assert stdout.count("quick 模式不判定") == len(m["quick_undecided"]) == 1
    check("好于同结构从头训练 38 步", cmp("GQA mean-pool uptrained", "GQA scratch uptrained", "less"))
    assert mean("GQA mean-pool uptrained") < mean("GQA scratch uptrained")
    # 单侧非劣界（原来的双侧界在 quick 种子 11 上因 GQA 更好 0.064 而失败，见脚本 docstring 的修正）
    check("的 GQA 不比原 MHA 差", noninferior("GQA mean-pool uptrained", "MHA"))
    assert mean("GQA mean-pool uptrained") < mean("MHA") + margin
    assert "KV cache：真实缓存张量的字节 vs 公式" in stdout


def test_reference_noninferiority_rows_recompute():
    """完整参考结果（种子 42–44）的三条单侧非劣结论（GQA、MLA、uptraining 后的 GQA 不比 MHA 差 0.05 以上）
    由记录的各种子验证 loss 重算，状态与记下的相同；uptraining 后的 GQA 与从头训练的 GQA 在这组种子上成立。"""
    record = json.loads((EXPERIMENTS / "results" / "reference" / "exp1_kv_cache.json").read_text(encoding="utf-8"))
    val = record["metrics"]["val_loss"]
    margin = record["metrics"]["config"]["noninferiority_margin"]
    for name, fragment in (("GQA", "GQA(n_kv=2，cache 为 MHA 的 1/2) 的验证 loss 不比 MHA"),
                           ("MLA", "MLA（cache 为 MHA 的"),
                           ("GQA mean-pool uptrained", "的 GQA 不比原 MHA 差")):
        verdict = noninferior_runs(val[name], val["MHA"], margin, "less")
        assert verdict.n == 3 and find_conclusion(record, fragment)["status"] == verdict.status, (name, verdict.describe())
    for name in ("GQA", "GQA mean-pool uptrained"):
        assert noninferior_runs(val[name], val["MHA"], margin, "less").status == "holds", name
