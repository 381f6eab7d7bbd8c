"""训练的"系统"部分：激活检查点、分片数据并行（ZeRO-1 / FSDP2，CPU 上走 gloo）、内存估算。

torchrun 的测试各跑几步 --quick：与 ddp 的 loss 在浮点误差内相同、各进程权重一致、存的是同一格式的完整 state_dict、
每个进程的优化器状态约为 ddp 的一半、从第 2 步的续训状态 --resume 与不中断时一致。
"""
import json
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO_ROOT
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from test_trainer import read_log, run, same_weights, tiny_model, torchrun
from trainer.train_pretrain import language_model_loss
from trainer.memory_report import (
    FP32_BYTES, block_activation_bytes_per_token, estimate_training_memory, head_activation_bytes_per_token,
)
from trainer.trainer_utils import SAMPLES_DIR, build_parser, parse_args, train

pytestmark = pytest.mark.xdist_group("trainer")  # 与 test_trainer 同一个 worker：torchrun 的两个进程不和别的测试抢核


def small_config(family="minimind2", use_moe=False, **overrides):
    settings = dict(family=family, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                    max_position_embeddings=64, use_moe=use_moe)
    return MiniMindConfig(**{**settings, **overrides})


FAMILIES_AND_MOE = [("minimind2", False), ("minimind3", False), ("minimind2", True), ("minimind3", True)]


