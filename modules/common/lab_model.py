"""实验用的"可拆装" MiniMind：同一份代码，用开关做消融。

默认开关就是 MiniMind 本身（RMSNorm、Pre-Norm、RoPE、残差、SwiGLU、权重共享），参数名也相同，
所以 MiniMindForCausalLM 的 state_dict 可以原样加载进来、得到逐位相同的 logits（tests 里有证明）。
改一个开关 = 只去掉/替换一个设计，其余保持不变，这就是对照实验。

    model = LabModel(LabConfig(norm="none"))              # 不要归一化会怎样？
    model = LabModel(LabConfig(pos_encoding="learned"))   # 换成 GPT-2 的可学习位置编码
    with record_activations(model) as stats: model(ids)   # 每层输出的 std / rms
    with record_attention(model) as attn: model(ids)      # 每层的注意力权重 (B, nh, T, T)
    set_rope_scaling(model, 256, "yarn", factor=4)        # 在 64 上训练的 RoPE 模型，用 YaRN 读 256 长的序列
    model = LabModel(LabConfig(sliding_window=32, attention_sinks=4))  # 只看最近 32 个 token + 最前面 4 个
    model = LabModel(LabConfig(attention="mla", kv_latent_dim=64, rope_head_dim=16))  # DeepSeek-V2 的 MLA
"""
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.fused_ops import apply_rotary_pos_emb_fused
from model.model_minimind import (
    Attention,
    CausalLMOutput,
    FeedForward,
    YARN_DEFAULTS,
    MiniMindConfig,
    RMSNorm,
    attention_bias,
    precompute_freqs_cis,
    repeat_kv,
)
from modules.common.attention_mask import sliding_window_mask
from modules.common.mla_attention import MultiHeadLatentAttention
from modules.common.training import layer_of

NORMS = ("rmsnorm", "layernorm", "none")
NORM_POSITIONS = ("pre", "post", "sandwich")
POS_ENCODINGS = ("rope", "learned", "sinusoidal", "alibi", "none")
FFNS = ("swiglu", "gelu", "relu", "none")  # "none"：只有注意力、没有 FFN 的块
QK_SCALES = ("inv_sqrt_d", "one")
INITS = ("normal", "xavier")
ROPE_SCALINGS = (None, "pi", "ntk", "yarn", "yarn_minimind3")
ATTENTIONS = ("gqa", "mla")


