"""LoRA：冻结原权重 W，只训练低秩增量 ΔW = B·A·(alpha/rank)。

  y = x Wᵀ + (x Aᵀ Bᵀ)·scaling，A: (r, in)，B: (out, r)，r ≪ min(in, out)
B 初始化为 0，所以刚挂上时模型输出与原模型完全相同；训练后可以把 ΔW 合并回 W，推理零额外开销。
挂载后原权重的 state_dict 键名不变（q_proj.weight 仍叫 q_proj.weight），只多出 lora_A / lora_B。
"""
import os
from pathlib import Path
from typing import Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """带 LoRA 旁路的线性层；weight/bias 就是原 nn.Linear 的那两个参数（共享，不复制）。"""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank 必须是正整数，收到 {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in)
        self.bias = base.bias
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, self.in_features, device=base.weight.device) * 0.02)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:  # ΔW 已经加进 weight，不能再加一次
            return y
        return y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def _is_target(name: str, module: nn.Module, target_modules: Optional[Iterable[str]]) -> bool:
    if not isinstance(module, nn.Linear):
        return False
    if target_modules is None:  # MiniMind 的默认：所有方阵 Linear（q_proj、o_proj 等）
        return module.in_features == module.out_features
    return name.split(".")[-1] in set(target_modules)


def apply_lora(model: nn.Module, rank: int = 8, alpha: Optional[float] = None,
               target_modules: Optional[Iterable[str]] = None) -> List[str]:
    """把目标 Linear 换成 LoRALinear，并冻结其余全部参数；返回被替换的模块名。

    target_modules：按名字末段选择，如 ("q_proj", "v_proj")；None 表示所有方阵 Linear。
    alpha 默认等于 rank（scaling = 1，与 MiniMind 相同）。
    """
    alpha = rank if alpha is None else alpha
    targets = [(name, module) for name, module in model.named_modules() if _is_target(name, module, target_modules)]
    if not targets:
        raise ValueError(f"没有找到可挂 LoRA 的 Linear（target_modules={target_modules}）")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha))
    for param_name, param in model.named_parameters():
        param.requires_grad = "lora_" in param_name
    return [name for name, _ in targets]


def lora_modules(model: nn.Module) -> List[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module):
    for m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module):
    for m in lora_modules(model):
        m.unmerge()


def lora_state_dict(model: nn.Module) -> dict:
    """只含 LoRA 参数（几十 KB～几 MB），基座权重另存或直接用官方 checkpoint。"""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "lora_" in k}


def save_lora(model: nn.Module, path) -> None:
    """原子写入：先写临时文件再 rename，中途断电不会留下半个文件。"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(lora_state_dict(model), tmp)
    os.replace(tmp, path)


def load_lora(model: nn.Module, path) -> None:
    """加载 save_lora 存下的权重；模型须先用相同的 rank/target 调过 apply_lora。"""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    expected = lora_state_dict(model)
    if not expected:
        raise ValueError("模型上没有 LoRA 模块：请先调用 apply_lora(model, rank=..., target_modules=...)")
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"LoRA 权重与模型不匹配：缺少 {missing[:3]}，多出 {unexpected[:3]}；"
                         "请检查 target_modules 是否与保存时一致")
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"LoRA 权重 {key} 形状 {tuple(value.shape)} 与模型的 {tuple(expected[key].shape)} "
                             "不一致：保存时的 rank 或模型配置不同")
    model.load_state_dict(weights, strict=False)
