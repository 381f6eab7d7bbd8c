"""参考答案：从零写一个 MiniMind 块（RMSNorm → RoPE → GQA 注意力 → SwiGLU → Pre-Norm 块）。

参数名与 model/model_minimind.py 完全相同，所以 MiniMindBlock 的 state_dict 能直接加载进 Block，
输出逐元素一致（python exercises/check.py --solution 验证）。
config 是任何带下列字段的对象（例如 model/ 的 MiniMindConfig）：
hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, rms_norm_eps。
形状记号：B=batch，T=序列长度，H=hidden_size，nh=注意力头数，nkv=KV 头数，hd=head_dim=H/nh，I=intermediate_size。
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x², 最后一维) + eps) * weight。"""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()  # 在 float32 里求均方根，混合精度时更稳
        rms_inv = torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return self.weight * (x_float * rms_inv).type_as(x)


def precompute_rope(head_dim: int, max_len: int, theta: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """每个位置 m、每对维度 i 的转角 m·θ_i，θ_i = theta^(-2i/hd)；返回 cos, sin，形状都是 (max_len, hd)。"""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
    angles = torch.arange(max_len).float()[:, None] * inv_freq[None, :]  # (max_len, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, hd)：第 i 维与第 i + hd/2 维共用一个角度
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [-x2, x1]（x1、x2 是最后一维的前半与后半）。"""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q: (B, T, nh, hd)，k: (B, T, nkv, hd)，cos/sin: (T, hd)。每对 (x_i, x_{i+hd/2}) 旋转角度 m·θ_i。"""
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, hd)：对所有头广播
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class GQAttention(nn.Module):
    """因果自注意力 + GQA：nh 个 query 头分成 nkv 组，每组共享一对 K/V 头。"""

    def __init__(self, config):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.n_heads
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        q, k = apply_rope(q, k, cos, sin)

        group = self.n_heads // self.n_kv_heads  # 每个 KV 头服务的 query 头数
        k = k.repeat_interleave(group, dim=2)  # (B, T, nh, hd)：KV 头 j 服务 query 头 j*group … (j+1)*group-1
        v = v.repeat_interleave(group, dim=2)

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, nh, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)  # (T, T)：j > i
        scores = scores.masked_fill(future, float("-inf"))
        weights = scores.float().softmax(dim=-1).type_as(q)  # 每行和为 1，只分给 j ≤ i
        y = weights @ v  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)  # (B, T, H)


class SwiGLU(nn.Module):
    """down( silu(gate(x)) * up(x) )：H → I → H。"""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, H)


class Block(nn.Module):
    """Pre-Norm 块：x = x + attn(norm1(x))；x = x + mlp(norm2(x))。"""

    def __init__(self, layer_id: int, config):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GQAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)  # (B, T, H)
        x = x + self.mlp(self.post_attention_layernorm(x))  # (B, T, H)
        return x
