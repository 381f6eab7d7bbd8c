"""训练时显存/内存花在哪里：权重、梯度、优化器状态、激活各要多少字节（开训前估算，CUDA 上再报实测峰值）。

我们的训练器始终用 float32 存权重（即"主权重"），bf16/fp16 只是 autocast 下的计算精度：
    权重      P × 4 字节                      （autocast 时前向还会缓存一份 P × 2 字节的低精度副本，直到本步反向结束）
    梯度      P_train × 4 字节                （梯度与参数同 dtype，即 float32）
    优化器    P_train × 8 字节                （AdamW 的一阶矩 exp_avg + 二阶矩 exp_avg_sq，各 float32）
    DDP 桶    P_train × 4 字节                （DDP/zero1 把梯度拷进扁平的通信桶再 all-reduce，多进程时才有）
    激活      B × T × (L × a_block + a_head)  （见 block_activation_bytes_per_token）
分片后每个进程只存 1/N：zero1 切优化器状态，fsdp 切权重、梯度和优化器状态（见 trainer/sharding.py）。
混合精度的 Adam 训练常说"每参数 16 字节"（Rajbhandari et al., 2020：fp16 权重 2 + 梯度 2 + fp32 主权重/两个矩 12），
我们的布局是 4 + 4 + 8 = 16 字节，数目相同、组成不同。
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch

from model.model_minimind import checkpointed_block_count

FP32_BYTES = 4
MIB = 2 ** 20


def block_activation_bytes_per_token(config, compute_bytes: int, seq_len: int) -> int:
    """一个 Transformer 块为反向保存的激活，折算到每个 token 的字节数。

    思路同 Korthikanti et al. (2022) 对 GPT 块的计数（那里是 sbh·(34 + 5as/h) 字节，含 dropout 掩码和注意力矩阵），
    按我们的块逐个数出反向要用到的张量（元素数/token；H=hidden，q=nh·hd，kv=nkv·hd，I=FFN 中间层）：
        float32（残差流）：块输入 x、注意力后的 h                      2H
                          minimind3 的 q/k 归一化前的值               + q + kv
                          RMSNorm 的 1/rms、SDPA 的 logsumexp 等小项   + 2 + nh（minimind3 再 + nh + nkv）
        计算精度 e 字节： RMSNorm 输出（autocast 时 q/k/v 三个投影各转一份 → 3 份）   c_attn·H
                          RoPE 后的 q、k，v，注意力输出 y              2q + 2kv
                          第二个 RMSNorm 的输出（autocast 时 gate/up 各一份 → 2 份）  c_ffn·H
                          SwiGLU：gate 输出、silu 输出、up 输出、两者乘积             4I
                          MoE 时换成：RMSNorm 输出 H（autocast 时路由器 1 份、每个共享专家 2 份），
                          每个 token 复制 k 份送进专家（各 c_ffn·H + 4I_moe），共享专家各 4I，
                          float32 的加权前专家输出 kH 与路由概率 E
    SDPA（flash_attn=True，默认）不存 T×T 的注意力矩阵；手写注意力（flash_attn=False）每 token 再存
    注意力分数和 softmax 两份 nh·T。dropout 默认为 0，不存掩码。
    用 torch.autograd.graph.saved_tensors_hooks 在小模型上核对过（tests/test_trainer_systems.py）。
    """
    H, q, kv = config.hidden_size, config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    autocast = compute_bytes < FP32_BYTES
    fp32 = 2 * H + 2 + nh
    if config.qk_norm:
        fp32 += q + kv + nh + nkv
    compute = (3 if autocast else 1) * H + 2 * q + 2 * kv
    if not config.flash_attn:
        fp32 += 2 * nh * seq_len  # 手写注意力里 softmax 用 float32 算
    if config.use_moe:
        # 路由器和共享专家读第二个 RMSNorm 的输出（autocast 时各转一份：路由器 1 份、每个共享专家 gate/up 2 份）；
        # 每个 token 复制 k 份送进路由专家（输入 autocast 时转 2 份），加权求和前的专家输出是 float32 的 (N, k, H)
        k, n_shared = config.num_experts_per_tok, config.n_shared_experts
        expert_input = 2 * H if autocast else H
        compute += H + n_shared * ((2 * H if autocast else 0) + 4 * config.intermediate_size)
        compute += k * (expert_input + 4 * config.moe_intermediate_size)
        fp32 += k * H + config.n_routed_experts  # 加权前的专家输出、路由概率
    else:
        compute += (2 if autocast else 1) * H + 4 * config.intermediate_size
    return fp32 * FP32_BYTES + compute * compute_bytes


def head_activation_bytes_per_token(config, compute_bytes: int) -> int:
    """块之外：最后的 RMSNorm（输入 float32 + 输出）和交叉熵的 log-softmax（V 个 float32，autocast 下也升到 float32）。"""
    return (config.hidden_size + 1 + config.vocab_size) * FP32_BYTES + config.hidden_size * compute_bytes


@dataclass
class MemoryEstimate:
    """每个进程的预计字节数。"""
    weights: int
    gradients: int
    optimizer: int
    communication: int  # DDP 的梯度通信桶
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.communication + self.activations


def estimate_training_memory(model: torch.nn.Module, batch_size: int, seq_len: int, dtype: torch.dtype,
                             sharding: str = "ddp", world_size: int = 1, grad_checkpointing: Union[bool, int] = False,
                             config=None) -> MemoryEstimate:
    """按上面的公式估算一个进程训练 model 时的峰值组成（model 须是还没分片的完整模型）。"""
    config = config or model.config
    n_params = sum(p.numel() for p in model.parameters())  # 共享的词嵌入/lm_head 只算一次
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    compute_bytes = torch.tensor([], dtype=dtype).element_size()
    weights = n_params * FP32_BYTES + (n_params * compute_bytes if compute_bytes < FP32_BYTES else 0)
    gradients, optimizer = n_train * FP32_BYTES, n_train * 2 * FP32_BYTES
    communication = n_train * FP32_BYTES if world_size > 1 and sharding != "fsdp" else 0
    if sharding == "zero1":
        optimizer //= world_size
    elif sharding == "fsdp":
        # autocast 缓存的低精度副本是从 all-gather 出的完整权重转来的、要留到反向，所以不随分片变小
        copies = weights - n_params * FP32_BYTES
        weights = n_params * FP32_BYTES // world_size + copies
        gradients, optimizer = gradients // world_size, optimizer // world_size
    block = block_activation_bytes_per_token(config, compute_bytes, seq_len)
    head = head_activation_bytes_per_token(config, compute_bytes)
    L = config.num_hidden_layers
    n = checkpointed_block_count(grad_checkpointing, L)
    # 激活检查点：重算的 n 个块只留输入（H 个 float32），其余 L−n 个块照常留全部激活；
    # 反向时一次只重算一个块，全部重算时这一块的激活就是峰值里多出的那一份
    stored_blocks = L - n if n < L else 1
    per_token = n * config.hidden_size * FP32_BYTES + stored_blocks * block + head
    return MemoryEstimate(weights, gradients, optimizer, communication, batch_size * seq_len * per_token)


def format_memory_report(estimate: MemoryEstimate, sharding: str, world_size: int, dtype: torch.dtype,
                         grad_checkpointing: Union[bool, int], n_layers: int) -> str:
    rows = [("权重", estimate.weights), ("梯度", estimate.gradients), ("优化器状态", estimate.optimizer),
            ("DDP 通信桶", estimate.communication), ("激活", estimate.activations), ("合计", estimate.total)]
    n = checkpointed_block_count(grad_checkpointing, n_layers)
    head = (f"预计每进程内存（{sharding}，{world_size} 个进程，计算精度 {str(dtype).removeprefix('torch.')}，"
            f"激活检查点 {n}/{n_layers} 块）：")
    return head + "  ".join(f"{name} {value / MIB:,.1f} MiB" for name, value in rows)


def measured_peak_bytes(device: torch.device) -> Optional[int]:
    """CUDA 上 PyTorch 分配过的最高字节数（不含 CUDA 上下文和缓存分配器的空闲块）；其他设备返回 None。"""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device)
