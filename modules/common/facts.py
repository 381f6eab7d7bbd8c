"""合成的"随机事实"数据：键 (a, b) → 随机指定的值。没有规律可学，只能背下来，所以回忆准确率直接量出模型的记忆容量。

01-foundation/04-feedforward 实验 3（FFN 是键值记忆）和 04-advanced/01-minimind2-to-3 实验 3（MoE 的容量）共用这份生成器。
"""
import torch
from torch import nn


def make_facts(n_a: int, n_values: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """生成全部 A² 条事实。词表：a 取 0..A-1，b 取 A..2A-1，值取 2A..2A+M-1，最后一个是 "→"。

    返回 input_ids (A², 4) = [a, b, →, 值]，labels (A², 4)（只有值计分，其余 -100），以及词表说明。
    """
    gen = torch.Generator().manual_seed(seed)
    arrow = 2 * n_a + n_values
    a = torch.arange(n_a).repeat_interleave(n_a)  # (A²,)
    b = torch.arange(n_a).repeat(n_a) + n_a  # (A²,)
    value = torch.randint(n_values, (n_a * n_a,), generator=gen) + 2 * n_a  # (A²,) 随机指定，无规律
    input_ids = torch.stack([a, b, torch.full_like(a, arrow), value], dim=1)  # (A², 4)
    labels = torch.full_like(input_ids, -100)
    labels[:, 3] = value
    vocab = {"vocab_size": arrow + 1, "value_ids": list(range(2 * n_a, 2 * n_a + n_values)), "arrow": arrow}
    return input_ids, labels, vocab


@torch.no_grad()
def recall_per_fact(model: nn.Module, input_ids: torch.Tensor) -> list[float]:
    """在"→"位置取 argmax（整个词表），逐条事实返回是否等于值（1.0 / 0.0）；均值就是回忆准确率。

    model 是任何返回 .logits 的因果语言模型（LabModel、MiniMindForCausalLM）。
    """
    model.eval()
    pred = model(input_ids[:, :3]).logits[:, 2].argmax(-1)  # (N,)
    model.train()
    return (pred == input_ids[:, 3]).float().tolist()
