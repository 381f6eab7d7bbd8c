"""实验 3：激活检查点（Chen et al., 2016）——每个块只留输入，反向时重算块内的激活：内存换时间。

MiniMind 的开关是 model.model.gradient_checkpointing（训练器的 --grad_checkpointing [N]）：True 重算所有块，
整数 k 只重算前 k 个块。这里做三组测量：
  1. 层数 L 从小到大，全开/全关各跑一次前向+反向。前向保留的字节数：关闭时每多一层多一整块激活
     （trainer/memory_report.py 的 block_activation_bytes_per_token），打开时每多一层只多一份块输入 H 个 float32——
     两条斜率都与公式对比；前向+反向的峰值：打开后更低，且随 L 增长得更慢（反向时一次只重算一个块）；
  2. 固定最深的 L，重算的块数 k = 0, L/4, L/2, 3L/4, L（--quick 只量 0、L/2、L）：每多重算一个块，前向少留"一块激活 − 一份块输入"，
     峰值随 k 下降——内存按块可调，不是只有全开全关两档；
  3. 速度：k = 0、L/2、L 三档，多重算一个块就多做一次块的前向。时间按 model/bench.py 的方法在同一个进程里交替计时、
     逐窗口配对，经共享噪声检验才下结论；
  4. 开关不改变数学：loss 与梯度逐位相同。
（Chen et al. 的 √n 方案是每 √n 层存一次；MiniMind 的开关是"被重算的块都存输入"，全开时峰值 ∝ L·H + 一个块。）

用法：python exp3_grad_checkpointing.py [--quick] [--windows 5]
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
from modules.common.timing import alternating_timings, compare_speed, speed_ratio  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402
from peak_memory import measure_allocations  # noqa: E402
from trainer.memory_report import FP32_BYTES, block_activation_bytes_per_token  # noqa: E402

MIB = 2 ** 20
HIDDEN, HEADS = 128, 4
TOLERANCE = 0.02  # 事先定好：实测斜率与公式相差 2% 以内


def add_args(parser):
    parser.add_argument("--windows", type=int, default=None, help="计时窗口数（默认 quick 5、完整 9）")


def build(n_layers: int, seed: int, device):
    torch.manual_seed(seed)
    config = MiniMindConfig(hidden_size=HIDDEN, num_hidden_layers=n_layers, num_attention_heads=HEADS)
    return MiniMindForCausalLM(config).to(device).train()


def forward_backward(model, ids):
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def measure(model, ids, checkpointing: bool, device) -> dict:
    """梯度事先分配好（置零而不释放），只量激活：前向保留的字节数与前向+反向的峰值。"""
    model.model.gradient_checkpointing = checkpointing
    forward_backward(model, ids)  # 建好梯度张量
    model.zero_grad(set_to_none=False)
    holder = {}

    def forward():
        holder["loss"] = model(ids, labels=ids).loss

    _, _, kept = measure_allocations(forward, device)
    logits_bytes = ids.numel() * model.config.vocab_size * FP32_BYTES  # 输出里的 logits，不是为反向存的
    holder.clear()
    model.zero_grad(set_to_none=False)
    _, peak, _ = measure_allocations(lambda: forward_backward(model, ids), device)
    return {"forward_kept": kept - logits_bytes, "peak": peak}


def slope(xs, ys) -> float:
    """最小二乘直线的斜率（每多一层多多少字节）。"""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main():
    exp = Experiment(__file__, description=__doc__, extra_args=add_args)
    if exp.device.type not in ("cpu", "cuda"):  # MPS 没有可读的分配统计
        sys.exit(f"这个实验量内存只支持 cpu 和 cuda，收到 {exp.device}；请加 --device cpu")
    device = exp.device
    windows = exp.args.windows or (5 if exp.quick else 9)
    if windows < 3:
        sys.exit(f"--windows={windows} 太少：噪声检验至少要 3 个配对窗口")
    layers = [2, 4, 8] if exp.quick else [2, 4, 8, 16]
    batch_size, seq_len = (4, 128) if exp.quick else (8, 256)
    ids = torch.randint(0, 6400, (batch_size, seq_len), generator=torch.Generator().manual_seed(exp.seed)).to(device)
    tokens = batch_size * seq_len

    # ---- 1/2. 内存 ----
    mem = {"off": [], "on": []}
    for L in layers:
        model = build(L, exp.seed, device)
        for mode in ("off", "on"):
            mem[mode].append(measure(model, ids, mode == "on", device))
        print(f"  量完 L={L}", flush=True)
    config = build(1, exp.seed, device).config
    block_bytes = block_activation_bytes_per_token(config, FP32_BYTES, seq_len) * tokens  # 一个块的激活
    # 打开时每层留一份块输入；checkpoint 还为每层存一份随机数状态（preserve_rng_state，重算时 dropout 掩码相同）
    rng_state_bytes = torch.get_rng_state().numel() + (torch.cuda.get_rng_state(device).numel() if device.type == "cuda" else 0)
    input_bytes = HIDDEN * FP32_BYTES * tokens + rng_state_bytes
    slopes = {mode: slope(layers, [m["forward_kept"] for m in mem[mode]]) for mode in mem}
    exp.print_table(["L", "off: fwd kept MiB", "on: fwd kept MiB", "off: peak MiB", "on: peak MiB", "peak on/off"],
                    [[L, off["forward_kept"] / MIB, on["forward_kept"] / MIB, off["peak"] / MIB, on["peak"] / MIB,
                      on["peak"] / off["peak"]] for L, off, on in zip(layers, mem["off"], mem["on"])],
                    title=f"激活内存（hidden {HIDDEN}，batch {batch_size}×{seq_len}，float32）")
    exp.print_table(["mode", "measured MiB/layer", "formula MiB/layer"],
                    [["off", slopes["off"] / MIB, block_bytes / MIB], ["on", slopes["on"] / MIB, input_bytes / MIB]],
                    title="每多一层，前向多保留多少")

    # ---- 2. 固定 L，只重算前 k 个块 ----
    L = layers[-1]
    model = build(L, exp.seed, device)  # 与第 1 组最深的模型同一个种子：权重相同
    middle = [L // 2] if exp.quick else [L // 4, L // 2, 3 * L // 4]
    block_counts = [0, *middle, L]
    # k = 0 与 k = L 就是第 1 组里最深那一行的全关/全开，不再量一遍
    partial = [mem["off"][-1], *(measure(model, ids, k, device) for k in middle), mem["on"][-1]]
    saved_per_block = block_bytes - input_bytes  # 多重算一个块，前向少留的字节数（公式）
    partial_slope = -slope(block_counts, [m["forward_kept"] for m in partial])
    exp.print_table(["checkpointed blocks k", "fwd kept MiB", "fwd+bwd peak MiB", "peak / peak(k=0)"],
                    [[k, m["forward_kept"] / MIB, m["peak"] / MIB, m["peak"] / partial[0]["peak"]]
                     for k, m in zip(block_counts, partial)],
                    title=f"只重算前 k 个块（L={L}）")

    # ---- 3. 速度：同一进程里交替计时，逐窗口配对 ----
    timed_counts = [0, L // 2, L]
    steps = {}
    for k in timed_counts:
        def step(k=k):
            model.model.gradient_checkpointing = k
            forward_backward(model, ids)
            model.zero_grad(set_to_none=True)
        steps[f"k={k}"] = step
    # 每个窗口每一档各跑 2 步、先后顺序逐窗口轮换（modules/common/timing.py），按窗口配对
    times = alternating_timings(steps, device, windows=windows, calls_per_window=2)
    exp.print_table(["checkpointed blocks", "s/step (best window)", "s/step (median)"],
                    [[name, min(t), sorted(t)[len(t) // 2]] for name, t in times.items()],
                    title=f"前向+反向用时（L={L}，{windows} 个交替窗口）")
    none, half, every = (times[f"k={k}"] for k in timed_counts)

    # ---- 4. 数学不变 ----
    model = build(layers[0], exp.seed, device)
    results = {}
    for mode in ("off", "on"):
        model.model.gradient_checkpointing = mode == "on"
        model.zero_grad(set_to_none=True)
        loss = forward_backward(model, ids)
        results[mode] = (loss, [p.grad.clone() for p in model.parameters()])
    bitwise = bool(torch.equal(results["off"][0], results["on"][0])) and all(
        torch.equal(a, b) for a, b in zip(results["off"][1], results["on"][1]))

    exp.save_metrics({"layers": layers, "batch_size": batch_size, "seq_len": seq_len, "hidden_size": HIDDEN,
                      "memory": mem, "slope_bytes_per_layer": slopes, "formula_block_bytes": block_bytes,
                      "formula_input_bytes": input_bytes, "rng_state_bytes": rng_state_bytes,
                      "checkpointed_blocks": block_counts, "partial_memory": partial,
                      "saved_bytes_per_checkpointed_block": partial_slope, "step_seconds": times, "timed_layers": L,
                      "bitwise_equal": bitwise})

    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for mode, marker in (("off", "o"), ("on", "s")):
        axes[0].plot(layers, [m["forward_kept"] / MIB for m in mem[mode]], marker=marker, label=f"fwd kept, ckpt {mode}")
        axes[0].plot(layers, [m["peak"] / MIB for m in mem[mode]], marker=marker, linestyle="--",
                     label=f"fwd+bwd peak, ckpt {mode}")
    axes[0].set_xlabel("number of blocks L")
    axes[0].set_ylabel("MiB")
    axes[0].set_title("Activation memory vs depth")
    axes[0].legend(fontsize=8)
    axes[1].plot(block_counts, [m["forward_kept"] / MIB for m in partial], marker="o", label="fwd kept")
    axes[1].plot(block_counts, [m["peak"] / MIB for m in partial], marker="s", linestyle="--", label="fwd+bwd peak")
    axes[1].set_xlabel("checkpointed blocks k")
    axes[1].set_ylabel("MiB")
    axes[1].set_title(f"Memory vs checkpointed blocks, L={L}")
    axes[1].legend()
    for (name, t), marker in zip(times.items(), "os^"):
        axes[2].plot(range(windows), t, marker=marker, label=name)
    axes[2].set_xlabel("timing window (alternating)")
    axes[2].set_ylabel("seconds per fwd+bwd")
    axes[2].set_title(f"Step time vs checkpointed blocks, L={L}")
    axes[2].legend()
    exp.save_figure(fig, "exp3_grad_checkpointing.png")

    # ---- 结论 ----
    err_off = slopes["off"] / block_bytes - 1
    err_on = slopes["on"] / input_bytes - 1
    exp.conclude(f"关闭时每多一层前向多保留一整块激活（与公式相差 {TOLERANCE:.0%} 以内）", abs(err_off) < TOLERANCE,
                 evidence=f"实测 {slopes['off'] / MIB:.3f} MiB/层，公式 {block_bytes / MIB:.3f} MiB/层（{err_off:+.2%}）")
    exp.conclude(f"打开时每多一层只多保留一份块输入 H 个 float32 和一份随机数状态（{TOLERANCE:.0%} 以内）", abs(err_on) < TOLERANCE,
                 evidence=f"实测 {slopes['on'] / MIB:.3f} MiB/层，公式 {input_bytes / MIB:.3f} MiB/层（{err_on:+.2%}）")
    exp.conclude("每个层数下打开检查点的前向+反向峰值都更低",
                 all(on["peak"] < off["peak"] for off, on in zip(mem["off"], mem["on"])),
                 evidence="峰值 on/off：" + "，".join(f"L={L_} {on['peak'] / off['peak']:.2f}"
                                                     for L_, off, on in zip(layers, mem["off"], mem["on"])))
    err_partial = partial_slope / saved_per_block - 1
    exp.conclude(f"每多重算一个块，前向少留一块激活减一份块输入（L={L}，与公式相差 {TOLERANCE:.0%} 以内）",
                 abs(err_partial) < TOLERANCE,
                 evidence=f"实测每块省 {partial_slope / MIB:.3f} MiB，公式 {saved_per_block / MIB:.3f} MiB（{err_partial:+.2%}）")
    exp.conclude(f"重算的块越多，前向+反向的峰值越低（L={L}，k = {', '.join(map(str, block_counts))}）",
                 all(b["peak"] < a["peak"] for a, b in zip(partial, partial[1:])),
                 evidence="峰值 MiB：" + "，".join(f"k={k} {m['peak'] / MIB:.1f}" for k, m in zip(block_counts, partial)))
    exp.conclude_verdict(f"打开检查点后训练步变慢（L={L}，重算一次块的前向）", compare_speed(none, every),
                         evidence=f"最快窗口 k={L} {min(every):.3f} s vs k=0 {min(none):.3f} s；"
                                  f"用时比（各窗口的中位数）{speed_ratio(none, every):.2f}×")
    exp.conclude_verdict(f"只重算一半的块，比全部重算快（k={L // 2} vs k={L}）", compare_speed(half, every),
                         evidence=f"k={L} 的用时是 k={L // 2} 的 {speed_ratio(half, every):.2f}×，"
                                  f"k={L // 2} 是 k=0 的 {speed_ratio(none, half):.2f}×")
    exp.conclude("开关检查点不改变数学：loss 与所有梯度逐位相同", bitwise,
                 evidence=f"L={layers[0]}，{len(results['off'][1])} 个参数的梯度 torch.equal")
    exp.finish()


if __name__ == "__main__":
    main()
