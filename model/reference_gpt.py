"""速度基准的对照组：一个 nanoGPT 式的朴素 GPT（LayerNorm、GELU MLP、可学习位置编码、合并的 qkv 投影）。

只给 `python -m model.bench --reference` 用：同一形状、同一进程里与 MiniMind 按计时窗口轮流测训练速度，
回答"MiniMind 比最朴素的 GPT 慢多少"。这台机器本身的速度会漂移，两者的比值比绝对数字可靠得多。
课程里的一切都用 model_minimind.py；这里刻意保持最简单的写法，不追求与 MiniMind 相同的效果。

与 MiniMind 的差别（也就是速度差的来源）：
    归一化  LayerNorm（一个原生内核）           vs RMSNorm（几个逐元素算子）
    位置    可学习的位置嵌入，只在输入处加一次   vs 每层对 q、k 做 RoPE
    FFN     4H 宽的 GELU MLP，两个矩阵          vs 8/3·H 宽的 SwiGLU，三个矩阵（H=128 时多约 12% 的 FFN 乘法）
    注意力  q、k、v 一次投影                    vs 三个投影（以及 GQA）
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReferenceOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor


class GPTBlock(nn.Module):
    """Pre-LN：x = x + Attn(LN(x))；x = x + MLP(LN(x))。"""

    def __init__(self, hidden_size: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(hidden_size, bias=False)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.ln_2 = nn.LayerNorm(hidden_size, bias=False)
        self.fc = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.fc_out = nn.Linear(4 * hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        qkv = self.qkv(self.ln_1(x)).view(B, T, 3, self.n_heads, H // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 各 (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, H))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, n_heads: int, max_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, hidden_size)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.blocks = nn.ModuleList([GPTBlock(hidden_size, n_heads) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(hidden_size, bias=False)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight  # 与 MiniMind 一样共享输入、输出嵌入
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> ReferenceOutput:
        """labels 与 input_ids 对齐，位置 t 预测 t+1（与 MiniMindForCausalLM 的约定相同）。"""
        T = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))  # (B, T, H)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        return ReferenceOutput(logits=logits, loss=loss)


def reference_like(config, max_len: int) -> ReferenceGPT:
    """与一个 MiniMindConfig 同宽、同深、同头数、同词表的对照 GPT。"""
    return ReferenceGPT(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                        config.num_attention_heads, max_len)

