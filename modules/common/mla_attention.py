"""多头潜在注意力 MLA（Multi-head Latent Attention，DeepSeek-V2 2024 §2.1）：实验模型 LabConfig(attention="mla") 的注意力。

标准注意力（MHA/GQA/MQA）每个 token 每层要缓存 2·n_kv·hd 个数（每个 KV 头一份 k、一份 v）。
MLA 只缓存一个低维的潜向量 c_KV 和一个所有头共用的 RoPE key：

    c_KV = W_DKV · h                    (d_c,)       ← 缓存
    k_C  = W_UK · c_KV,  v = W_UV · c_KV  (nh, hd)     每个头从同一个潜向量"解压"出自己的 k、v
    k_R  = RoPE(W_KR · h)               (d_R,)       ← 缓存，所有头共用（"解耦"的 RoPE key）
    q    = [q_C ; RoPE(q_R)]            (nh, hd + d_R)
    score_h = (q_C,h · k_C,h + q_R,h · k_R) / √(hd + d_R)

每个 token 每层缓存 d_c + d_R 个数，而不是 2·n_kv·hd。

为什么 RoPE 要"解耦"：推理时 W_UK 可以并进 query（q_C·(W_UK c) = (W_UKᵀ q_C)·c，"吸收"形式，见 forward_absorbed），
注意力直接对缓存的 c_KV 计算，不必把 k 解压出来；但如果 RoPE 作用在 k_C 上，旋转矩阵夹在 q 和 W_UK 之间、
随位置变化，W_UK 就并不进去了。所以位置信息单独走一条小的 q_R / k_R 通路。

本实现的简化（这个尺寸下不需要）：没有 query 压缩（DeepSeek-V2 的 W_DQ / W_UQ，只省训练时的激活），
c_KV 后面也没有 RMSNorm（DeepSeek-V2 的开源实现有一个），v 的维度与 k_C 相同（都是 hd = hidden / n_heads）。
"""
import math
from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.fused_ops import apply_rotary_pos_emb_fused
from modules.common.attention_mask import sliding_window_mask

# 一层 MLA 的缓存：(c_KV, k_R)，形状 (B, S, d_c)、(B, S, d_R)
LatentCache = Tuple[torch.Tensor, torch.Tensor]


