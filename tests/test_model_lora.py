"""model/model_lora.py：零初始化不改输出、合并等价、只训练 LoRA 参数、存取。"""
import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.model_lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
            max_position_embeddings=64)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(**TINY)).eval()


def ids():
    return torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))


def test_model_lora_zero_init_leaves_outputs_unchanged():
    model = tiny_model()
    before = model(ids()).logits
    names = apply_lora(model, rank=4)
    # MiniMind 的默认目标：方阵 Linear（GQA 下 k/v 不是方阵）
    assert sorted({n.split(".")[-1] for n in names}) == ["o_proj", "q_proj"]
    assert torch.equal(model(ids()).logits, before)


def test_model_lora_keeps_base_keys():
    model = tiny_model()
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, target_modules=("q_proj", "v_proj"))
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert all("lora_" in k for k in keys - base_keys)


def test_model_lora_merge_equals_unmerged_forward():
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
    unmerged = model(ids()).logits
    base_weight = model.model.layers[0].self_attn.q_proj.weight.clone()
    merge_lora(model)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, base_weight)
    assert torch.allclose(model(ids()).logits, unmerged, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model.model.layers[0].self_attn.q_proj.weight, base_weight, atol=1e-6)
    assert torch.allclose(model(ids()).logits, unmerged, atol=1e-5)


@pytest.mark.parametrize("rank, alpha, scale", [(4, None, 1.0), (4, 8, 2.0), (8, 4, 0.5), (1, 3, 3.0)])
def test_model_lora_output_is_wx_plus_alpha_over_r_bax(rank, alpha, scale):
    """对照手算：LoRA 层输出 = W x + b + (α/r)·B A x（α 默认等于 r），合并后的权重 = W + (α/r)·B A。
    scale 是直接写下的期望值，不从被测代码里取。"""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8, bias=False))
    W1, b1, W2 = (t.detach().clone().double() for t in (net[0].weight, net[0].bias, net[2].weight))
    apply_lora(net, rank=rank, alpha=alpha)  # 两个方阵 Linear 都挂上
    with torch.no_grad():
        for m in lora_modules_of(net):
            m.lora_A.normal_(0, 0.5)
            m.lora_B.normal_(0, 0.5)  # B ≠ 0，旁路才有贡献
    (A1, B1), (A2, B2) = ((m.lora_A.detach().double(), m.lora_B.detach().double()) for m in lora_modules_of(net))
    x = torch.randn(5, 8, dtype=torch.float64)
    h = torch.relu(x @ W1.T + b1 + scale * (x @ A1.T @ B1.T))  # (5, 8)
    expected = h @ W2.T + scale * (h @ A2.T @ B2.T)  # (5, 8)
    assert torch.allclose(net(x.float()).double(), expected, atol=1e-5)
    merge_lora(net)
    assert torch.allclose(net[0].weight.double(), W1 + scale * B1 @ A1, atol=1e-6)
    assert torch.allclose(net(x.float()).double(), expected, atol=1e-5)


def lora_modules_of(net):
    return [m for m in net.modules() if isinstance(m, LoRALinear)]


def test_model_lora_trains_only_lora_params():
    model = tiny_model().train()
    apply_lora(model, rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(ids(), labels=ids()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(m.lora_B.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))


def test_model_lora_save_and_load(tmp_path):
    model = tiny_model()
    apply_lora(model, rank=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
    path = tmp_path / "lora.pth"
    save_lora(model, path)
    assert set(torch.load(path, weights_only=True)) == set(lora_state_dict(model))
    fresh = tiny_model()
    apply_lora(fresh, rank=4)
    load_lora(fresh, path)
    assert torch.allclose(fresh(ids()).logits, model(ids()).logits, atol=1e-6)
    wrong_rank = tiny_model()
    apply_lora(wrong_rank, rank=2)
    with pytest.raises(ValueError, match="rank"):
        load_lora(wrong_rank, path)
    with pytest.raises(ValueError, match="apply_lora"):
        load_lora(tiny_model(), path)
