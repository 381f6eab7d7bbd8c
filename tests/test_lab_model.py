"""modules/common/lab_model.py：默认开关 = MiniMind（逐位相同），每个开关真的改变了模型，记录工具可用。"""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from model import MiniMindForCausalLM
from modules.common.lab_model import (
    LabConfig,
    LabModel,
    alibi_slopes,
    layer_grad_norms,
    record_activations,
    record_attention,
    set_rope_scaling,
    sinusoidal_table,
    sliding_window_mask,
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


SWITCHES = [dict(norm="layernorm"), dict(norm="none"), dict(norm_position="post"), dict(norm_position="sandwich"),
            dict(parallel_block=True), dict(qk_norm=True), dict(pos_encoding="learned"),
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


def test_lab_model_scaled_init_shrinks_only_the_output_projections():
    layers = SMALL["num_layers"]
    torch.manual_seed(0)
    plain = LabModel(LabConfig(**SMALL))
    torch.manual_seed(0)
    scaled = LabModel(LabConfig(**SMALL, scaled_init=True))
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters()):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            ratio = q.std().item() / p.std().item()
            assert abs(ratio - 1 / math.sqrt(2 * layers)) < 0.1 / math.sqrt(2 * layers), name
        else:
            assert torch.equal(p, q), name


def test_lab_model_qk_norm_is_minimind3_attention():
    # qk_norm=True 的 LabModel 与同尺寸的 minimind-3 完全相同：state_dict 严格互载，logits 逐位相等
    torch.manual_seed(0)
    config = LabConfig(**SMALL, qk_norm=True)
    lab = LabModel(config).eval()
    with torch.no_grad():
        for name, p in lab.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    minimind3 = MiniMindForCausalLM(config.to_minimind_config()).eval()
    assert minimind3.config.family == "minimind3"
    minimind3.load_state_dict(lab.state_dict(), strict=True)
    x = ids()
    assert torch.equal(minimind3(x).logits, lab(x).logits)


def test_lab_model_block_layouts():
    sandwich = LabModel(LabConfig(**SMALL, norm_position="sandwich"))
    assert hasattr(sandwich.model.layers[0], "post_ffn_out_norm") and not isinstance(sandwich.model.norm, nn.Identity)
    assert isinstance(LabModel(LabConfig(**SMALL, norm_position="post")).model.norm, nn.Identity)
    with pytest.raises(ValueError, match="parallel_block"):
        LabConfig(parallel_block=True, norm_position="post")


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


# ---------------------------------------------------------------------------
# RoPE 长度外推开关：rope_scaling ∈ {None, pi, ntk, yarn} 与 set_rope_scaling
# ---------------------------------------------------------------------------
def test_rope_scaling_default_is_plain_minimind_rope():
    from model.model_minimind import precompute_freqs_cis
    from modules.common.lab_model import rope_cos_sin

    config = LabConfig(**SMALL)
    assert config.rope_scaling is None and config.rope_scaling_factor == 1.0
    cos, sin = rope_cos_sin(config)
    ref_cos, ref_sin = precompute_freqs_cis(16, 32, 1e6)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    # factor=1 时 PI 与 NTK 都退化为普通 RoPE
    for scaling in ("pi", "ntk"):
        c, s = rope_cos_sin(LabConfig(**SMALL, rope_scaling=scaling))
        assert torch.allclose(c, ref_cos, atol=1e-6) and torch.allclose(s, ref_sin, atol=1e-6)


def reference_rope(hd, end, base=1e6, pair_scale=None):
    """从定义出发（float64，不经 model/ 的代码）的 RoPE 表：位置 m、第 i 对的角度 m·θ_i·c_i，
    θ_i = base^(−2i/hd)，c_i 是每对的缩放系数（默认 1）。返回 (cos, sin)，各 (end, hd)，两半相同。"""
    i = torch.arange(hd // 2, dtype=torch.float64)
    theta = base ** (-2 * i / hd) * (1.0 if pair_scale is None else torch.as_tensor(pair_scale, dtype=torch.float64))
    angles = torch.arange(end, dtype=torch.float64)[:, None] * theta  # (end, hd/2)
    return (torch.cat([angles.cos(), angles.cos()], -1).float(), torch.cat([angles.sin(), angles.sin()], -1).float())


def test_rope_scaling_formulas():
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    from modules.common.lab_model import rope_cos_sin

    hd, end, factor = 16, 64, 4.0
    half, last = hd // 2, hd // 2 - 1
    long_cfg = {**SMALL, "max_seq_len": 4 * end}
    plain_cos, plain_sin = reference_rope(hd, end)             # 训练长度内的普通 RoPE
    plain_long_cos, plain_long_sin = reference_rope(hd, 4 * end)
    cos, sin = rope_cos_sin(LabConfig(**long_cfg))
    assert torch.allclose(cos, plain_long_cos, atol=1e-4) and torch.allclose(sin, plain_long_sin, atol=1e-4)
    # PI：位置 4m 的角度除以 4 = 位置 m 的原始角度
    cos, sin = rope_cos_sin(LabConfig(**long_cfg, rope_scaling="pi", rope_scaling_factor=factor))
    assert torch.allclose(cos[::4], plain_cos, atol=1e-5) and torch.allclose(sin[::4], plain_sin, atol=1e-5)
    # NTK-aware：最高频（第 0 对，θ=1）不变；最低频恰好慢 s 倍（位置 4m 的角度 = 普通 RoPE 位置 m 的角度）；
    # 中间按几何级数过渡：第 i 对的系数 s^(−2i/(hd−2))
    cos, sin = rope_cos_sin(LabConfig(**long_cfg, rope_scaling="ntk", rope_scaling_factor=factor))
    assert torch.allclose(cos[:, 0], plain_long_cos[:, 0], atol=1e-4)
    assert torch.allclose(cos[::4, last], plain_cos[:, last], atol=1e-5)
    assert torch.allclose(sin[::4, last], plain_sin[:, last], atol=1e-5)
    assert not torch.allclose(cos[:, 3], plain_long_cos[:, 3])
    ntk_cos, ntk_sin = reference_rope(hd, 4 * end, pair_scale=[factor ** (-2 * i / (hd - 2)) for i in range(half)])
    assert torch.allclose(cos, ntk_cos, atol=1e-4) and torch.allclose(sin, ntk_sin, atol=1e-4)
    # YaRN：与真实 MiniMind2 模型打开 inference_rope_scaling 后的位置表逐位相同……
    cos, sin = rope_cos_sin(LabConfig(**long_cfg, rope_scaling="yarn", rope_scaling_factor=factor))
    minimind = MiniMindForCausalLM(MiniMindConfig(
        hidden_size=SMALL["hidden_size"], num_attention_heads=SMALL["n_heads"], num_key_value_heads=SMALL["n_heads"],
        num_hidden_layers=1, vocab_size=SMALL["vocab_size"], max_position_embeddings=4 * end,
        inference_rope_scaling=True, rope_scaling={"factor": factor, "original_max_position_embeddings": end}))
    assert torch.equal(cos, minimind.model.freqs_cos) and torch.equal(sin, minimind.model.freqs_sin)
    # ……并且符合 MiniMind2 的规则：波长 2π/θ_i 超过训练长度的对按 1/s 插值，其余乘 (β_i·s − β_i + 1)/(β_i·s)，
    # β_i 从 beta_slow=1（第 0 对）线性升到 beta_fast=4（最后一对）
    theta = [1e6 ** (-2 * i / hd) for i in range(half)]
    beta = [1 + 3 * i / (half - 1) for i in range(half)]
    scale = [1 / factor if 2 * math.pi / theta[i] > end else (beta[i] * factor - beta[i] + 1) / (beta[i] * factor)
             for i in range(half)]
    assert 0 < sum(2 * math.pi / t > end for t in theta) < half  # 两种对都有：规则的两支都被检查到
    yarn_cos, yarn_sin = reference_rope(hd, 4 * end, pair_scale=scale)
    assert torch.allclose(cos, yarn_cos, atol=1e-4) and torch.allclose(sin, yarn_sin, atol=1e-4)
    assert torch.allclose(cos[:, 0], plain_long_cos[:, 0], atol=1e-4)  # β=1：最高频不动
    assert torch.allclose(cos[::4, last], plain_cos[:, last], atol=1e-5)  # 最低频：4m 处 = 原来的 m 处
    # minimind-3 的 YaRN：最高频一对不动，最低频一对按 1/s 插值（位置 4m 的角度 = 原位置 m 的角度）
    cos, sin = rope_cos_sin(LabConfig(**long_cfg, rope_scaling="yarn_minimind3", rope_scaling_factor=factor))
    assert torch.allclose(cos[:, 0], plain_long_cos[:, 0], atol=1e-4)
    assert torch.allclose(sin[::4, last], plain_sin[:, last], atol=1e-5)
    assert not torch.allclose(cos, plain_long_cos, atol=1e-3)


def test_set_rope_scaling_rebuilds_buffers_and_keeps_weights():
    from modules.common.lab_model import rope_cos_sin, set_rope_scaling

    torch.manual_seed(0)
    model = LabModel(LabConfig(**SMALL)).eval()  # max_seq_len=32
    x = ids(T=16)
    before = model(x).logits
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids(T=64))
    set_rope_scaling(model, 64, "yarn", factor=2)
    assert model.config.max_seq_len == 64 and model.config.rope_scaling == "yarn"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(model.model.freqs_cos, rope_cos_sin(model.config)[0])
    assert model(ids(T=64)).logits.shape == (2, 64, SMALL["vocab_size"])
    assert not torch.allclose(model(x).logits, before, atol=1e-5)  # 缩放真的改变了位置编码
    set_rope_scaling(model, 32)  # 换回普通 RoPE：逐位回到原来的输出
    assert torch.equal(model(x).logits, before)


def test_rope_scaling_rejects_bad_values():
    from modules.common.lab_model import set_rope_scaling

    with pytest.raises(ValueError, match="rope_scaling"):
        LabConfig(rope_scaling="linear")
    with pytest.raises(ValueError, match="rope_scaling_factor"):
        LabConfig(rope_scaling="pi", rope_scaling_factor=0.5)
    with pytest.raises(ValueError, match="pos_encoding='rope'"):
        set_rope_scaling(LabModel(LabConfig(**SMALL, pos_encoding="alibi")), 64, "pi", factor=2)


def test_lab_model_attention_only_has_no_ffn_params():
    attn_only = LabModel(LabConfig(**SMALL, ffn="none"))
    assert all(layer.mlp is None for layer in attn_only.model.layers)
    assert not any("mlp" in name for name, _ in attn_only.named_parameters())
    x = ids()
    assert torch.isfinite(attn_only(x, labels=x).loss)


@pytest.mark.parametrize("pos_encoding", ["rope", "alibi"])
def test_lab_model_without_causal_mask_sees_the_future(pos_encoding):
    torch.manual_seed(0)
    model = LabModel(LabConfig(**SMALL, causal=False, pos_encoding=pos_encoding)).eval()
    x = ids()
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % SMALL["vocab_size"]
    # 没有因果 mask：改第 9 个 token，前面位置的输出也变了
    assert not torch.allclose(model(changed).logits[:, :9], model(x).logits[:, :9], atol=1e-5)
    with record_attention(model) as attn:
        model(x)
    assert attn["layers.0"].triu(1).sum() > 0


def test_sliding_window_mask_by_hand():
    mask = sliding_window_mask(6, 6, window=3, sinks=1)
    # 第 5 行：key 3、4、5 在窗口里，key 0 是 sink；key 1、2 被挤出窗口
    assert mask[5].tolist() == [True, False, False, True, True, True]
    assert mask[2].tolist() == [True, True, True, False, False, False]  # 还没超出窗口时等于因果 mask
    assert torch.equal(sliding_window_mask(6, 6, window=6), torch.ones(6, 6).tril().bool())
    assert torch.equal(sliding_window_mask(6, 6), torch.ones(6, 6).tril().bool())  # 没有窗口：普通因果 mask
    assert torch.equal(sliding_window_mask(2, 6, window=3, sinks=1), mask[-2:])  # 解码：query 只是最后 2 个位置


@pytest.mark.parametrize("pos_encoding", ["rope", "alibi"])
def test_sliding_window_limits_what_each_layer_sees(pos_encoding):
    torch.manual_seed(0)
    cfg = LabConfig(hidden_size=64, num_layers=2, n_heads=4, pos_encoding=pos_encoding)
    full = LabModel(cfg).eval()
    x = torch.randint(0, 65, (1, 40))
    same = LabModel(replace(cfg, sliding_window=40)).eval()
    same.load_state_dict(full.state_dict())
    assert torch.allclose(same(x).logits, full(x).logits, atol=1e-5)  # 窗口不小于序列：就是普通因果注意力

    changed = x.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 65
    for sinks, reach_far in ((0, False), (2, True)):
        windowed = LabModel(replace(cfg, sliding_window=8, attention_sinks=sinks)).eval()
        windowed.load_state_dict(full.state_dict())
        diff = (windowed(x).logits - windowed(changed).logits).abs().amax(-1)[0]  # (T,)
        # 2 层、窗口 8：token 0 最远影响到位置 2·7 = 14；作为 sink 时每个位置都看得到它
        assert diff[:15].min() > 0 and (diff[15:].max() > 0) == reach_far
    with record_attention(windowed) as attn:
        windowed(x)
    weights = attn["layers.0"][0, 0]  # (T, T)
    assert torch.all(weights[20, 2:13] == 0) and weights[20, 13:21].sum() + weights[20, :2].sum() == pytest.approx(1.0)


def test_sliding_window_rejects_bad_values():
    for bad in (dict(sliding_window=0), dict(sliding_window=8, causal=False), dict(attention_sinks=2),
                dict(sliding_window=8, attention_sinks=-1)):
        with pytest.raises(ValueError):
            LabConfig(**bad)


# ---------------------------------------------------------------------------
# MLA（attention="mla"，modules/common/mla_attention.py）
# ---------------------------------------------------------------------------
MLA = dict(SMALL, attention="mla", kv_latent_dim=24, rope_head_dim=8)  # hd = 16


def mla_layer_inputs(config, T=20, seed=0):
    """一层 MLA（权重放大到 std 0.3，注意力才不是近乎均匀的）、输入 h (2, T, H) 与 RoPE 表。"""
    torch.manual_seed(seed)
    model = LabModel(config).eval()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.3)
    h = torch.randn(2, T, config.hidden_size)
    return attn, h, (model.model.freqs_cos[:T], model.model.freqs_sin[:T])


