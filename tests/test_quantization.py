"""model/quantization.py：int8 / int4 只量化权重；以及 trainer/model_loading.py 的 --quantize。

误差的阈值都来自实测（随机初始化的小模型，std 0.02，与训练前的 MiniMind 相同），见各测试的说明。
"""
import argparse
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from model.checkpoint import save_checkpoint
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.quantization import (QuantizedLinear, dequantize_weight, pack_int4, quantize_model, quantize_weight,
                                unpack_int4, uses_int8_kernel, weight_bytes)
from model.tokenization import load_tokenizer
from trainer.model_loading import ModelLoadError, add_model_args, load_chat_model, resolve_model_args

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(vocab_size=6400, tie_word_embeddings=True):
    return MiniMindConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=vocab_size, max_position_embeddings=512, tie_word_embeddings=tie_word_embeddings)


@pytest.fixture(scope="module")
def fp_model():
    torch.manual_seed(0)
    return MiniMindForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 6400, (2, 32), generator=torch.Generator().manual_seed(1))


def quantized(model, bits=8, group_size=None):
    return quantize_model(copy.deepcopy(model), bits, group_size)


def linear_bytes(out_features, in_features, bits, group_size):
    """按格式独立算出的 QuantizedLinear 字节数：整数权重 + float32 的 scale。"""
    n_scales = 1 if group_size == 0 else out_features * (in_features // (group_size or in_features))
    return out_features * in_features * bits // 8 + n_scales * 4


# ---------------------------------------------------------------------------
# 单个权重：RTN 的误差界、int4 打包、离群值
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits, group_size", [(8, None), (8, 0), (8, 32), (4, None), (4, 0), (4, 32)])
def test_round_to_nearest_error_is_at_most_half_a_scale(bits, group_size):
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.02
    w[3, 7] = 0.5  # 一个离群值：所在组的 scale 变大，误差界跟着变大，仍要成立
    q, scale = quantize_weight(w, bits, group_size)
    err = (dequantize_weight(q, scale, bits) - w).abs()  # (96, 128)
    bound = (scale / 2).repeat_interleave(128 // scale.shape[1], dim=1).expand_as(w)  # (96, 128)：每个元素所在组的 scale/2
    assert (err <= bound * (1 + 1e-5)).all()  # 余量只是 float32 的舍入
    assert (err > 0.45 * bound).any()  # 真在舍入（误差会逼近界），而不是什么都没做


def test_int4_packs_two_values_per_byte_and_round_trips_bit_exactly():
    q = torch.tensor([[-7, 0, 7, 1]], dtype=torch.int8)
    # 低 4 位是前半行的 q + 8，高 4 位是后半行的：(-7+8) | (7+8)<<4 = 241，(0+8) | (1+8)<<4 = 152
    assert pack_int4(q).tolist() == [[241, 152]]
    q = torch.randint(-7, 8, (64, 96), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (64, 48)
    assert torch.equal(unpack_int4(packed), q)


def test_per_channel_beats_per_tensor_with_an_outlier_row():
    """Dettmers 式的离群值：一整行大 100 倍。per-tensor 的 scale 被它撑大，其余各行几乎全被舍成 0。"""
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    w[5] *= 100
    normal = torch.arange(64) != 5

    def error(group_size):
        q, scale = quantize_weight(w, 8, group_size)
        return (dequantize_weight(q, scale) - w)[normal].pow(2).mean()

    assert error(None) < error(0) / 100  # 每行自己的 scale：其余行不受连累


def test_group_wise_beats_per_channel_with_an_outlier_column_block():
    """离群值集中在某几个输入维（一整块列），每行都被它撑大 scale；分组后只有那一组受影响。"""
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    w[:, 32:64] *= 100
    normal = torch.ones(256, dtype=torch.bool)
    normal[32:64] = False

    def errors(group_size):  # (整个矩阵的均方误差, 正常列上的均方误差)
        q, scale = quantize_weight(w, 4, group_size)
        err = (dequantize_weight(q, scale, 4) - w).pow(2)
        return err.mean(), err[:, normal].mean()

    (group_all, group_normal), (channel_all, channel_normal) = errors(32), errors(None)
    assert group_all <= channel_all
    assert group_normal < channel_normal / 10  # 实测约小 100 倍：离群的那一组之外，scale 回到正常大小


def test_bad_settings_are_rejected_with_a_clear_message():
    w = torch.randn(8, 96)
    with pytest.raises(ValueError, match="只支持 8"):
        quantize_weight(w, bits=3)
    with pytest.raises(ValueError, match="不整除输入维 96"):
        quantize_weight(w, group_size=64)
    with pytest.raises(ValueError, match="偶数"):
        quantize_weight(torch.randn(8, 7), bits=4)


# ---------------------------------------------------------------------------
# 存储的字节数
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits, group_size, min_ratio", [(8, None, 3.9), (4, 32, 6.4), (4, 128, 7.5)])
def test_a_real_sized_layer_shrinks_by_the_expected_bytes(bits, group_size, min_ratio):
    """MiniMind2-26M 的 up_proj (1408, 512)：fp32 每个权重 32 bit；int8 8 bit；int4 4 bit + 每组一个 float32 scale
    （组 32：+1 bit，共 5 bit → 6.4 倍；组 128：+0.25 bit → 7.5 倍）。"""
    fp = nn.Sequential(nn.Linear(512, 1408, bias=False))
    q = quantize_model(copy.deepcopy(fp), bits, group_size, skip=())
    assert isinstance(q[0], QuantizedLinear)
    assert weight_bytes(fp) == 1408 * 512 * 4
    assert weight_bytes(q) == linear_bytes(1408, 512, bits, group_size)
    assert weight_bytes(fp) / weight_bytes(q) >= min_ratio


@pytest.mark.parametrize("bits, group_size", [(8, None), (4, 32)])
def test_model_bytes_drop_by_exactly_the_quantized_layers(fp_model, bits, group_size):
    """lm_head 与 embed_tokens 共享、不量化（只算一次）；其余每个 nn.Linear 从 fp32 变成 QuantizedLinear。"""
    linears = [m for name, m in fp_model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"]
    assert len(linears) == 2 * 7  # 每层 q/k/v/o + gate/up/down
    expected = weight_bytes(fp_model) - sum(m.weight.numel() * 4 - linear_bytes(m.out_features, m.in_features,
                                                                                 bits, group_size) for m in linears)
    model = quantized(fp_model, bits, group_size)
    assert weight_bytes(model) == expected
    assert model.quantization == {"bits": bits, "group_size": group_size}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # 共享的权重仍是同一个


def test_quantizing_the_tied_lm_head_is_refused_but_an_untied_one_is_quantized(fp_model):
    with pytest.raises(ValueError, match="共享权重"):
        quantize_model(copy.deepcopy(fp_model), skip=())
    untied = quantize_model(MiniMindForCausalLM(tiny_config(tie_word_embeddings=False)), skip=())
    assert isinstance(untied.lm_head, QuantizedLinear)


# ---------------------------------------------------------------------------
# 量化后的模型：logits、生成、存取
# ---------------------------------------------------------------------------
def test_int8_logits_stay_close_to_fp32(fp_model, ids):
    """实测（种子 0–3）：int8 per-channel 的 max|Δlogits| / std(logits) 为 0.047–0.059，逐位置 argmax 一致率 1.0。
    阈值取 0.15 与 0.9：留出约 2.5 倍余量给其他机器的浮点差异；scale 错一个因子或没有舍入都会差几个数量级。"""
    with torch.no_grad():
        ref = fp_model(ids).logits
        out = quantized(fp_model)(ids).logits
    assert (out - ref).abs().max() / ref.std() < 0.15
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_int8_greedy_generation_matches_fp32(ids):
    """贪心生成 16 个 token。随机初始化、权重共享的小模型只会一直重复同一个 token（比对没有意义），
    所以这里用不共享的 lm_head（仍按默认跳过、保持浮点）：fp32 的输出有 12 种不同的 token。
    实测（种子 0–3）int8 与 fp32 的 16 个位置全部相同；要求至少 12 个（一处分叉之后上下文就不同了）。"""
    torch.manual_seed(0)
    fp = MiniMindForCausalLM(tiny_config(tie_word_embeddings=False)).eval()
    prompt = ids[:1, :8]
    ref = fp.generate(prompt, max_new_tokens=16, eos_token_id=-1)[0, 8:]
    out = quantized(fp).generate(prompt, max_new_tokens=16, eos_token_id=-1)[0, 8:]
    assert len(set(ref.tolist())) >= 4  # 参照本身不是一个 token 的重复
    assert len(out) == 16 and (out == ref).sum() >= 12


@pytest.mark.parametrize("bits, group_size", [(8, None), (4, 32)])
def test_generate_with_kv_cache_equals_recomputing_everything(fp_model, ids, bits, group_size):
    model = quantized(fp_model, bits, group_size)
    prompt = ids[:1, :8]
    with_cache = model.generate(prompt, max_new_tokens=10, eos_token_id=-1)
    without = model.generate(prompt, max_new_tokens=10, eos_token_id=-1, use_cache=False)
    assert with_cache.shape == (1, 18) and torch.equal(with_cache, without)


@pytest.mark.parametrize("bits, group_size", [(8, None), (4, 32)])
def test_state_dict_loads_into_a_fresh_quantized_skeleton(fp_model, ids, tmp_path, bits, group_size):
    model = quantized(fp_model, bits, group_size)
    torch.save(model.state_dict(), tmp_path / "q.pth")
    state = torch.load(tmp_path / "q.pth", weights_only=True)
    assert state["model.layers.0.mlp.up_proj.qweight"].dtype == (torch.int8 if bits == 8 else torch.uint8)
    torch.manual_seed(123)  # 骨架的浮点部分是另一组随机数：相同的 logits 只能来自加载进来的状态
    skeleton = quantize_model(MiniMindForCausalLM(tiny_config()), bits, group_size).eval()
    skeleton.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(skeleton(ids).logits, model(ids).logits)


def test_int8_kernel_gives_the_same_result_as_dequantizing():
    """torch._weight_int8pack_mm 的调用约定（2 维输入、scale 为 (out,)）：与"还原再乘"在 bfloat16 的精度内一致。
    默认的 float32 激活不走它（x86 上没有向量化实现），这里直接调用，与机器无关地检查结果。"""
    if not hasattr(torch, "_weight_int8pack_mm"):
        pytest.skip("这个 PyTorch 没有 torch._weight_int8pack_mm")
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(128, 96, bias=False))
    x = torch.randn(2, 5, 128, dtype=torch.bfloat16)
    assert uses_int8_kernel(x) and not uses_int8_kernel(x.float())
    with torch.no_grad():
        kernel = layer(x)  # (2, 5, 96)，走内核
        reference = layer(x.float())  # 走还原再乘
    assert kernel.shape == (2, 5, 96) and kernel.dtype == torch.bfloat16
    assert (kernel.float() - reference).abs().max() < 0.02 * reference.abs().max()


def test_quantizing_twice_is_refused(fp_model):
    model = quantized(fp_model)
    with pytest.raises(ValueError, match="已经量化过"):
        quantize_model(model)


# ---------------------------------------------------------------------------
# --quantize：eval_llm 与 API 服务共用的加载
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """随机的小模型 base.pth + base.json（与 train_*.py 的输出格式相同）。lm_head 不与词嵌入共享：
    共享时随机模型只会重复同一个 token，量化与否的回答都一样，端到端测试就分不出 --quantize 有没有生效。"""
    tmp = tmp_path_factory.mktemp("quantize_load")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(load_tokenizer().vocab_size, tie_word_embeddings=False))
    save_checkpoint(model, tmp / "base.pth")
    model.config.save(tmp / "base.json")
    return tmp / "base.pth", model.eval()


def load_args(*argv):
    parser = add_model_args(argparse.ArgumentParser())
    return resolve_model_args(parser.parse_args([*map(str, argv), "--device", "cpu"]))


def test_load_chat_model_quantizes_and_reports_the_bytes(tiny_checkpoint, capsys):
    path, fp = tiny_checkpoint
    ids = torch.randint(0, fp.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model, _ = load_chat_model(load_args("--weights", path, "--quantize", "int8"))
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)
    assert model.quantization == {"bits": 8, "group_size": None}
    before, after = weight_bytes(fp) / 2**20, weight_bytes(model) / 2**20
    assert f"--quantize int8：权重 {before:.1f} MiB → {after:.1f} MiB" in capsys.readouterr().out
    with torch.no_grad():  # 与直接对同一份权重调用 quantize_model 完全相同
        assert torch.equal(model(ids).logits, quantized(fp)(ids).logits)
    plain, _ = load_chat_model(load_args("--weights", path))
    assert getattr(plain, "quantization", None) is None  # 默认 none：不量化


def test_quantize_with_a_lora_adapter_is_refused_before_loading(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(ModelLoadError, match="不能和 --lora_weight 一起用"):
        load_args("--weights", path, "--lora_weight", path.with_name("adapter.pth"), "--merge_lora",
                  "--quantize", "int8")


def test_convert_model_refuses_to_export_a_quantized_model(tiny_checkpoint, tmp_path, capsys):
    """转换脚本也用 add_model_args：量化后的 qweight/scale 写进 transformers 文件夹就成了读不回来的文件。"""
    from scripts.convert_model import parse_args
    path, _ = tiny_checkpoint
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--weights", str(path), "--quantize", "int8", "--out_dir", str(tmp_path / "hf")])
    assert exit_info.value.code == 2 and "--quantize 只用于推理" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_eval_llm_chats_with_an_int4_model(tiny_checkpoint):
    """端到端：命令行的 --quantize int4 经 load_chat_model 生效，回答与进程内量化后的贪心输出相同。"""
    path, fp = tiny_checkpoint
    tokenizer = load_tokenizer()
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "你好"}],
                                                                add_generation_prompt=True))

    def reply(model):
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, len(prompt_ids):].tolist()).rstrip("\ufffd").strip()

    expected = reply(quantized(fp, 4, 32))
    assert expected != reply(fp)  # 实测第 2 个 token 起就不同：回答相同说明量化真的生效了
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "eval_llm.py"), "--weights", str(path),
                           "--quantize", "int4", "--prompt", "你好", "--temperature", "0", "--max_new_tokens", "8",
                           "--device", "cpu"], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--quantize int4：权重" in proc.stdout
    assert proc.stdout.split("MiniMind：", 1)[1].strip() == expected
