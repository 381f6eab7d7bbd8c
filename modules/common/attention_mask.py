"""因果 + 滑动窗口 + 注意力汇点的布尔 mask：LabAttention 与 MLA 共用的一份规则。"""
from typing import Optional

import torch


def sliding_window_mask(q_len: int, k_len: int, window: Optional[int] = None, sinks: int = 0,
                        device=None) -> torch.Tensor:
    """(q_len, k_len) 的布尔 mask，True = query 可以看这个 key。query 是整段的最后 q_len 个位置
    （训练 / 预填充时 q_len = k_len；逐 token 解码时 q_len = 1）。

    规则：因果（key 位置 j <= query 位置 i）；给了 window 时还要 j 在最近 window 个位置里（i − window < j），
    或者 j 是最前面的 sinks 个 token 之一（StreamingLLM 的 attention sink）。window=None 就是普通的因果 mask。
    """
    i = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q_len, 1) query 的绝对位置
    j = torch.arange(k_len, device=device)[None, :]  # (1, k_len) key 位置
    allowed = j <= i
    if window is not None:
        allowed = allowed & ((j > i - window) | (j < sinks))
    return allowed
