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
