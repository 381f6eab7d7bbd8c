"""批量算 log p(续写 | 上下文)：困惑度、选择题、lm-eval 适配器都只调用这里。

一个请求是 (上下文 ids, 续写 ids)。把二者拼起来做一次前向，位置 t 的 logits 预测第 t+1 个 token，
于是续写的对数概率 = 续写每个 token 在它前一个位置上的 log_softmax 之和。
同时返回"贪心"标记：续写的每个 token 是否都是该位置概率最大的 token（lm-eval 的 is_greedy）。

批量：按总长度从长到短排序后分批（同一批长度相近，padding 少），右侧补齐；
因果注意力里右侧的 padding 影响不到它前面的位置，所以不需要 attention_mask，结果与逐条算相同（浮点误差内）。
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

Request = Tuple[Sequence[int], Sequence[int]]  # (上下文 ids, 续写 ids)


def truncate_left(context: Sequence[int], continuation: Sequence[int], max_len: int) -> Tuple[list, list]:
    """总长超过 max_len 时从左边截掉上下文（续写必须完整保留，且至少留一个上下文 token 来预测它的第一个 token）。"""
    if not continuation:
        raise ValueError("续写为空：没有 token 可打分")
    if len(continuation) + 1 > max_len:
        raise ValueError(f"续写有 {len(continuation)} 个 token，加上至少 1 个上下文 token 超过了 max_len={max_len}")
    if not context:
        raise ValueError("上下文为空：第一个续写 token 没有可依据的位置（通常应以 BOS 开头）")
    keep = max_len - len(continuation)
    return list(context[-keep:]), list(continuation)


@torch.no_grad()
def score_requests(model, requests: List[Request], batch_size: int = 16, max_len: int = 512,
                   pad_id: int = 0, progress: bool = False, desc: str = "scoring") -> List[Tuple[float, bool]]:
    """每个请求 → (续写的对数概率之和（自然对数）, 续写是否全是贪心 token)，顺序与 requests 相同。"""
    device = next(model.parameters()).device
    pairs = [truncate_left(c, x, max_len) for c, x in requests]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: List[Tuple[float, bool]] = [None] * len(pairs)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
        logits = model(ids.to(device)).logits.float()  # (B, T, V)
        logprobs = F.log_softmax(logits, dim=-1)
        for row, i in enumerate(batch):
            n_ctx, n_cont = len(pairs[i][0]), len(pairs[i][1])
            # 续写 token 在位置 n_ctx .. n_ctx+n_cont-1，预测它们的 logits 在前一位
            target = torch.tensor(pairs[i][1], device=logprobs.device)  # (n_cont,)
            step = logprobs[row, n_ctx - 1:n_ctx - 1 + n_cont]  # (n_cont, V)
            total = step.gather(1, target[:, None]).sum().item()
            greedy = bool((step.argmax(-1) == target).all().item())
            results[i] = (total, greedy)
    return results
