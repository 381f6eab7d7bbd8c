"""一致性测试：加载原版 MiniMind2 / minimind-3 代码生成的参考 checkpoint（../shared/fixtures），逐位对比 logits。"""
import pytest
import torch

from conftest import require_shared
from model import MiniMindConfig, MiniMindForCausalLM

# (family, fixture 目录, 文件名)
FIXTURES = [(family, folder, f"{folder}_{kind}")
            for family, folder in (("minimind2", "minimind2"), ("minimind3", "minimind3"))
            for kind in ("dense_small", "moe_small", "yarn_small")]


def load_fixture(shared_dir, folder, name):
    path = require_shared("fixtures", folder, f"{name}.pt")  # CI 里缺失即失败
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("flash_attn", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("family, folder, name", FIXTURES, ids=[f[2] for f in FIXTURES])
def test_model_matches_reference(shared_dir, family, folder, name, flash_attn):
    fx = load_fixture(shared_dir, folder, name)
    config = MiniMindConfig(**{**fx["config"], "flash_attn": flash_attn}, family=family)
    model = MiniMindForCausalLM(config).eval()
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


@pytest.mark.parametrize("family, folder, name", FIXTURES, ids=[f[2] for f in FIXTURES])
def test_model_state_dict_keys_match_reference(shared_dir, family, folder, name):
    fx = load_fixture(shared_dir, folder, name)
    ours = MiniMindForCausalLM(MiniMindConfig(**fx["config"], family=family)).state_dict()
    assert set(ours) == set(fx["state_dict"])
    assert all(ours[k].shape == v.shape for k, v in fx["state_dict"].items())


def test_model_wrong_family_cannot_load_minimind3_weights(shared_dir):
    fx = load_fixture(shared_dir, "minimind3", "minimind3_dense_small")
    model = MiniMindForCausalLM(MiniMindConfig(**fx["config"]))  # 忘了 family="minimind3"
    with pytest.raises(RuntimeError, match="q_norm"):
        model.load_state_dict(fx["state_dict"], strict=True)