class MultiHeadLatentAttention(nn.Module):
    """MLA。forward 是训练用的"显式"形式（解压出每个头的 k、v）；forward_absorbed 是推理用的"吸收"形式
    （W_UK 并进 query，注意力直接对潜向量缓存计算），两者数学上相等（tests 里有证明）。

    与 LabAttention 相同的接口：forward(x, position_embeddings)，record / last_weights 供 record_attention 使用。
    config 是 LabConfig（attention="mla"）；position_embeddings 是长 d_R 的 RoPE cos/sin 表，各 (T, d_R)。
    """

    def __init__(self, config):
        super().__init__()
        H, nh = config.hidden_size, config.n_heads
        self.n_heads, self.head_dim = nh, H // nh
        self.latent_dim, self.rope_dim = config.kv_latent_dim, config.rope_head_dim
        hd, dc, dr = self.head_dim, self.latent_dim, self.rope_dim
        self.q_proj = nn.Linear(H, nh * hd, bias=False)  # q_C：内容部分的 query
        self.q_rope_proj = nn.Linear(H, nh * dr, bias=False)  # q_R：每个头各一份，做 RoPE
        self.kv_down_proj = nn.Linear(H, dc, bias=False)  # W_DKV：h → c_KV（缓存它）
        self.k_rope_proj = nn.Linear(H, dr, bias=False)  # W_KR：h → k_R（缓存它，所有头共用）
        self.k_up_proj = nn.Linear(dc, nh * hd, bias=False)  # W_UK：c_KV → 每个头的 k_C
        self.v_up_proj = nn.Linear(dc, nh * hd, bias=False)  # W_UV：c_KV → 每个头的 v
        self.o_proj = nn.Linear(nh * hd, H, bias=False)
        self.scale = 1 / math.sqrt(hd + dr) if config.qk_scale == "inv_sqrt_d" else 1.0
        self.causal = config.causal
        self.sliding_window, self.attention_sinks = config.sliding_window, config.attention_sinks
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.record = False  # True 时把注意力权重存到 self.last_weights（record_attention 用）
        self.last_weights: Optional[torch.Tensor] = None
        self.keep_cache = False  # True 时把这一层会缓存的 (c_KV, k_R) 存到 self.last_cache（record_latent_cache 用）
        self.last_cache: Optional[LatentCache] = None

    def project(self, x, position_embeddings):
        """一次算出 query 两部分和要缓存的两样东西：q_C (B, T, nh, hd)、q_R (B, T, nh, d_R)、
        c_KV (B, T, d_c)、k_R (B, T, d_R)。q_R 和 k_R 已按位置旋转。"""
        B, T, _ = x.shape
        q_c = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        q_r = self.q_rope_proj(x).view(B, T, self.n_heads, self.rope_dim)  # (B, T, nh, dR)
        c_kv = self.kv_down_proj(x)  # (B, T, dc)
        k_r = self.k_rope_proj(x).view(B, T, 1, self.rope_dim)  # (B, T, 1, dR)：一个"头"，所有头共用
        q_r, k_r = apply_rotary_pos_emb_fused(q_r, k_r, *position_embeddings)
        return q_c, q_r, c_kv, k_r.squeeze(2)

    def forward(self, x, position_embeddings=None):
        """显式形式：从 c_KV 解压出每个头的 k_C、v，拼上共用的 k_R，做普通的多头注意力。"""
        if position_embeddings is None:
            raise ValueError("MLA 需要 RoPE 的 cos/sin 表（LabConfig.pos_encoding 必须是 'rope'）")
        B, T, _ = x.shape
        q_c, q_r, c_kv, k_r = self.project(x, position_embeddings)
        if self.keep_cache:
            self.last_cache = (c_kv.detach(), k_r.detach())
        k_c = self.k_up_proj(c_kv).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        v = self.v_up_proj(c_kv).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        q = torch.cat([q_c, q_r], dim=-1).transpose(1, 2)  # (B, nh, T, hd+dR)
        k = torch.cat([k_c, k_r[:, :, None].expand(B, T, self.n_heads, self.rope_dim)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)  # (B, nh, T, hd)

        windowed = self.sliding_window is not None
        allowed = sliding_window_mask(T, T, self.sliding_window, self.attention_sinks, x.device) if self.causal else None
        if self.record:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, T)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            weights = scores.float().softmax(dim=-1).type_as(q)
            self.last_weights = weights.detach()
            y = self.attn_dropout(weights) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed if windowed else None,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=self.causal and not windowed, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hd)
        return self.resid_dropout(self.o_proj(y))

    def forward_absorbed(self, x, position_embeddings, past: Optional[LatentCache] = None):
        """吸收形式（推理）：只对新 token x (B, T, H) 计算，注意力直接对潜向量缓存做，k、v 从不解压。

        position_embeddings：这 T 个新位置的 cos/sin（各 (T, d_R)）；past：之前 S0 个 token 的 (c_KV, k_R)。
        返回 (输出 (B, T, H), 新的缓存 (c_KV (B, S, d_c), k_R (B, S, d_R)))，S = S0 + T。

            q_C,h · k_C,h = q_C,h · (W_UK,h c) = (W_UK,hᵀ q_C,h) · c      → 每个头的 query 先乘 W_UK,hᵀ，变成 d_c 维
            o_h = Σ_s p_s W_UV,h c_s = W_UV,h (Σ_s p_s c_s)              → 先对潜向量加权平均，再乘 W_UV,h
        （部署时 W_UV 还可以再并进 o_proj；这里保留这一步，便于对照。）"""
        B, T, _ = x.shape
        q_c, q_r, c_kv, k_r = self.project(x, position_embeddings)
        if past is not None:
            c_kv = torch.cat([past[0], c_kv], dim=1)  # (B, S, dc)
            k_r = torch.cat([past[1], k_r], dim=1)  # (B, S, dR)
        S = c_kv.shape[1]
        w_uk = self.k_up_proj.weight.view(self.n_heads, self.head_dim, self.latent_dim)  # (nh, hd, dc)
        w_uv = self.v_up_proj.weight.view(self.n_heads, self.head_dim, self.latent_dim)  # (nh, hd, dc)
        q_latent = torch.einsum("bthd,hdc->bhtc", q_c, w_uk)  # (B, nh, T, dc)：W_UK 吸收进 query
        scores = (q_latent @ c_kv[:, None].transpose(-2, -1)  # (B, nh, T, S)：内容部分直接对 c_KV
                  + q_r.transpose(1, 2) @ k_r[:, None].transpose(-2, -1)) * self.scale  # 位置部分对共用的 k_R
        allowed = sliding_window_mask(T, S, self.sliding_window, self.attention_sinks, x.device) if self.causal else None
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = scores.float().softmax(dim=-1).type_as(scores)  # (B, nh, T, S)
        o_latent = weights @ c_kv[:, None]  # (B, nh, T, dc)：先在潜空间里加权平均
        y = torch.einsum("bhtc,hdc->bthd", o_latent, w_uv).reshape(B, T, -1)  # (B, T, nh*hd)
        return self.o_proj(y), (c_kv, k_r)


def cache_values_per_token(config) -> int:
    """一个 token 在所有层一共缓存多少个数：MLA 是 L·(d_c + d_R)，MHA/GQA/MQA 是 2·L·n_kv·hd。"""
    if config.attention == "mla":
        return config.num_layers * (config.kv_latent_dim + config.rope_head_dim)
    return 2 * config.num_layers * config.n_kv_heads * (config.hidden_size // config.n_heads)


@contextmanager
def record_latent_cache(model: nn.Module):
    """打开每层 MLA 的缓存记录；产出 {"layers.0": (c_KV (B, T, d_c), k_R (B, T, d_R)), ...}，前向结束后填好。
    这就是解码时这一层要存的全部东西——实验据此量出真实的缓存字节。"""
    attns = [(i, layer.self_attn) for i, layer in enumerate(model.model.layers)]
    if not all(isinstance(a, MultiHeadLatentAttention) for _, a in attns):
        raise ValueError("record_latent_cache 只适用于 LabConfig(attention='mla') 的模型")
    caches: Dict[str, LatentCache] = {}
    for _, attn in attns:
        attn.keep_cache = True
    try:
        yield caches
    finally:
        for i, attn in attns:
            attn.keep_cache = False
            if attn.last_cache is not None:
                caches[f"layers.{i}"] = attn.last_cache
                attn.last_cache = None
