"""MiniMind 模型的纯 PyTorch 实现。`from model import MiniMindConfig, MiniMindForCausalLM`。"""
from model.model_minimind import (
    ACT2FN,
    Attention,
    CausalLMOutput,
    FeedForward,
    MiniMindBlock,
    MiniMindConfig,
    MiniMindForCausalLM,
    MiniMindModel,
    MoEGate,
    MOEFeedForward,
    RMSNorm,
    apply_rotary_pos_emb,
    attention_bias,
    precompute_freqs_cis,
    repeat_kv,
    rotate_half,
)

__all__ = [
    "ACT2FN", "Attention", "CausalLMOutput", "FeedForward", "MiniMindBlock", "MiniMindConfig",
    "MiniMindForCausalLM", "MiniMindModel", "MoEGate", "MOEFeedForward", "RMSNorm",
    "apply_rotary_pos_emb", "attention_bias", "precompute_freqs_cis", "repeat_kv", "rotate_half",
]
