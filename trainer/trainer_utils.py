"""所有训练脚本共用的部分：命令行参数、设备与精度、分布式、学习率、检查点与续训、训练循环。

参数名沿用 MiniMind（--epochs --batch_size --learning_rate --hidden_size ...），官方教程里的命令换个脚本名就能用。
单机单卡/CPU：  python trainer/train_pretrain.py --quick
多卡：          torchrun --nproc_per_node=2 trainer/train_pretrain.py        （CUDA 用 nccl，CPU 用 gloo）
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Union

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX  # noqa: E402
from model.checkpoint import CheckpointError, atomic_save, load_pretrained, save_checkpoint  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM, MiniMindModel  # noqa: E402
from model.tokenization import TokenizerError, load_tokenizer  # noqa: E402
from model.device import get_device  # noqa: E402
from modules.common.training import lr_at  # noqa: E402  与实验用同一个 warmup + 余弦调度
from trainer.memory_report import estimate_training_memory, format_memory_report, measured_peak_bytes  # noqa: E402
from trainer.sharding import (  # noqa: E402
    SHARDING_CHOICES, check_sharding_args, full_model_state_dict, full_optimizer_state_dict, is_fsdp, local_tensor,
    load_optimizer_state_dict, no_gradient_sync, optimizer_state_bytes, wrap_for_training,
)

SAMPLES_DIR = REPO_ROOT / "dataset" / "samples"
# --quick：几十万参数的小模型 + 仓库自带的样本，CPU 上一分钟内跑完
QUICK_OVERRIDES = dict(hidden_size=128, num_hidden_layers=2, max_seq_len=64, batch_size=16, epochs=4,
                       learning_rate=3e-3, log_interval=5, save_interval=20)


class TrainingError(RuntimeError):
    """训练无法继续（loss 发散、配置不一致……）；消息说明原因和对策。"""


# ---------------------------------------------------------------------------
# 命令行参数
# ---------------------------------------------------------------------------
def build_parser(description: str, data_path: Path, save_weight: str, learning_rate: float,
                 epochs: int = 1, batch_size: int = 32, max_seq_len: int = 512,
                 from_weight: str = "none") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="小模型 + 自带样本，CPU 上一分钟内跑完（覆盖尺寸与 batch 相关的参数）")
    p.add_argument("--data_path", type=Path, default=data_path, help="训练数据 jsonl")
    p.add_argument("--tokenizer", type=Path, default=None, help="分词器目录或 tokenizer.json（默认 model/tokenizer/）")
    p.add_argument("--save_dir", type=Path, default=REPO_ROOT / "out", help="权重、续训状态和日志的目录")
    p.add_argument("--save_weight", default=save_weight, help="保存的权重名前缀：<save_dir>/<名>_<hidden>[_moe].pth")
    p.add_argument("--from_weight", default=from_weight,
                   help="从哪个权重开始：none（随机初始化）、前一阶段的名字（如 pretrain），或 .pth 路径")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch_size", type=int, default=batch_size, help="每张卡/每个进程的 batch")
    p.add_argument("--learning_rate", type=float, default=learning_rate, help="峰值学习率（warmup 后按余弦降到 1/10）")
    p.add_argument("--warmup_ratio", type=float, default=0.03, help="warmup 占总优化步数的比例")
    p.add_argument("--weight_decay", type=float, default=0.01,
                   help="AdamW 的权重衰减，作用于全部可训练参数（0.01 是 PyTorch 的默认值，MiniMind 用的就是它）")
    p.add_argument("--accumulation_steps", type=int, default=1, help="梯度累积：每几个 batch 更新一次")
    p.add_argument("--grad_clip", type=float, default=1.0, help="梯度裁剪的最大范数（<=0 不裁剪）")
    p.add_argument("--max_steps", type=int, default=None, help="最多训练多少个优化步（默认跑完所有 epoch）")
    p.add_argument("--family", choices=["minimind2", "minimind3"], default="minimind2", help="模型家族")
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_hidden_layers", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=max_seq_len, help="截断/补齐到的序列长度")
    p.add_argument("--use_moe", type=int, choices=[0, 1], default=0, help="1 = MoE 前馈层")
    p.add_argument("--use_compile", type=int, choices=[0, 1], default=0,
                   help="1 = 先 torch.compile 再训练：可能更快（本机 --quick 两次实测：快约 25%% 与几乎不变），但第一步要编译几十秒，且需要 C++ 编译器")
    p.add_argument("--grad_checkpointing", type=int, nargs="?", const=True, default=False, metavar="N",
                   help="激活检查点：块只存输入、反向时重算，激活内存约降到 1/L，每步多约一次前向的计算；"
                        "不带数字 = 所有块，带数字 N = 只重算前 N 个块（内存与时间按块折中）")
    p.add_argument("--sharding", choices=SHARDING_CHOICES, default="ddp",
                   help="多进程时怎样分摊状态：ddp 每进程全量；zero1 切分优化器状态（ZeRO-1）；"
                        "fsdp 权重、梯度、优化器状态都切分（FSDP2）。见 trainer/sharding.py")
    p.add_argument("--device", default="auto", help="auto / cpu / cuda / mps（torchrun 下自动用本进程的 GPU）")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto：CUDA 上 bf16（不支持则 fp16）混合精度，CPU/MPS 上 float32")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader 的进程数（Windows 上建议 0）")
    p.add_argument("--log_interval", type=int, default=10, help="每多少个优化步记一次日志")
    p.add_argument("--save_interval", type=int, default=100, help="每多少个优化步存一次权重和续训状态")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="从 <save_dir> 里的续训状态接着训练（同样的参数）")
    p.add_argument("--skip_bad_lines", action="store_true", help="跳过数据里的坏行（开头会扫描全文件并报告跳过了几行）")
    p.add_argument("--use_wandb", action="store_true", help="同时记到 wandb（需已安装；否则只写本地 JSONL）")
    return p


def typed_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """命令行上真正给出的参数（dest 名）。值等于默认值也算给出：--quick --batch_size 32 里的 32 要保留。"""
    untyped = object()
    probe = argparse.Namespace(**{a.dest: untyped for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=probe)  # 命名空间里已有的属性 argparse 不再填默认值，只有给出的会被改写
    return {name for name, value in vars(probe).items() if value is not untyped}


def parse_args(parser: argparse.ArgumentParser, argv=None, quick_overrides: Optional[dict] = None) -> argparse.Namespace:
    """解析参数；--quick 时用 QUICK_OVERRIDES（再叠加本脚本的 quick_overrides）填上没在命令行上给出的参数。"""
    args = parser.parse_args(argv)
    if args.quick:
        typed = typed_flags(parser, argv)
        for key, value in {**QUICK_OVERRIDES, **(quick_overrides or {})}.items():
            if key not in typed:
                setattr(args, key, value)
    for name in ("epochs", "batch_size", "accumulation_steps", "hidden_size", "num_hidden_layers", "max_seq_len",
                 "log_interval", "save_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} 必须是正整数，收到 {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps <= 0:
        parser.error(f"--max_steps 必须是正整数，收到 {args.max_steps}")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate 必须为正，收到 {args.learning_rate}")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay 不能为负，收到 {args.weight_decay}")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup_ratio 必须在 [0, 1) 内，收到 {args.warmup_ratio}")
    if not args.data_path.is_file():
        parser.error(f"找不到数据文件 {args.data_path}（--data_path）；自带样本在 dataset/samples/，"
                     "完整数据集的下载方式见 dataset/README.md")
    return args


def fail(message: str, code: int = 1):
    """一行清楚的错误，非零退出（不打印 traceback）。"""
    print(f"错误：{message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------
# 分布式、设备、精度
# ---------------------------------------------------------------------------
class Runtime:
    """本进程在分布式训练里的位置，以及用的设备和精度。单进程时 rank=0、world_size=1。"""

    def __init__(self, args):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.distributed = self.world_size > 1
        if self.distributed:
            if torch.cuda.is_available() and args.device in ("auto", "cuda"):
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
                backend = "nccl"
            else:
                self.device = torch.device("cpu")
                backend = "gloo"  # CPU、以及没有 NCCL 的 Windows
            dist.init_process_group(backend=backend)
        else:
            self.device = get_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return nullcontext()

    def close(self):
        if self.distributed:
            dist.destroy_process_group()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"--dtype {name} 只在 CUDA 上用作混合精度；{device.type} 上请用 float32（或 auto）")
    return dtype


# ---------------------------------------------------------------------------
# 模型、分词器、权重文件
# ---------------------------------------------------------------------------
def weight_path(args, name: Optional[str] = None) -> Path:
    """MiniMind 的命名：<save_dir>/<名>_<hidden>[_moe].pth，旁边的同名 .json 是模型配置。"""
    return args.save_dir / f"{name or args.save_weight}_{args.hidden_size}{'_moe' if args.use_moe else ''}.pth"


def load_tokenizer_or_exit(args):
    try:
        return load_tokenizer(args.tokenizer)
    except TokenizerError as e:
        fail(str(e))


def build_model(args, tokenizer, from_weight: Optional[str] = None) -> MiniMindForCausalLM:
    """按参数建模型；from_weight 是前一阶段的名字或 .pth 路径时加载它（配置取自旁边的 .json）。"""
    from_weight = from_weight if from_weight is not None else args.from_weight
    config = MiniMindConfig(family=args.family, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                            vocab_size=tokenizer.vocab_size, use_moe=bool(args.use_moe),
                            max_position_embeddings=max(args.max_seq_len, 2048))
    if from_weight == "none":
        return MiniMindForCausalLM(config)
    path = Path(from_weight) if from_weight.endswith((".pth", ".pt")) else weight_path(args, from_weight)
    config_file = path.with_suffix(".json")
    if config_file.is_file():
        config = MiniMindConfig.load(config_file)
    if not path.is_file():
        fail(f"找不到起点权重 {path}（--from_weight {from_weight}）：请先训练前一阶段"
             f"（如 python trainer/train_pretrain.py{' --quick' if args.quick else ''}），或给出 .pth 路径")
    if config.vocab_size != tokenizer.vocab_size:
        fail(f"权重 {path} 的词表大小是 {config.vocab_size}，当前分词器是 {tokenizer.vocab_size}："
             "请用训练这份权重时的分词器（--tokenizer）")
    try:
        return load_pretrained(path, config)
    except CheckpointError as e:
        fail(str(e))


def save_weights(model, args, runtime: Runtime) -> Path:
    """只在主进程保存：state_dict（与 MiniMind 发布的 .pth 同格式）+ 模型配置 .json。"""
    path = weight_path(args)
    save_checkpoint(model, path)
    model.config.save(path.with_suffix(".json"))
    return path


# ---------------------------------------------------------------------------
# 训练循环
# ---------------------------------------------------------------------------
def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int, world_size: int):
    """第 epoch 轮本进程的 batch 列表：按 (seed, epoch) 打乱，各进程取互不重叠的一份，丢掉凑不满的尾巴。

    顺序只由 (seed, epoch) 决定，所以续训时跳过已经训过的 batch 就能接上原来的顺序。
    """
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = n_items // world_size
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, per_rank - batch_size + 1, batch_size)]


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gather_rng_states(runtime: "Runtime") -> list:
    """每个进程的随机数状态，按 rank 排成列表（各进程一起调用）。"""
    if not runtime.distributed:
        return [rng_state()]
    states = [None] * runtime.world_size
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng_state(state: dict, runtime: "Runtime"):
    """续训时每个进程恢复自己保存的随机数状态；进程数变了就只能都用 rank 0 的（数据切分本来也变了）。"""
    per_rank = state.get("rng_per_rank")  # 旧的续训文件只有 rank 0 的 "rng"
    if per_rank is not None and len(per_rank) == runtime.world_size:
        set_rng_state(per_rank[runtime.rank])
        return
    set_rng_state(state["rng"])
    if runtime.is_main and runtime.distributed:
        print(f"提示：续训状态来自 {len(per_rank) if per_rank else 1} 个进程，现在是 {runtime.world_size} 个："
              "各进程的数据切分与随机数都和不中断时不同")


# ---------------------------------------------------------------------------
# 梯度累积：按"单位"（监督 token、偏好对）加权
# ---------------------------------------------------------------------------
def supervised_tokens(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """这个 batch 里参与 loss 的 token 数：labels 错一位后不是 -100 的位置（与模型里交叉熵的平均范围相同）。"""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def accumulate_gradients(train_model: torch.nn.Module, micro_batches: list, compute_loss: Callable, runtime,
                         count_units: Optional[Callable] = None, scaler=None) -> tuple:
    """一个优化步的全部前向 + 反向，梯度 = 本步所有单位的 loss 之和 / 所有进程的单位总数。

    compute_loss 返回的是 micro-batch 内按单位平均的 loss；count_units(batch) 给出单位数 n_i（监督 token 或偏好对），
    于是每个 micro-batch 的 loss 乘 n_i / N 再反向，N 是这一步所有 micro-batch、所有进程的 n_i 之和（all_reduce）。
    这样 1 个 batch 8 与 2 个 batch 4 累积、单卡与多卡得到同一个梯度；若直接平均各 micro-batch 的均值（均值的均值），
    监督 token 少的短回答会被放大。count_units=None 时每个 micro-batch 算 1 个单位，即各 micro-batch 等权。
    返回本进程按单位加权的平均 loss 和额外指标（日志用）。
    """
    counts = torch.tensor([float(count_units(b)) if count_units is not None else 1.0 for b in micro_batches],
                          device=runtime.device)  # (accumulation_steps,)
    total = counts.sum()
    if runtime.distributed:
        dist.all_reduce(total)
    if total.item() == 0:
        raise TrainingError("这一步的所有 batch 里都没有要计算 loss 的 token（回答被 --max_seq_len 截掉了？）："
                            "请增大 --max_seq_len 或检查数据")
    # DDP（以及 fsdp 的 reduce-scatter）在反向时把各进程的梯度取平均（除以 world_size），这里先乘回来
    weights = counts * runtime.world_size / total
    local_total = counts.sum().item()
    loss_value, extras = 0.0, {}
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1 or not runtime.distributed
        with nullcontext() if sync else no_gradient_sync(train_model):
            with runtime.autocast():
                loss, extra = compute_loss(train_model, batch)
            weighted = loss * weights[i]
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        if counts[i] == 0:  # 没有监督 token：loss 是 0/0，梯度乘 0 为零，不计入日志
            continue
        share = counts[i].item() / local_total
        loss_value += loss.item() * share
        for k, v in extra.items():
            extras[k] = extras.get(k, 0.0) + float(v) * share
    return loss_value, extras


def train(args, runtime: Runtime, model: torch.nn.Module, dataset,
          compute_loss: Callable[[torch.nn.Module, Dict[str, torch.Tensor]], tuple],
          desc: str = "train", save: Callable = save_weights,
          count_units: Optional[Callable[[Dict[str, torch.Tensor]], torch.Tensor]] = None,
          evaluate: Optional[Callable[[int], dict]] = None) -> dict:
    """通用训练循环。compute_loss(model, batch) → (loss, {额外要记录的标量})；只训练 requires_grad 的参数。
    save(model, args, runtime) 写出可发布的权重（默认整个 state_dict；LoRA 只存适配器）。
    count_units(batch)：loss 是对什么平均的、这个 batch 里有几个（如 supervised_tokens）；梯度累积和多进程按它加权，
    见 accumulate_gradients。不给时各 micro-batch 等权。
    evaluate(step) → {指标}：主进程在第 0 步（新训练时）、每 args.eval_interval 步和最后一步调用，结果作为一行写进 JSONL 日志。

    负责：数据顺序、warmup+余弦学习率、梯度累积、混合精度、梯度裁剪、NaN 检查、日志、检查点与续训、多进程同步。
    返回最后一次记录的指标。
    """
    device = runtime.device
    check_sharding_args(args, runtime.world_size, runtime.dtype)
    if args.grad_checkpointing and args.use_compile:
        # 实测（torch 2.13，2 核 CPU）：编译带重算的 --quick 模型，两次各等了 500 s / 900 s 都没完成第一步
        raise ValueError("--grad_checkpointing 与 --use_compile 1 不能同时用（编译带重算的模型在本项目的测试机上"
                         "15 分钟内没有完成第一步）：请二选一")
    if args.sharding == "fsdp" and (save is not save_weights or evaluate is not None):
        # 自定义的 save（LoRA 只存适配器、PPO 存两个模型）和主进程单独评测都直接用模型；分片后的模型做不到
        raise ValueError(f"--sharding fsdp 只支持保存整个模型、训练中不单独评测的脚本（如 train_pretrain.py、"
                         f"train_full_sft.py）；{desc} 请用 --sharding zero1")
    backbones = enable_grad_checkpointing(model, args.grad_checkpointing)
    model.to(device)
    resume_file = weight_path(args).with_name(weight_path(args).stem + "_resume.pth")
    state = None
    if args.resume:
        if not resume_file.is_file():
            raise TrainingError(f"--resume 找不到续训状态 {resume_file}：请用与上次相同的 --save_dir/--save_weight/--hidden_size")
        state = torch.load(resume_file, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])  # 分片之前装入完整权重：fsdp 随后各取自己那份
    if runtime.is_main and backbones:  # 激活按第一个 MiniMind 骨干的配置估算（PPO 的 critic 另有一个，近似）
        estimate = estimate_training_memory(model, args.batch_size, args.max_seq_len, runtime.dtype, args.sharding,
                                            runtime.world_size, args.grad_checkpointing, config=backbones[0].config)
        print(format_memory_report(estimate, args.sharding, runtime.world_size, runtime.dtype, args.grad_checkpointing,
                                   backbones[0].config.num_hidden_layers))
    train_model, optimizer = wrap_for_training(model, args, runtime)
    params = [p for p in model.parameters() if p.requires_grad]  # fsdp 把参数换成了分片的 DTensor，包装后再取
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.dtype == torch.float16)
    if args.use_compile:
        # 只编译前向（反向由 AOTAutograd 一并生成）；保存、续训仍用未包装的 model，state_dict 的键名不变
        train_model = compile_for_training(train_model, device)
        if runtime.is_main:
            print("--use_compile 1：第一步先编译模型，要等几十秒，之后每步更快")

    n_batches = len(epoch_batches(len(dataset), args.batch_size, 0, args.seed, runtime.rank, runtime.world_size))
    if n_batches == 0:
        raise TrainingError(f"数据只有 {len(dataset)} 条，不够 {runtime.world_size} 个进程各凑一个 batch_size={args.batch_size}")
    steps_per_epoch = n_batches // args.accumulation_steps
    if steps_per_epoch == 0:
        raise TrainingError(f"每个进程每轮只有 {n_batches} 个 batch，凑不满一次 --accumulation_steps {args.accumulation_steps} 的更新："
                            f"请把 --accumulation_steps 减到不超过 {n_batches}，或减小 --batch_size、用更多数据")
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = int(args.warmup_ratio * total_steps)
    log_file = weight_path(args).with_name(weight_path(args).stem + "_log.jsonl")

    step = 0
    if state is not None:
        load_optimizer_state_dict(model, optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state, runtime)
        step = state["step"]
        if runtime.is_main:
            print(f"从 {resume_file} 续训：已完成 {step}/{total_steps} 步")
    else:
        if runtime.distributed:  # 各进程的随机流不同（dropout 等），与 nanoGPT 的 seed + rank 一样；单进程不变
            seed_everything(args.seed + runtime.rank)
        if runtime.is_main:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text("", encoding="utf-8")  # 新的一次训练，清空旧日志
    wandb = start_wandb(args, runtime)

    def record_eval():
        if evaluate is None or not runtime.is_main:
            return
        row = {"step": step, **evaluate(step)}
        tqdm.write("评测 " + json.dumps(row, ensure_ascii=False))
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if wandb is not None:
            wandb.log(row)

    if step == 0:
        record_eval()

    def save_state():
        # loss 还有限时，这一步的更新也可能已经把权重推成 inf：坏权重绝不覆盖上一个好的检查点（各进程一起检查）
        weights_ok = all(torch.isfinite(local_tensor(p)).all() for p in model.parameters())  # fsdp：各查自己那片
        check_finite(0.0 if weights_ok else float("nan"), step - 1, runtime, resume_file, what="权重")
        rng_states = gather_rng_states(runtime)
        model_state = full_model_state_dict(model)  # zero1/fsdp 要各进程一起收集
        optimizer_state = full_optimizer_state_dict(model, optimizer)
        if not runtime.is_main:
            return
        # fsdp 时 model 的参数是分片，交给 save_weights 的是收集好的完整 state_dict（同名键，同格式）
        save(SimpleNamespace(state_dict=lambda: model_state, config=model.config) if is_fsdp(model) else model,
             args, runtime)
        atomic_save({"model": model_state, "optimizer": optimizer_state, "scaler": scaler.state_dict(),
                     "rng": rng_states[0], "rng_per_rank": rng_states, "step": step,
                     "args": {k: str(v) for k, v in vars(args).items()}},
                    resume_file, lambda saved, back: back["step"] == saved["step"])

    train_model.train()
    tokens_per_step = args.batch_size * args.accumulation_steps * args.max_seq_len * runtime.world_size
    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not runtime.is_main, dynamic_ncols=True)
    first_step = step + 1  # 这次运行（含续训）的第一步：之后报实测的内存
    last = {}
    window_start, window_steps = time.perf_counter(), 0
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        batches = epoch_batches(len(dataset), args.batch_size, epoch, args.seed, runtime.rank, runtime.world_size)
        # 自己的 generator：建 DataLoader 不消耗全局随机数，续训后的随机流与不中断时相同
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[step_in_epoch * args.accumulation_steps:],
                                             num_workers=args.num_workers, generator=torch.Generator())
        micro_batches = iter(loader)
        for _ in range(steps_per_epoch - step_in_epoch):
            if step >= total_steps:
                break
            lr = lr_at(step, lr=args.learning_rate, warmup_steps=warmup_steps, total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = [{k: v.to(device) for k, v in next(micro_batches).items()} for _ in range(args.accumulation_steps)]
            loss_sum, extras = accumulate_gradients(train_model, micro, compute_loss, runtime, count_units, scaler)
            check_finite(loss_sum, step, runtime, resume_file)
            if args.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            bar.update(1)
            if step == first_step:
                report_measured_memory(optimizer, runtime)
            if step % args.log_interval == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                last = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": lr,
                        "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9), **extras}
                window_start, window_steps = time.perf_counter(), 0
                if runtime.is_main:
                    bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{last['tokens_per_s']:,.0f}")
                    with open(log_file, "a", encoding="utf-8") as f:
                        f.write(json.dumps(last, ensure_ascii=False) + "\n")
                    if wandb is not None:
                        wandb.log(last)
            if evaluate is not None and (step % args.eval_interval == 0 or step == total_steps):
                record_eval()
            if step % args.save_interval == 0 or step == total_steps:
                save_state()
    bar.close()
    if runtime.distributed and not is_fsdp(model):  # fsdp 每个参数只有一份（分片存放），无从比较
        check_ranks_in_sync(model, runtime)
    if runtime.is_main:
        print(f"权重：{weight_path(args)}    日志：{log_file}")
    return last


def enable_grad_checkpointing(model: torch.nn.Module, setting: Union[bool, int]) -> list:
    """给模型里每个 MiniMindModel 设激活检查点（PPO 的 actor/critic、SPO 的 policy 都包在外层模块里）；返回这些骨干。

    setting：True = 所有块，False = 关，整数 k = 只重算前 k 个块（超出层数时报错）。
    """
    backbones = [m for m in model.modules() if isinstance(m, MiniMindModel)]
    if setting and not backbones:
        raise ValueError("--grad_checkpointing 只对 MiniMind 模型有效，这个脚本训练的模型里没有 MiniMindModel")
    for backbone in backbones:
        backbone.gradient_checkpointing = setting
        try:
            backbone.checkpointed_blocks()
        except ValueError as err:
            raise ValueError(f"--grad_checkpointing {setting}：{err}") from None
    return backbones


def report_measured_memory(optimizer: torch.optim.Optimizer, runtime: Runtime):
    """第一步之后：各进程实际持有的优化器状态字节数（zero1/fsdp 应约为 ddp 的 1/N），CUDA 上再报分配峰值。"""
    held = torch.tensor([optimizer_state_bytes(optimizer)], device=runtime.device)
    per_rank = [torch.zeros_like(held) for _ in range(runtime.world_size)]
    if runtime.distributed:
        dist.all_gather(per_rank, held)
    else:
        per_rank = [held]
    if not runtime.is_main:
        return
    line = "实测：各进程优化器状态字节 " + json.dumps([int(t.item()) for t in per_rank])
    peak = measured_peak_bytes(runtime.device)
    if peak is not None:
        line += f"；CUDA 分配峰值 {peak / 2 ** 20:,.1f} MiB（torch.cuda.max_memory_allocated，第 1 步后）"
    tqdm.write(line)


def compile_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile 包装。CPU 上 Inductor 会生成 C++ 代码再编译：先确认有编译器，没有就直说，而不是在第一步才崩出一长串报错。"""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++", "cl")):
        raise TrainingError("--use_compile 1 在 CPU 上需要 C++ 编译器（Linux：apt install g++；macOS：xcode-select --install；"
                            "Windows：安装 Visual Studio 生成工具）；没有编译器就去掉 --use_compile，结果相同，只是慢一些")
    return torch.compile(model)


