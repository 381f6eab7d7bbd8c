"""留出集评测：任务准确率的三种读法。

- 贪心 pass@1：每题贪心解码一次，答对的比例。RL 训练日志里的 eval_accuracy 就是它；eval_correct 是逐题的对错串。
- pass@k：每题采样 n 条，其中 c 条答对；"k 次里至少一次答对"的无偏估计（Chen et al. 2021, "Codex", Eq. 1）
  pass@k = 1 − C(n−c, k) / C(n, k)，用连乘的数值稳定写法。
- 多数投票（maj@k）：k 条采样里出现最多的答案是否正确（self-consistency, Wang et al. 2022）。
"""
from collections import Counter
from typing import Dict, List

import numpy as np
import torch

from trainer.rl.rewards import correctness_reward, extract_answer, format_reward
from trainer.rl.rollout import sample_replies
from trainer.rl.tasks import check


def pass_at_k(n: int, c: int, k: int) -> float:
    """n 次采样中 c 次正确时 pass@k 的无偏估计。"""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"需要 0 <= c <= n 且 1 <= k <= n，收到 n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(replies: List[str], task: str, reference: str) -> bool:
    """k 条回答里出现最多的答案（按空白规范化；平票取最先出现的）是否正确。"""
    answers = [" ".join(extract_answer(r).split()) for r in replies]
    top = Counter(answers).most_common(1)[0][0]
    return check(task, reference, top)


@torch.no_grad()
def evaluate_tasks(model, tokenizer, dataset, max_new_tokens: int, num_samples: int = 0, temperature: float = 1.0,
                   top_p=None, batch_size: int = 64, reply_prefix: str = "", seed: int = 0,
                   limit: int = None) -> Dict[str, float]:
    """在 dataset（RLPromptDataset）上评测。num_samples = k > 1 时再每题采样 k 条，报 pass@1（采样）、pass@k、maj@k。
    采样在 fork_rng 里用固定种子：评测不改变训练的随机数状态（续训仍然逐位一致），同一模型两次评测结果相同。"""
    device = next(model.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    per_task: Dict[str, List[float]] = {}
    greedy, formats, lengths, sampled, at_k, majority, sampled_counts = [], [], [], [], [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            rows = [dataset.row(i) for i in range(start, min(start + batch_size, n))]
            ids = torch.stack([x["prompt_ids"] for x in items]).to(device)
            mask = torch.stack([x["prompt_mask"] for x in items]).to(device)
            out = sample_replies(model, tokenizer, ids, mask, 1, max_new_tokens, temperature=0, reply_prefix=reply_prefix)
            for row, text, n_tok in zip(rows, out.texts, out.n_tokens.tolist()):
                ok = correctness_reward(text, row["task"], row["answer"])
                greedy.append(ok)
                per_task.setdefault(row["task"], []).append(ok)
                formats.append(float(format_reward(text) == 1.0))
                lengths.append(n_tok)
            if num_samples > 1:
                out = sample_replies(model, tokenizer, ids, mask, num_samples, max_new_tokens, temperature=temperature,
                                     top_p=top_p, reply_prefix=reply_prefix)
                for j, row in enumerate(rows):
                    replies = out.texts[j * num_samples:(j + 1) * num_samples]
                    c = sum(correctness_reward(r, row["task"], row["answer"]) for r in replies)
                    sampled.append(c / num_samples)
                    sampled_counts.append(int(c))
                    at_k.append(pass_at_k(num_samples, int(c), num_samples))
                    majority.append(float(majority_correct(replies, row["task"], row["answer"])))
    metrics = {"eval_accuracy": float(np.mean(greedy)), "eval_format": float(np.mean(formats)),
               "eval_reply_len": float(np.mean(lengths)), "eval_n": n,
               # 每题贪心对错（"1"/"0"，按留出集顺序）：两次评测可以逐题配对比较，噪声比两个比例直接相减小得多
               "eval_correct": "".join("1" if ok else "0" for ok in greedy)}
    metrics.update({f"eval_accuracy_{task}": float(np.mean(v)) for task, v in sorted(per_task.items())})
    if num_samples > 1:
        metrics.update({"eval_pass1_sampled": float(np.mean(sampled)), f"eval_pass{num_samples}": float(np.mean(at_k)),
                        f"eval_maj{num_samples}": float(np.mean(majority)),
                        # 每题 k 条采样里答对几条（k ≤ 9 时一位数字一题）：同样可以逐题配对比较
                        "eval_sampled_correct": "".join(map(str, sampled_counts)) if num_samples <= 9 else None})
    return metrics
