"""modules/common/lab_model.py：默认开关 = MiniMind（逐位相同），每个开关真的改变了模型，记录工具可用。"""
import math

import pytest
import torch

from model import MiniMindForCausalLM
from modules.common.lab_model import (
    LabConfig,
    LabModel,
    alibi_slopes,
    layer_grad_norms,
    record_activations,
    record_attention,
    sinusoidal_table,
)

SMALL = dict(vocab_size=50, hidden_size=64, num_layers=3, n_heads=4, max_seq_len=32)


def ids(B=2, T=16, seed=0):
    return torch.randint(0, SMALL["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_lab_model_default_switches_are_minimind(n_kv_heads):
    config = LabConfig(**SMALL, n_kv_heads=n_kv_heads)
    torch.manual_seed(0)
    minimind = MiniMindForCausalLM(config.to_minimind_config()).eval()
    with torch.no_grad():  # 随机化 norm 权重，放错位置的 norm 会被发现
        for name, p in minimind.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    lab = LabModel(config).eval()
    lab.load_state_dict(minimind.state_dict(), strict=True)  # 参数名、形状完全一致
    x = ids()
    assert torch.equal(lab(x).logits, minimind(x).logits)
    assert torch.equal(lab(x, labels=x).loss, minimind(x, labels=x).loss)
    # 反方向也成立
    minimind2 = MiniMindForCausalLM(config.to_minimind_config()).eval()
    minimind2.load_state_dict(lab.state_dict(), strict=True)
    assert torch.equal(minimind2(x).logits, lab(x).logits)
    # 记录注意力的显式路径与 SDPA 路径数值一致
    with record_attention(lab):
        recorded = lab(x).logits
    assert torch.allclose(recorded, lab(x).logits, atol=1e-5)


SWITCHES = [dict(norm="layernorm"), dict(norm="none"), dict(norm_position="post"), dict(pos_encoding="learned"),
            dict(pos_encoding="sinusoidal"), dict(pos_encoding="alibi"), dict(pos_encoding="none"),
            dict(residual=False), dict(ffn="gelu"), dict(ffn="relu"), dict(qk_scale="one"),
            dict(n_kv_heads=1)]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_lab_model_each_switch_changes_the_model(switch):
    torch.manual_seed(0)
    base = LabModel(LabConfig(**SMALL)).eval()
    torch.manual_seed(0)
    variant = LabModel(LabConfig(**SMALL, **switch)).eval()
    shared = {k: v for k, v in base.state_dict().items()
              if k in variant.state_dict() and variant.state_dict()[k].shape == v.shape}
    variant.load_state_dict(shared, strict=False)  # 尽量相同的权重，只差这一个开关
    x = ids()
    out = variant(x, labels=x)
    assert out.logits.shape == (2, 16, SMALL["vocab_size"]) and torch.isfinite(out.loss)
    assert not torch.allclose(out.logits, base(x).logits, atol=1e-4)
    # 每个变体都保持因果性
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % SMALL["vocab_size"]
    assert torch.allclose(variant(changed).logits[:, :9], out.logits[:, :9], atol=1e-5)


def test_lab_model_untied_embeddings_are_separate():
    tied, untied = LabModel(LabConfig(**SMALL)), LabModel(LabConfig(**SMALL, tie_embeddings=False))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert untied.num_params() - tied.num_params() == SMALL["vocab_size"] * SMALL["hidden_size"]


def test_lab_model_param_matched_ffn():
    swiglu = LabModel(LabConfig(**SMALL)).num_params()
    gelu_matched = LabModel(LabConfig(**SMALL, ffn="gelu", ffn_param_matched=True)).num_params()
    assert abs(gelu_matched - swiglu) / swiglu < 0.01
    assert LabConfig(**SMALL, ffn="gelu").intermediate_size == 4 * SMALL["hidden_size"]
    assert LabConfig(**SMALL, ffn="relu", ffn_ratio=2.0).intermediate_size == 128
    assert LabConfig(**SMALL, ffn="relu", ffn_ratio=2.0, ffn_param_matched=True).intermediate_size == 192


def test_lab_model_rejects_unknown_switch_values():
    with pytest.raises(ValueError, match="pos_encoding"):
        LabConfig(pos_encoding="xpos")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LabConfig(n_heads=4, n_kv_heads=3)


def test_lab_model_recorders():
    model = LabModel(LabConfig(**SMALL)).train()
    x = ids()
    with record_activations(model) as acts, record_attention(model) as attn:
        loss = model(x, labels=x).loss
    assert sorted(acts) == ["layers.0", "layers.1", "layers.2"] and acts["layers.0"]["std"] > 0
    w = attn["layers.1"]
    assert w.shape == (2, 4, 16, 16)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
    assert torch.all(w.triu(1) == 0)  # 因果：看不到未来
    loss.backward()
    norms = layer_grad_norms(model)
    assert {"embed", "layers.0", "layers.2", "norm"} <= set(norms) and all(v > 0 for v in norms.values())
    # 退出上下文后记录关闭
    assert not any(layer.self_attn.record for layer in model.model.layers)


def test_lab_model_position_helpers():
    table = sinusoidal_table(10, 8)
    assert torch.allclose(table[0, 1::2], torch.ones(4)) and torch.allclose(table[0, 0::2], torch.zeros(4))
    slopes = alibi_slopes(8)
    assert slopes[0].item() == pytest.approx(2 ** -1) and slopes[-1].item() == pytest.approx(2 ** -8)
    assert len(alibi_slopes(6)) == 6 and torch.all(alibi_slopes(6) > 0)


def test_lab_model_initial_loss_near_uniform():
    model = LabModel(LabConfig(**SMALL))
    x = ids()
    assert abs(model(x, labels=x).loss.item() - math.log(SMALL["vocab_size"])) < 0.3