def check_finite(loss: float, step: int, runtime: Runtime, resume_file: Path, what: str = "loss"):
    """任一进程的 loss（或权重，what="权重"）变成 NaN/inf 就让所有进程一起停下；已保存的检查点保持不变。"""
    bad = torch.tensor([0.0 if math.isfinite(loss) else 1.0], device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() > 0:
        kept = f"上一个检查点 {resume_file} 保持不变，可以 --resume 接着训" if resume_file.is_file() else "还没有保存过检查点"
        found = f"loss 变成了 {loss}" if what == "loss" else f"{what}里出现了 NaN/inf（loss 还是有限的）"
        raise TrainingError(f"第 {step + 1} 步的{found}（发散）。{kept}；"
                            "请减小 --learning_rate、开启 --grad_clip，或检查数据")


def check_ranks_in_sync(model: torch.nn.Module, runtime: Runtime):
    """DDP 训练结束时确认各进程的权重逐位相同（每个参数的和拼成一个向量来比较）。"""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(runtime.device)
    gathered = [torch.empty_like(sums) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, sums)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    if runtime.is_main:
        print(f"{runtime.world_size} 个进程的权重{'完全一致' if same else '不一致！'}")
    if not same:
        raise TrainingError("DDP 训练后各进程的权重不一致")


def start_wandb(args, runtime: Runtime):
    if not (args.use_wandb and runtime.is_main):
        return None
    try:
        import wandb
    except ImportError:
        print("提示：没有安装 wandb，只写本地 JSONL 日志（pip install wandb 后再加 --use_wandb）")
        return None
    wandb.init(project="minimind-notes", name=f"{args.save_weight}_{args.hidden_size}", config=vars(args))
    return wandb


def run_main(main: Callable[[], None]):
    """训练脚本的入口：把可预期的错误变成一行说明 + 非零退出。"""
    try:
        main()
    except (TrainingError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("训练被中断；最近一次检查点可用 --resume 接着训", code=130)