@dataclass
class LabConfig:
    """尺寸 + 消融开关。默认尺寸是适合 CPU 的小模型；默认开关等于 MiniMind。"""

    vocab_size: int = 65
    hidden_size: int = 128
    num_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None = 与 n_heads 相同（MHA）
    max_seq_len: int = 256
    dropout: float = 0.0
    rope_theta: float = 1e6
    norm_eps: float = 1e-5
    # ---- 开关 ----
    norm: str = "rmsnorm"
    norm_position: str = "pre"  # "pre"（MiniMind）/ "post"（原始 Transformer）/ "sandwich"（支路进出各一个 norm）
    parallel_block: bool = False  # True：GPT-J/PaLM 式并行块 x + attn(norm(x)) + ffn(norm(x))，只用 Pre-Norm
    pos_encoding: str = "rope"
    residual: bool = True
    ffn: str = "swiglu"
    ffn_ratio: Optional[float] = None  # 中间层 = ratio * hidden；None 用默认（SwiGLU 按 MiniMind 的 8/3 规则，其余 4）
    ffn_param_matched: bool = False  # True：GELU/ReLU 的中间层放大 1.5 倍，与同 ratio 的 SwiGLU 参数量相等
    qk_scale: str = "inv_sqrt_d"  # 注意力分数除以 √d（"inv_sqrt_d"）或不缩放（"one"）
    qk_norm: bool = False  # True：minimind-3 的 QK-norm，RoPE 前对每个头的 q、k 做 RMSNorm
    causal: bool = True  # False：去掉因果 mask，每个位置都能看到后面的 token（训练时等于偷看答案）
    # 滑动窗口注意力（Beltagy 2020 / Mistral 2023）：每个 query 只看最近 sliding_window 个 key（含自己）。
    # 等价于解码时只留最近 W 个位置的滚动 KV cache（key 保持原来的 RoPE 角度）。None = 看全部前文（MiniMind）
    sliding_window: Optional[int] = None
    attention_sinks: int = 0  # 在窗口之外始终保留最前面的几个 token（StreamingLLM 的 attention sink，Xiao 2023）
    # "gqa"：MiniMind 的注意力（n_kv_heads 决定 MHA / GQA / MQA）；"mla"：DeepSeek-V2 的多头潜在注意力
    # （modules/common/mla_attention.py：每个 token 每层只缓存 kv_latent_dim + rope_head_dim 个数）
    attention: str = "gqa"
    kv_latent_dim: Optional[int] = None  # MLA 的潜向量维度 d_c；None → 4·head_dim（DeepSeek-V2 的取法）
    rope_head_dim: Optional[int] = None  # MLA 解耦 RoPE 的 q_R / k_R 维度 d_R；None → head_dim / 2（同上）
    tie_embeddings: bool = True
    scaled_init: bool = False  # True：o_proj / down_proj 初始化 std 再乘 1/√(2·num_layers)（GPT-2 的做法）
    # "normal"：全部 N(0, 0.02)（MiniMind）；"xavier"：块内线性层用 Xavier 正态初始化（原始 Transformer，
    # Xiong et al. 2020 分析 Post-LN 梯度时的设定），嵌入 / lm_head 仍是 N(0, 0.02)
    init: str = "normal"
    # ---- RoPE 长度外推（只在 pos_encoding="rope" 时生效；默认 None = MiniMind 训练时的普通 RoPE）----
    # None / "pi"（位置插值）/ "ntk"（NTK-aware）/ "yarn"（MiniMind2 的 YaRN）/ "yarn_minimind3"（minimind-3 的 YaRN）
    rope_scaling: Optional[str] = None
    rope_scaling_factor: float = 1.0  # s = max_seq_len / 训练长度；YaRN 的 original_max_position_embeddings 取 max_seq_len / s

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name, allowed in (("norm", NORMS), ("norm_position", NORM_POSITIONS), ("pos_encoding", POS_ENCODINGS),
                              ("ffn", FFNS), ("qk_scale", QK_SCALES), ("rope_scaling", ROPE_SCALINGS),
                              ("init", INITS), ("attention", ATTENTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LabConfig.{name}={getattr(self, name)!r} 未知，可选 {allowed}")
        if self.rope_scaling_factor < 1:
            raise ValueError(f"LabConfig.rope_scaling_factor 必须 >= 1（目标长度 / 训练长度），收到 {self.rope_scaling_factor}")
        if self.parallel_block and self.norm_position != "pre":
            raise ValueError(f"LabConfig.parallel_block=True 只支持 norm_position='pre'，收到 {self.norm_position!r}")
        if self.init == "xavier" and self.scaled_init:
            raise ValueError("LabConfig.init='xavier' 与 scaled_init=True 是两种不同的初始化，只能选一个")
        if self.ffn_ratio is not None and self.ffn_ratio <= 0:
            raise ValueError(f"LabConfig.ffn_ratio 必须为正，收到 {self.ffn_ratio}")
        if self.sliding_window is not None and (self.sliding_window < 1 or not self.causal):
            raise ValueError(f"LabConfig.sliding_window 必须 >= 1 且只用于因果注意力（causal=True），"
                             f"收到 {self.sliding_window}、causal={self.causal}")
        if self.attention_sinks < 0 or (self.attention_sinks and self.sliding_window is None):
            raise ValueError(f"LabConfig.attention_sinks 必须 >= 0，且只和 sliding_window 一起用，"
                             f"收到 {self.attention_sinks}、sliding_window={self.sliding_window}")
        self._check_mla()
        self.to_minimind_config()  # 借 MiniMindConfig 校验头数、整除等

    def _check_mla(self):
        """MLA 的维度默认值与不兼容的组合。"""
        if self.attention != "mla":
            if self.kv_latent_dim is not None or self.rope_head_dim is not None:
                raise ValueError("LabConfig.kv_latent_dim / rope_head_dim 只用于 attention='mla'，"
                                 f"当前 attention={self.attention!r}")
            return
        head_dim = self.hidden_size // self.n_heads
        self.kv_latent_dim = 4 * head_dim if self.kv_latent_dim is None else self.kv_latent_dim
        self.rope_head_dim = head_dim // 2 if self.rope_head_dim is None else self.rope_head_dim
        if self.kv_latent_dim < 1 or self.rope_head_dim < 2 or self.rope_head_dim % 2:
            raise ValueError(f"LabConfig.kv_latent_dim 必须 >= 1、rope_head_dim 必须是 >= 2 的偶数（RoPE 两两旋转），"
                             f"收到 {self.kv_latent_dim}、{self.rope_head_dim}")
        if self.pos_encoding != "rope" or self.qk_norm or self.rope_scaling is not None:
            raise ValueError(f"attention='mla' 的位置信息只走解耦的 RoPE key：需要 pos_encoding='rope'、qk_norm=False，"
                             f"且暂不支持 rope_scaling；收到 pos_encoding={self.pos_encoding!r}、qk_norm={self.qk_norm}、"
                             f"rope_scaling={self.rope_scaling!r}")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(f"attention='mla' 没有 KV 头的分组（缓存的是潜向量），n_kv_heads 请留空；"
                             f"收到 n_kv_heads={self.n_kv_heads}、n_heads={self.n_heads}")

    @property
    def intermediate_size(self) -> int:
        if self.ffn_ratio is None:
            swiglu = 64 * math.ceil(8 / 3 * self.hidden_size / 64)  # MiniMind 的规则
            if self.ffn == "swiglu":
                return swiglu
            return int(1.5 * swiglu) if self.ffn_param_matched else 4 * self.hidden_size
        base = int(self.ffn_ratio * self.hidden_size)
        return int(1.5 * base) if (self.ffn_param_matched and self.ffn != "swiglu") else base

    def to_minimind_config(self) -> MiniMindConfig:
        """尺寸相同的 MiniMindConfig（只有默认开关下两者才是同一个模型）。qk_norm 借 minimind3 的注意力实现。"""
        return MiniMindConfig(family="minimind3" if self.qk_norm else "minimind2",
                              hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                              num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                              vocab_size=self.vocab_size, max_position_embeddings=self.max_seq_len,
                              rms_norm_eps=self.norm_eps, rope_theta=self.rope_theta, dropout=self.dropout,
                              intermediate_size=self.intermediate_size)

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(config: LabConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.hidden_size, eps=config.norm_eps, fused=True)  # 与 MiniMind 默认一致：手写反向
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return nn.Identity()


class MLP(nn.Module):
    """经典两层 FFN：down(act(up(x)))，GPT-2 用 GELU，原始 Transformer 用 ReLU。"""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, dropout: float):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = {"gelu": F.gelu, "relu": F.relu}[act]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(self.act_fn(self.up_proj(x))))


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """《Attention Is All You Need》的固定位置编码：PE[pos, 2i] = sin(pos/10000^(2i/d))，奇数维用 cos。"""
    pos = torch.arange(max_len).float()[:, None]  # (L, 1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))  # (dim/2,)
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table  # (L, dim)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi 每个头的斜率：2^(-8/n), 2^(-16/n), …（n 为 2 的幂时的原论文公式；否则按论文的插值办法补齐）。"""
    def power_of_2_slopes(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_2_slopes(closest)
    if closest < n_heads:
        slopes += power_of_2_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)  # (nh,)