# ---------------------------------------------------------------------------
# 激活检查点
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("family, use_moe", FAMILIES_AND_MOE)
def test_grad_checkpointing_gives_the_same_loss_and_gradients(family, use_moe):
    """重算只改变"什么时候算"，不改变算什么：loss、MoE 的 aux_loss 和每个参数的梯度都相同（含只从 aux_loss 得到梯度的路由器）。
    全部重算（True）和只重算第一个块（1）都与不重算比。"""
    ids = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(1))
    results = []
    for checkpointing in (False, True, 1):
        torch.manual_seed(0)
        model = MiniMindForCausalLM(small_config(family, use_moe))
        model.model.gradient_checkpointing = checkpointing
        out = model(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
        results.append((out.loss.item(), out.aux_loss.item(),
                        {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    loss, aux, grads = results[0]
    assert len(grads) == len(list(model.parameters()))
    for loss_ckpt, aux_ckpt, grads_ckpt in results[1:]:
        assert abs(loss - loss_ckpt) < 1e-6 and abs(aux - aux_ckpt) < 1e-6
        assert grads.keys() == grads_ckpt.keys()
        assert max((grads[k] - grads_ckpt[k]).abs().max().item() for k in grads) < 1e-6


def test_grad_checkpointing_saves_only_block_inputs_and_leaves_inference_alone():
    """开启后前向为反向存下的激活只剩每块的输入（外加块外的部分）；生成（KV cache、无梯度）不受影响。"""
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = MiniMindForCausalLM(small_config())
    saved = {}
    for name, checkpointing in (("off", False), ("all", True), ("first", 1)):  # 键不用 True/1：二者在 dict 里是同一个键
        model.model.gradient_checkpointing = checkpointing
        saved[name] = saved_activation_bytes(model, lambda: model(ids, labels=ids).loss)
    assert saved["all"] < 0.5 * saved["off"], saved
    assert saved["all"] < saved["first"] < saved["off"], saved  # 只重算 2 个块中的第一个：居中
    model.model.gradient_checkpointing = 3  # 只有 2 个块
    with pytest.raises(ValueError, match="要重算的块数应在 0 到 2 之间"):
        model(ids, labels=ids)
    model.eval()
    expected = model.generate(ids[:, :8], max_new_tokens=5, do_sample=False)
    model.model.gradient_checkpointing = False
    assert torch.equal(expected, model.generate(ids[:, :8], max_new_tokens=5, do_sample=False))


# ---------------------------------------------------------------------------
# 内存估算
# ---------------------------------------------------------------------------
def saved_activation_bytes(model, forward) -> int:
    """前向里为反向保存的张量（不含参数本身、不含 autocast 的低精度权重副本），按底层存储去重后的字节数。"""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        is_weight_copy = t.dtype != torch.float32 and tuple(t.shape) in weight_shapes
        if storage.data_ptr() not in params and not is_weight_copy:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family, use_moe", FAMILIES_AND_MOE)
def test_activation_formula_matches_the_tensors_autograd_saves(family, use_moe, dtype):
    """公式按张量逐个数出来；这里用 saved_tensors_hooks 数一遍 PyTorch 真正存下的，相差不到 2%（实测约 0.5%）。
    bf16 用 CPU 的 autocast：大部分激活 2 字节，残差流和 log-softmax 仍是 float32，每个投影各转一份输入。
    batch 取 8 让与 batch 无关的 cos/sin 表摊薄。"""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(small_config(family, use_moe))
    B, T = 8, 48
    ids = torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(3))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
            return model(ids, labels=ids).loss

    measured = saved_activation_bytes(model, forward)
    expected = estimate_training_memory(model, B, T, dtype).activations
    assert abs(expected / measured - 1) < 0.02, (expected, measured)


def test_partial_checkpointing_formula_matches_the_tensors_autograd_saves():
    """只重算 4 个块中的前 k 个：前向存下 k 份块输入和 L−k 块完整激活，与公式相差不到 2%（k = L 时公式多算的
    那一块是反向重算时的瞬时峰值，前向并不存它，所以只比 k < L）。"""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(small_config(num_hidden_layers=4))
    B, T = 8, 48
    ids = torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(3))
    for k in (0, 1, 3):
        model.model.gradient_checkpointing = k
        measured = saved_activation_bytes(model, lambda: model(ids, labels=ids).loss)
        expected = estimate_training_memory(model, B, T, torch.float32, grad_checkpointing=k).activations
        assert abs(expected / measured - 1) < 0.02, (k, expected, measured)


def test_memory_estimate_by_hand_count():
    """hidden 32、1 层、V=64、I=128（64·⌈8/3·32/64⌉）的 MiniMind2，手数参数：
    嵌入 64·32 = 2048（与 lm_head 共享，只算一次）；q 32·32、k/v 各 32·16、o 32·32 → 3072；
    SwiGLU 3·32·128 = 12288；三个 RMSNorm 各 32 → 96。合计 P = 17504。"""
    config = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=64, max_position_embeddings=64)
    model = MiniMindForCausalLM(config)
    P = 2048 + 3072 + 12288 + 96
    assert sum(p.numel() for p in model.parameters()) == P
    B, T = 2, 10
    # 每 token 的块激活：float32 的 2H + 2 + nh = 70；计算精度 H + 2q + 2kv + H + 4I = 32 + 64 + 32 + 32 + 512 = 672
    assert block_activation_bytes_per_token(config, 4, T) == (70 + 672) * 4
    # 块外：(H + 1 + V)·4 + H·e
    assert head_activation_bytes_per_token(config, 4) == (32 + 1 + 64) * 4 + 32 * 4

    single = estimate_training_memory(model, B, T, torch.float32)
    assert (single.weights, single.gradients, single.optimizer, single.communication) == (4 * P, 4 * P, 8 * P, 0)
    assert single.activations == B * T * ((70 + 672) * 4 + 97 * 4 + 32 * 4)
    ddp = estimate_training_memory(model, B, T, torch.float32, "ddp", world_size=2)
    zero1 = estimate_training_memory(model, B, T, torch.float32, "zero1", world_size=2)
    fsdp = estimate_training_memory(model, B, T, torch.float32, "fsdp", world_size=2)
    assert ddp.communication == 4 * P and zero1.optimizer == 4 * P and zero1.weights == 4 * P
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer, fsdp.communication) == (2 * P, 2 * P, 4 * P, 0)
    bf16 = estimate_training_memory(model, B, T, torch.bfloat16)
    assert bf16.weights == 4 * P + 2 * P  # float32 主权重 + autocast 缓存的 bf16 副本
    # fsdp：主权重分片，bf16 副本来自 all-gather 出的完整权重，不分片
    assert estimate_training_memory(model, B, T, torch.bfloat16, "fsdp", world_size=2).weights == 2 * P + 2 * P
    ckpt = estimate_training_memory(model, B, T, torch.float32, grad_checkpointing=True)
    assert ckpt.activations == B * T * (32 * FP32_BYTES + (70 + 672) * 4 + 97 * 4 + 32 * 4)


