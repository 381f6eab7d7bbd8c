"""FlashAttention 的算法（Dao et al., 2022）用纯 PyTorch 写出来：分块（tiling）+ 在线 softmax + 反向重算。

这不是快的 kernel：真正的 FlashAttention 把一个块留在 GPU 的 SRAM 里，省下的是读写显存（HBM）的次数；
这里每个块都是普通的 PyTorch 张量，Python 循环反而更慢。要看的是算法本身：
  - 前向按 (查询块, 键块) 逐块算，用在线 softmax 维护每行的最大值 m 和分母 l，从不存 T×T 的分数矩阵；
  - 只为反向保存 q、k、v、输出 o 和每行的 logsumexp（O(T) 个数），反向时逐块重算 softmax 概率。
形状约定：q、k、v、o 都是 (B, nh, T, hd)；lse 是 (B, nh, T)。
"""
import math

import torch


def naive_attention(q, k, v, causal: bool = True):
    """教科书写法：先算完整的 (B, nh, T, T) 分数矩阵，softmax 后乘 v。反向要存 T×T 的概率矩阵。"""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, nh, T, hd)


def _tile_scores(q_tile, k_tile, q_start: int, k_start: int, scale: float, causal: bool):
    """一个 (查询块, 键块) 的分数 (B, nh, bq, bk)；因果时把键位置 > 查询位置的分数设成 -inf。"""
    s = q_tile @ k_tile.transpose(-2, -1) * scale
    if causal and k_start + k_tile.shape[-2] - 1 > q_start:  # 只有跨过对角线的块需要掩码
        q_pos = torch.arange(q_start, q_start + q_tile.shape[-2], device=s.device)
        k_pos = torch.arange(k_start, k_start + k_tile.shape[-2], device=s.device)
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    return s


def _key_tiles(q_start: int, q_end: int, T: int, block: int, causal: bool):
    """查询块 [q_start, q_end) 要看的键块起点；因果时对角线右边的块整块跳过（一次乘法都不做）。"""
    return range(0, q_end if causal else T, block)


def tiled_attention_forward(q, k, v, block: int, causal: bool = True):
    """在线 softmax 的前向，返回 (o, lse)。每个查询块只维护 m、l、acc 三个 O(bq) 的量。"""
    B, nh, T, hd = q.shape
    scale = 1.0 / math.sqrt(hd)
    o = torch.empty_like(q)
    lse = torch.empty(B, nh, T, dtype=q.dtype, device=q.device)
    for qs in range(0, T, block):
        qe = min(qs + block, T)
        q_tile = q[:, :, qs:qe]                                             # (B, nh, bq, hd)
        m = torch.full((B, nh, qe - qs), float("-inf"), dtype=q.dtype, device=q.device)  # 每行目前的最大分数
        l = torch.zeros(B, nh, qe - qs, dtype=q.dtype, device=q.device)     # 每行目前的 Σ exp(s − m)
        acc = torch.zeros(B, nh, qe - qs, hd, dtype=q.dtype, device=q.device)  # 每行目前的 Σ exp(s − m)·v
        for ks in _key_tiles(qs, qe, T, block, causal):
            ke = min(ks + block, T)
            s = _tile_scores(q_tile, k[:, :, ks:ke], qs, ks, scale, causal)  # (B, nh, bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1))
            p = torch.exp(s - m_new[..., None])
            correction = torch.exp(m - m_new)  # 旧的最大值变大了：之前累加的量按比例缩小
            l = l * correction + p.sum(dim=-1)
            acc = acc * correction[..., None] + p @ v[:, :, ks:ke]
            m = m_new
        o[:, :, qs:qe] = acc / l[..., None]
        lse[:, :, qs:qe] = m + torch.log(l)
    return o, lse


def tiled_attention_backward(q, k, v, o, lse, grad_o, block: int, causal: bool = True):
    """逐块重算概率 p = exp(s − lse)，累加 dq、dk、dv；同样从不存 T×T 的矩阵。

    softmax 的反向 ds = p ⊙ (dp − D)，其中 D_i = Σ_j p_ij·dp_ij = grad_o_i · o_i（行内点积，开头一次算好）。
    """
    B, nh, T, hd = q.shape
    scale = 1.0 / math.sqrt(hd)
    D = (grad_o * o).sum(dim=-1)  # (B, nh, T)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for qs in range(0, T, block):
        qe = min(qs + block, T)
        q_tile, do_tile = q[:, :, qs:qe], grad_o[:, :, qs:qe]
        for ks in _key_tiles(qs, qe, T, block, causal):
            ke = min(ks + block, T)
            k_tile, v_tile = k[:, :, ks:ke], v[:, :, ks:ke]
            p = torch.exp(_tile_scores(q_tile, k_tile, qs, ks, scale, causal) - lse[:, :, qs:qe, None])  # 重算
            dv[:, :, ks:ke] += p.transpose(-2, -1) @ do_tile
            dp = do_tile @ v_tile.transpose(-2, -1)  # (B, nh, bq, bk)
            ds = p * (dp - D[:, :, qs:qe, None])
            dq[:, :, qs:qe] += ds @ k_tile * scale
            dk[:, :, ks:ke] += ds.transpose(-2, -1) @ q_tile * scale
    return dq, dk, dv


class TiledAttention(torch.autograd.Function):
    """前向只为反向保存 q、k、v、o、lse；反向调用 tiled_attention_backward 重算。"""

    @staticmethod
    def forward(ctx, q, k, v, block: int, causal: bool):
        o, lse = tiled_attention_forward(q, k, v, block, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.block, ctx.causal = block, causal
        return o

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = tiled_attention_backward(q, k, v, o, lse, grad_o.contiguous(), ctx.block, ctx.causal)
        return dq, dk, dv, None, None


def tiled_attention(q, k, v, block: int = 64, causal: bool = True):
    """(B, nh, T, hd) 的 q、k、v → (B, nh, T, hd)；与 naive_attention 数学上相同，可反向。"""
    if block < 1:
        raise ValueError(f"block 必须 >= 1，收到 {block}")
    return TiledAttention.apply(q, k, v, block, causal)