def rope_cos_sin(config: LabConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """按 config 的 RoPE 缩放方式算 (max_seq_len, head_dim) 的 cos/sin 表；rope_scaling=None 就是 MiniMind 原样。

    s = rope_scaling_factor（要把训练长度 L 拉长到 s·L）：
      pi   位置插值：位置 m 当成 m/s 来转 = 每个频率都除以 s，角度永远落在训练时见过的范围里；
      ntk  NTK-aware：只把 base 换成 base·s^(d/(d-2))，高频几乎不变、最低频恰好被压缩 s 倍；
      yarn MiniMind2 的 inference_rope_scaling：低频（波长 > L）按 1/s 插值，高频只轻微缩放；
      yarn_minimind3 minimind-3 的 YaRN（论文的线性 ramp，β 32/1）：转满 32 圈的高频不动，不满 1 圈的低频按 1/s 插值。
    """
    hd, end, base, s = config.hidden_size // config.n_heads, config.max_seq_len, config.rope_theta, config.rope_scaling_factor
    if config.rope_scaling == "pi":
        freqs = 1.0 / (base ** (torch.arange(0, hd, 2).float() / hd)) / s  # (hd/2,)
        angles = torch.outer(torch.arange(end).float(), freqs)  # (end, hd/2)
        return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([angles.sin(), angles.sin()], dim=-1)
    if config.rope_scaling == "ntk":
        return precompute_freqs_cis(hd, end, base * s ** (hd / (hd - 2)))
    if config.rope_scaling == "yarn":
        yarn = {"type": "yarn", "factor": s, "original_max_position_embeddings": round(end / s),
                "beta_fast": 4, "beta_slow": 1}
        return precompute_freqs_cis(hd, end, base, rope_scaling=yarn)
    if config.rope_scaling == "yarn_minimind3":
        yarn = {**YARN_DEFAULTS["minimind3"], "factor": s, "original_max_position_embeddings": round(end / s)}
        return precompute_freqs_cis(hd, end, base, rope_scaling=yarn, family="minimind3")
    return precompute_freqs_cis(hd, end, base)


class LabAttention(Attention):
    """复用 model/ 的 Attention（同样的 q/k/v/o 投影和参数名），前向加上位置编码与缩放开关。"""

    def __init__(self, config: LabConfig):
        super().__init__(config.to_minimind_config())
        self.pos_encoding = config.pos_encoding
        self.scale = 1 / math.sqrt(self.head_dim) if config.qk_scale == "inv_sqrt_d" else 1.0
        self.causal = config.causal
        self.sliding_window, self.attention_sinks = config.sliding_window, config.attention_sinks
        if self.pos_encoding == "alibi":
            self.register_buffer("slopes", alibi_slopes(self.n_heads), persistent=False)
        self.record = False  # True 时把注意力权重存到 self.last_weights
        self.last_weights: Optional[torch.Tensor] = None

    def forward(self, x, position_embeddings=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)  # 与 model/ 的 Attention 相同：先于位置编码
        if self.pos_encoding == "rope":
            q, k = apply_rotary_pos_emb_fused(q, k, *position_embeddings)
        q = q.transpose(1, 2)  # (B, nh, T, hd)
        k = repeat_kv(k, self.n_rep).transpose(1, 2)  # (B, nh, T, hd)
        v = repeat_kv(v, self.n_rep).transpose(1, 2)

        bias = None
        if self.pos_encoding == "alibi":
            distance = torch.arange(T, device=x.device)[None, :] - torch.arange(T, device=x.device)[:, None]  # j - i
            bias = self.slopes[:, None, None] * distance.clamp(max=0)  # (nh, T, T)：越远罚得越多
            if self.causal and self.sliding_window is None:
                bias = bias + attention_bias(T, T, None, x.dtype, x.device)[0]  # 加上因果屏蔽
        if self.sliding_window is not None:  # 窗口 mask 已含因果屏蔽
            allowed = sliding_window_mask(T, T, self.sliding_window, self.attention_sinks, x.device)  # (T, T)
            bias = (torch.zeros((), dtype=x.dtype, device=x.device) if bias is None else bias).masked_fill(
                ~allowed, torch.finfo(x.dtype).min)  # (T, T) 或 (nh, T, T)

        dropout_p = self.dropout if self.training else 0.0
        if self.record:  # 显式路径：需要拿到 softmax 后的权重
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, T)
            if bias is not None:
                scores = scores + bias
            elif self.causal:
                scores = scores + attention_bias(T, T, None, x.dtype, x.device)
            weights = scores.float().softmax(dim=-1).type_as(q)
            self.last_weights = weights.detach()
            y = self.attn_dropout(weights) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                               is_causal=self.causal and bias is None, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hd)
        return self.resid_dropout(self.o_proj(y))