# ---------------------------------------------------------------------------
# 分片数据并行：torchrun 两个 gloo 进程
# ---------------------------------------------------------------------------
SPY = """
import os, shutil, sys
sys.path[:0] = [{repo!r}]
import torch
import trainer.train_pretrain as script
import trainer.trainer_utils as utils

OUT = {out!r}
real_train = script.train


def spied_train(args, runtime, model, dataset, compute_loss, **kwargs):
    resume_file = utils.weight_path(args).with_name(utils.weight_path(args).stem + "_resume.pth")
    calls = []

    def spied_loss(m, batch):
        calls.append(1)
        if len(calls) == 3 and runtime.is_main and not args.resume:
            # 第 3 步的前向：rank 0 刚写完第 2 步的检查点（两个进程已在本步的 all_reduce 会合），留一份给续训测试
            shutil.copy(resume_file, os.path.join(OUT, "step2_resume.pth"))
        return compute_loss(m, batch)

    result = real_train(args, runtime, model, dataset, spied_loss, **kwargs)
    # 各进程各自拼出完整权重存下（fsdp 的参数是分片的 DTensor，full_tensor 是各进程一起的 all-gather）
    full = {{k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}}
    torch.save(full, os.path.join(OUT, f"rank{{runtime.rank}}_weights.pth"))
    return result


script.train = spied_train
utils.run_main(script.main)
"""

COMMON = ["--quick", "--device", "cpu", "--max_steps", "4", "--log_interval", "1", "--save_interval", "2"]


