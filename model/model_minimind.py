"""MiniMind2：一个 Llama 风格的因果语言模型，纯 PyTorch 实现（不依赖 transformers）。

阅读顺序就是数据流动的顺序：
    MiniMindConfig → RMSNorm → precompute_freqs_cis / apply_rotary_pos_emb（RoPE）
    → repeat_kv + Attention（GQA）→ FeedForward（SwiGLU）/ MoEGate + MOEFeedForward
    → MiniMindBlock（Pre-Norm + 残差）→ MiniMindModel → MiniMindForCausalLM（+ generate）

state_dict 的键名和形状与 MiniMind2 完全一致，官方发布的 .pth 可以 strict=True 直接加载。
张量形状记号：B=batch，T=本次输入的序列长度，S=含 KV cache 的总长度，
H=hidden_size，nh=注意力头数，nkv=KV 头数，hd=head_dim，V=词表大小。
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.fused_ops import apply_rotary_pos_emb_fused, rms_norm_fused

# 一层的 KV cache：(k, v)，形状都是 (B, S, nkv, hd)
KVCache = Tuple[torch.Tensor, torch.Tensor]

ACT2FN = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


# ---------------------------------------------------------------------------
# 配置
# ---------------------------------------------------------------------------
@dataclass
class MiniMindConfig:
    """MiniMind2 的全部超参数；字段名与默认值和官方实现一致（默认即 26M 的 MiniMind2-Small）。"""

    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    vocab_size: int = 6400
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    hidden_act: str = "silu"
    intermediate_size: Optional[int] = None  # None → 64 * ceil(8/3 * hidden / 64)
    dropout: float = 0.0
    flash_attn: bool = True  # True 走 F.scaled_dot_product_attention，False 走手写 softmax 路径
    fused_ops: bool = True  # True 时 RMSNorm/RoPE 用手写反向（model/fused_ops.py，结果相同、训练更快）；不影响权重
    bos_token_id: int = 1
    eos_token_id: int = 2
    # YaRN：推理时把上下文从 2048 外推到 factor 倍
    inference_rope_scaling: bool = False
    # MoE
    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.1
    seq_aux: bool = True
    norm_topk_prob: bool = True

    def __post_init__(self):
        if self.intermediate_size is None:
            # SwiGLU 有三个矩阵，取 8/3·H 让参数量与 4H 的两矩阵 FFN 持平；再向上取整到 64 的倍数便于硬件对齐
            self.intermediate_size = 64 * math.ceil(8 / 3 * self.hidden_size / 64)
        self.validate()

    def validate(self):
        """检查取值是否自洽；不合法时抛出点名字段的 ValueError。"""
        positive = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "vocab_size", "max_position_embeddings", "intermediate_size",
                    "num_experts_per_tok", "n_routed_experts"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MiniMindConfig.{name} 必须是正整数，收到 {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniMindConfig.num_attention_heads={self.num_attention_heads} "
                             f"必须整除 hidden_size={self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig.num_key_value_heads={self.num_key_value_heads} "
                             f"必须整除 num_attention_heads={self.num_attention_heads}（GQA 每组共享一对 K/V）")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"MiniMindConfig.hidden_size / num_attention_heads = "
                             f"{self.hidden_size // self.num_attention_heads} 必须是偶数（RoPE 按两两一对旋转）")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"MiniMindConfig.hidden_act={self.hidden_act!r} 未知，可选 {sorted(ACT2FN)}")
        if self.scoring_func != "softmax":
            raise ValueError(f"MiniMindConfig.scoring_func={self.scoring_func!r} 不支持，只支持 'softmax'")
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"MiniMindConfig.num_experts_per_tok={self.num_experts_per_tok} "
                             f"不能大于 n_routed_experts={self.n_routed_experts}")
        if self.n_shared_experts < 0:
            raise ValueError(f"MiniMindConfig.n_shared_experts 不能为负，收到 {self.n_shared_experts}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MiniMindConfig.dropout 必须在 [0, 1) 内，收到 {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling(self) -> Optional[dict]:
        """YaRN 参数（与 MiniMind2 相同）；未开启时为 None。"""
        if not self.inference_rope_scaling:
            return None
        return {"type": "yarn", "factor": 4, "original_max_position_embeddings": 2048,
                "beta_fast": 4, "beta_slow": 1}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MiniMindConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MiniMindConfig 不认识字段 {unknown}：这份配置可能属于别的模型或别的版本")
        return cls(**d)

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=2)

    @classmethod
    def load(cls, path) -> "MiniMindConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


# ---------------------------------------------------------------------------
# 归一化
# ---------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) * weight。比 LayerNorm 少了减均值和 bias，更省、效果相当。"""

    def __init__(self, dim: int, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.eps = eps
        self.fused = fused  # True：同样的前向，手写的反向（见 model/fused_ops.py）
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return rms_norm_fused(x, self.weight, self.eps)
        # 在 float32 里求均方根，避免 bf16/fp16 下平方和溢出或精度不足
        return self.weight * self._norm(x.float()).type_as(x)


# ---------------------------------------------------------------------------
# 旋转位置编码 RoPE（含 YaRN 外推）
# ---------------------------------------------------------------------------
def precompute_freqs_cis(dim: int, end: int = 32 * 1024, rope_base: float = 1e6,
                         rope_scaling: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """预先算好每个位置、每个频率的 cos/sin，返回两个 (end, dim) 张量。

    第 i 对维度的角速度 θ_i = base^(-2i/dim)：低维转得快（看局部），高维转得慢（看远处）。
    """
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
    if rope_scaling is not None:
        orig_max = rope_scaling.get("original_max_position_embeddings", 2048)
        factor = rope_scaling.get("factor", 4)
        beta_fast = rope_scaling.get("beta_fast", 4.0)
        beta_slow = rope_scaling.get("beta_slow", 1.0)
        if end / orig_max > 1.0:
            # 波长 2π/θ_i 已超过训练长度的维度（低频）需要插值；corr_dim 是第一个这样的维度
            corr_dim = next((i for i in range(dim // 2) if 2 * math.pi / freqs[i] > orig_max), dim // 2)
            power = torch.arange(0, dim // 2).float() / max(dim // 2 - 1, 1)
            beta = beta_slow + (beta_fast - beta_slow) * power
            # 高频维度按 (β·s - β + 1)/(β·s) 轻微缩放，低频维度按 1/s 线性插值
            scale = torch.where(torch.arange(dim // 2) < corr_dim,
                                (beta * factor - beta + 1) / (beta * factor), 1.0 / factor)
            freqs = freqs * scale
    t = torch.arange(end)
    angles = torch.outer(t, freqs).float()  # (end, dim/2)：位置 m 第 i 对的转角 m·θ_i
    # 两半各放一份，配合 rotate_half 的"前半/后半配对"写法
    freqs_cos = torch.cat([torch.cos(angles), torch.cos(angles)], dim=-1)  # (end, dim)
    freqs_sin = torch.cat([torch.sin(angles), torch.sin(angles)], dim=-1)  # (end, dim)
    return freqs_cos, freqs_sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """把最后一维的 [x1, x2] 变成 [-x2, x1]：第 i 维与第 i+dim/2 维组成一对做二维旋转。"""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """q: (B, T, nh, hd)，k: (B, T, nkv, hd)，cos/sin: (T, hd)。

    旋转后 <R_m q, R_n k> 只依赖 m - n，注意力分数因此只看相对位置。
    """
    cos = cos.unsqueeze(unsqueeze_dim)  # (T, 1, hd)，对所有头广播
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = q * cos + rotate_half(q) * sin
    k_embed = k * cos + rotate_half(k) * sin
    return q_embed, k_embed


# ---------------------------------------------------------------------------
# 注意力（GQA + KV cache）
# ---------------------------------------------------------------------------
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, S, nkv, hd) → (B, S, nkv * n_rep, hd)：让每组 query 头共享同一对 K/V 头。"""
    if n_rep == 1:
        return x
    B, S, n_kv, hd = x.shape
    return x[:, :, :, None, :].expand(B, S, n_kv, n_rep, hd).reshape(B, S, n_kv * n_rep, hd)


def attention_bias(q_len: int, k_len: int, attention_mask: Optional[torch.Tensor],
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """加性注意力偏置：能看的位置为 0，不能看的为 dtype 最小值。返回 (B 或 1, 1, q_len, k_len)。

    因果：第 i 个新 token 位于整段的 k_len - q_len + i，只能看它及之前的位置（兼容 KV cache）。
    attention_mask: (B, k_len)，1 = 真实 token，0 = padding。
    用有限的最小值而不是 -inf：整行都被屏蔽（左侧 padding 的位置）时 softmax 得到均匀分布而不是 NaN。
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q_len, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, k_len)
    allowed = (k_pos <= q_pos)[None, None]  # (1, 1, q_len, k_len)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()  # (B, 1, q_len, k_len)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class Attention(nn.Module):
    """多头自注意力，支持 GQA（nkv < nh 个 K/V 头被多个 query 头共享）与 KV cache。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.flash = config.flash_attn
        self.rope = apply_rotary_pos_emb_fused if config.fused_ops else apply_rotary_pos_emb

    def forward(self, x: torch.Tensor, position_embeddings: Tuple[torch.Tensor, torch.Tensor],
                past_key_value: Optional[KVCache] = None, use_cache: bool = False,
                attention_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[KVCache]]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)

        cos, sin = position_embeddings  # (T, hd)，已按本段的起始位置切好
        q, k = self.rope(q, k, cos, sin)

        if past_key_value is not None:  # 把历史 K/V 接在前面：只需为新 token 计算投影
            k = torch.cat([past_key_value[0], k], dim=1)  # (B, S, nkv, hd)
            v = torch.cat([past_key_value[1], v], dim=1)
        present = (k, v) if use_cache else None

        q = q.transpose(1, 2)  # (B, nh, T, hd)
        if self.flash:  # SDPA 内部处理 GQA（enable_gqa），不必真的把 K/V 复制 n_rep 份
            y = self._sdpa(q, k.transpose(1, 2), v.transpose(1, 2), attention_mask)  # k, v: (B, nkv, S, hd)
        else:
            k = repeat_kv(k, self.n_rep).transpose(1, 2)  # (B, nh, S, hd)
            v = repeat_kv(v, self.n_rep).transpose(1, 2)  # (B, nh, S, hd)
            y = self._explicit_attention(q, k, v, attention_mask)  # (B, nh, T, hd)

        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hd)
        return self.resid_dropout(self.o_proj(y)), present

    def _explicit_attention(self, q, k, v, attention_mask):
        """教科书写法：softmax(QKᵀ/√d + mask) V，每一步都看得见。"""
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, S)
        scores = scores + attention_bias(T, S, attention_mask, scores.dtype, scores.device)
        weights = F.softmax(scores.float(), dim=-1).type_as(q)  # 每行和为 1
        weights = self.attn_dropout(weights)
        return weights @ v  # (B, nh, T, hd)

    def _sdpa(self, q, k, v, attention_mask):
        """同一个数学，交给 PyTorch 的融合内核（CPU/GPU 上都更快、更省内存）。"""
        T, S = q.shape[2], k.shape[2]
        sdpa_args = dict(dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_rep > 1)
        if attention_mask is None and T == S:  # 训练 / 无 cache 的预填充：标准因果
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa_args)
        if attention_mask is None and T == 1:  # 逐 token 解码：新 token 可以看全部历史
            return F.scaled_dot_product_attention(q, k, v, **sdpa_args)
        bias = attention_bias(T, S, attention_mask, q.dtype, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, **sdpa_args)


# ---------------------------------------------------------------------------
# 前馈网络：SwiGLU 与 MoE
# ---------------------------------------------------------------------------
class FeedForward(nn.Module):
    """SwiGLU：down( act(gate(x)) * up(x) )。门控让网络逐维决定放行多少信息。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class MoEGate(nn.Module):
    """路由器：给每个 token 打分，选 top-k 个专家，并算负载均衡辅助损失。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(self.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states: torch.Tensor):
        """hidden_states: (B, T, H) → topk_idx (B*T, k), topk_weight (B*T, k), aux_loss 标量。"""
        B, T, H = hidden_states.shape
        x = hidden_states.view(-1, H)  # (B*T, H)
        scores = F.linear(x, self.weight).softmax(dim=-1)  # (B*T, E)：每个 token 对各专家的偏好
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)  # (B*T, k)
        if self.top_k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)

        aux_loss = scores.new_zeros(())
        if self.training and self.alpha > 0.0:
            E = self.n_routed_experts
            if self.seq_aux:
                # 序列级：每条序列内，专家被选中的频率 f_i（归一到均匀时为 1）× 平均路由概率 P_i
                idx = topk_idx.view(B, -1)  # (B, T*k)
                counts = torch.zeros(B, E, device=x.device)
                counts.scatter_add_(1, idx, torch.ones(B, T * self.top_k, device=x.device))
                f = counts / (T * self.top_k / E)  # (B, E)
                P = scores.view(B, T, E).mean(dim=1)  # (B, E)
                aux_loss = (f * P).sum(dim=1).mean() * self.alpha
            else:
                # 批级：在整个 batch 上统计同样的 f·P
                f = F.one_hot(topk_idx.view(-1), num_classes=E).float().mean(0) * E  # (E,)
                P = scores.mean(0)  # (E,)
                aux_loss = (P * f).sum() * self.alpha
        return topk_idx, topk_weight, aux_loss


class MOEFeedForward(nn.Module):
    """混合专家 FFN：每个 token 只经过 k 个路由专家（加权求和），再加上所有共享专家。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_routed_experts)])
        self.gate = MoEGate(config)
        if config.n_shared_experts > 0:
            self.shared_experts = nn.ModuleList([FeedForward(config) for _ in range(config.n_shared_experts)])
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        k = self.config.num_experts_per_tok
        topk_idx, topk_weight, self.aux_loss = self.gate(x)  # (B*T, k), (B*T, k)
        flat_x = x.view(-1, H)  # (B*T, H)
        if self.training:
            # 训练：每个 token 复制 k 份，各自送进被选中的专家；全程可导，保持输入的 dtype
            x_rep = flat_x.repeat_interleave(k, dim=0)  # (B*T*k, H)
            flat_idx = topk_idx.view(-1)  # (B*T*k,)
            y = torch.empty_like(x_rep)
            for i, expert in enumerate(self.experts):
                chosen = flat_idx == i
                y[chosen] = expert(x_rep[chosen])
            y = (y.view(B * T, k, H) * topk_weight.unsqueeze(-1)).sum(dim=1)  # (B*T, H)
        else:
            y = self.moe_infer(flat_x, topk_idx.view(-1), topk_weight.view(-1, 1))
        y = y.view(B, T, H)
        if self.config.n_shared_experts > 0:
            for expert in self.shared_experts:
                y = y + expert(x)
        return y

    @torch.no_grad()
    def moe_infer(self, x: torch.Tensor, flat_expert_idx: torch.Tensor,
                  flat_expert_weight: torch.Tensor) -> torch.Tensor:
        """推理：按专家把 token 分组，每个专家只跑一次批量前向，再按权重散回原位置。

        x: (N, H)，flat_expert_idx: (N*k,)，flat_expert_weight: (N*k, 1)。
        """
        out = torch.zeros_like(x)
        order = flat_expert_idx.argsort()  # 按专家编号排序后的 (token, 槽位) 下标
        ends = flat_expert_idx.bincount(minlength=len(self.experts)).cumsum(0).tolist()
        token_of = order // self.config.num_experts_per_tok  # 每个槽位属于哪个 token
        start = 0
        for i, end in enumerate(ends):
            if end > start:
                tokens = token_of[start:end]
                expert_out = self.experts[i](x[tokens]) * flat_expert_weight[order[start:end]]
                out.index_add_(0, tokens, expert_out.to(out.dtype))
            start = end
        return out


# ---------------------------------------------------------------------------
# Transformer 块与整体模型
# ---------------------------------------------------------------------------
class MiniMindBlock(nn.Module):
    """Pre-Norm 块：x = x + Attn(Norm(x))；x = x + FFN(Norm(x))。残差通路上没有归一化，梯度可直达底层。"""

    def __init__(self, layer_id: int, config: MiniMindConfig):
        super().__init__()
        self.layer_id = layer_id
        self.self_attn = Attention(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.fused_ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.fused_ops)
        self.mlp = MOEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False,
                attention_mask=None):
        attn_out, present = self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                           past_key_value, use_cache, attention_mask)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present  # (B, T, H)