class LabBlock(nn.Module):
    def __init__(self, layer_id: int, config: LabConfig):
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        self.self_attn = MultiHeadLatentAttention(config) if config.attention == "mla" else LabAttention(config)
        self.input_layernorm = make_norm(config)
        if not config.parallel_block:  # 并行块里注意力和 FFN 共用 input_layernorm
            self.post_attention_layernorm = make_norm(config)
        if config.norm_position == "sandwich":
            self.post_attn_out_norm = make_norm(config)
            self.post_ffn_out_norm = make_norm(config)
        if config.ffn == "none":
            self.mlp = None
        elif config.ffn == "swiglu":
            self.mlp = FeedForward(config.to_minimind_config())
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size, config.ffn, config.dropout)

    def forward(self, x, position_embeddings=None):
        residual = self.config.residual
        position = self.config.norm_position
        if self.config.parallel_block:
            # 并行块（GPT-J/PaLM）：注意力和 FFN 读同一个归一化后的输入，输出一起加回主干
            h = self.input_layernorm(x)
            branches = self.self_attn(h, position_embeddings)
            if self.mlp is not None:
                branches = branches + self.mlp(h)
            return x + branches if residual else branches
        if position == "post":
            # Post-Norm（原始 Transformer/BERT）：先相加再归一化，归一化挡在残差主干上
            a = self.self_attn(x, position_embeddings)
            x = self.input_layernorm(x + a if residual else a)
            if self.mlp is None:
                return x
            f = self.mlp(x)
            return self.post_attention_layernorm(x + f if residual else f)
        # Pre-Norm（MiniMind/Llama）：归一化只在支路上，残差主干是一条干净的恒等通路；
        # Sandwich：支路输出再过一个 norm 才加回主干，限制每个块能往主干里写多大的量
        a = self.self_attn(self.input_layernorm(x), position_embeddings)
        if position == "sandwich":
            a = self.post_attn_out_norm(a)
        x = x + a if residual else a
        if self.mlp is None:
            return x
        f = self.mlp(self.post_attention_layernorm(x))
        if position == "sandwich":
            f = self.post_ffn_out_norm(f)
        return x + f if residual else f