@pytest.mark.parametrize("window", [None, (6, 2)])
def test_mla_absorbed_form_equals_explicit_form(window):
    extra = {} if window is None else dict(sliding_window=window[0], attention_sinks=window[1])
    attn, h, (cos, sin) = mla_layer_inputs(LabConfig(**MLA, **extra))
    with torch.no_grad():
        explicit = attn(h, (cos, sin))  # (2, T, H)：解压出每个头的 k、v
        whole, (c_kv, k_r) = attn.forward_absorbed(h, (cos, sin))  # 一次算完整段
        past, steps = None, []
        for t in range(h.shape[1]):  # 逐 token 解码：每步只带着潜向量缓存
            y, past = attn.forward_absorbed(h[:, t:t + 1], (cos[t:t + 1], sin[t:t + 1]), past)
            steps.append(y)
    assert explicit.abs().mean() > 0.1  # 不是一个平凡的全零输出
    scale = explicit.abs().max()
    assert (whole - explicit).abs().max() < 1e-5 * scale and (torch.cat(steps, 1) - explicit).abs().max() < 1e-5 * scale
    assert c_kv.shape == (2, 20, 24) and k_r.shape == (2, 20, 8) and torch.allclose(past[0], c_kv, atol=1e-6)
    # 吸收形式把每个头的 W_UK 并进 query：用别的头的 W_UK 就不对了（这个测试能失败）
    with torch.no_grad():
        attn.k_up_proj.weight.copy_(attn.k_up_proj.weight.view(4, 16, 24).flip(0).reshape(64, 24))
        assert (attn.forward_absorbed(h, (cos, sin))[0] - explicit).abs().max() > 0.1 * scale


