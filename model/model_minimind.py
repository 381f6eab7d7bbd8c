"""MiniMind：一个 Llama 风格的因果语言模型，纯 PyTorch 实现（不依赖 transformers）。

同一份代码支持两代模型，由 MiniMindConfig.family 切换（默认 MiniMind2，即原课程讲的那一代）：

    差异              minimind2（2025，26M/104M/145M-MoE）   minimind3（2026，64M / 198M-A64M MoE）
    默认 hidden/kv头  512 / 2                                 768 / 4
    head_dim          hidden / heads                          可单独指定（默认 hidden / heads）
    FFN 中间层        64·⌈8/3·H/64⌉                           64·⌈π·H/64⌉
    rms_norm_eps      1e-5                                    1e-6
    Q/K 归一化        无                                      q_norm / k_norm：每个头在 RoPE 前做 RMSNorm
    YaRN              factor 4，β 4/1，MiniMind2 自己的公式    factor 16，β 32/1，YaRN 论文的线性 ramp
    MoE               4 路由 + 1 共享专家，top-2，             4 路由专家、无共享，top-1，专家中间层
                      序列级 aux loss（α=0.1）                 moe_intermediate_size，批级 aux loss（系数 5e-4）

阅读顺序就是数据流动的顺序：
    MiniMindConfig → RMSNorm → precompute_freqs_cis / apply_rotary_pos_emb（RoPE）
    → repeat_kv + Attention（GQA）→ FeedForward（SwiGLU）/ MoEGate + MOEFeedForward
    → MiniMindBlock（Pre-Norm + 残差）→ MiniMindModel → MiniMindForCausalLM（+ generate）

state_dict 的键名和形状与官方实现完全一致，官方发布的权重可以 strict=True 直接加载。
张量形状记号：B=batch，T=本次输入的序列长度，S=含 KV cache 的总长度，
H=hidden_size，nh=注意力头数，nkv=KV 头数，hd=head_dim，V=词表大小。
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from model.fused_ops import apply_rotary_pos_emb_fused, rms_norm_fused

# 一层的 KV cache：(k, v)，形状都是 (B, S, nkv, hd)
KVCache = Tuple[torch.Tensor, torch.Tensor]

ACT2FN = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


# ---------------------------------------------------------------------------
# 配置
# ---------------------------------------------------------------------------
FAMILIES = ("minimind2", "minimind3")

# 每一代的默认值；MiniMindConfig 里写成 None 的字段在 __post_init__ 里按 family 从这里补上
FAMILY_DEFAULTS = {
    "minimind2": dict(hidden_size=512, num_key_value_heads=2, rms_norm_eps=1e-5, num_experts_per_tok=2,
                      n_shared_experts=1, aux_loss_alpha=0.1, seq_aux=True),
    "minimind3": dict(hidden_size=768, num_key_value_heads=4, rms_norm_eps=1e-6, num_experts_per_tok=1,
                      n_shared_experts=0, aux_loss_alpha=5e-4, seq_aux=False),
}
# YaRN 参数：inference_rope_scaling=True 时生效；config.rope_scaling 里给出的键覆盖这些默认值
YARN_DEFAULTS = {
    "minimind2": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 2048,
                  "beta_fast": 4, "beta_slow": 1},
    "minimind3": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
                  "beta_fast": 32, "beta_slow": 1, "attention_factor": 1.0},
}


@dataclass
class MiniMindConfig:
    """全部超参数；字段名与官方实现一致。默认 family="minimind2"，即 26M 的 MiniMind2-Small。

    值为 None 的字段按 family 取默认（见 FAMILY_DEFAULTS），所以
    MiniMindConfig() 是 MiniMind2-26M，MiniMindConfig(family="minimind3") 是 minimind-3 的 64M。
    """

    family: str = "minimind2"
    hidden_size: Optional[int] = None  # minimind2: 512，minimind3: 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: Optional[int] = None  # minimind2: 2，minimind3: 4
    head_dim: Optional[int] = None  # None → hidden_size / num_attention_heads
    vocab_size: int = 6400
    max_position_embeddings: int = 32768
    rms_norm_eps: Optional[float] = None  # minimind2: 1e-5，minimind3: 1e-6
    rope_theta: float = 1e6
    hidden_act: str = "silu"
    intermediate_size: Optional[int] = None  # None → minimind2: 64·⌈8/3·H/64⌉，minimind3: 64·⌈π·H/64⌉
    tie_word_embeddings: bool = True  # lm_head 与词嵌入共享权重（两代默认都共享）
    dropout: float = 0.0
    flash_attn: bool = True  # True 走 F.scaled_dot_product_attention，False 走手写 softmax 路径
    fused_ops: bool = True  # True 时 RMSNorm/RoPE 用手写反向（model/fused_ops.py，结果相同、训练更快）；不影响权重
    bos_token_id: int = 1
    eos_token_id: int = 2
    # YaRN：推理时把上下文外推到训练长度的 factor 倍；参数见 YARN_DEFAULTS，rope_scaling 可覆盖
    inference_rope_scaling: bool = False
    rope_scaling: Optional[dict] = None  # 解析后：开启 YaRN 时是完整参数 dict，否则 None
    # MoE
    use_moe: bool = False
    num_experts_per_tok: Optional[int] = None  # 每个 token 选几个路由专家；minimind2: 2，minimind3: 1
    n_routed_experts: Optional[int] = None  # 路由专家数（MiniMind2 的叫法），默认 4
    num_experts: Optional[int] = None  # 同一个量在 minimind-3 里的叫法；两者解析后总是相等
    n_shared_experts: Optional[int] = None  # 每个 token 都经过的共享专家；minimind2: 1，minimind3: 0
    moe_intermediate_size: Optional[int] = None  # 每个专家的中间层；None → intermediate_size
    scoring_func: str = "softmax"
    aux_loss_alpha: Optional[float] = None  # 负载均衡损失系数（MiniMind2 的叫法）；minimind2: 0.1，minimind3: 5e-4
    router_aux_loss_coef: Optional[float] = None  # 同一个系数在 minimind-3 里的叫法；两者解析后总是相等
    seq_aux: Optional[bool] = None  # True：按序列统计负载（minimind2）；False：按整个 batch（minimind3）
    norm_topk_prob: bool = True

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"MiniMindConfig.family={self.family!r} 未知，可选 {FAMILIES}")
        for name, value in FAMILY_DEFAULTS[self.family].items():
            if getattr(self, name) is None and name != "aux_loss_alpha":  # 它有别名，下面和别名一起解析
                setattr(self, name, value)
        self.n_routed_experts = self._same_value("n_routed_experts", "num_experts", default=4)
        self.aux_loss_alpha = self._same_value("aux_loss_alpha", "router_aux_loss_coef",
                                               default=FAMILY_DEFAULTS[self.family]["aux_loss_alpha"])
        self.num_experts, self.router_aux_loss_coef = self.n_routed_experts, self.aux_loss_alpha
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"MiniMindConfig.num_attention_heads={self.num_attention_heads} "
                                 f"必须整除 hidden_size={self.hidden_size}（或显式给出 head_dim）")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            if self.family == "minimind2":
                # SwiGLU 有三个矩阵，取 8/3·H 让参数量与 4H 的两矩阵 FFN 持平；再向上取整到 64 的倍数便于硬件对齐
                self.intermediate_size = 64 * math.ceil(8 / 3 * self.hidden_size / 64)
            else:
                # minimind-3 把比例放大到 π ≈ 3.14：同样的宽度下 FFN 多 18% 参数
                self.intermediate_size = 64 * math.ceil(math.pi * self.hidden_size / 64)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.inference_rope_scaling:
            self.rope_scaling = {**YARN_DEFAULTS[self.family], **(self.rope_scaling or {})}
        else:
            self.rope_scaling = None  # 与官方一致：不开启 YaRN 时忽略 rope_scaling
        self.validate()

    def _same_value(self, name: str, alias: str, default):
        """两代对同一个量的不同叫法：给了哪个用哪个，都给了必须相等。"""
        value, alias_value = getattr(self, name), getattr(self, alias)
        if value is not None and alias_value is not None and value != alias_value:
            raise ValueError(f"MiniMindConfig.{name}={value} 与 {alias}={alias_value} 是同一个量的两种叫法，"
                             f"取值必须相同（只给一个即可）")
        return next((v for v in (value, alias_value) if v is not None), default)

    @property
    def qk_norm(self) -> bool:
        """minimind-3 在 RoPE 前对每个头的 q、k 做 RMSNorm（抑制注意力 logit 随训练无限增大）。"""
        return self.family == "minimind3"

    def validate(self):
        """检查取值是否自洽；不合法时抛出点名字段的 ValueError。"""
        positive = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "vocab_size", "max_position_embeddings", "intermediate_size", "moe_intermediate_size",
                    "num_experts_per_tok", "n_routed_experts"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MiniMindConfig.{name} 必须是正整数，收到 {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig.num_key_value_heads={self.num_key_value_heads} "
                             f"必须整除 num_attention_heads={self.num_attention_heads}（GQA 每组共享一对 K/V）")
        if self.head_dim % 2:
            raise ValueError(f"MiniMindConfig.head_dim={self.head_dim} 必须是偶数（RoPE 按两两一对旋转）")
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
                         rope_scaling: Optional[dict] = None,
                         family: str = "minimind2") -> Tuple[torch.Tensor, torch.Tensor]:
    """预先算好每个位置、每个频率的 cos/sin，返回两个 (end, dim) 张量。

    第 i 对维度的角速度 θ_i = base^(-2i/dim)：低维转得快（看局部），高维转得慢（看远处）。
    rope_scaling 不为 None 且 end 超过训练长度时做 YaRN；两代的公式不同（family 选择）。
    """
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
    attention_factor = 1.0
    if rope_scaling is not None and end / rope_scaling["original_max_position_embeddings"] > 1.0:
        if family == "minimind2":
            freqs = freqs * yarn_scale_minimind2(freqs, rope_scaling)
        else:
            freqs = freqs * yarn_scale_minimind3(dim, rope_base, rope_scaling)
            attention_factor = rope_scaling.get("attention_factor", 1.0)
    t = torch.arange(end)
    angles = torch.outer(t, freqs).float()  # (end, dim/2)：位置 m 第 i 对的转角 m·θ_i
    # 两半各放一份，配合 rotate_half 的"前半/后半配对"写法
    freqs_cos = torch.cat([torch.cos(angles), torch.cos(angles)], dim=-1) * attention_factor  # (end, dim)
    freqs_sin = torch.cat([torch.sin(angles), torch.sin(angles)], dim=-1) * attention_factor  # (end, dim)
    return freqs_cos, freqs_sin


def yarn_scale_minimind2(freqs: torch.Tensor, rope_scaling: dict) -> torch.Tensor:
    """MiniMind2 的 YaRN：每个频率乘的系数 (dim/2,)。

    波长 2π/θ_i 已超过训练长度的维度（低频）按 1/s 线性插值；其余（高频）按 (β·s - β + 1)/(β·s) 轻微缩放，
    β 从 beta_slow 到 beta_fast 随维度线性变化。
    """
    orig_max, factor = rope_scaling["original_max_position_embeddings"], rope_scaling["factor"]
    beta_fast, beta_slow = rope_scaling["beta_fast"], rope_scaling["beta_slow"]
    half = freqs.shape[0]
    corr_dim = next((i for i in range(half) if 2 * math.pi / freqs[i] > orig_max), half)  # 第一个低频维度
    power = torch.arange(0, half).float() / max(half - 1, 1)
    beta = beta_slow + (beta_fast - beta_slow) * power
    return torch.where(torch.arange(half) < corr_dim, (beta * factor - beta + 1) / (beta * factor), 1.0 / factor)


def yarn_scale_minimind3(dim: int, rope_base: float, rope_scaling: dict) -> torch.Tensor:
    """minimind-3 的 YaRN（即 YaRN 论文 Peng et al. 2023 的 "NTK-by-parts"）：每个频率乘的系数 (dim/2,)。

    在训练长度内转满 beta_fast 圈以上的维度（高频）不动，转不满 beta_slow 圈的维度（低频）按 1/s 插值，
    中间的维度用线性 ramp 过渡：系数 = (1 - γ) + γ/s。
    """
    orig_max, factor = rope_scaling["original_max_position_embeddings"], rope_scaling["factor"]
    beta_fast, beta_slow = rope_scaling["beta_fast"], rope_scaling["beta_slow"]

    def dim_of_rotations(n_rotations):  # 在 orig_max 个位置内恰好转 n 圈的维度下标（可为小数）
        return dim * math.log(orig_max / (n_rotations * 2 * math.pi)) / (2 * math.log(rope_base))

    low = max(math.floor(dim_of_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_of_rotations(beta_slow)), dim // 2 - 1)
    ramp = ((torch.arange(dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)  # γ：0 = 不动，1 = 插值
    return 1 - ramp + ramp / factor


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
        if config.qk_norm:  # minimind-3：每个头的 q、k 先各自归一化，注意力 logit 的尺度就被 weight 管住
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.fused_ops)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.fused_ops)
        self.qk_norm = config.qk_norm
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

        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)  # 在最后一维 hd 上归一化，先于 RoPE
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

    def __init__(self, config: MiniMindConfig, intermediate_size: Optional[int] = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size  # MoE 专家可以用更窄的中间层
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
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
        self.family = config.family
        self.weight = nn.Parameter(torch.empty(self.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states: torch.Tensor):
        """hidden_states: (B, T, H) → topk_idx (B*T, k), topk_weight (B*T, k), aux_loss 标量。"""
        B, T, H = hidden_states.shape
        x = hidden_states.view(-1, H)  # (B*T, H)
        scores = F.linear(x, self.weight).softmax(dim=-1)  # (B*T, E)：每个 token 对各专家的偏好
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)  # (B*T, k)
        # minimind-3 在 top-1 时也归一化：权重恒为 1，路由器只能从 aux loss 得到梯度；MiniMind2 只在 k>1 时归一化
        if self.norm_topk_prob and (self.top_k > 1 or self.family == "minimind3"):
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
                counts = F.one_hot(topk_idx.view(-1), num_classes=E).float().sum(0)  # (E,)：各专家被选中的次数
                # MiniMind2 除以槽位数 N·k，minimind-3 除以 token 数 N（所以 top-k 时大 k 倍）
                slots = x.shape[0] * (self.top_k if self.family == "minimind2" else 1)
                f = counts / slots * E  # (E,)
                P = scores.mean(0)  # (E,)
                aux_loss = (P * f).sum() * self.alpha
        return topk_idx, topk_weight, aux_loss


class MOEFeedForward(nn.Module):
    """混合专家 FFN：每个 token 只经过 k 个路由专家（加权求和），再加上所有共享专家。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.experts = nn.ModuleList([FeedForward(config, config.moe_intermediate_size)
                                      for _ in range(config.n_routed_experts)])
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
            # （autocast 下专家输出是 bf16/fp16，写回 float32 的 y 前先转回来）
            x_rep = flat_x.repeat_interleave(k, dim=0)  # (B*T*k, H)
            flat_idx = topk_idx.view(-1)  # (B*T*k,)
            y = torch.empty_like(x_rep)
            for i, expert in enumerate(self.experts):
                chosen = flat_idx == i
                y[chosen] = expert(x_rep[chosen]).to(y.dtype)
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
                                                    config.rope_theta, config.rope_scaling, config.family)
        # 非持久 buffer：随 .to(device) 移动，但不写进 state_dict（与 MiniMind2 一致）
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)
        # 激活检查点（activation checkpointing）：训练时块只留输入，反向时重算块内的中间结果，
        # 用约多一次前向的计算换掉 L 层激活中的大头；不是超参数，不进 config，也不影响权重。
        # True = 每个块都重算；整数 k = 只重算前 k 个块（按块在内存与时间之间折中）；False / 0 = 不重算
        self.gradient_checkpointing: Union[bool, int] = False

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
        # 只在训练、需要梯度且不用 KV cache 时重算（推理没有反向，重算只会更慢）
        backward_follows = self.training and torch.is_grad_enabled() and not use_cache
        n_recompute = self.checkpointed_blocks() if backward_follows else 0
        presents = []
        for i, (layer, past) in enumerate(zip(self.layers, past_key_values)):
            if i < n_recompute:
                # use_reentrant=False：PyTorch 推荐的实现，支持块里没被返回的张量（MoE 的 aux_loss）带梯度；
                # 默认保存并恢复随机数状态，开 dropout 时重算得到同一个掩码
                hidden_states, present = torch.utils.checkpoint.checkpoint(
                    layer, hidden_states, position_embeddings, past, use_cache, attention_mask, use_reentrant=False)
            else:
                hidden_states, present = layer(hidden_states, position_embeddings, past, use_cache, attention_mask)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        aux_loss = sum((layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MOEFeedForward)),
                       hidden_states.new_zeros(()))
        return hidden_states, presents, aux_loss

    def checkpointed_blocks(self) -> int:
        """要重算的块数（见 checkpointed_block_count）。"""
        return checkpointed_block_count(self.gradient_checkpointing, len(self.layers))


