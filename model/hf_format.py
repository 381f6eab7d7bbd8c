"""MiniMind ↔ Hugging Face transformers 文件夹（config.json + model.safetensors + 分词器 + generation_config.json）。

两边的参数名本来就一样（MiniMind 沿用了 Llama / Qwen3 的命名），所以转换的全部工作在配置上：
    MiniMind2 稠密   → LlamaForCausalLM   （GQA、可单独指定 head_dim、共享词嵌入）
    minimind-3 稠密  → Qwen3ForCausalLM   （再加每个头的 QK-norm）
    minimind-3 MoE   → Qwen3MoeForCausalLM（softmax 路由、top-k、无共享专家时与 Qwen3-MoE 是同一个函数）
不能精确对应的变体给出一句原因（HFFormatError），而不是转出一个算的东西不一样的模型：
    MiniMind2 MoE：共享专家不经门控直接相加，transformers 里没有这样算的类（Qwen2-MoE 的共享专家有 sigmoid 门）；
    MiniMind2 YaRN：按波长分两段、β 随维度线性变化，与 transformers 的 yarn（YaRN 论文的线性 ramp）公式不同。
只依赖 safetensors（不 import transformers）；原始的 MiniMindConfig 存在 config.json 的 "minimind_config" 里，
转回 .pth 时配置一字不差。
"""
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict

import torch

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM

WEIGHTS_FILE = "model.safetensors"


class HFFormatError(ValueError):
    """不能转换：消息说明是哪个设置、为什么、怎么办。"""


def _yarn_to_hf(config: MiniMindConfig) -> dict:
    """minimind-3 的 YaRN → transformers 的 rope_scaling；公式不同的情形拒绝。"""
    rs = config.rope_scaling
    if config.family == "minimind2":
        raise HFFormatError("MiniMind2 的 YaRN（按波长分两段、β 随维度线性变化）与 transformers 的 yarn 公式不同，"
                            "转出去算的不是同一个函数；请在配置里关掉 inference_rope_scaling 再转换（权重不受影响）")
    if config.max_position_embeddings <= rs["original_max_position_embeddings"]:
        raise HFFormatError(f"max_position_embeddings={config.max_position_embeddings} 不超过 original_max_position_embeddings="
                            f"{rs['original_max_position_embeddings']}：MiniMind 此时不做 YaRN，transformers 仍会做；"
                            "请关掉 inference_rope_scaling 或调大 max_position_embeddings")
    dim = config.head_dim
    high = math.ceil(dim * math.log(rs["original_max_position_embeddings"] / (rs["beta_slow"] * 2 * math.pi))
                     / (2 * math.log(config.rope_theta)))
    if high > dim // 2 - 1:  # MiniMind 把 ramp 的上端截到 dim/2-1，transformers 截到 dim-1：此时两条 ramp 斜率不同
        raise HFFormatError(f"YaRN 的 beta_slow={rs['beta_slow']} 对 head_dim={dim} 落在最后一个频率之外，"
                            "MiniMind 与 transformers 截断 ramp 的方式不同，转出去不是同一个函数")
    return {"rope_type": "yarn", "factor": float(rs["factor"]),
            "original_max_position_embeddings": rs["original_max_position_embeddings"],
            "beta_fast": float(rs["beta_fast"]), "beta_slow": float(rs["beta_slow"]),
            "attention_factor": float(rs.get("attention_factor", 1.0))}


def hf_config(config: MiniMindConfig, tokenizer=None) -> dict:
    """MiniMindConfig → transformers 的 config.json 内容；不能精确对应时抛 HFFormatError。"""
    if config.use_moe and config.family == "minimind2":
        raise HFFormatError("MiniMind2 的 MoE 不支持转换：它的共享专家不经门控直接加到输出上，transformers 里没有这样算的类"
                            "（Qwen2-MoE 的共享专家乘 sigmoid 门，Mixtral 没有共享专家）")
    if config.use_moe and config.n_shared_experts > 0:
        raise HFFormatError(f"minimind-3 MoE 带 {config.n_shared_experts} 个共享专家时不支持转换：Qwen3-MoE 没有共享专家")
    common = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, rope_scaling=_yarn_to_hf(config) if config.rope_scaling else None,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, attention_dropout=0.0,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, dtype="float32", use_cache=True,
    )
    if tokenizer is not None:
        common.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if config.family == "minimind2":
        arch = dict(architectures=["LlamaForCausalLM"], model_type="llama", mlp_bias=False)
    elif not config.use_moe:
        arch = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", use_sliding_window=False,
                    sliding_window=None, max_window_layers=config.num_hidden_layers)
    else:
        arch = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", use_sliding_window=False,
                    sliding_window=None, num_experts=config.n_routed_experts,
                    num_experts_per_tok=config.num_experts_per_tok, moe_intermediate_size=config.moe_intermediate_size,
                    norm_topk_prob=config.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                    router_aux_loss_coef=config.aux_loss_alpha, output_router_logits=False)
    return {**arch, **common, "minimind_config": config.to_dict()}