def test_mla_caches_latent_and_rope_key_only():
    from modules.common.mla_attention import cache_values_per_token, record_latent_cache

    config = LabConfig(**MLA)
    model = LabModel(config).eval()
    x = ids(B=2, T=16)
    with record_latent_cache(model) as cache:
        model(x)
    assert sorted(cache) == [f"layers.{i}" for i in range(3)]
    assert all(c.shape == (2, 16, 24) and k.shape == (2, 16, 8) for c, k in cache.values())
    cached_values = sum(c.numel() + k.numel() for c, k in cache.values())
    assert cached_values == 2 * 16 * 3 * (24 + 8) == 2 * 16 * cache_values_per_token(config)
    # 同尺寸的 MHA：2·L·nh·hd = 2·3·64 个数每 token
    assert cache_values_per_token(LabConfig(**SMALL)) == 384 and cache_values_per_token(LabConfig(**SMALL, n_kv_heads=1)) == 96
    # 默认维度按 DeepSeek-V2：d_c = 4·hd，d_R = hd/2；RoPE 表只有 d_R 宽
    default = LabConfig(**SMALL, attention="mla")
    assert (default.kv_latent_dim, default.rope_head_dim) == (64, 8)
    assert LabModel(default).model.freqs_cos.shape == (32, 8) and LabModel(LabConfig(**SMALL)).model.freqs_cos.shape == (32, 16)
    with pytest.raises(ValueError):
        with record_latent_cache(LabModel(LabConfig(**SMALL))):
            pass


