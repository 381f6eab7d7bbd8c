"""实验 1：训练时内存花在哪里——按公式算每个字节，再在小模型上实测核对。

  1. 公式（不用跑模型）：MiniMind 各尺寸的参数量，fp32 Adam 每参数 16 字节（权重 4 + 梯度 4 + 两个矩 8），
     混合精度的两种记法（ZeRO 论文 Rajbhandari et al., 2020 的 2+2+12 = 16；我们训练器的 4+2+4+8 = 18），
     每层每 token 的激活字节数（trainer/memory_report.py 逐张量数出来的，对照 Korthikanti et al., 2022 的 34h+5as），
     以及 batch 32×512 时激活与参数状态谁大。
  2. 实测：小模型跑一个训练步，用分配器统计（CPU 上是 torch.profiler 的分配事件，CUDA 上是 max_memory_allocated）
     量出前向保留的字节数、反向+优化器后保留的字节数和整步峰值，与 estimate_training_memory 的公式逐项对比。
大模型在 CPU 上量峰值太慢：大尺寸只用公式，实测用小尺寸（公式对小尺寸成立，对大尺寸就是同一组张量乘上更大的形状）。

用法：python exp1_memory_accounting.py [--quick]
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # 同目录的 peak_memory

import torch  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from peak_memory import measure_allocations  # noqa: E402
from trainer.memory_report import (FP32_BYTES, block_activation_bytes_per_token,  # noqa: E402
                                   estimate_training_memory)

MIB, GIB = 2 ** 20, 2 ** 30
# 公式部分的真实尺寸（与 01-minimind2-to-3 的 exp3 相同的配置）
REAL_SIZES = {
    "MiniMind2-Small 26M": dict(family="minimind2"),
    "MiniMind2 104M": dict(family="minimind2", hidden_size=768, num_hidden_layers=16),
    "minimind-3 64M": dict(family="minimind3"),
    "minimind-3-MoE 198M-A64M": dict(family="minimind3", use_moe=True),
}
FORMULA_BATCH, FORMULA_SEQ = 32, 512
SHARD_RANKS = 8  # 分片表按 8 个进程算（trainer/README.md 的表也是 8 个进程）
# 实测部分的小尺寸：两代各一个；完整模式再加一个更宽更深的和一个 MoE
MEASURED_QUICK = {
    "minimind2 h128 L2": dict(family="minimind2", hidden_size=128, num_hidden_layers=2, num_attention_heads=4),
    "minimind3 h128 L2": dict(family="minimind3", hidden_size=128, num_hidden_layers=2, num_attention_heads=4),
}
MEASURED_FULL = {
    **MEASURED_QUICK,
    "minimind2 h256 L4": dict(family="minimind2", hidden_size=256, num_hidden_layers=4, num_attention_heads=4),
    "minimind3-MoE h128 L2": dict(family="minimind3", hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  use_moe=True),
}
TOLERANCE = 0.02  # 事先定好：保留字节数与公式相差 2% 以内算"对上了"


def korthikanti_bytes_per_token(config, seq_len: int) -> int:
    """Korthikanti et al. (2022) 的每层激活：s·b·h·(34 + 5·a·s/h) 字节 → 每 token h·34 + 5·a·s（16 位、含 dropout 掩码和注意力矩阵）。"""
    return 34 * config.hidden_size + 5 * config.num_attention_heads * seq_len


def formula_rows(sizes: dict) -> list:
    """每个真实尺寸的参数量、参数状态字节数与激活字节数（模型建在 meta 设备上：只要形状，不分配内存）。"""
    rows = []
    for name, kwargs in sizes.items():
        config = MiniMindConfig(**kwargs)
        with torch.device("meta"):
            model = MiniMindForCausalLM(config)
        P = sum(p.numel() for p in model.parameters())
        act32 = block_activation_bytes_per_token(config, 4, FORMULA_SEQ)
        act16 = block_activation_bytes_per_token(config, 2, FORMULA_SEQ)
        bf16 = estimate_training_memory(model, FORMULA_BATCH, FORMULA_SEQ, torch.bfloat16, config=config)
        sharded = {mode: estimate_training_memory(model, FORMULA_BATCH, FORMULA_SEQ, torch.bfloat16, sharding=mode,
                                                  world_size=SHARD_RANKS, config=config) for mode in ("ddp", "zero1", "fsdp")}
        rows.append({"name": name, "per_rank_state_bytes": {mode: e.total - e.activations for mode, e in sharded.items()}, "params": P, "fp32_adam_bytes": 16 * P, "zero_paper_mixed_bytes": 16 * P,
                     "ours_bf16_bytes": bf16.weights + bf16.gradients + bf16.optimizer,
                     "layer_act_per_token_fp32": act32, "layer_act_per_token_bf16": act16,
                     "korthikanti_per_token": korthikanti_bytes_per_token(config, FORMULA_SEQ),
                     "activations_bf16_bytes": bf16.activations, "layers": config.num_hidden_layers})
    return rows


def measure_training_step(config, dtype, batch_size: int, seq_len: int, seed: int, device) -> dict:
    """一个训练步，分三段量分配：前向（含 autocast）保留的、反向+AdamW 之后保留的、整步的峰值（都不含已有的 fp32 权重）。"""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)  # foreach=False：不额外分配成组的临时张量
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    holder = {}

    def forward():
        with autocast:
            holder["out"] = model(ids, labels=ids)

    def backward_and_step():
        holder["out"].loss.backward()
        del holder["out"]  # 输出（logits）与它保存的激活在这里释放
        optimizer.step()

    def whole_step():
        forward()
        backward_and_step()

    # 第一步建起优化器状态；先量一整步的峰值，清掉梯度和优化器状态再分段量，两次都从"只有权重"开始
    _, peak, _ = measure_allocations(whole_step, device)
    optimizer.state.clear()
    model.zero_grad(set_to_none=True)
    _, _, retained_forward = measure_allocations(forward, device)
    logits_bytes = holder["out"].logits.numel() * holder["out"].logits.element_size()
    _, _, retained_after_step = measure_allocations(backward_and_step, device)
    estimate = estimate_training_memory(model, batch_size, seq_len, dtype, config=config)
    P = sum(p.numel() for p in model.parameters())
    low_precision_copies = estimate.weights - P * FP32_BYTES  # autocast 缓存的权重副本（反向要用，前向保存着）
    return {
        "params": P,
        "forward_retained": retained_forward,
        "forward_expected": estimate.activations + low_precision_copies + logits_bytes,
        "logits_bytes": logits_bytes,
        "activations_formula": estimate.activations,
        "weight_copies_formula": low_precision_copies,
        # 反向之后：激活、logits 和 autocast 副本全释放了，新留下的是梯度与 AdamW 的两个矩（AdamW 还有每参数 1 个 step 计数）
        "after_step_retained": retained_after_step + retained_forward,
        "after_step_expected": estimate.gradients + estimate.optimizer,
        "step_counters_bytes": len(list(model.parameters())) * FP32_BYTES,
        "peak": peak,
        "peak_formula": estimate.total - P * FP32_BYTES,  # 权重在量之前就已存在
    }


def main():
    exp = Experiment(__file__, description=__doc__)
    if exp.device.type not in ("cpu", "cuda"):  # MPS 没有可读的分配统计
        sys.exit(f"这个实验量内存只支持 cpu 和 cuda，收到 {exp.device}；请加 --device cpu")
    device = exp.device
    batch_size, seq_len = (4, 64) if exp.quick else (8, 128)

    # ---- 1. 公式 ----
    rows = formula_rows(REAL_SIZES)
    exp.print_table(
        ["model", "params (M)", "fp32 Adam 16P (GiB)", "ours bf16 18P (GiB)", "act/layer/token fp32 (KiB)",
         "act/layer/token bf16 (KiB)", "Korthikanti 34h+5as (KiB)", f"act {FORMULA_BATCH}x{FORMULA_SEQ} bf16 (GiB)"],
        [[r["name"], r["params"] / 1e6, r["fp32_adam_bytes"] / GIB, r["ours_bf16_bytes"] / GIB,
          r["layer_act_per_token_fp32"] / 1024, r["layer_act_per_token_bf16"] / 1024,
          r["korthikanti_per_token"] / 1024, r["activations_bf16_bytes"] / GIB] for r in rows],
        title=f"公式：参数状态与激活（seq {FORMULA_SEQ}；激活按 SDPA、无 dropout）")

    exp.print_table(["model", "ddp (GiB)", "zero1 (GiB)", "fsdp (GiB)"],
                    [[r["name"], *(r["per_rank_state_bytes"][m] / GIB for m in ("ddp", "zero1", "fsdp"))] for r in rows],
                    title=f"公式：每进程的权重+梯度+优化器+DDP 桶（{SHARD_RANKS} 个进程，bf16 autocast，不含激活）")

    # ---- 2. 实测 ----
    sizes = MEASURED_QUICK if exp.quick else MEASURED_FULL
    measured = {}
    for name, kwargs in sizes.items():
        config = MiniMindConfig(**kwargs)
        for dtype in (torch.float32, torch.bfloat16):
            key = f"{name} {str(dtype).removeprefix('torch.')}"
            measured[key] = measure_training_step(config, dtype, batch_size, seq_len, exp.seed, device)
            print(f"  量完 {key}", flush=True)
    table = []
    for key, m in measured.items():
        table.append([key, m["params"] / 1e6, m["forward_retained"] / MIB, m["forward_expected"] / MIB,
                      m["forward_retained"] / m["forward_expected"] - 1,
                      m["after_step_retained"] / MIB, m["after_step_expected"] / MIB,
                      m["after_step_retained"] / m["after_step_expected"] - 1,
                      m["peak"] / MIB, m["peak_formula"] / MIB])
    exp.print_table(["run", "params (M)", "fwd kept MiB", "formula MiB", "rel err", "grads+Adam MiB", "12P MiB",
                     "rel err", "step peak MiB", "formula sum MiB"], table,
                    title=f"实测 vs 公式（batch {batch_size}×{seq_len}，{device}）")
    exp.save_metrics({"formula": rows, "formula_batch": FORMULA_BATCH, "formula_seq": FORMULA_SEQ, "shard_ranks": SHARD_RANKS,
                      "measured": measured, "batch_size": batch_size, "seq_len": seq_len, "tolerance": TOLERANCE})

    # ---- 图：实测分段 vs 公式 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    keys = list(measured)
    x = range(len(keys))
    for offset, field, label in ((-0.3, "forward_retained", "fwd kept (measured)"),
                                 (-0.1, "forward_expected", "fwd kept (formula)"),
                                 (0.1, "after_step_retained", "grads+Adam (measured)"),
                                 (0.3, "after_step_expected", "grads+Adam (formula)")):
        axes[0].bar([i + offset for i in x], [measured[k][field] / MIB for k in keys], width=0.2, label=label)
    axes[0].set_xticks(list(x), keys, fontsize=7, rotation=35, ha="right")
    axes[0].set_ylabel("MiB")
    axes[0].set_title("Measured allocations vs formula")
    axes[0].legend(fontsize=7)
    names = [r["name"] for r in rows]
    params_gib = [r["ours_bf16_bytes"] / GIB for r in rows]
    act_gib = [r["activations_bf16_bytes"] / GIB for r in rows]
    axes[1].bar(names, params_gib, label="weights+grads+AdamW (18P)")
    axes[1].bar(names, act_gib, bottom=params_gib, label=f"activations ({FORMULA_BATCH}x{FORMULA_SEQ}, bf16)")
    axes[1].set_xticks(range(len(names)), names, fontsize=7, rotation=20, ha="right")
    axes[1].set_ylabel("GiB")
    axes[1].set_title("Formula: training memory of real sizes")
    axes[1].legend(fontsize=7)
    exp.save_figure(fig, "exp1_memory_accounting.png")

    # ---- 结论（分配字节数由形状决定，没有随机性：确定性检查）----
    fwd_err = {k: m["forward_retained"] / m["forward_expected"] - 1 for k, m in measured.items()}
    step_err = {k: m["after_step_retained"] / m["after_step_expected"] - 1 for k, m in measured.items()}
    worst_fwd = max(fwd_err, key=lambda k: abs(fwd_err[k]))
    worst_step = max(step_err, key=lambda k: abs(step_err[k]))
    exp.conclude(f"前向保留的字节数 = 公式的激活 + autocast 权重副本 + logits（每个尺寸和精度都在 {TOLERANCE:.0%} 以内）",
                 all(abs(e) < TOLERANCE for e in fwd_err.values()),
                 evidence=f"最大相对误差 {fwd_err[worst_fwd]:+.2%}（{worst_fwd}）")
    exp.conclude(f"反向 + AdamW 之后新留下的字节数 = 梯度 4P + 两个矩 8P（{TOLERANCE:.0%} 以内）",
                 all(abs(e) < TOLERANCE for e in step_err.values()),
                 evidence=f"最大相对误差 {step_err[worst_step]:+.2%}（{worst_step}）")
    ratios = {k: m["peak"] / m["peak_formula"] for k, m in measured.items()}
    exp.conclude("整步峰值不低于公式各项之和（公式是下界：反向还有临时张量）",
                 all(r >= 1 - TOLERANCE for r in ratios.values()),
                 evidence="峰值/公式 " + "，".join(f"{k} {r:.2f}" for k, r in ratios.items()))
    big = {r["name"]: r["activations_bf16_bytes"] / r["ours_bf16_bytes"] for r in rows}
    exp.conclude(f"batch {FORMULA_BATCH}×{FORMULA_SEQ} 时每个真实尺寸的激活都比参数状态（18P）大",
                 all(v > 1 for v in big.values()),
                 evidence="激活/参数状态 " + "，".join(f"{k} {v:.1f}×" for k, v in big.items()))
    exp.finish()


if __name__ == "__main__":
    main()