def minimind_config_from_hf(hf: dict) -> MiniMindConfig:
    """transformers 的 config.json → MiniMindConfig；本模块转出的文件夹直接取回原配置。"""
    if "minimind_config" in hf:
        return MiniMindConfig.from_dict(hf["minimind_config"])
    arch = (hf.get("architectures") or [None])[0]
    families = {"LlamaForCausalLM": "minimind2", "Qwen3ForCausalLM": "minimind3", "Qwen3MoeForCausalLM": "minimind3"}
    if arch not in families:
        raise HFFormatError(f"不支持 architectures={hf.get('architectures')}：只能转回 {sorted(families)}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise HFFormatError("这个模型的注意力或 MLP 带 bias，MiniMind 没有 bias")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = hf.get("rope_theta", rope.get("rope_theta", 1e6))
    kwargs = dict(family=families[arch], vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                  intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
                  num_attention_heads=hf["num_attention_heads"],
                  num_key_value_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                  head_dim=hf.get("head_dim"), hidden_act=hf.get("hidden_act", "silu"),
                  max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf["rms_norm_eps"],
                  rope_theta=float(theta), tie_word_embeddings=hf.get("tie_word_embeddings", False),
                  bos_token_id=hf.get("bos_token_id", 1), eos_token_id=hf.get("eos_token_id", 2))
    if rope_type == "yarn":
        if arch == "LlamaForCausalLM":
            raise HFFormatError("Llama 的 yarn 与 MiniMind2 的 YaRN 公式不同：请去掉 rope_scaling 再转换")
        kwargs.update(inference_rope_scaling=True, rope_scaling={
            "type": "yarn", **{k: rope[k] for k in ("factor", "original_max_position_embeddings", "beta_fast",
                                                    "beta_slow", "attention_factor") if rope.get(k) is not None}})
    elif rope_type != "default":
        raise HFFormatError(f"不支持 rope_type={rope_type!r}：MiniMind 只有普通 RoPE 和 YaRN")
    if arch == "Qwen3MoeForCausalLM":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise HFFormatError("这个 Qwen3-MoE 有稠密层（mlp_only_layers / decoder_sparse_step），MiniMind 的 MoE 每层都是专家层")
        kwargs.update(use_moe=True, num_experts=hf["num_experts"], num_experts_per_tok=hf["num_experts_per_tok"],
                      moe_intermediate_size=hf["moe_intermediate_size"], n_shared_experts=0,
                      norm_topk_prob=hf.get("norm_topk_prob", True))
    return MiniMindConfig(**kwargs)


def hf_state_dict(model: MiniMindForCausalLM) -> Dict[str, torch.Tensor]:
    """参数名与 transformers 相同；共享词嵌入时只存 model.embed_tokens.weight（与 save_pretrained 相同）。"""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


def save_hf_folder(model: MiniMindForCausalLM, tokenizer, out_dir) -> Path:
    """写出 transformers 文件夹；先写到旁边的临时目录，全部写完再改名（不会留下半个文件夹）。"""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise HFFormatError(f"{out_dir} 已存在：请换一个输出目录，或先删掉它")
    config = hf_config(model.config, tokenizer)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        save_file(hf_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                      "pad_token_id": config.get("pad_token_id"), "do_sample": True, "temperature": 0.85, "top_p": 0.85}
        with open(tmp / "generation_config.json", "w", encoding="utf-8") as f:
            json.dump(generation, f, indent=2)
        tokenizer.save(tmp)
        tokenizer_config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer_config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        with open(tmp / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(tokenizer_config, f, ensure_ascii=False, indent=2)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_hf_folder(folder) -> MiniMindForCausalLM:
    """读 transformers 文件夹（本模块转出的，或同结构的 Llama / Qwen3 / Qwen3-MoE）成 MiniMind 模型。"""
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise HFFormatError(f"{folder} 里没有 {WEIGHTS_FILE}（分片的 safetensors 暂不支持）")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise HFFormatError("读 transformers 文件夹需要 safetensors：pip install -r requirements-serve.txt") from None
    with open(folder / "config.json", encoding="utf-8") as f:
        config = minimind_config_from_hf(json.load(f))
    try:
        state = load_file(str(weights))
    except Exception as e:  # 截断、Git-LFS 指针或不是 safetensors
        raise HFFormatError(f"{weights} 无法读取（{type(e).__name__}: {e}）；文件可能不完整，请重新获取") from None
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    model = MiniMindForCausalLM(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise HFFormatError(f"{weights} 与 config.json 不匹配：缺少 {missing[:3]}，多出 {unexpected[:3]}，形状不对 {wrong[:3]}")
    model.load_state_dict(state, strict=True)
    return model