def test_mla_model_trains_and_respects_causality_and_window():
    torch.manual_seed(0)
    model = LabModel(LabConfig(**MLA))
    x = ids()
    model(x, labels=x).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())  # 每个投影都有梯度

    model.eval()
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % SMALL["vocab_size"]
    with torch.no_grad():
        assert torch.allclose(model(changed).logits[:, :9], model(x).logits[:, :9], atol=1e-6)  # 因果
        assert not torch.allclose(model(changed).logits[:, 9:], model(x).logits[:, 9:], atol=1e-4)
        with record_attention(model) as attn:
            recorded = model(x).logits
        assert torch.allclose(recorded, model(x).logits, atol=1e-5)  # 显式记录路径与 SDPA 路径一致
    assert attn["layers.0"].shape == (2, 4, 16, 16) and attn["layers.0"].triu(1).sum() == 0

    windowed = LabModel(LabConfig(**MLA, sliding_window=4)).eval()
    with torch.no_grad(), record_attention(windowed) as attn:
        windowed(x)
    assert torch.all(attn["layers.1"][:, :, 10, :7] == 0) and torch.all(attn["layers.1"][:, :, 10, 7:11] > 0)


def test_mla_rejects_unsupported_combinations():
    for bad in (dict(kv_latent_dim=16), dict(rope_head_dim=8),  # 只有 MLA 用这两个维度
                dict(attention="mla", pos_encoding="alibi"), dict(attention="mla", qk_norm=True),
                dict(attention="mla", n_kv_heads=2), dict(attention="mla", rope_head_dim=7),
                dict(attention="mla", kv_latent_dim=0), dict(attention="mqa"),
                dict(attention="mla", rope_scaling="yarn", rope_scaling_factor=2.0)):
        with pytest.raises(ValueError):
            LabConfig(**SMALL, **bad)
    with pytest.raises(ValueError):
        set_rope_scaling(LabModel(LabConfig(**MLA)), 64)