def spied_torchrun(tmp_path, out, *args):
    """torchrun 两个 gloo 进程跑 4 步 train_pretrain.py --quick（外面套 SPY），各进程的最终权重另存一份。"""
    out.mkdir(parents=True, exist_ok=True)
    script = tmp_path / f"spy_{out.name}.py"
    script.write_text(SPY.format(repo=str(REPO_ROOT), out=str(out)), encoding="utf-8")
    proc = torchrun(script, *COMMON, "--save_dir", out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def optimizer_bytes_per_rank(stdout):
    found = re.search(r"实测：各进程优化器状态字节 (\[[0-9, ]+\])", stdout)
    assert found, stdout[-2000:]
    return json.loads(found.group(1))


def check_saved_run(out, reference_weights, tolerance):
    """两个进程的最终权重一致、等于保存的文件；文件是能 strict 装进新模型的完整 state_dict，与参考只差 tolerance。"""
    ranks = [torch.load(out / f"rank{r}_weights.pth") for r in (0, 1)]
    saved = torch.load(out / "pretrain_128.pth", weights_only=True)
    assert same_weights(ranks[0], ranks[1]) and same_weights(ranks[0], saved)
    assert saved.keys() == reference_weights.keys()
    assert max((saved[k] - reference_weights[k]).abs().max().item() for k in saved) <= tolerance
    MiniMindForCausalLM(MiniMindConfig.load(out / "pretrain_128.json")).load_state_dict(saved, strict=True)


def resume_from_step_2(tmp_path, source, name, sharding):
    """拿 source 那次在第 2 步存下的续训状态，在新目录里用 --sharding sharding 续训到第 4 步。"""
    out = tmp_path / name
    out.mkdir()
    (out / "pretrain_128_resume.pth").write_bytes((source / "step2_resume.pth").read_bytes())
    stdout = spied_torchrun(tmp_path, out, "--sharding", sharding, "--resume")
    assert "已完成 2/4 步" in stdout
    return out, stdout


def test_zero1_and_fsdp_match_ddp_and_resume_exactly(tmp_path):
    """ddp、zero1 各跑 4 步；再从 zero1 第 2 步的续训状态分别用 zero1 和 fsdp 续训到第 4 步。
    zero1 与 ddp 逐位相同（同样的梯度、同样的 AdamW，只是每个进程更新一半参数）；zero1 续训与不中断逐位相同；
    fsdp 的梯度经 reduce-scatter，求和顺序不同，只差浮点舍入。每进程的优化器状态：zero1、fsdp 约为 ddp 的一半。
    续训文件的优化器状态与单进程 AdamW 同格式，所以 zero1 存的可以用 fsdp 续训。"""
    ddp, zero1 = tmp_path / "ddp", tmp_path / "zero1"
    ddp_stdout = spied_torchrun(tmp_path, ddp)
    zero1_stdout = spied_torchrun(tmp_path, zero1, "--sharding", "zero1")
    assert "预计每进程内存（zero1，2 个进程" in zero1_stdout and "2 个进程的权重完全一致" in zero1_stdout
    reference_losses = read_log(ddp / "pretrain_128_log.jsonl")
    reference_weights = torch.load(ddp / "pretrain_128.pth", weights_only=True)
    assert read_log(zero1 / "pretrain_128_log.jsonl") == reference_losses and len(reference_losses) == 4
    check_saved_run(zero1, reference_weights, tolerance=0.0)

    zero1_resumed, _ = resume_from_step_2(tmp_path, zero1, "zero1_resumed", "zero1")
    assert read_log(zero1_resumed / "pretrain_128_log.jsonl") == {k: reference_losses[k] for k in (3, 4)}
    check_saved_run(zero1_resumed, reference_weights, tolerance=0.0)

    fsdp_resumed, fsdp_stdout = resume_from_step_2(tmp_path, zero1, "fsdp_resumed", "fsdp")
    losses = read_log(fsdp_resumed / "pretrain_128_log.jsonl")
    assert losses.keys() == {3, 4} and all(abs(losses[k] / reference_losses[k] - 1) < 1e-5 for k in losses), losses
    check_saved_run(fsdp_resumed, reference_weights, tolerance=1e-5)

    ddp_bytes = optimizer_bytes_per_rank(ddp_stdout)
    assert ddp_bytes[0] == ddp_bytes[1] > 0
    for sharded in (optimizer_bytes_per_rank(zero1_stdout), optimizer_bytes_per_rank(fsdp_stdout)):
        assert all(abs(b / ddp_bytes[0] - 0.5) < 0.01 for b in sharded), (ddp_bytes, sharded)


def test_sharding_without_torchrun_is_refused(tmp_path):
    proc = run("train_pretrain.py", "--quick", "--max_steps", "1", "--save_dir", tmp_path, "--sharding", "zero1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--sharding zero1 要把状态分给多个进程，现在只有 1 个：请用 torchrun" in proc.stderr


@pytest.mark.parametrize("flags, dtype, save, message", [
    # LoRA 只存适配器（RL 脚本在主进程单独评测），都要直接用未分片的模型：fsdp 下说清楚，改用 zero1
    (["--sharding", "fsdp"], torch.float32, lambda *a: None, "lora 请用 --sharding zero1"),
    # runtime 的精度（CUDA 上 --dtype float16 解析出来的）直接给出：CPU 上解析不了 float16
    (["--sharding", "fsdp"], torch.float16, None, "--sharding fsdp 不支持 float16"),
    (["--grad_checkpointing", "--use_compile", "1"], torch.float32, None, "--grad_checkpointing 与 --use_compile 1 不能同时用"),
    (["--grad_checkpointing", "9"], torch.float32, None, "--grad_checkpointing 9：gradient_checkpointing=9 不对"),
])
def test_unsupported_combinations_are_refused_before_training(tmp_path, flags, dtype, save, message):
    """这些检查在任何分布式通信之前：用一个"两个进程中的 rank 0"的 runtime 直接调 train()，不必起 torchrun。"""
    args = parse_args(build_parser("t", SAMPLES_DIR / "pretrain.jsonl", "lora", 1e-3),
                      ["--quick", "--save_dir", str(tmp_path), *flags])
    runtime = SimpleNamespace(device=torch.device("cpu"), dtype=dtype, world_size=2, rank=0, distributed=True,
                              is_main=True)
    kwargs = {"save": save} if save is not None else {}
    with pytest.raises(ValueError, match=re.escape(message)):
        train(args, runtime, tiny_model(), [], language_model_loss, desc="lora", **kwargs)
