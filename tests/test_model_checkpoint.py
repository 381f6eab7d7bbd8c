"""model/checkpoint.py：LFS 指针、配置不匹配、包装前缀、原子保存。"""
import pytest
import torch

from model import MiniMindConfig, MiniMindForCausalLM
from model.checkpoint import CheckpointError, infer_config, load_pretrained, load_state_dict_file, save_checkpoint

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
            max_position_embeddings=64)


def test_model_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(**TINY)).eval()
    path = save_checkpoint(model, tmp_path / "out" / "model.pth")
    assert not list(tmp_path.glob("out/*.tmp"))
    loaded = load_pretrained(path, MiniMindConfig(**TINY)).eval()
    ids = torch.randint(0, 97, (1, 8))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # 加载后仍然共享


def test_model_checkpoint_detects_git_lfs_pointer(tmp_path):
    pointer = tmp_path / "minimind.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 104857600\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="git lfs pull"):
        load_state_dict_file(pointer)


def test_model_checkpoint_wrong_config_names_the_real_shape(tmp_path):
    path = save_checkpoint(MiniMindForCausalLM(MiniMindConfig(**TINY)), tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(path, MiniMindConfig(**{**TINY, "hidden_size": 128}))
    assert "hidden_size': 64" in str(err.value) and "num_hidden_layers': 2" in str(err.value)


def test_model_checkpoint_strips_compile_and_ddp_prefixes(tmp_path):
    model = MiniMindForCausalLM(MiniMindConfig(**TINY))
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    state = load_state_dict_file(tmp_path / "wrapped.pth")
    assert set(state) == set(model.state_dict())
    assert infer_config(state) == {"vocab_size": 97, "hidden_size": 64, "num_hidden_layers": 2, "use_moe": False,
                                   "family": "minimind2"}


def test_model_checkpoint_minimind3_weights_with_minimind2_config_say_which_family(tmp_path):
    path = save_checkpoint(MiniMindForCausalLM(MiniMindConfig(**TINY, family="minimind3")), tmp_path / "m3.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(path, MiniMindConfig(**TINY))
    assert "q_norm" in str(err.value) and "'family': 'minimind3'" in str(err.value)
    assert load_pretrained(path, MiniMindConfig(**TINY, family="minimind3")).config.family == "minimind3"


def test_model_checkpoint_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(CheckpointError, match="下载不完整"):
        load_state_dict_file(bad)
    with pytest.raises(CheckpointError, match="找不到"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_model_checkpoint_loads_reference_fixture_state(shared_dir, tmp_path):
    fx = torch.load(shared_dir / "fixtures" / "minimind2" / "minimind2_moe_small.pt", weights_only=False)
    torch.save(fx["state_dict"], tmp_path / "moe.pth")
    model = load_pretrained(tmp_path / "moe.pth", MiniMindConfig(**fx["config"])).eval()
    with torch.no_grad():
        assert (model(fx["input_ids"]).logits - fx["logits"]).abs().max() < 1e-5
