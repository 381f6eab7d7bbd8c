"""RL 的损失与优势估计。记号：N 条回答，每条 R 个 token；mask (N, R) 只覆盖回答里的真实 token。

论文与公式：
- GRPO：Shao et al. 2024, "DeepSeekMath", Eq. 3（裁剪目标 + β·KL，先在每条回答内按 token 平均，再对回答平均）
  与 Eq. 4（k3 KL 估计 π_ref/π − log(π_ref/π) − 1）；组内优势 Â = (r − mean(r)) / std(r)（§4.1.2 结果监督）。
- Dr. GRPO：Liu et al. 2025, "Understanding R1-Zero-Like Training"：除以 std 会让难/易题的权重失衡，
  建议只减均值——本库用 scale_std=False 表示这种做法（train_grpo.py --scale_rewards 0）。
- DAPO：Yu et al. 2025, "DAPO", Eq. 8：非对称裁剪 clip(r, 1−ε_low, 1+ε_high)（Clip-Higher，ε_high > ε_low），
  token 级聚合（所有回答的 token 一起平均，长回答不被稀释），不用 KL。
- CISPO：MiniMax 2025, "MiniMax-M1", Eq. 4–5：不裁剪更新本身，而是裁剪并截断梯度的重要性权重
  sg(clip(r, 1−ε_low, 1+ε_high)) · Â · log π，所有 token（包括比率超出范围的）都有梯度。
- PPO：Schulman et al. 2017, Eq. 7（裁剪的替代目标）；价值损失按 OpenAI baselines 的做法也做裁剪。
- GAE：Schulman et al. 2015, "High-Dimensional Continuous Control Using GAE", Eq. 16：
  δ_t = r_t + γ V(s_{t+1}) − V(s_t)，Â_t = Σ_l (γλ)^l δ_{t+l}。
"""
from typing import Dict, Optional, Tuple

import torch

LOSS_TYPES = ("grpo", "dapo", "cispo", "ppo")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(N,) → (N,)：同一 prompt 的 G 条回答（相邻）减去组内均值；scale_std 时再除以组内标准差（总体标准差）。
    一组奖励全部相同时优势全为 0：这组回答不提供任何学习信号。"""
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_std:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """逐 token 的 KL(π‖π_ref) 的 k3 估计（GRPO Eq. 4）：e^{ref−logp} − (ref−logp) − 1 ≥ 0，两者相等时为 0。"""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                loss_type: str = "grpo", clip_low: float = 0.2, clip_high: float = 0.2,
                kl: Optional[torch.Tensor] = None, beta: float = 0.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """策略损失（要最小化的量）与统计。logp/old_logp/mask: (N, R)；advantages: (N,)（每条回答一个）或 (N, R)（PPO 逐 token）。

    grpo  −min(r·Â, clip(r, 1−ε_l, 1+ε_h)·Â) + β·KL，回答内按 token 平均再对回答平均（Shao 2024 Eq. 3）
    dapo  同一个裁剪项，所有 token 一起平均（Yu 2025 Eq. 8）；通常 ε_h > ε_l、β = 0
    cispo −sg(clip(r, 1−ε_l, 1+ε_h))·Â·log π + β·KL，所有 token 一起平均（MiniMax-M1 Eq. 4）
    ppo   同 grpo 的裁剪项、逐 token 优势，所有 token 一起平均（Schulman 2017 Eq. 7）
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"未知 loss_type {loss_type!r}，可选 {LOSS_TYPES}")
    A = advantages[:, None] if advantages.dim() == 1 else advantages  # (N, 1) 或 (N, R)
    ratio = torch.exp(logp - old_logp)  # (N, R)；μ=1（在策略上）时恒为 1，但梯度是 ∇log π
    low, high = 1 - clip_low, 1 + clip_high
    if loss_type == "cispo":
        weight = ratio.clamp(low, high).detach()
        per_token = -weight * A * logp
        clipped = (ratio < low) | (ratio > high)
    else:
        unclipped, clipped_obj = ratio * A, ratio.clamp(low, high) * A
        per_token = -torch.min(unclipped, clipped_obj)
        clipped = clipped_obj < unclipped  # 取了裁剪的那一支：这些 token 的梯度为 0
    if kl is not None and beta != 0:
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = masked_mean(per_token, mask, dim=1).mean()
    else:
        loss = masked_mean(per_token, mask)
    stats = {"clip_fraction": masked_mean(clipped.float(), mask).item(),
             "ratio_mean": masked_mean(ratio.detach(), mask).item()}
    return loss, stats


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> Tuple[torch.Tensor, torch.Tensor]:
    """广义优势估计（Schulman 2015 Eq. 16）。rewards/values/mask: (N, R)，mask 是每行从 0 开始的连续一段。
    返回 (advantages, returns)，returns = advantages + values 是价值函数的回归目标；mask 之外为 0。"""
    N, R = rewards.shape
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(N, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * mask[:, t]
        # 越过回答结尾（mask=0）的位置：下一个状态的价值与优势都当作 0（回合结束）
        next_value = values[:, t] * mask[:, t]
        next_adv = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """裁剪的价值损失：½·max((V − G)², (clip(V, V_old ± c) − G)²)，按 token 平均。"""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
