"""数据并行的三种做法（--sharding）：每个进程存多少、通信什么。

    ddp    每个进程一份完整的权重、梯度和优化器状态；反向时 all-reduce 梯度（DistributedDataParallel）。
    zero1  ZeRO stage 1（Rajbhandari et al., 2020）：梯度仍由 DDP all-reduce，但 AdamW 的两个矩（每参数 8 字节）
           按参数切成 world_size 份，每个进程只更新自己那份参数，再把更新后的参数广播给其他进程
           （torch.distributed.optim.ZeroRedundancyOptimizer）。优化器状态省到 1/N，数学上与 ddp 相同。
    fsdp   FSDP2（torch.distributed.fsdp.fully_shard，相当于 ZeRO-3）：权重、梯度、优化器状态都切成 N 份；
           每个块前向/反向前临时 all-gather 出完整权重，用完即丢，梯度用 reduce-scatter 只留自己那份。

三种做法的梯度都是各进程的平均（与 DDP 相同），所以 loss 曲线在浮点误差内一致；保存的权重文件与续训文件
格式也相同（完整 state_dict；优化器状态与单进程 AdamW.state_dict() 同格式），换一种 --sharding 也能续训。
"""
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.model_minimind import MiniMindBlock

SHARDING_CHOICES = ("ddp", "zero1", "fsdp")


def check_sharding_args(args, world_size: int, dtype: torch.dtype):
    """不能用的组合：一句话说明原因和对策（ValueError，由 run_main 变成一行错误）。"""
    if args.sharding == "ddp":
        return
    if world_size == 1:
        # 只有一个进程时没有东西可分：与其悄悄当作 ddp，不如说清楚（内存也不会变少）
        raise ValueError(f"--sharding {args.sharding} 要把状态分给多个进程，现在只有 1 个：请用 torchrun --nproc_per_node=2 "
                         f"（或更多）启动，单进程训练去掉 --sharding")
    if args.sharding == "fsdp" and dtype == torch.float16:
        raise ValueError("--sharding fsdp 不支持 float16 的 GradScaler（分片梯度上没有验证过）：请用 --dtype bfloat16，"
                         "或改用 --sharding zero1")
    if args.sharding == "fsdp" and args.use_compile:
        raise ValueError("--sharding fsdp 与 --use_compile 1 的组合没有验证过：请二选一（或用 --sharding zero1 配合编译）")


def wrap_for_training(model: torch.nn.Module, args, runtime) -> tuple:
    """按 --sharding 包装模型并建优化器（AdamW，CPU/CUDA 上用 fused 实现）。返回 (train_model, optimizer)。

    train_model 用于前向和反向；保存、续训通过本文件的函数，键名与未包装的 model 相同。
    """
    adamw = dict(lr=args.learning_rate, weight_decay=args.weight_decay,
                 fused=runtime.device.type in ("cpu", "cuda"))
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    if args.sharding == "fsdp":
        from torch.distributed.fsdp import fully_shard  # 用到时才导入：它连带 DTensor 要 1–3 s，每个训练脚本都会启动
        for block in [m for m in model.modules() if isinstance(m, MiniMindBlock)]:
            fully_shard(block)  # 以块为单位 all-gather：同一时刻只有一个块的完整权重在内存里
        fully_shard(model)  # 其余参数（词嵌入 = lm_head、最后的 norm）归根模块
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)
    params = [p for p in model.parameters() if p.requires_grad]
    train_model = DistributedDataParallel(model, device_ids=device_ids) if runtime.distributed else model
    if args.sharding == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer  # 同上，约 1 s
        return train_model, ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **adamw)
    return train_model, torch.optim.AdamW(params, **adamw)


def is_fsdp(model: torch.nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # 没导入过 FSDP 就不可能有 FSDP 模型，也省下导入它的时间
        return False
    from torch.distributed.fsdp import FSDPModule
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@contextmanager
def no_gradient_sync(train_model: torch.nn.Module):
    """梯度累积的前几个 micro-batch：只在本进程累加梯度，不通信（最后一个 micro-batch 才同步一次）。"""
    inner = getattr(train_model, "_orig_mod", train_model)  # torch.compile 的包装
    if isinstance(inner, DistributedDataParallel):
        with inner.no_sync():
            yield
    elif is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """FSDP 的参数是 DTensor：取本进程持有的那一片；普通张量原样返回。"""
    return t.to_local() if hasattr(t, "to_local") else t


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """本进程实际持有的优化器状态字节数（AdamW 的 exp_avg、exp_avg_sq、step）。"""
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer 把本进程那份交给内部的 AdamW
    return sum(local_tensor(t).numel() * t.element_size()
               for state in inner.state.values() for t in state.values() if torch.is_tensor(t))


def full_model_state_dict(model: torch.nn.Module) -> dict:
    """完整的 state_dict（CPU 上）。fsdp 时各进程必须一起调用（all-gather），只有 rank 0 拿到内容，其余为 {}。"""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # 约 2 s，同上
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def _fqn_to_index(model: torch.nn.Module) -> dict:
    """参数名 → 它在 model.parameters() 里的序号（共享的词嵌入/lm_head 只算一次），即 AdamW.state_dict() 的键。"""
    return {name: i for i, (name, p) in enumerate(
        (n, p) for n, p in model.named_parameters() if p.requires_grad)}


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """与单进程 AdamW.state_dict() 同格式的完整优化器状态。zero1/fsdp 时各进程一起调用，只有 rank 0 的结果有效。"""
    if hasattr(optimizer, "consolidate_state_dict"):  # ZeRO-1：各进程把自己那份发到 rank 0 拼起来
        optimizer.consolidate_state_dict(to=0)
        return optimizer.state_dict() if dist.get_rank() == 0 else {}
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        state = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not state:
            return {}
        index = _fqn_to_index(model)  # FSDP 给的键是参数名，换成 AdamW 用的序号
        return {"state": {index[name]: s for name, s in state["state"].items()},
                "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in state["param_groups"]]}
    return optimizer.state_dict()


def load_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict):
    """续训：把 full_optimizer_state_dict 的结果装回（各进程都读了同一个文件，各取自己那份）。"""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        name = {i: n for n, i in _fqn_to_index(model).items()}
        by_name = {"state": {name[i]: s for i, s in state["state"].items()},
                   "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)  # ZeroRedundancyOptimizer 从完整状态里取出本进程的分片