class LabBackbone(nn.Module):
    """与 MiniMindModel 同名的子模块（embed_tokens / layers / norm），便于互相加载权重。"""

    def __init__(self, config: LabConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([LabBlock(i, config) for i in range(config.num_layers)])
        # Post-Norm 的最后一个块已经以归一化收尾，不再需要最终 norm
        self.norm = make_norm(config) if config.norm_position != "post" else nn.Identity()
        if config.pos_encoding == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.hidden_size)
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.max_seq_len, config.hidden_size),
                                 persistent=False)
        elif config.pos_encoding == "rope":  # MLA 只旋转解耦的 d_R 维（不做 RoPE 缩放，见 LabConfig._check_mla）
            cos, sin = (precompute_freqs_cis(config.rope_head_dim, config.max_seq_len, config.rope_theta)
                        if config.attention == "mla" else rope_cos_sin(config))
            self.register_buffer("freqs_cos", cos, persistent=False)
            self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, input_ids):
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"序列长度 {T} 超过 LabConfig.max_seq_len={self.config.max_seq_len}")
        x = self.embed_tokens(input_ids)  # (B, T, H)
        position_embeddings = None
        if self.config.pos_encoding == "learned":
            x = x + self.pos_embed.weight[:T]
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[:T]
        elif self.config.pos_encoding == "rope":
            position_embeddings = (self.freqs_cos[:T], self.freqs_sin[:T])
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, position_embeddings)
        return self.norm(x)