def checkpointed_block_count(setting: Union[bool, int], n_layers: int) -> int:
    """gradient_checkpointing 换算成要重算的块数：True → 全部 n_layers 个，False → 0，整数 k → 前 k 个。
    模型的前向与 trainer/memory_report.py 的内存公式都用它，两边的块数不会不一致。"""
    n = n_layers if setting is True else int(setting)
    if not 0 <= n <= n_layers:
        raise ValueError(f"gradient_checkpointing={setting!r} 不对：要重算的块数应在 0 到 {n_layers} 之间"
                         f"（True = 全部，False = 不重算）")
    return n


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
        if self.config.tie_word_embeddings:
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

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 128, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = False,
                 repetition_penalty: float = 1.0, eos_token_id: Optional[int] = None,
                 attention_mask: Optional[torch.Tensor] = None, use_cache: bool = True,
                 streamer: Optional[Callable[[torch.Tensor], None]] = None,
                 draft_model: Optional["MiniMindForCausalLM"] = None, num_draft_tokens: int = 4,
                 return_stats: bool = False):
        """自回归生成，返回 (B, T + 新生成长度)（return_stats=True 时见下）。

        do_sample=False 为贪心；否则按 temperature / top_k / top_p 采样。
        eos_token_id 默认取 config.eos_token_id：每行遇到 EOS 就停（之后补 EOS），全部停了就提前结束——
        不设 EOS 时模型会一直生成到 max_new_tokens，常见的"复读机"问题就是这样来的。
        批量的长短 prompt 请左侧 padding 并传 attention_mask (B, T)。
        streamer(token_ids) 在每步收到形状 (B,) 的新 token，可用来流式打印。

        draft_model 给出时改用投机解码（model/speculative.py）：草稿模型每轮提出 num_draft_tokens 个 token，
        本模型一次前向验证。贪心结果与不用草稿时逐 token 相同，采样结果服从同一个分布；只支持 batch=1、
        必须用 KV cache、不支持 repetition_penalty。
        return_stats=True 时返回 (sequence, stats)：投机解码时 stats 是 SpeculativeStats（接受率 α、
        每次前向产出的 token 数……），普通生成时为 None。
        """
        if draft_model is not None:
            from model.speculative import speculative_generate  # 放在这里：speculative.py 反过来要 import 本文件
            if not use_cache:
                raise ValueError("投机解码依赖 KV cache（验证后要截回 cache）：请用 use_cache=True，或不传 draft_model")
            sequence, stats = speculative_generate(
                self, draft_model, input_ids, max_new_tokens=max_new_tokens, num_draft_tokens=num_draft_tokens,
                do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                attention_mask=attention_mask, repetition_penalty=repetition_penalty, streamer=streamer)
            return (sequence, stats) if return_stats else sequence
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens 不能为负，收到 {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"采样时 temperature 必须 > 0，收到 {temperature}（想要确定性输出请用 do_sample=False）")
        # inference_mode 比 no_grad 更省：不记录版本计数和视图关系，逐 token 解码时每个小算子都少一点开销
        with torch.inference_mode():
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
        sequence = sequence.clone()  # 在 inference_mode 之外复制：返回普通张量，拿去训练（如 DPO 采样）也不报错
        return (sequence, None) if return_stats else sequence

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
        probs = sampling_probs(logits, temperature, top_k, top_p)  # (B, V)
        return torch.multinomial(probs, num_samples=1).squeeze(1)


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                   top_p: Optional[float] = None) -> torch.Tensor:
    """采样时真正使用的分布：logits (N, V) 先除以 temperature，再按 top_k、top_p 截断，softmax 成 (N, V) 的概率。

    generate 从它抽样；投机解码（model/speculative.py）对目标模型和草稿模型用同一个函数，
    接受/拒绝比较的是这两个分布，它们必须经过完全相同的处理。
    """
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # 去掉累计概率已超过 top_p 之后的 token（至少保留概率最大的一个）
        remove = cum - sorted_logits.softmax(dim=-1) > top_p
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return logits.softmax(dim=-1)  # (N, V)
