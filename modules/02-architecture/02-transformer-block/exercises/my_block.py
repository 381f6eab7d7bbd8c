"""练习：从零写一个 MiniMind 块。把每个 raise NotImplementedError 换成你的实现。

做完一部分就检查一次（任意目录均可）：
    python modules/02-architecture/02-transformer-block/exercises/check.py
check.py 把每个部分分别和 model/model_minimind.py 里的对应实现比较（同样的权重、同样的输入），
逐部分打印 PASS / FAIL / TODO。各部分独立检查：例如检查 Block 时，它用到的 RMSNorm / GQAttention / SwiGLU
会被换成参考实现，所以可以按任意顺序完成。全部 PASS 后运行实验 2：
    python modules/02-architecture/02-transformer-block/experiments/exp2_build_a_block.py --impl mine

规则：
- 参数名必须与 model/ 相同（weight、q_proj、k_proj、v_proj、o_proj、gate_proj、up_proj、down_proj、
  input_layernorm、post_attention_layernorm、self_attn、mlp），这样 MiniMindBlock 的 state_dict 才能加载进来；
- 所有 nn.Linear 都不带 bias；只用 torch，不要 import model/（那就成了抄答案）；
- config 是任何带这些字段的对象（检查时传入 model/ 的 MiniMindConfig）：
  hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, rms_norm_eps。
形状记号：B=batch，T=序列长度，H=hidden_size，nh=注意力头数，nkv=KV 头数，hd=head_dim=H/nh，I=intermediate_size。
卡住了？参考答案在 solutions/my_block.py（先自己试）。
"""
import math  # noqa: F401  （注意力里的 1/√hd 可能用得到）

import torch
import torch.nn.functional as F  # noqa: F401
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm：y = x / sqrt(mean(x²) + eps) * weight。

    - 只在最后一维（H）上求 mean(x²)，keepdim=True 以便广播；
    - eps 加在开方里面（默认 1e-5）；
    - weight 是形状 (dim,) 的可学习参数，初始化为全 1，名字必须叫 weight。
    输入 (B, T, H) → 输出 (B, T, H)。
    提示：torch.rsqrt(v) = 1/√v。
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # TODO: 定义 self.weight
        raise NotImplementedError("TODO: RMSNorm.__init__：定义参数 self.weight，形状 (dim,)，初始化为全 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TODO: RMSNorm.forward：x / sqrt(mean(x², dim=-1) + eps) * weight")


def precompute_rope(head_dim: int, max_len: int, theta: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """预先算好 RoPE 的 cos 和 sin 表，返回 (cos, sin)，形状都是 (max_len, hd)。

    - 第 i 对维度（i = 0 … hd/2 − 1）的角速度 θ_i = theta^(−2i/hd)；
    - 位置 m 的转角 = m · θ_i，形状 (max_len, hd/2)；
    - 本实现（同 MiniMind / Llama 的 HF 写法）让第 i 维与第 i + hd/2 维组成一对，
      所以把转角表在最后一维上拼两份：cat([angles, angles], dim=-1) → (max_len, hd)，再取 cos / sin。
    提示：torch.arange(0, head_dim, 2) 就是 2i。
    """
    raise NotImplementedError("TODO: precompute_rope：θ_i = theta^(-2i/hd)，角度 m·θ_i，两半拼接后取 cos/sin")


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """对 q、k 施加旋转位置编码，返回旋转后的 (q, k)，形状不变。

    q: (B, T, nh, hd)，k: (B, T, nkv, hd)，cos/sin: (T, hd)。
    - rotate_half(x)：把最后一维切成前半 x1、后半 x2，返回 cat([-x2, x1])；
    - x_rot = x * cos + rotate_half(x) * sin；
    - cos/sin 要先变成 (T, 1, hd)，才能对"头"这一维广播。
    提示：可以先写一个小函数 rotate_half。
    """
    raise NotImplementedError("TODO: apply_rope：x * cos + rotate_half(x) * sin，cos/sin 在头维上广播")


class GQAttention(nn.Module):
    """因果多头自注意力，支持 GQA（分组查询注意力）。

    __init__：
    - n_heads = config.num_attention_heads，n_kv_heads = config.num_key_value_heads，head_dim = H / n_heads；
    - q_proj: H → nh·hd；k_proj、v_proj: H → nkv·hd（GQA 省参数就省在这里）；o_proj: nh·hd → H；都不带 bias。
    forward(x, cos, sin)，x: (B, T, H)：
    1. q = q_proj(x) 变形为 (B, T, nh, hd)；k、v 变形为 (B, T, nkv, hd)；
    2. q, k = apply_rope(q, k, cos, sin)（v 不旋转）；
    3. 每个 KV 头复制 nh/nkv 份：KV 头 j 服务 query 头 j·g … (j+1)·g − 1（g = nh/nkv），
       即在头维上 repeat_interleave（不是 repeat！）→ (B, T, nh, hd)；
    4. 转成 (B, nh, T, hd)；scores = q @ kᵀ / √hd → (B, nh, T, T)；
    5. 因果 mask：位置 i 只能看 j ≤ i（把 j > i 的分数设成 −inf），softmax(dim=-1)，再乘 v → (B, nh, T, hd)；
    6. 转回 (B, T, nh·hd)，过 o_proj → (B, T, H)。
    提示：torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) 正好标出 j > i 的位置。
    """

    def __init__(self, config):
        super().__init__()
        raise NotImplementedError("TODO: GQAttention.__init__：q_proj / k_proj / v_proj / o_proj（无 bias）")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TODO: GQAttention.forward：投影 → RoPE → 复制 KV 头 → 因果 softmax 注意力 → o_proj")


class SwiGLU(nn.Module):
    """SwiGLU 前馈网络：down_proj( silu(gate_proj(x)) * up_proj(x) )。

    gate_proj、up_proj: H → I；down_proj: I → H（I = config.intermediate_size），都不带 bias。
    输入 (B, T, H) → 中间 (B, T, I) → 输出 (B, T, H)。
    提示：silu 只作用在 gate 分支上，up 分支保持线性，两者逐元素相乘。
    """

    def __init__(self, config):
        super().__init__()
        raise NotImplementedError("TODO: SwiGLU.__init__：gate_proj / up_proj / down_proj（无 bias）")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TODO: SwiGLU.forward：down(silu(gate(x)) * up(x))")


class Block(nn.Module):
    """Pre-Norm Transformer 块（MiniMind / Llama）。

    子模块：input_layernorm = RMSNorm(H, config.rms_norm_eps)，self_attn = GQAttention(config)，
            post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)，mlp = SwiGLU(config)。
    forward(x, cos, sin)，x: (B, T, H) → (B, T, H)：
        x = x + self_attn(input_layernorm(x), cos, sin)
        x = x + mlp(post_attention_layernorm(x))
    提示：归一化只作用在支路的输入上，加回主干的是未归一化的 x（这就是 Pre-Norm）。
    """

    def __init__(self, layer_id: int, config):
        super().__init__()
        self.layer_id = layer_id
        raise NotImplementedError("TODO: Block.__init__：input_layernorm / self_attn / post_attention_layernorm / mlp")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TODO: Block.forward：两个残差，x + attn(norm(x))，再 x + mlp(norm(x))")
