"""采样（rollout）：RL 的主要开销。所有 prompt 的全部 G 条回答放进同一个 batch，一次带 KV cache 的 generate 采完。

    prompt_ids (B, P) 左 padding ──repeat_interleave(G)──▶ (B·G, P) ──generate──▶ sequences (B·G, P + R)

左 padding 让每行的 prompt 都在第 P 列结束，回答都从第 P 列开始，于是回答就是 sequences[:, P:]。
generate 对已经输出 <|im_end|> 的行继续补 <|im_end|>，所以回答掩码 completion_mask 只保留到（含）第一个 <|im_end|>。
对数概率：策略与参考模型各做一次前向（logits_to_keep=R+1，只算回答位置的 logits）。
"""
from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class Rollout:
    sequences: torch.Tensor  # (N, P+R)：prompt + 回答，N = B·G
    attention_mask: torch.Tensor  # (N, P+R)：prompt 的 padding 为 0，其余为 1
    completion_mask: torch.Tensor  # (N, R)：回答里到（含）第一个 <|im_end|> 为 1，之后与 padding 为 0
    prompt_len: int  # P
    texts: List[str]  # 解码后的回答（不含 <|im_end|>；开了思考的 prompt 的前缀已补回）
    n_tokens: torch.Tensor  # (N,)：每条回答的 token 数（含 <|im_end|>）
    finished: torch.Tensor  # (N,) bool：是否在 max_new_tokens 之内输出了 <|im_end|>

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]  # (N, R)


def trim_left_padding(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """去掉所有行都是 padding 的左侧列（数据集把 prompt 补到了固定长度，这一批可能都短得多）。"""
    first = int(prompt_mask.any(dim=0).float().argmax())
    return prompt_ids[:, first:], prompt_mask[:, first:]


def completion_mask_from(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(N, R) → (N, R)：第一个 eos 及之前为 1；没有 eos 的行全为 1。"""
    is_eos = completion_ids == eos_id
    R = completion_ids.size(1)
    first_eos = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1), torch.full_like(is_eos[:, 0], R - 1,
                                                                                              dtype=torch.long))
    return (torch.arange(R, device=completion_ids.device)[None, :] <= first_eos[:, None]).long()


@torch.no_grad()
def sample_replies(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_generations: int,
                   max_new_tokens: int, temperature: float = 1.0, top_p: Optional[float] = None,
                   reply_prefix: str = "") -> Rollout:
    """每个 prompt 采 num_generations 条回答（同一 prompt 的 G 条相邻）。temperature <= 0 为贪心。"""
    prompt_ids, prompt_mask = trim_left_padding(prompt_ids, prompt_mask)
    ids = prompt_ids.repeat_interleave(num_generations, dim=0)  # (N, P)
    mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    eos = tokenizer.eos_token_id
    sequences = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                               temperature=temperature if temperature > 0 else 1.0, top_p=top_p,
                               eos_token_id=eos, attention_mask=mask)  # (N, P+R)
    P = ids.size(1)
    completion = sequences[:, P:]
    completion_mask = completion_mask_from(completion, eos)
    finished = (completion == eos).any(dim=1)
    texts = []
    for row, m, done in zip(completion, completion_mask, finished):
        reply = row[m.bool()][:-1] if done else row[m.bool()]  # 去掉结尾的 <|im_end|>
        texts.append(reply_prefix + tokenizer.decode(reply.tolist()))
    attention_mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
    return Rollout(sequences, attention_mask, completion_mask, P, texts, completion_mask.sum(dim=1), finished)


def logprobs_from_logits(logits: torch.Tensor, completion_ids: torch.Tensor, with_entropy: bool = False):
    """logits (N, R+1, V)：最后 R+1 个位置的输出；位置 t 预测第 t+1 个 token，所以前 R 个预测回答的 R 个 token。
    返回 log π (N, R)；with_entropy 时再返回每个位置的熵 (N, R)（不求导）。"""
    logp_all = logits[:, :-1].float().log_softmax(dim=-1)  # (N, R, V)
    logp = logp_all.gather(2, completion_ids.unsqueeze(-1)).squeeze(-1)  # (N, R)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # (N, R)
    return logp, entropy.detach()


def completion_logprobs(model, rollout: Rollout, with_entropy: bool = False):
    """一次前向（logits_to_keep=R+1，只算回答位置的 logits）：回答里每个 token 的 log π(token | 之前的内容)，(N, R)。"""
    R = rollout.completion_mask.size(1)
    logits = model(rollout.sequences, attention_mask=rollout.attention_mask, logits_to_keep=R + 1).logits
    return logprobs_from_logits(logits, rollout.completion_ids, with_entropy)


class RolloutCache:
    """μ 次优化共用一批采样（PPO/GRPO 的 num_iterations）。train() 每个优化步调用 compute_loss A 次（A = 梯度累积步数），
    第 c 次调用属于 micro-batch c % A 的第 (c // A) % μ 遍：第 0 遍用 make(batch) 采样并缓存，之后的遍重用缓存。
    检查点要落在 μ 的整数倍步上（脚本检查 --save_interval），续训后计数从 0 开始也能接上。"""

    def __init__(self, accumulation_steps: int, num_iterations: int, make):
        self.accumulation_steps, self.num_iterations, self.make = accumulation_steps, num_iterations, make
        self.calls, self.buffers = 0, {}

    def get(self, batch) -> dict:
        micro = self.calls % self.accumulation_steps
        iteration = (self.calls // self.accumulation_steps) % self.num_iterations
        self.calls += 1
        if iteration == 0:
            self.buffers[micro] = self.make(batch)
        return self.buffers[micro]
