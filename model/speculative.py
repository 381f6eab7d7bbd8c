"""投机解码（speculative decoding）：小的草稿模型先猜 γ 个 token，目标模型用一次前向同时验证它们。

Leviathan et al. 2023《Fast Inference from Transformers via Speculative Decoding》；
Chen et al. 2023《Accelerating Large Language Model Decoding with Speculative Sampling》。

为什么能快：有 KV cache 时，目标模型每解码一个 token 都要把全部权重从内存读一遍，计算量却很小（受带宽限制）；
一次前向处理 γ+1 个 token，读的还是同一遍权重，耗时几乎不变。草稿猜对得越多（接受率 α 越高），
目标模型每次前向产出的 token 就越多；草稿模型本身越小，猜的代价越低。

每一轮：
1. 草稿模型带着自己的 KV cache 自回归地提出 γ 个 token x_1..x_γ，记下每一步的分布 q_i；
2. 目标模型把 [自己 cache 里还没有的 token, x_1..x_γ] 一次前向（logits_to_keep=γ+1），
   得到 γ+1 个位置的分布 p_1..p_{γ+1}：p_i 是 x_i 所在位置的分布，p_{γ+1} 接在 x_γ 之后；
3. 从左到右验证：
   - 贪心：x_i 等于 argmax p_i 就接受；第一个不等的位置改用 argmax p_i，本轮结束；
     全部接受时再取 argmax p_{γ+1}（"奖励" token）。结果与目标模型自己逐 token 贪心解码完全相同；
   - 采样：以 min(1, p_i(x_i) / q_i(x_i)) 的概率接受 x_i；拒绝时从 normalize(max(0, p_i − q_i)) 重抽，本轮结束；
     全部接受时从 p_{γ+1} 抽奖励 token。这样每个 token 的分布恰好是目标模型的 p（Leviathan 等的定理 1），
     与草稿好坏无关——草稿只影响速度；
4. 两个 KV cache 都截回到已接受的长度（每层的 (k, v) 沿序列维切片），被拒绝的 token 不留痕迹。

所以每轮至少产出 1 个 token（最坏也不比普通解码少），最多 γ+1 个。
只支持 batch=1：每一行接受的个数不同，批量时每行的 cache 长度不再一致，超出了这份教学实现的范围。
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from model.model_minimind import KVCache, MiniMindForCausalLM, sampling_probs


@dataclass
class SpeculativeStats:
    """一次投机解码的计数；α 与"每次目标前向产出几个 token"是判断草稿值不值得的两个数。"""

    target_calls: int = 0  # 目标模型的前向次数（每轮一次）
    drafted: int = 0  # 草稿提出的 token 总数（= 草稿模型的前向次数）
    accepted: int = 0  # 其中通过验证的个数（结束时被 eos 截掉的也算：它们的验证已经做完）
    rejected: int = 0  # 被拒绝的个数：每轮至多一个——第一个被拒绝的草稿之后，同一轮剩下的草稿根本没被检验
    new_tokens: int = 0  # 最终生成的新 token 数

    @property
    def acceptance_rate(self) -> float:
        """α = accepted / (accepted + rejected)：被检验过的草稿里通过的比例，即 Leviathan 公式
        E[每次目标前向的 token 数] = (1 − α^{γ+1}) / (1 − α) 里的 α。没有检验过任何草稿时为 0。
        注意不是 accepted / drafted：那个比例把没被检验的草稿也算进分母，γ 越大它越小（02-inference 实验 4）。"""
        tested = self.accepted + self.rejected
        return self.accepted / tested if tested else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """平均每次目标前向产出的新 token 数：普通解码是 1，投机解码在 1 到 γ+1 之间。"""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    def summary(self) -> str:
        return (f"speculative: α = {self.acceptance_rate:.2f} ({self.accepted} accepted, {self.rejected} rejected, "
                f"{self.drafted} drafted), "
                f"{self.tokens_per_target_call:.2f} tokens / target call ({self.target_calls} target calls)")


def cache_length(past: Optional[List[KVCache]]) -> int:
    """KV cache 覆盖的 token 数（还没有 cache 时为 0）。"""
    return 0 if past is None else past[0][0].shape[1]


def truncate_cache(past: List[KVCache], length: int) -> List[KVCache]:
    """每层的 (k, v)（各 (1, S, nkv, hd)）只留前 length 个位置：把被拒绝的 token 从 cache 里去掉。"""
    return [(k[:, :length], v[:, :length]) for k, v in past]


def check_arguments(target: MiniMindForCausalLM, draft: MiniMindForCausalLM, input_ids: torch.Tensor,
                    max_new_tokens: int, num_draft_tokens: int, do_sample: bool, temperature: float,
                    repetition_penalty: float, attention_mask: Optional[torch.Tensor]) -> None:
    """不支持或不合法的输入：抛出说明原因与对策的 ValueError。"""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"投机解码只支持 batch=1（每行接受的 token 数不同，cache 无法对齐），收到 input_ids 形状 "
                         f"{tuple(input_ids.shape)}；请逐条生成，或不传 draft_model 走普通的批量 generate")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids 不能为空：投机解码至少需要 1 个 prompt token")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("投机解码只支持 batch=1，attention_mask 里不能有 padding（0）；请去掉 padding 后再生成")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"草稿模型的词表大小 {draft.config.vocab_size} 与目标模型的 {target.config.vocab_size} 不同："
                         "投机解码要求两者用同一个分词器（同一份词表）")
    if next(draft.parameters()).device != next(target.parameters()).device:
        raise ValueError("草稿模型与目标模型不在同一个设备上：请先把两者 .to() 到同一设备")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens 不能为负，收到 {max_new_tokens}")
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens（每轮草稿提出的 token 数 γ）必须 >= 1，收到 {num_draft_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"采样时 temperature 必须 > 0，收到 {temperature}（想要确定性输出请用 do_sample=False）")
    if repetition_penalty != 1.0:
        raise ValueError(f"投机解码不支持 repetition_penalty（收到 {repetition_penalty}）：惩罚依赖已生成的序列，"
                         "一轮里的草稿位置无法一致地套用；请设为 1.0，或不用草稿模型")


def propose(draft: MiniMindForCausalLM, sequence: torch.Tensor, past: Optional[List[KVCache]], gamma: int,
            do_sample: bool, temperature: float, top_k: Optional[int], top_p: Optional[float],
            generator: Optional[torch.Generator]):
    """草稿模型自回归地提出 gamma 个 token。

    第一步输入 sequence 里草稿 cache 还没覆盖的部分：首轮是整个 prompt，上一轮全部接受时是 2 个 token
    （草稿自己的最后一个猜测 x_γ 还没输入过草稿，再加上奖励 token），否则是 1 个。之后每步输入上一步的 token。
    返回 tokens (γ,)、每步的采样分布 q (γ, V)（贪心时为 None）和更新后的 cache（覆盖到 x_{γ-1}）。
    """
    tokens, probs = [], []
    next_input = sequence[:, cache_length(past):]  # (1, 1 或 2 或 T)
    for _ in range(gamma):
        out = draft(next_input, past_key_values=past, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()  # (1, V)
        if do_sample:
            q = sampling_probs(logits, temperature, top_k, top_p)  # (1, V)
            token = torch.multinomial(q, num_samples=1, generator=generator)[0]  # (1,)
            probs.append(q[0])
        else:
            token = logits.argmax(dim=-1)  # (1,)
        tokens.append(token)
        next_input = token[None]  # (1, 1)
    drafts = torch.cat(tokens) if tokens else sequence.new_empty(0)  # (γ,)
    return drafts, torch.stack(probs) if probs else None, past


def verify_greedy(drafts: torch.Tensor, target_logits: torch.Tensor) -> Tuple[int, torch.Tensor]:
    """贪心验证。drafts (γ,)，target_logits (γ+1, V)。返回 (接受的草稿数 n, 接在它们之后的 token (1,))。"""
    choice = target_logits.argmax(dim=-1)  # (γ+1,)：目标模型在每个位置自己会选的 token
    n = int((drafts == choice[:-1]).int().cumprod(dim=0).sum())  # 前缀里连续相等的个数
    return n, choice[n:n + 1]


def verify_sampling(drafts: torch.Tensor, draft_probs: Optional[torch.Tensor], target_probs: torch.Tensor,
                    generator: Optional[torch.Generator]) -> Tuple[int, torch.Tensor]:
    """采样验证（拒绝采样）。drafts (γ,)，draft_probs q (γ, V)，target_probs p (γ+1, V)。
    返回 (接受的草稿数 n, 接在它们之后的 token (1,))；产出的每个 token 都服从目标分布 p。"""
    gamma = drafts.shape[0]
    if gamma > 0:
        positions = torch.arange(gamma, device=drafts.device)
        p_x, q_x = target_probs[positions, drafts], draft_probs[positions, drafts]  # 各 (γ,)
        r = torch.rand(gamma, generator=generator, device=drafts.device)  # (γ,)，每个位置一个独立的均匀数
        accepted = (r * q_x < p_x).int()  # r < p/q；x 是从 q 抽出的，q(x) > 0
        n = int(accepted.cumprod(dim=0).sum())
        if n < gamma:
            # 拒绝：从 max(0, p - q) 重抽（multinomial 接受未归一化的权重）。数学上此时它的和一定 > 0；
            # 浮点里 p 与 q 几乎相同时可能全为 0，退回 p
            residual = (target_probs[n] - draft_probs[n]).clamp(min=0)  # (V,)
            if residual.sum() <= 0:
                residual = target_probs[n]
            return n, torch.multinomial(residual, num_samples=1, generator=generator)
    return gamma, torch.multinomial(target_probs[gamma], num_samples=1, generator=generator)  # 奖励 token


def speculative_generate(target: MiniMindForCausalLM, draft: MiniMindForCausalLM, input_ids: torch.Tensor,
                         max_new_tokens: int = 128, num_draft_tokens: int = 4, do_sample: bool = False,
                         temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                         eos_token_id: Optional[int] = None, attention_mask: Optional[torch.Tensor] = None,
                         repetition_penalty: float = 1.0,
                         streamer: Optional[Callable[[torch.Tensor], None]] = None,
                         generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, SpeculativeStats]:
    """用草稿模型加速目标模型的生成；返回 (sequence (1, T + 新生成长度), SpeculativeStats)。

    参数与 MiniMindForCausalLM.generate 相同（do_sample=False 为贪心，否则两个模型都按同样的
    temperature / top_k / top_p 处理后采样）。num_draft_tokens 是每轮草稿提出的 token 数 γ。
    eos_token_id 默认取目标模型的 config.eos_token_id，生成到它（含）为止；新 token 永远不超过 max_new_tokens
    （最后一轮只提出剩余额度减 1 个草稿）。streamer 对每个被接受的 token 调用一次，参数形状 (1,)。
    generator 用于所有随机数（草稿采样、接受判定、重抽）；None 时用 torch 的全局随机数。
    """
    check_arguments(target, draft, input_ids, max_new_tokens, num_draft_tokens, do_sample, temperature,
                    repetition_penalty, attention_mask)
    eos = target.config.eos_token_id if eos_token_id is None else eos_token_id
    stats = SpeculativeStats()
    with torch.inference_mode():
        was_training = target.training, draft.training
        target.eval()
        draft.eval()
        prompt_len = input_ids.shape[1]
        sequence = input_ids  # (1, S)
        target_past = draft_past = None
        while sequence.shape[1] - prompt_len < max_new_tokens:
            remaining = max_new_tokens - (sequence.shape[1] - prompt_len)
            gamma = min(num_draft_tokens, remaining - 1)  # 本轮最多产出 γ+1 个，不超过剩余额度
            drafts, draft_probs, draft_past = propose(draft, sequence, draft_past, gamma, do_sample,
                                                      temperature, top_k, top_p, generator)
            # 目标模型一次前向：cache 之后的 token（首轮是整个 prompt，之后是上一轮的最后一个）+ γ 个草稿
            target_input = torch.cat([sequence[:, cache_length(target_past):], drafts[None]], dim=1)  # (1, ·)
            out = target(target_input, past_key_values=target_past, use_cache=True, logits_to_keep=gamma + 1)
            target_logits = out.logits[0].float()  # (γ+1, V)
            if do_sample:
                target_probs = sampling_probs(target_logits, temperature, top_k, top_p)  # (γ+1, V)
                n, next_token = verify_sampling(drafts, draft_probs, target_probs, generator)
            else:
                n, next_token = verify_greedy(drafts, target_logits)
            stats.target_calls += 1
            stats.drafted += gamma
            stats.accepted += n
            stats.rejected += int(n < gamma)

            new_tokens = torch.cat([drafts[:n], next_token])  # (n+1,)
            eos_hits = (new_tokens == eos).nonzero()
            if len(eos_hits):
                new_tokens = new_tokens[:int(eos_hits[0, 0]) + 1]  # 只要到第一个 EOS 为止
            sequence = torch.cat([sequence, new_tokens[None]], dim=1)
            stats.new_tokens += len(new_tokens)
            if streamer is not None:
                for token in new_tokens:
                    streamer(token.view(1))
            if len(eos_hits):
                break
            # 截回 cache：两者都只保留 sequence 除最后一个 token 之外、自己算过的位置。
            # 目标的 cache 覆盖到 x_γ，总是够长；草稿的只覆盖到 x_{γ-1}，全部接受时会短一个，下一轮补上
            target_past = truncate_cache(out.past_key_values, sequence.shape[1] - 1)
            if draft_past is not None:
                draft_past = truncate_cache(draft_past, min(cache_length(draft_past), sequence.shape[1] - 1))
        target.train(was_training[0])
        draft.train(was_training[1])
    return sequence.clone(), stats  # 在 inference_mode 之外复制：返回普通张量
