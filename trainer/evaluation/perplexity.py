"""留出文本上的困惑度（perplexity）与 bits per byte（bpb）。

每篇文档按预训练时的格式编码成 [BOS] + 文本 token，对 BOS 之后的每个 token 求 −log p（自然对数），加起来是 NLL。
    token 困惑度 ppl = exp(NLL / token 数)          依赖分词器：同一段文字切得越碎，每个 token 越好猜
    bpb           = NLL / (ln 2 × UTF-8 字节数)    分母是文字本身的字节数，与分词器无关：不同词表的模型可以直接比较
（lm-evaluation-harness 的 wikitext 任务报告的 bits_per_byte 也是这个定义。）

长文档用滑动窗口：每个窗口最多 max_len 个 token，每次往前推进 stride 个新 token 并只给这些新 token 打分，
它们前面留着 max_len − stride 个 token 作上下文。stride 越小，上下文越长、NLL 越低，计算也越多。
"""
import math
from typing import Dict, List

from trainer.evaluation.loglik import Request, score_requests


def rolling_requests(ids: List[int], max_len: int, stride: int) -> List[Request]:
    """一篇文档的 token（ids[0] 是 BOS，不打分）→ 若干 (上下文, 续写) 请求，续写恰好覆盖 ids[1:] 一次。"""
    if not 1 <= stride < max_len:
        raise ValueError(f"需要 1 <= stride < max_len，收到 stride={stride}, max_len={max_len}")
    requests, start = [], 1
    while start < len(ids):
        end = min(start + stride, len(ids))
        requests.append((ids[max(0, end - max_len):start], ids[start:end]))
        start = end
    return requests


def evaluate_text(model, tokenizer, texts: List[str], max_len: int = 512, stride: int = None,
                  batch_size: int = 16, progress: bool = False) -> Dict[str, float]:
    """texts 里每篇文档的 NLL 加总 → nll、tokens、bytes、ppl、bpb。stride 默认 max_len // 2。"""
    stride = stride or max(1, max_len // 2)
    requests = []
    for text in texts:
        requests += rolling_requests([tokenizer.bos_token_id] + tokenizer.encode(text), max_len, stride)
    scores = score_requests(model, requests, batch_size=batch_size, max_len=max_len,
                            pad_id=tokenizer.pad_token_id, progress=progress, desc="bpb")
    nll = -sum(logprob for logprob, _ in scores)
    n_tokens = sum(len(cont) for _, cont in requests)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"nll": nll, "tokens": n_tokens, "bytes": n_bytes, "documents": len(texts),
            "ppl": math.exp(nll / n_tokens), "bits_per_token": nll / (math.log(2) * n_tokens),
            "bpb": nll / (math.log(2) * n_bytes)}
