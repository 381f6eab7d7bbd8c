"""scripts/convert_model.py / model/hf_format.py：MiniMind ↔ transformers。

每个支持的变体（GQA、共享与不共享词嵌入、QK-norm、head_dim ≠ hidden/heads、minimind-3 的 YaRN 与 MoE）都用随机小模型：
transformers 加载转出的文件夹，logits 与我们的差 < 1e-4，贪心 generate 的 token 相同，.pth → HF → .pth 逐位相同；
不支持的变体给一句原因。../shared 里的官方参考 fixture 也转一遍，对照它们记录的 logits。
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="缺转换的依赖：pip install -r requirements-serve.txt")
pytest.importorskip("safetensors", reason="缺转换的依赖：pip install -r requirements-serve.txt")

from conftest import require_shared  # noqa: E402
from model.checkpoint import load_state_dict_file, save_checkpoint  # noqa: E402
from model.hf_format import HFFormatError, hf_config, load_hf_folder, save_hf_folder  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # 只读本地文件夹，绝不联网
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24)
VARIANTS = {
    "minimind2_dense": dict(family="minimind2", **SMALL),
    "minimind2_untied": dict(family="minimind2", tie_word_embeddings=False, **SMALL),
    "minimind3_dense": dict(family="minimind3", **SMALL),
    "minimind3_yarn": dict(family="minimind3", max_position_embeddings=8192, inference_rope_scaling=True,
                           **{**SMALL, "num_key_value_heads": 1}),
    "minimind3_moe": dict(family="minimind3", use_moe=True, num_experts=4, num_experts_per_tok=2,
                          moe_intermediate_size=96, **SMALL),
}
HF_CLASS = {"minimind2": "LlamaForCausalLM", "minimind3": "Qwen3ForCausalLM"}


def randomised(config: MiniMindConfig) -> MiniMindForCausalLM:
    """随机权重，归一化层的 weight 也随机（放错位置的 norm 会显出来）。"""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.08 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_computes_the_same_function(variant, tokenizer, tmp_path):
    config = MiniMindConfig(vocab_size=tokenizer.vocab_size, **VARIANTS[variant])
    ours = randomised(config)
    folder = save_hf_folder(ours, tokenizer, tmp_path / "hf")
    theirs = hf_model(folder)
    expected = "Qwen3MoeForCausalLM" if config.use_moe else HF_CLASS[config.family]
    assert type(theirs).__name__ == expected
    x = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (theirs(x).logits - ours(x).logits).abs().max().item()
    assert diff < 1e-4, f"{variant}: logits 最大差 {diff:.2e}"
    prompt = x[:1, :12]
    ours_ids = ours.generate(prompt, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    theirs_ids = theirs.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    assert ours_ids.tolist() == theirs_ids.tolist()
    # .pth → HF → .pth：张量逐位相同、配置相同、文件逐字节相同
    save_checkpoint(ours, tmp_path / "a" / "model.pth")
    back = load_hf_folder(folder)
    save_checkpoint(back, tmp_path / "b" / "model.pth")
    assert back.config == config
    a, b = load_state_dict_file(tmp_path / "a" / "model.pth"), load_state_dict_file(tmp_path / "b" / "model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (tmp_path / "a" / "model.pth").read_bytes() == (tmp_path / "b" / "model.pth").read_bytes()


def test_converted_tokenizer_renders_the_same_chat_template(tokenizer, tmp_path):
    folder = save_hf_folder(randomised(MiniMindConfig(vocab_size=tokenizer.vocab_size, **SMALL)), tokenizer, tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好，1+1=?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    assert theirs(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == tokenizer.eos_token_id


@pytest.mark.parametrize("kwargs, reason", [
    (dict(family="minimind2", use_moe=True), "MiniMind2 的 MoE"),
    (dict(family="minimind2", max_position_embeddings=8192, inference_rope_scaling=True), "MiniMind2 的 YaRN"),
    (dict(family="minimind3", use_moe=True, n_shared_experts=1), "共享专家"),
    (dict(family="minimind3", max_position_embeddings=2048, inference_rope_scaling=True), "不做 YaRN"),
])
def test_unsupported_variants_are_refused_with_a_reason(kwargs, reason):
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=128, **kwargs)
    with pytest.raises(HFFormatError, match=reason):
        hf_config(config)


def run_convert(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_model.py"), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def test_command_line_round_trip_and_one_line_refusal(tokenizer, tmp_path):
    model = randomised(MiniMindConfig(vocab_size=tokenizer.vocab_size, family="minimind3", **SMALL))
    save_checkpoint(model, tmp_path / "m.pth")
    model.config.save(tmp_path / "m.json")
    proc = run_convert("--weights", tmp_path / "m.pth", "--out_dir", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    proc = run_convert("--from_hf", tmp_path / "hf", "--out_pth", tmp_path / "back" / "m.pth")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "back" / "m.pth").read_bytes() == (tmp_path / "m.pth").read_bytes()
    assert json.loads((tmp_path / "back" / "m.json").read_text(encoding="utf-8")) == model.config.to_dict()
    with pytest.raises(HFFormatError, match="已存在"):  # 不覆盖已有的文件夹
        save_hf_folder(model, tokenizer, tmp_path / "hf")
    # eval_llm / API 服务的 --weights 也接受转出的文件夹（分词器取文件夹里的）
    from trainer.eval_llm import parse_args
    from trainer.model_loading import load_chat_model

    loaded, loaded_tokenizer = load_chat_model(parse_args(["--weights", str(tmp_path / "hf"), "--device", "cpu"]))
    x = torch.randint(0, tokenizer.vocab_size, (1, 16))
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert Path(loaded_tokenizer.source).parent == tmp_path / "hf"

    moe = MiniMindForCausalLM(MiniMindConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, use_moe=True))
    save_checkpoint(moe, tmp_path / "moe.pth")
    moe.config.save(tmp_path / "moe.json")
    proc = run_convert("--weights", tmp_path / "moe.pth", "--out_dir", tmp_path / "moe-hf")
    assert proc.returncode == 1 and "MoE" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "moe-hf").exists()


@pytest.mark.parametrize("family, name", [(f, n) for f in ("minimind2", "minimind3") for n in ("dense", "moe", "yarn")])
def test_reference_fixtures_convert_or_are_refused(family, name, tmp_path):
    """上游代码生成的参考权重：能转的，transformers 算出的 logits 与上游记录的一致；不能转的给出原因。"""
    fx = torch.load(require_shared("fixtures", family, f"{family}_{name}_small.pt"), weights_only=False)
    config = MiniMindConfig(**{**fx["config"], "family": family})
    model = MiniMindForCausalLM(config)
    model.load_state_dict(fx["state_dict"], strict=True)
    tokenizer = load_tokenizer(require_shared("fixtures", "minimind_tokenizer" if family == "minimind2" else "minimind3_tokenizer"))
    if family == "minimind2" and name in ("moe", "yarn"):
        with pytest.raises(HFFormatError):
            save_hf_folder(model, tokenizer, tmp_path / "hf")
        return
    theirs = hf_model(save_hf_folder(model, tokenizer, tmp_path / "hf"))
    with torch.no_grad():
        logits = theirs(fx["input_ids"]).logits
    assert (logits - fx["logits"]).abs().max().item() < 1e-4
