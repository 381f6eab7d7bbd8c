"""eval_llm.py --lora_weight：基座 + train_lora.py 的适配器，秩 / alpha / 目标层从适配器旁边的 .json 读取。

基座是随机初始化的小模型（不训练），适配器手工做成 B ≠ 0，所以挂没挂上、alpha 用没用对，贪心输出都不一样。
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.model_lora import apply_lora, save_lora
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.tokenization import load_tokenizer
from trainer.model_loading import ModelLoadError, attach_lora

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "你好"
MAX_NEW = 12


def tiny_config(vocab_size):
    return MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=vocab_size, max_position_embeddings=512)


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """随机基座 base.pth(+.json)，以及 rank 4、alpha 12（scaling 3）、只挂 q_proj/o_proj 的适配器。"""
    tmp = tmp_path_factory.mktemp("lora_chat")
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    base = MiniMindForCausalLM(tiny_config(tokenizer.vocab_size))
    save_checkpoint(base, tmp / "base.pth")
    base.config.save(tmp / "base.json")
    apply_lora(base, rank=4, alpha=12.0, target_modules=["q_proj", "o_proj"])
    for name, p in base.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    save_lora(base, tmp / "adapter.pth")
    with open(tmp / "adapter.json", "w", encoding="utf-8") as f:  # 与 train_lora.py 写的格式相同
        json.dump({"lora_rank": 4, "lora_alpha": 12.0, "lora_targets": ["q_proj", "o_proj"]}, f)
    return tmp, tokenizer


def greedy_reply(model, tokenizer):
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                         add_generation_prompt=True))
    out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):].tolist()).rstrip("\ufffd").strip()


def chat(*args):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "eval_llm.py"), "--prompt", PROMPT,
                           "--temperature", "0", "--max_new_tokens", str(MAX_NEW), "--device", "cpu", *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("MiniMind：", 1)[1].strip()


def reference(tmp, tokenizer, lora: bool, merge=False):
    model = MiniMindForCausalLM(tiny_config(tokenizer.vocab_size))
    model.load_state_dict(torch.load(tmp / "base.pth", weights_only=True))
    if lora:
        attach_lora(model, tmp / "adapter.pth", merge=merge)
    return greedy_reply(model.eval(), tokenizer)


def test_eval_llm_chats_through_a_lora_adapter(base_and_adapter):
    tmp, tokenizer = base_and_adapter
    with_lora, without = reference(tmp, tokenizer, lora=True), reference(tmp, tokenizer, lora=False)
    assert with_lora != without  # 否则这个测试分不出适配器挂没挂上
    assert chat("--weights", tmp / "base.pth") == without
    assert chat("--weights", tmp / "base.pth", "--lora_weight", tmp / "adapter.pth") == with_lora
    assert chat("--weights", tmp / "base.pth", "--lora_weight", tmp / "adapter.pth", "--merge_lora") == with_lora


def test_alpha_and_targets_come_from_the_sidecar(base_and_adapter):
    tmp, tokenizer = base_and_adapter
    model = MiniMindForCausalLM(tiny_config(tokenizer.vocab_size))
    settings = attach_lora(model, tmp / "adapter.pth")
    layers = [m for m in model.modules() if type(m).__name__ == "LoRALinear"]
    assert settings["lora_targets"] == ["o_proj", "q_proj"] and len(layers) == 2 * 2  # 2 层 × 2 个目标
    assert all(m.rank == 4 and m.scaling == 3.0 for m in layers)
    # 合并与不合并：同一个函数
    merged = MiniMindForCausalLM(tiny_config(tokenizer.vocab_size))
    merged.load_state_dict(model.state_dict(), strict=False)
    attach_lora(merged, tmp / "adapter.pth", merge=True)
    x = torch.randint(0, tokenizer.vocab_size, (1, 10))
    torch.testing.assert_close(merged(x).logits, model(x).logits, atol=1e-5, rtol=0)


def test_adapter_given_as_weights_or_a_full_model_as_adapter_gets_one_line(base_and_adapter):
    tmp, tokenizer = base_and_adapter
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "eval_llm.py"), "--weights", tmp / "adapter.pth",
                           "--prompt", PROMPT], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 1 and "--lora_weight" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ModelLoadError, match="不是 LoRA 适配器"):
        attach_lora(MiniMindForCausalLM(tiny_config(tokenizer.vocab_size)), tmp / "base.pth")


def test_train_lora_writes_the_settings_eval_llm_reads(base_and_adapter):
    """train_lora.py 在适配器旁边写 .json；eval_llm 直接用它，不必重敲 --lora_rank。"""
    tmp, _ = base_and_adapter
    out = tmp / "trained"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "train_lora.py"), "--quick", "--from_weight",
                           str(tmp / "base.pth"), "--save_dir", str(out), "--lora_rank", "3", "--max_steps", "2",
                           "--device", "cpu"], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    adapters = [p for p in out.glob("lora_identity_*.pth") if not p.stem.endswith("_resume")]
    assert len(adapters) == 1
    settings = json.loads(adapters[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert settings["lora_rank"] == 3 and "lora_alpha" in settings and "lora_targets" in settings
    chat("--weights", tmp / "base.pth", "--lora_weight", adapters[0])  # 退出码 0，并且打印出了回答


def test_released_pth_without_json_is_built_from_the_family_flags(tmp_path):
    """MiniMind 官方发布的 .pth 旁边没有 .json：按 --family / --hidden_size / --num_hidden_layers 建模型。"""
    from trainer.eval_llm import parse_args
    from trainer.model_loading import load_chat_model

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    released = MiniMindForCausalLM(MiniMindConfig(family="minimind3", hidden_size=64, num_hidden_layers=2,
                                                  vocab_size=tokenizer.vocab_size))
    save_checkpoint(released, tmp_path / "minimind3.pth")
    args = parse_args(["--weights", str(tmp_path / "minimind3.pth"), "--family", "minimind3", "--hidden_size", "64",
                       "--num_hidden_layers", "2", "--device", "cpu"])
    model, _ = load_chat_model(args)
    x = torch.randint(0, tokenizer.vocab_size, (1, 12))
    assert model.config.family == "minimind3" and torch.equal(model(x).logits, released.eval()(x).logits)
    with pytest.raises(ModelLoadError, match="不匹配"):  # 忘了 --family：一句话说出这份权重看起来是什么配置
        load_chat_model(parse_args(["--weights", str(tmp_path / "minimind3.pth"), "--hidden_size", "64",
                                    "--num_hidden_layers", "2", "--device", "cpu"]))
