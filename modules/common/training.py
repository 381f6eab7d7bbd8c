"""实验共用的小训练循环：AdamW + 线性预热 + 余弦衰减 + 梯度裁剪 + 定期验证 + 发散检测。

约定（同 MiniMind）：out = model(input_ids, labels=labels)，out.loss 是标量损失，模型内部做移位；
若 out 带张量 aux_loss（如 MoE 负载均衡损失），它加进反向传播的总损失，并单独记录。
"""
import math
import re
import time

import torch
from tqdm import tqdm

_LAYER_PATTERN = re.compile(r"^(?:model\.|transformer\.)?((?:layers|h|blocks)\.\d+)\.")


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1,
          cooldown_steps: int | None = None) -> float:
    """第 step 次更新（从 0 起）用的学习率：前 warmup_steps 步线性升到 lr，之后余弦降到 min_lr_ratio * lr。

    step=0 → lr/warmup_steps；step=warmup_steps-1 → lr；step>=total_steps → min_lr_ratio * lr。
    cooldown_steps 给定时换成 WSD（warmup-stable-decay，Hu et al. 2024 / Hägele et al. 2024）：预热后保持 lr，
    只在最后 cooldown_steps 步线性降到 min_lr_ratio * lr。默认 None 即余弦（MiniMind 的调度）。
    """
    min_lr = min_lr_ratio * lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    if cooldown_steps is not None:
        cooldown_start = total_steps - cooldown_steps
        if step < cooldown_start:
            return lr
        progress = (step - cooldown_start) / max(1, cooldown_steps)  # 0 → 1
        return lr + progress * (min_lr - lr)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 → 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def layer_of(param_name: str) -> str:
    """参数名 → 层分组：model.layers.3.mlp.up_proj.weight → "layers.3"；含 embed 的 → "embed"；
    其余取去掉 "model." 前缀后的第一级模块名（model.norm.weight → "norm"，lm_head.weight → "lm_head"）。"""
    match = _LAYER_PATTERN.match(param_name)
    if match:
        return match.group(1)
    name = param_name.removeprefix("model.").removeprefix("transformer.")
    top = name.split(".")[0]
    return "embed" if "embed" in top else top


def _build_optimizer(model, lr, weight_decay, betas):
    """AdamW：只对矩阵（dim >= 2，线性层与嵌入）做权重衰减，偏置和归一化权重不衰减（同 nanoGPT）。"""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused=True：把所有参数的更新合成一个内核（CPU/CUDA 上更快，数学相同）
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


@torch.no_grad()
def evaluate_batches(model, get_batch, eval_batches, device) -> list[float]:
    """在 eval_batches 个验证 batch 上各算一次 loss，返回每个 batch 的值（不取平均）。

    同一种子下各变体拿到的验证 batch 相同，所以这些值可以按 batch 配对：只有一个种子时，
    它们的离散程度就是噪声检验（modules/common/noise.py，unit="batches"）用的评估噪声。"""
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(eval_batches):
        input_ids, labels = get_batch("val")
        out = model(input_ids.to(device), labels=labels.to(device))
        losses.append(out.loss.item())
    model.train(was_training)
    return losses


def _group_grad_norms(named_params) -> dict[str, float]:
    """每个层分组的梯度 L2 范数：sqrt(组内各参数梯度范数的平方和)。"""
    squares: dict[str, float] = {}
    for name, p in named_params:
        if p.grad is not None:
            group = layer_of(name)
            squares[group] = squares.get(group, 0.0) + p.grad.detach().float().pow(2).sum().item()
    return {group: math.sqrt(s) for group, s in squares.items()}


def train_model(
    model: torch.nn.Module,
    get_batch,
    *,
    steps: int,
    lr: float = 3e-4,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    cooldown_steps: int | None = None,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    eval_every: int | None = None,
    eval_batches: int = 4,
    record_grad_norms: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "train",
    after_step=None,
) -> dict:
    """训练 steps 步，返回历史记录（普通 dict，可直接 save_metrics）。

    get_batch(split) -> (input_ids, labels)，split ∈ {"train", "val"}。
    warmup_steps 默认 steps 的 10%；cooldown_steps 给定时用 WSD 调度（见 lr_at），默认余弦；
    eval_every 默认 steps 的 1/10；最后一步之后总会再验证一次。
    after_step(n_done, model)：每次参数更新之后调用（n_done = 已完成的更新数，从 1 起），例如在某几步存模型副本；
    同一次训练、同一个优化器，不打断调度。
    loss 出现 NaN/inf 时停止训练，diverged_at 记下那一步（从 0 起），不抛异常。
    返回：steps / train_loss / lr（每步一项，step 从 0 起）、aux_loss（模型有 aux_loss 时每步一项）、
    val_steps / val_loss（在第 val_steps[i] 步更新之后评估）、val_batches（每次验证的逐 batch loss，与 val_steps 一一对应）、
    final_val_batches（最后一次验证的逐 batch loss）、grad_norms {层分组: 每步范数}、
    diverged_at、tokens_per_s（只计训练步）、wall_s（含评估）。
    """
    if steps < 1:
        raise ValueError(f"steps 必须 >= 1，收到 {steps}")
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    eval_every = max(1, steps // 10) if eval_every is None else eval_every
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    model.train()
    optimizer = _build_optimizer(model, lr, weight_decay, betas)
    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    history = {
        "steps": [], "train_loss": [], "lr": [], "aux_loss": [], "val_steps": [], "val_loss": [], "val_batches": [],
        "final_val_batches": [], "grad_norms": {}, "diverged_at": None, "tokens_per_s": 0.0, "wall_s": 0.0,
    }
    tokens, train_time = 0, 0.0
    t_start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        step_lr = lr_at(step, lr=lr, warmup_steps=warmup_steps, total_steps=steps, min_lr_ratio=min_lr_ratio,
                        cooldown_steps=cooldown_steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr

        input_ids, labels = get_batch("train")
        input_ids, labels = input_ids.to(device), labels.to(device)  # (B, T)
        out = model(input_ids, labels=labels)
        loss = out.loss
        aux = getattr(out, "aux_loss", None)
        has_aux = isinstance(aux, torch.Tensor)
        total_loss = loss + aux if has_aux else loss
        if not torch.isfinite(total_loss).item():
            history["diverged_at"] = step
            bar.write(f"[{desc}] 第 {step} 步 loss 变成 {total_loss.item()}，训练发散，停止。")
            break

        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        if record_grad_norms:
            for group, norm in _group_grad_norms(named_params).items():
                history["grad_norms"].setdefault(group, []).append(norm)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for _, p in named_params], grad_clip)  # 只裁剪在训练的参数
        optimizer.step()

        tokens += input_ids.numel()
        train_time += time.perf_counter() - t0
        history["steps"].append(step)
        history["train_loss"].append(loss.item())
        history["lr"].append(step_lr)
        if has_aux:
            history["aux_loss"].append(aux.item())
        if after_step is not None:
            after_step(step + 1, model)

        if (step + 1) % eval_every == 0 or step == steps - 1:
            batch_losses = evaluate_batches(model, get_batch, eval_batches, device)
            history["val_steps"].append(step)
            history["val_loss"].append(sum(batch_losses) / len(batch_losses))
            history["val_batches"].append(batch_losses)
            history["final_val_batches"] = batch_losses
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{tokens / max(train_time, 1e-9):.0f}", refresh=False)

    history["tokens_per_s"] = tokens / train_time if train_time > 0 else 0.0
    history["wall_s"] = time.perf_counter() - t_start
    return history