class MiniMindModel(nn.Module):
    """词嵌入 → N 个 MiniMindBlock → 最终 RMSNorm；输出隐藏状态，不含 lm_head。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.fused_ops)
        freqs_cos, freqs_sin = precompute_freqs_cis(config.head_dim, config.max_position_embeddings,
                                                    config.rope_theta, config.rope_scaling)
        # 非持久 buffer：随 .to(device) 移动，但不写进 state_dict（与 MiniMind2 一致）
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[List[Optional[KVCache]]] = None, use_cache: bool = False):
        B, T = input_ids.shape
        past_key_values = past_key_values or [None] * len(self.layers)
        start_pos = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
        if start_pos + T > self.config.max_position_embeddings:
            raise ValueError(f"序列长度 {start_pos + T} 超过 max_position_embeddings="
                             f"{self.config.max_position_embeddings}；请截断输入或调大该配置")
        hidden_states = self.dropout(self.embed_tokens(input_ids))  # (B, T, H)
        position_embeddings = (self.freqs_cos[start_pos:start_pos + T],
                               self.freqs_sin[start_pos:start_pos + T])  # 各 (T, hd)
        presents = []
        for layer, past in zip(self.layers, past_key_values):
            hidden_states, present = layer(hidden_states, position_embeddings, past, use_cache, attention_mask)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        aux_loss = sum((layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MOEFeedForward)),
                       hidden_states.new_zeros(()))
        return hidden_states, presents, aux_loss


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T 或 logits_to_keep, V)
    loss: Optional[torch.Tensor] = None  # 语言模型交叉熵（不含 aux_loss）
    aux_loss: Optional[torch.Tensor] = None  # MoE 负载均衡损失；稠密模型为 0
    past_key_values: Optional[List[KVCache]] = None


class MiniMindForCausalLM(nn.Module):
    """MiniMindModel + lm_head（与词嵌入共享权重）+ 损失 + generate。"""

    def __init__(self, config: Optional[MiniMindConfig] = None):
        super().__init__()
        self.config = config or MiniMindConfig()
        self.model = MiniMindModel(self.config)
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        # 权重共享：输入嵌入与输出投影是同一个矩阵，26M 模型因此省下 V·H ≈ 3.3M 参数
        self.model.embed_tokens.weight = self.lm_head.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        # 小标准差初始化（GPT-2/HF 的 initializer_range=0.02），让初始 logits 接近均匀分布
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[List[KVCache]] = None, use_cache: bool = False,
                logits_to_keep=0, labels: Optional[torch.Tensor] = None) -> CausalLMOutput:
        """labels 与 input_ids 对齐（不用预先错位），-100 的位置不计损失。

        logits_to_keep=k>0 时只算最后 k 个位置的 logits（生成时只需要最后一个，省掉 T×V 的矩阵乘）。
        """
        hidden_states, presents, aux_loss = self.model(input_ids, attention_mask, past_key_values, use_cache)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])  # (B, T', V)
        loss = None
        if labels is not None:
            # 位置 t 的 logits 预测第 t+1 个 token
            loss = F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux_loss,
                              past_key_values=presents if use_cache else None)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 128, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = False,
                 repetition_penalty: float = 1.0, eos_token_id: Optional[int] = None,
                 attention_mask: Optional[torch.Tensor] = None, use_cache: bool = True,
                 streamer: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
        """自回归生成，返回 (B, T + 新生成长度)。

        do_sample=False 为贪心；否则按 temperature / top_k / top_p 采样。
        eos_token_id 默认取 config.eos_token_id：每行遇到 EOS 就停（之后补 EOS），全部停了就提前结束——
        不设 EOS 时模型会一直生成到 max_new_tokens，常见的"复读机"问题就是这样来的。
        批量的长短 prompt 请左侧 padding 并传 attention_mask (B, T)。
        streamer(token_ids) 在每步收到形状 (B,) 的新 token，可用来流式打印。
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens 不能为负，收到 {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"采样时 temperature 必须 > 0，收到 {temperature}（想要确定性输出请用 do_sample=False）")
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        was_training = self.training
        self.eval()
        B = input_ids.shape[0]
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        sequence = input_ids
        past = None
        next_input = input_ids
        for _ in range(max_new_tokens):
            if use_cache:
                out = self(next_input, attention_mask=attention_mask, past_key_values=past,
                           use_cache=True, logits_to_keep=1)
                past = out.past_key_values
            else:  # 每步重算整段：用来对照 KV cache 省下了多少
                out = self(sequence, attention_mask=attention_mask, logits_to_keep=1)
            logits = out.logits[:, -1, :].float()  # (B, V)
            logits = self._apply_repetition_penalty(logits, sequence, repetition_penalty)
            next_token = self._choose_next_token(logits, do_sample, temperature, top_k, top_p)  # (B,)
            next_token = torch.where(finished, torch.full_like(next_token, eos), next_token)
            sequence = torch.cat([sequence, next_token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            if streamer is not None:
                streamer(next_token)
            finished |= next_token == eos
            if finished.all():
                break
            next_input = next_token[:, None]
        self.train(was_training)
        return sequence

    @staticmethod
    def _apply_repetition_penalty(logits, sequence, penalty):
        """已出现过的 token：正 logit 除以 penalty，负 logit 乘以 penalty（CTRL 论文的做法）。"""
        if penalty == 1.0:
            return logits
        seen = torch.gather(logits, 1, sequence)  # (B, T)
        seen = torch.where(seen > 0, seen / penalty, seen * penalty)
        return logits.scatter(1, sequence, seen)

    @staticmethod
    def _choose_next_token(logits, do_sample, temperature, top_k, top_p):
        if not do_sample:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # 去掉累计概率已超过 top_p 之后的 token（至少保留概率最大的一个）
            remove = cum - sorted_logits.softmax(dim=-1) > top_p
            logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)
