"""model/model_minimind.py 的性质测试：形状、因果性、KV cache、GQA、RoPE、RMSNorm、SDPA、MoE、generate、配置校验。"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from model import (
    Attention,
    MiniMindConfig,
    MiniMindForCausalLM,
    MOEFeedForward,
    RMSNorm,
    apply_rotary_pos_emb,
    precompute_freqs_cis,
    repeat_kv,
)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=97, max_position_embeddings=128)


FAMILIES = ["minimind2", "minimind3"]
each_family = pytest.mark.parametrize("family", FAMILIES)  # 两代共用同一份代码，性质测试两代都跑


def tiny_model(seed=0, family="minimind2", **overrides) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(**{**TINY, **overrides}, family=family))
    # 随机化 RMSNorm 权重（含 minimind-3 的 q_norm/k_norm），让"放错位置的 norm"也能在比较里暴露出来
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.eval()


def random_ids(B=2, T=16, vocab=TINY["vocab_size"], seed=1):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- 形状与配置
def test_model_output_shapes_and_loss():
    model = tiny_model()
    ids = random_ids()
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 16, TINY["vocab_size"])
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # 随机初始化时 loss 应接近 ln(V)
    assert abs(out.loss.item() - math.log(TINY["vocab_size"])) < 0.5
    assert out.past_key_values is None
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, TINY["vocab_size"])


def test_model_loss_is_shifted_and_ignores_minus_100():
    model = tiny_model()
    ids = random_ids()
    logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    assert torch.allclose(model(ids, labels=ids).loss, expected, atol=1e-6)
    labels = ids.clone()
    labels[:, :8] = -100  # 只对后半段计损失
    expected = F.cross_entropy(logits[:, 7:-1].reshape(-1, logits.size(-1)), ids[:, 8:].reshape(-1))
    assert torch.allclose(model(ids, labels=labels).loss, expected, atol=1e-6)


def test_model_default_config_is_minimind2_small():
    cfg = MiniMindConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (512, 8, 8, 2)
    assert cfg.intermediate_size == 1408  # 64 * ceil(8/3 * 512 / 64)
    model = MiniMindForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert 25e6 < n_params < 27e6, n_params  # "26M"
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_model_minimind3_defaults():
    cfg = MiniMindConfig(family="minimind3")
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps) == (768, 4, 96, 1e-6)
    assert cfg.intermediate_size == 2432  # 64 * ceil(π * 768 / 64)
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_shared_experts) == (4, 1, 0)
    assert cfg.router_aux_loss_coef == cfg.aux_loss_alpha == 5e-4 and cfg.qk_norm
    n_params = sum(p.numel() for p in MiniMindForCausalLM(cfg).parameters())
    assert 63e6 < n_params < 65e6, n_params  # "64M"
    yarn = MiniMindConfig(family="minimind3", inference_rope_scaling=True).rope_scaling
    assert (yarn["factor"], yarn["beta_fast"], yarn["beta_slow"]) == (16, 32, 1)
    # config 里给出的 rope_scaling 覆盖默认值；不开启 YaRN 时被忽略（与官方一致）
    assert MiniMindConfig(family="minimind3", inference_rope_scaling=True,
                          rope_scaling={"factor": 4}).rope_scaling["factor"] == 4
    assert MiniMindConfig(family="minimind3", rope_scaling={"factor": 4}).rope_scaling is None
    # MiniMind2 的默认值一个都没变
    assert MiniMindConfig().rope_scaling is None and not MiniMindConfig().qk_norm
    assert MiniMindConfig(inference_rope_scaling=True).rope_scaling["factor"] == 4


def test_model_head_dim_can_differ_from_hidden_over_heads():
    model = tiny_model(family="minimind3", head_dim=24)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 24, 64) and attn.o_proj.weight.shape == (64, 4 * 24)
    assert model(random_ids()).logits.shape == (2, 16, TINY["vocab_size"])


@each_family
def test_model_config_round_trip(tmp_path, family):
    cfg = MiniMindConfig(**TINY, use_moe=True, inference_rope_scaling=True, family=family)
    path = tmp_path / "config.json"
    cfg.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["use_moe"] is True and saved["family"] == family
    assert MiniMindConfig.load(path) == cfg
    assert MiniMindConfig.from_dict(cfg.to_dict()) == cfg


def test_model_config_rejects_unknown_family_and_conflicting_aliases():
    with pytest.raises(ValueError, match="family.*minimind2.*minimind3"):
        MiniMindConfig(family="minimind4")
    with pytest.raises(ValueError, match="n_routed_experts.*num_experts"):
        MiniMindConfig(n_routed_experts=4, num_experts=8)
    assert MiniMindConfig(num_experts=8).n_routed_experts == 8
    # 只给别名时取别名的值（不与家族默认值冲突）
    assert MiniMindConfig(family="minimind3", router_aux_loss_coef=0.0).aux_loss_alpha == 0.0
    assert MiniMindConfig(aux_loss_alpha=0.0).router_aux_loss_coef == 0.0


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=100, num_attention_heads=8), "num_attention_heads"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_experts_per_tok=5, n_routed_experts=4), "num_experts_per_tok"),
    (dict(hidden_size=60, num_attention_heads=4), "head_dim"),  # head_dim=15 为奇数，RoPE 无法两两配对
])
def test_model_config_rejects_bad_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        MiniMindConfig(**{**TINY, **overrides})


def test_model_config_rejects_unknown_field():
    with pytest.raises(ValueError, match="n_layer"):
        MiniMindConfig.from_dict({**TINY, "n_layer": 4})


def test_model_rejects_too_long_input():
    model = tiny_model(max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_ids(T=17))


# ---------------------------------------------------------------- 因果性与 KV cache
@pytest.mark.parametrize("flash", [True, False])
@each_family
def test_model_is_causal(flash, family):
    model = tiny_model(flash_attn=flash, family=family)
    ids = random_ids()
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % TINY["vocab_size"]
    a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # 改未来不影响过去
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)  # 但确实影响它之后的位置


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("use_moe", [False, True])
@each_family
def test_model_kv_cache_matches_full_forward(flash, use_moe, family):
    model = tiny_model(flash_attn=flash, use_moe=use_moe, family=family)
    ids = random_ids(T=20)
    full = model(ids).logits
    # 先预填充 8 个，再一次喂 5 个（多 token 的 cache 路径），再逐个喂
    out = model(ids[:, :8], use_cache=True)
    pieces = [out.logits]
    out = model(ids[:, 8:13], past_key_values=out.past_key_values, use_cache=True)
    pieces.append(out.logits)
    past = out.past_key_values
    for t in range(13, 20):
        out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        pieces.append(out.logits)
    assert past[0][0].shape == (2, 20, TINY["num_key_value_heads"], 16)
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@each_family
def test_model_generate_with_cache_equals_without(family):
    model = tiny_model(family=family)
    prompt = random_ids(T=6)
    a = model.generate(prompt, max_new_tokens=12, eos_token_id=-1, use_cache=True)
    b = model.generate(prompt, max_new_tokens=12, eos_token_id=-1, use_cache=False)
    assert a.shape == (2, 18)
    assert torch.equal(a, b)
    # 贪心生成等于"每步对整段做前向再取 argmax"
    seq = prompt
    for _ in range(12):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(a, seq)


# ---------------------------------------------------------------- 注意力：SDPA、GQA、padding
def attention_layer(seed=0, family="minimind2", **overrides):
    torch.manual_seed(seed)
    attn = Attention(MiniMindConfig(**{**TINY, **overrides}, family=family)).eval()
    if attn.qk_norm:  # 随机化 q_norm/k_norm 的权重，两条路径都必须用上它们
        with torch.no_grad():
            for p in (attn.q_norm.weight, attn.k_norm.weight):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return attn


def rope_for(T, head_dim=16):
    cos, sin = precompute_freqs_cis(head_dim, 64)
    return cos[:T], sin[:T]


@each_family
def test_model_sdpa_path_equals_explicit_path(family):
    sdpa = attention_layer(flash_attn=True, family=family)
    explicit = attention_layer(flash_attn=False, family=family)
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 10, 64)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # 第二行左侧 3 个 padding
    for attention_mask in (None, mask):
        a, _ = sdpa(x, rope_for(10), attention_mask=attention_mask)
        b, _ = explicit(x, rope_for(10), attention_mask=attention_mask)
        assert torch.allclose(a, b, atol=1e-6)


def test_model_padding_mask_hides_pad_tokens():
    model = tiny_model()
    ids = random_ids(B=1, T=8)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    other_pad = padded.clone()
    other_pad[:, :3] = 5
    a = model(padded, attention_mask=mask).logits[:, 3:]
    b = model(other_pad, attention_mask=mask).logits[:, 3:]
    assert torch.allclose(a, b, atol=1e-5)  # pad 的内容不影响真实 token
    assert torch.isfinite(model(padded, attention_mask=mask).logits).all()  # 全屏蔽行也不出 NaN


def reference_mha(x, q_w, k_w, v_w, o_w, n_heads, cos, sin):
    """独立实现的多头注意力（每头各自的 K/V），作为 GQA 的对照。"""
    B, T, H = x.shape
    hd = H // n_heads
    q = (x @ q_w.T).view(B, T, n_heads, hd)
    k = (x @ k_w.T).view(B, T, n_heads, hd)
    v = (x @ v_w.T).view(B, T, n_heads, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = scores.softmax(-1) @ v
    return y.transpose(1, 2).reshape(B, T, H) @ o_w.T


def test_model_gqa_with_all_kv_heads_equals_plain_mha():
    attn = attention_layer(num_key_value_heads=4)
    x = torch.randn(2, 9, 64)
    out, _ = attn(x, rope_for(9))
    ref = reference_mha(x, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight,
                        4, *rope_for(9))
    assert torch.allclose(out, ref, atol=1e-5)


def test_model_gqa_equals_mha_with_shared_kv_weights():
    """GQA（2 个 KV 头）= 把每个 KV 头复制给它那一组 query 头的 MHA。"""
    gqa = attention_layer(num_key_value_heads=2)
    hd = 16
    k_w = gqa.k_proj.weight.view(2, hd, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    v_w = gqa.v_proj.weight.view(2, hd, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    x = torch.randn(2, 9, 64)
    out, _ = gqa(x, rope_for(9))
    ref = reference_mha(x, gqa.q_proj.weight, k_w, v_w, gqa.o_proj.weight, 4, *rope_for(9))
    assert torch.allclose(out, ref, atol=1e-5)


def test_model_repeat_kv():
    x = torch.randn(2, 5, 2, 8)
    y = repeat_kv(x, 3)
    assert y.shape == (2, 5, 6, 8)
    assert torch.equal(y[:, :, 0], y[:, :, 2]) and torch.equal(y[:, :, 3], x[:, :, 1])
    assert repeat_kv(x, 1) is x


# ---------------------------------------------------------------- RoPE 与 RMSNorm
def test_model_rope_score_depends_only_on_relative_position():
    cos, sin = precompute_freqs_cis(16, 256)
    q = torch.randn(1, 1, 1, 16)
    k = torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm, _ = apply_rotary_pos_emb(q, q, cos[m:m + 1], sin[m:m + 1])
        _, kn = apply_rotary_pos_emb(k, k, cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    for offset in (0, 17, 100):
        assert score(5 + offset, 2 + offset) == pytest.approx(score(5, 2), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(9, 2), abs=1e-3)


def test_model_rope_preserves_norm():
    cos, sin = precompute_freqs_cis(32, 512)
    q = torch.randn(2, 512, 4, 32)
    q_rot, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert torch.allclose(q_rot.norm(dim=-1), q.norm(dim=-1), atol=1e-4)


def test_model_yarn_only_changes_long_wavelength_dims():
    plain_cos, _ = precompute_freqs_cis(16, 8192, 1e6)
    yarn_cos, _ = precompute_freqs_cis(16, 8192, 1e6, MiniMindConfig(inference_rope_scaling=True).rope_scaling)
    assert torch.allclose(plain_cos[:, 0], yarn_cos[:, 0], atol=0.05)  # 高频维度几乎不变
    assert not torch.allclose(plain_cos[:, 7], yarn_cos[:, 7])  # 低频维度被插值


def test_model_yarn_minimind3_is_the_paper_ramp():
    from model.model_minimind import yarn_scale_minimind3

    dim, base, orig, factor = 64, 1e6, 2048, 16
    scale = yarn_scale_minimind3(dim, base, {"original_max_position_embeddings": orig, "factor": factor,
                                             "beta_fast": 32, "beta_slow": 1})
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    rotations = orig * freqs / (2 * math.pi)  # 每个维度在训练长度内转几圈
    assert torch.all(scale[rotations > 32 + 1] == 1)  # 高频：不动（留 1 圈余量给取整）
    assert torch.allclose(scale[rotations < 1 - 0.1], torch.tensor(1 / factor))  # 低频：按 1/s 插值
    assert torch.all(scale[1:] <= scale[:-1])  # 中间单调过渡
    # 表长不超过训练长度时 YaRN 不起作用
    yarn = MiniMindConfig(family="minimind3", inference_rope_scaling=True).rope_scaling
    short, _ = precompute_freqs_cis(dim, 1024, base, yarn, family="minimind3")
    assert torch.equal(short, precompute_freqs_cis(dim, 1024, base)[0])


def test_model_rmsnorm_matches_formula():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 4, 8)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 9.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    # bf16 模型里输出仍是 bf16（内部在 float32 里求均方根）
    assert norm.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


# ---------------------------------------------------------------- 手写反向（fused_ops）
@pytest.mark.parametrize("use_moe", [False, True])
@each_family
def test_model_fused_ops_match_readable_path(use_moe, family):
    fused = tiny_model(fused_ops=True, use_moe=use_moe, family=family).train()
    readable = tiny_model(fused_ops=False, use_moe=use_moe, family=family).train()
    readable.load_state_dict(fused.state_dict())
    ids = random_ids()
    out_f, out_r = fused(ids, labels=ids), readable(ids, labels=ids)
    assert torch.equal(out_f.logits, out_r.logits)  # 前向是同一串运算，逐位相同
    (out_f.loss + out_f.aux_loss).backward()
    (out_r.loss + out_r.aux_loss).backward()
    for (name, p_f), (_, p_r) in zip(fused.named_parameters(), readable.named_parameters()):
        assert torch.allclose(p_f.grad, p_r.grad, atol=1e-6, rtol=1e-4), name


def test_model_fused_ops_backward_formulas():
    from model.fused_ops import RMSNormFunction, RotaryFunction
    # RMSNorm：手写反向 vs autograd 对可读公式求导（前向在 float32 里算，所以在 float32 下比较）
    x = torch.randn(4, 5, 16, requires_grad=True)
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    g = torch.randn(4, 5, 16)
    norm(x).backward(g)
    grad_x, grad_w = x.grad.clone(), norm.weight.grad.clone()
    x.grad, norm.weight.grad = None, None
    RMSNormFunction.apply(x, norm.weight, norm.eps).backward(g)
    assert torch.allclose(x.grad, grad_x, atol=1e-6) and torch.allclose(norm.weight.grad, grad_w, atol=1e-5)
    # RoPE：没有类型转换，可以直接在 float64 下做数值梯度检验
    cos, sin = precompute_freqs_cis(8, 3)
    q = torch.randn(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: RotaryFunction.apply(q, cos[:, None].double(), sin[:, None].double()), (q,))


# ---------------------------------------------------------------- MoE
@each_family
def test_model_moe_routing_weights_sum_to_one_and_aux_loss_has_grad(family):
    model = tiny_model(use_moe=True, num_experts_per_tok=2, family=family).train()
    moe = model.model.layers[0].mlp
    assert isinstance(moe, MOEFeedForward)
    x = torch.randn(2, 10, 64)
    topk_idx, topk_weight, aux = moe.gate(x)
    assert topk_idx.shape == (20, 2)
    assert torch.allclose(topk_weight.sum(-1), torch.ones(20), atol=1e-6)
    ids = random_ids()
    out = model(ids, labels=ids)
    assert out.aux_loss > 0
    (out.loss + out.aux_loss).backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for e in moe.experts for p in e.parameters() if e is not None)


@each_family
def test_model_moe_batch_level_aux_loss(family):
    model = tiny_model(use_moe=True, seq_aux=False, family=family).train()
    ids = random_ids()
    out = model(ids, labels=ids)
    out.aux_loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def hand_aux_loss(x, weight, k, alpha, seq_aux, slots_per_token):
    """不经张量运算、逐 token 手算的负载均衡损失（float64 的 Python 数）：
    每个 token 对各专家做 softmax 得路由概率，选概率最大的 k 个；f_e = 专家 e 被选中的次数 ÷ (token 数 × slots_per_token)
    × E（均匀时为 1），P_e = 路由概率的平均；aux = α · Σ_e f_e · P_e。seq_aux 时每条序列各算一次再取平均。
    x: (B, T, H)，weight: (E, H)。"""
    E = weight.shape[0]
    w = weight.double().tolist()

    def route(token):
        logits = [sum(a * b for a, b in zip(row, token)) for row in w]
        z = [math.exp(v - max(logits)) for v in logits]
        probs = [v / sum(z) for v in z]
        chosen = sorted(range(E), key=lambda e: -probs[e])[:k]
        return probs, chosen

    def group_loss(tokens):
        routed = [route(t) for t in tokens]
        counts = [sum(e in chosen for _, chosen in routed) for e in range(E)]
        f = [c / (len(tokens) * slots_per_token) * E for c in counts]
        P = [sum(probs[e] for probs, _ in routed) / len(tokens) for e in range(E)]
        return sum(fe * pe for fe, pe in zip(f, P))

    seqs = x.double().tolist()
    if seq_aux:
        return alpha * sum(group_loss(seq) for seq in seqs) / len(seqs)
    return alpha * group_loss([t for seq in seqs for t in seq])


@pytest.mark.parametrize("family, seq_aux, k", [("minimind2", True, 2), ("minimind2", False, 2),
                                                ("minimind2", True, 1), ("minimind3", False, 2)])
def test_model_moe_aux_loss_equals_hand_computation(family, seq_aux, k):
    # MiniMind2（DeepSeek-V2 式）：f 按槽位数 T·k 归一；minimind-3 批级：按 token 数归一（见 MoEGate.forward）
    model = tiny_model(use_moe=True, num_experts_per_tok=k, seq_aux=seq_aux, family=family).train()
    gate = model.model.layers[0].mlp.gate
    with torch.no_grad():
        gate.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))  # 路由明显不均匀
    x = torch.randn(3, 6, 64, generator=torch.Generator().manual_seed(6))
    _, _, aux = gate(x)
    slots = k if family == "minimind2" else 1
    expected = hand_aux_loss(x, gate.weight.detach(), k, gate.alpha, seq_aux, slots)
    uniform = gate.alpha * k / slots  # 路由概率全是 1/E 时的值：Σ_e f_e/E = k/slots
    assert gate.alpha > 0 and abs(expected - uniform) > 0.02 * uniform, (expected, uniform)  # 例子确实不均匀
    assert aux.item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        gate.weight.zero_()  # 全零权重：每个 token 的路由概率都是 1/E
    _, _, aux_even = gate(x)
    assert aux_even.item() == pytest.approx(uniform, rel=1e-5)


def test_model_minimind3_top1_router_learns_only_from_aux_loss():
    # minimind-3 默认 top-1 且 norm_topk_prob：选中专家的权重恒为 1，语言模型损失传不到路由器
    model = tiny_model(use_moe=True, family="minimind3").train()
    gate = model.model.layers[0].mlp.gate
    _, topk_weight, _ = gate(torch.randn(2, 10, 64))
    assert topk_weight.shape == (20, 1) and torch.allclose(topk_weight, torch.ones(20, 1))
    ids = random_ids()
    out = model(ids, labels=ids)
    out.loss.backward(retain_graph=True)
    from_lm_loss = gate.weight.grad.abs().max().item()  # 只剩 s/(s+1e-20) 的舍入误差
    gate.weight.grad = None
    out.aux_loss.backward()
    assert from_lm_loss < 1e-8 and gate.weight.grad.abs().max().item() > 1e3 * from_lm_loss


def test_model_minimind3_aux_loss_formula():
    # minimind-3：aux = E · coef · Σ_e (被选中次数_e / N) · P_e（按 token 数 N 归一，不除以 k）
    model = tiny_model(use_moe=True, num_experts_per_tok=2, family="minimind3").train()
    gate = model.model.layers[0].mlp.gate
    x = torch.randn(2, 10, 64)
    topk_idx, _, aux = gate(x)
    scores = F.linear(x.view(-1, 64), gate.weight).softmax(-1)
    counts = torch.bincount(topk_idx.view(-1), minlength=4).float()
    expected = 4 * 5e-4 * (counts / 20 * scores.mean(0)).sum()
    assert torch.allclose(aux, expected, rtol=1e-5)


@each_family
def test_model_moe_trains_under_bf16_autocast(family):
    # GPU 上训练默认 bf16 autocast：专家输出是 bf16，主干是 float32（曾在 H100 上报 dtype 不匹配）
    model = tiny_model(use_moe=True, num_experts_per_tok=2, family=family).train()
    ids = random_ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    assert torch.isfinite(out.loss) and model.model.layers[0].mlp.experts[0].up_proj.weight.grad is not None


@each_family
def test_model_moe_train_path_equals_eval_path(family):
    model = tiny_model(use_moe=True, num_experts_per_tok=2, family=family)
    x = torch.randn(2, 10, 64)
    moe = model.model.layers[1].mlp
    y_eval = moe.eval()(x)
    y_train = moe.train()(x)
    assert y_train.dtype == torch.float32
    assert torch.allclose(y_eval, y_train, atol=1e-5)


# ---------------------------------------------------------------- generate
@each_family
def test_model_greedy_generate_is_deterministic_and_stops_at_eos(family):
    model = tiny_model(family=family)
    prompt = random_ids(B=1, T=5)
    a = model.generate(prompt, max_new_tokens=10, eos_token_id=-1)
    b = model.generate(prompt, max_new_tokens=10, eos_token_id=-1)
    assert torch.equal(a, b)
    eos = a[0, 7].item()  # 让第 3 个新 token 成为 EOS：生成应在那里停下
    c = model.generate(prompt, max_new_tokens=10, eos_token_id=eos)
    first_eos = (a[0, 5:] == eos).nonzero()[0].item() + 5
    assert c.shape[1] == first_eos + 1 and c[0, -1].item() == eos


def test_model_generated_ids_can_be_trained_on():
    """generate 在 inference_mode 里解码，但返回的是普通张量：拿生成结果直接训练（如在线采样的 DPO）不能报错，
    模型也要回到调用前的 train/eval 状态。"""
    model = tiny_model().train()
    out = model.generate(random_ids(B=2, T=4), max_new_tokens=5, eos_token_id=-1)
    assert not out.is_inference() and model.training
    model(out, labels=out).loss.backward()
    assert model.lm_head.weight.grad is not None


@each_family
def test_model_generate_batch_streamer_and_sampling(family):
    model = tiny_model(family=family)
    prompt = random_ids(B=3, T=4)
    streamed = []
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=-1, streamer=streamed.append)
    assert out.shape == (3, 10) and len(streamed) == 6
    assert torch.equal(torch.stack(streamed, dim=1), out[:, 4:])
    torch.manual_seed(0)
    s1 = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                        repetition_penalty=1.2, eos_token_id=-1)
    torch.manual_seed(0)
    s2 = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                        repetition_penalty=1.2, eos_token_id=-1)
    assert torch.equal(s1, s2)
    # top_k=1 采样退化为贪心
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=1, eos_token_id=-1), out)


@each_family
def test_model_generate_left_padded_batch_matches_single_prompts(family):
    # 三条长度不同的提示左侧补 pad 拼成一批：每一行（包括补了 pad 的行）都必须等于单独生成的结果。
    # 刚初始化的小模型贪心解码只会重复最后一个 token（与上下文无关，查不出 mask 的错），所以把投影权重放大，
    # 让输出真正依赖上下文
    model = tiny_model(family=family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 1.5 / math.sqrt(p.shape[1]), generator=torch.Generator().manual_seed(len(name)))
    prompts = [random_ids(B=1, T=t, seed=3 + t)[0] for t in (7, 4, 2)]
    width, new = max(len(p) for p in prompts), 6
    batch = torch.stack([F.pad(p, (width - len(p), 0), value=0) for p in prompts])  # (3, 7)，左侧补 0
    mask = torch.stack([F.pad(torch.ones_like(p), (width - len(p), 0), value=0) for p in prompts])  # (3, 7)
    out = model.generate(batch, max_new_tokens=new, eos_token_id=-1, attention_mask=mask)
    assert out.shape == (3, width + new)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=new, eos_token_id=-1)[0]  # (len + new,)
        assert torch.equal(out[row, width - len(prompt):], alone), row
    # 对照：不传 mask 时补了 pad 的行结果不同——这个测试确实能发现 mask 被忽略
    unmasked = model.generate(batch, max_new_tokens=new, eos_token_id=-1)
    assert not torch.equal(unmasked[1:, width:], out[1:, width:])


def test_model_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    seq = torch.tensor([[0, 1]])
    out = MiniMindForCausalLM._apply_repetition_penalty(logits, seq, 2.0)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.5]]))


def test_model_generate_rejects_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="temperature"):
        model.generate(random_ids(B=1, T=3), do_sample=True, temperature=0)
