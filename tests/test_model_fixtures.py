"""一致性测试：加载原版 MiniMind2 生成的参考 checkpoint（../shared/fixtures），逐位对比 logits。"""
import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM

FIXTURES = ["minimind2_dense_small", "minimind2_moe_small", "minimind2_yarn_small"]


def load_fixture(shared_dir, name):
    path = shared_dir / "fixtures" / "minimind2" / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"缺少参考 fixture {path}")
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("flash_attn", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("name", FIXTURES)
def test_model_matches_minimind2_reference(shared_dir, name, flash_attn):
    fx = load_fixture(shared_dir, name)
    model = MiniMindForCausalLM(MiniMindConfig(**{**fx["config"], "flash_attn": flash_attn})).eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    ids = fx["input_ids"]  # (2, 24)
    with torch.no_grad():
        full = model(ids).logits
        # 与参考相同的增量方式：先预填充前 12 个 token，再逐个经 KV cache 前向
        out = model(ids[:, :12], use_cache=True)
        pieces, past = [out.logits], out.past_key_values
        for t in range(12, ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            pieces.append(out.logits)
            past = out.past_key_values
    assert (full - fx["logits"]).abs().max().item() < 1e-5
    assert (torch.cat(pieces, dim=1) - fx["logits_incremental"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", FIXTURES)
def test_model_state_dict_keys_match_minimind2(shared_dir, name):
    fx = load_fixture(shared_dir, name)
    ours = MiniMindForCausalLM(MiniMindConfig(**fx["config"])).state_dict()
    assert set(ours) == set(fx["state_dict"])
    assert all(ours[k].shape == v.shape for k, v in fx["state_dict"].items())