class LabModel(nn.Module):
    """与 MiniMindForCausalLM 接口一致：model(input_ids, labels=...) → .logits / .loss / .aux_loss。"""

    def __init__(self, config: Optional[LabConfig] = None):
        super().__init__()
        self.config = config or LabConfig()
        self.model = LabBackbone(self.config)
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        if self.config.tie_embeddings:
            self.model.embed_tokens.weight = self.lm_head.weight
        self.apply(self._init_weights)
        if self.config.scaled_init:
            # 每个块往主干里写两次（注意力、FFN），共 2L 次：把写回主干的投影缩小 √(2L) 倍，主干方差不随深度累加变大
            std = 0.02 / math.sqrt(2 * self.config.num_layers)
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=std)
        if self.config.init == "xavier":
            # Xavier：std = √(2/(fan_in+fan_out))，每个线性层大致保持方差；64×64 的方阵约 0.125，是 0.02 的 6 倍
            for module in self.model.layers.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids, labels=None) -> CausalLMOutput:
        hidden = self.model(input_ids)  # (B, T, H)
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=logits.new_zeros(()))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def set_rope_scaling(model: LabModel, max_seq_len: int, rope_scaling: Optional[str] = None,
                     factor: float = 1.0) -> LabModel:
    """把训练好的 RoPE 模型就地改成新的最大长度与缩放方式：权重不动，只重算 cos/sin 缓冲。

        set_rope_scaling(model, 256, "yarn", factor=4)  # 在 64 上训练的模型，用 YaRN 读 256 长的序列
    """
    if model.config.pos_encoding != "rope":
        raise ValueError(f"set_rope_scaling 只适用于 pos_encoding='rope' 的模型，这个模型是 {model.config.pos_encoding!r}")
    if model.config.attention == "mla":
        raise ValueError("set_rope_scaling 不支持 attention='mla' 的模型（它的 RoPE 表只有 rope_head_dim 宽）")
    config = replace(model.config, max_seq_len=max_seq_len, rope_scaling=rope_scaling, rope_scaling_factor=factor)
    model.config = model.model.config = config
    for layer in model.model.layers:
        layer.config = config
    device = model.model.freqs_cos.device
    cos, sin = rope_cos_sin(config)
    model.model.freqs_cos, model.model.freqs_sin = cos.to(device), sin.to(device)
    return model


# ---------------------------------------------------------------------------
# 记录工具：激活统计、注意力权重、梯度范数
# ---------------------------------------------------------------------------
@contextmanager
def record_activations(model: nn.Module):
    """记录每个块输出的统计量：{"layers.0": {"std", "rms", "mean", "absmax"}, ...}（只保留最后一次前向）。"""
    stats: Dict[str, Dict[str, float]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        def hook(module, inputs, output, name=f"layers.{i}"):
            out = output[0] if isinstance(output, tuple) else output
            out = out.detach().float()
            stats[name] = {"std": out.std().item(), "rms": out.pow(2).mean().sqrt().item(),
                           "mean": out.mean().item(), "absmax": out.abs().max().item()}
        handles.append(layer.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_attention(model: nn.Module):
    """打开每层注意力（LabAttention 或 MLA）的记录开关；产出 {"layers.0": (B, nh, T, T), ...}，前向结束后填好。"""
    weights: Dict[str, torch.Tensor] = {}
    attns = [(i, layer.self_attn) for i, layer in enumerate(model.model.layers)]
    for _, attn in attns:
        attn.record = True
    try:
        yield weights
    finally:
        for i, attn in attns:
            attn.record = False
            if attn.last_weights is not None:
                weights[f"layers.{i}"] = attn.last_weights
                attn.last_weights = None


def layer_grad_norms(model: nn.Module) -> Dict[str, float]:
    """反向传播之后调用：按层分组（分组规则同 training.layer_of）的梯度 L2 范数。"""
    squared: Dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            group = layer_of(name)
            squared[group] = squared.get(group, 0.0) + p.grad.detach().float().pow(2).sum().item()
    return {group: math.sqrt(v) for group, v in squared.items()}
