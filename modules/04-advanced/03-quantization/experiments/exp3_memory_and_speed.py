"""实验 3：26M 的 MiniMind2——量化省了多少字节，又快了多少（或者慢了多少）？

模型是默认配置的 MiniMind2（hidden 512、8 层、词表 6400，约 25.8M 参数），**随机初始化**：
字节数和解码速度只取决于形状和数据类型，与权重学得好不好无关（质量见实验 2）。

  1. 权重字节：model/quantization.py::weight_bytes 量出 fp32 / int8（per-channel）/ int4（group 32）的模型字节，
     与公式对照：Linear 的权重 + fp32 scale，加上仍是 fp32 的词嵌入（与 lm_head 共享）和 RMSNorm。
  2. 解码速度：batch 1、16 个 token 的 prompt、贪心生成 --new-tokens 个 token（KV cache），五种模型轮流计时
     （modules/common/timing.py::alternating_timings，同一进程、逐窗口轮换先后），用 compare_speed 过噪声检验：
        fp32        原模型
        int8        int8 per-channel，float32 激活：每一步先把整块权重还原成 fp32 再 F.linear
        int4        int4 group 32，float32 激活：每一步先解包、还原，再 F.linear
        bf16        整个模型转成 bfloat16
        bf16+int8   bfloat16 模型再量化成 int8：CPU 上走 torch._weight_int8pack_mm（边读 int8 边乘，见 uses_int8_kernel）
  3. 一次"把全部 Linear 权重还原成浮点"要多久：fp32 激活的量化模型每生成一个 token 都要付一次这个代价。

默认单线程（--threads 1）：batch 1 的解码每一步只有几十个小矩阵-向量乘，2 核上开 2 个线程收益很小、机器忙时抖动很大。

    python exp3_memory_and_speed.py --quick
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import copy  # noqa: E402
from statistics import median  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.quantization import QuantizedLinear, dequantize_weight, quantize_model, uses_int8_kernel, weight_bytes  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.timing import alternating_timings, compare_speed, speed_ratio  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

PROMPT_LEN = 16
VARIANTS = ("fp32", "int8", "int4", "bf16", "bf16+int8")


def add_args(parser):
    parser.add_argument("--new-tokens", type=int, default=None, help="每次生成的新 token 数（默认 quick 32 / 完整 64，>= 8）")
    parser.add_argument("--windows", type=int, default=None, help="交替计时的窗口数（默认 quick 12 / 完整 15，>= 3）")
    parser.add_argument("--threads", type=int, default=1, help="CPU 上 PyTorch 的线程数（默认 1）")


def build_variants(model: MiniMindForCausalLM) -> dict:
    """五个模型（都是 model 的深拷贝或它本身，eval 模式）。lm_head 与词嵌入共享，按默认 skip 保持浮点。"""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    return {"fp32": model, "int8": quantize_model(copy.deepcopy(model), bits=8, group_size=None),
            "int4": quantize_model(copy.deepcopy(model), bits=4, group_size=32), "bf16": bf16,
            "bf16+int8": quantize_model(copy.deepcopy(bf16), bits=8, group_size=None)}


def expected_bytes(model: nn.Module, bits, group_size, float_bytes: int = 4) -> int:
    """公式：每个（将被量化的）Linear 权重 bits/8 字节 + 每组一个 4 字节的 fp32 scale；其余参数（嵌入、RMSNorm）
    每个 float_bytes 字节。bits=None 表示不量化。lm_head 与嵌入共享，只算一次（算在嵌入里）。"""
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    linear_weights = sum(m.weight.numel() for m in linears)
    other = sum(p.numel() for p in model.parameters()) - linear_weights  # parameters() 对共享参数只列一次
    if bits is None:
        return (linear_weights + other) * float_bytes
    n_scales = sum(m.out_features * (m.in_features // (group_size or m.in_features)) for m in linears)
    return linear_weights * bits // 8 + 4 * n_scales + other * float_bytes


def linear_bytes(model: nn.Module) -> int:
    """只算 Transformer 块里的线性层（量化后是 QuantizedLinear）的字节。"""
    return sum(weight_bytes(m) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, QuantizedLinear)) and not n.endswith("lm_head"))


def main():
    exp = Experiment(__file__, description="26M MiniMind2（随机权重）：fp32 / int8 / int4 / bf16 / bf16+int8 的权重字节与解码速度",
                     extra_args=add_args)
    new_tokens = exp.args.new_tokens or (32 if exp.quick else 64)
    windows = exp.args.windows or (12 if exp.quick else 15)  # bf16 只比 fp32 快约 10%：6 个窗口分不出来
    if new_tokens < 8 or windows < 3 or exp.args.threads < 1:
        raise SystemExit(f"需要 --new-tokens >= 8、--windows >= 3、--threads >= 1"
                         f"（收到 {new_tokens}、{windows}、{exp.args.threads}）")
    if exp.device.type == "cpu":
        torch.set_num_threads(exp.args.threads)

    model = MiniMindForCausalLM(MiniMindConfig()).to(exp.device).eval()  # 随机初始化（种子由 Experiment 设好）
    models = {name: m.to(exp.device).eval() for name, m in build_variants(model).items()}

    # 1. 字节
    measured = {name: weight_bytes(m) for name, m in models.items()}
    expected = {"fp32": expected_bytes(model, None, None), "int8": expected_bytes(model, 8, None),
                "int4": expected_bytes(model, 4, 32), "bf16": expected_bytes(model, None, None, float_bytes=2),
                "bf16+int8": expected_bytes(model, 8, None, float_bytes=2)}
    linear = {name: linear_bytes(m) for name, m in models.items()}
    exp.print_table(["model", "weight MiB (measured)", "weight MiB (formula)", "Linear MiB", "Linear bytes vs fp32",
                     "whole model vs fp32"],
                    [[n, f"{measured[n] / 2**20:.2f}", f"{expected[n] / 2**20:.2f}", f"{linear[n] / 2**20:.2f}",
                      f"{linear['fp32'] / linear[n]:.2f}x fewer", f"{measured['fp32'] / measured[n]:.2f}x fewer"]
                     for n in VARIANTS], title=f"MiniMind2 默认配置（{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M 参数）的权重字节")

    # 2. 解码速度（轮流计时）
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_LEN), device=exp.device)

    def decode(m):
        @torch.inference_mode()
        def run():
            out = m.generate(prompt, max_new_tokens=new_tokens, eos_token_id=-1)  # eos=-1：保证生成满
            assert out.shape[1] == PROMPT_LEN + new_tokens
        return run

    times = alternating_timings({n: decode(m) for n, m in models.items()}, exp.device, windows=windows)
    tok_s = {n: [new_tokens / t for t in ts] for n, ts in times.items()}

    # 3. 每个 token 都要付一次的"还原"代价：把全部 Linear 的权重还原成 fp32（F.linear 之前那一步）
    def dequantize_all(m):
        layers = [x for x in m.modules() if isinstance(x, QuantizedLinear)]

        @torch.inference_mode()
        def run():
            for layer in layers:
                dequantize_weight(layer.qweight, layer.scale, layer.bits, torch.float32)
        return run

    deq = alternating_timings({"int8": dequantize_all(models["int8"]), "int4": dequantize_all(models["int4"])},
                              exp.device, windows=windows, calls_per_window=3)
    per_token_ms = {n: 1000 * median(ts) / new_tokens for n, ts in times.items()}
    exp.print_table(["model", "decode tok/s (median)", "ms / token", "speed vs fp32", "weight GB read / s",
                     "dequantize all Linear once (ms)"],
                    [[n, f"{median(tok_s[n]):.1f}", f"{per_token_ms[n]:.2f}", f"{speed_ratio(times[n], times['fp32']):.2f}x",
                      f"{measured[n] * median(tok_s[n]) / 1e9:.2f}",
                      f"{1000 * median(deq[n]):.2f}" if n in deq else "-"] for n in VARIANTS],
                    title=f"batch 1、prompt {PROMPT_LEN}、贪心生成 {new_tokens} 个 token（KV cache），{windows} 个交替窗口，"
                          f"{torch.get_num_threads()} 线程，device={exp.device}")
    kernel = uses_int8_kernel(torch.zeros(1, 8, dtype=torch.bfloat16, device=exp.device))
    exp.save_metrics({"config": {"prompt_len": PROMPT_LEN, "new_tokens": new_tokens, "windows": windows,
                                 "threads": torch.get_num_threads(), "random_weights": True,
                                 "int8_kernel_for_bf16": kernel},
                      "weight_bytes": measured, "expected_bytes": expected, "linear_bytes": linear,
                      "decode_seconds": times, "tok_s": tok_s, "dequantize_seconds": deq})

    # ---- 结论 ----
    exp.conclude("weight_bytes 量出的字节与公式（Linear 权重 + fp32 scale + 浮点的嵌入与 RMSNorm）完全一致",
                 holds=measured == expected,
                 evidence="；".join(f"{n} {measured[n]:,} vs {expected[n]:,}" for n in VARIANTS))
    r8, r4 = linear["fp32"] / linear["int8"], linear["fp32"] / linear["int4"]
    exp.conclude("int8 的 Linear 层字节至少少 3.5 倍，int4（group 32）至少少 6 倍",
                 holds=r8 >= 3.5 and r4 >= 6.0,
                 evidence=f"Linear：fp32 {linear['fp32'] / 2**20:.1f} MiB → int8 {linear['int8'] / 2**20:.1f} MiB（{r8:.2f}x），"
                          f"int4 {linear['int4'] / 2**20:.1f} MiB（{r4:.2f}x；4 bit + 每 32 个一个 fp32 scale = 5 bit）")
    whole8 = measured["fp32"] / measured["int8"]
    exp.conclude("整个模型省得比 Linear 少：词嵌入（与 lm_head 共享）和 RMSNorm 仍是 fp32",
                 holds=whole8 < r8,
                 evidence=f"整个模型 int8 {whole8:.2f}x、int4 {measured['fp32'] / measured['int4']:.2f}x；"
                          f"嵌入 {model.model.embed_tokens.weight.numel() * 4 / 2**20:.1f} MiB 不量化")

    def faster(claim, a, b):
        exp.conclude_verdict(claim, compare_speed(times[a], times[b]),
                             evidence=f"{a} {median(tok_s[a]):.1f} tok/s vs {b} {median(tok_s[b]):.1f} tok/s"
                                      f"（{speed_ratio(times[a], times[b]):.2f}x）")

    faster(f"bf16+int8（{'走' if kernel else '不走'} int8 边读边乘内核）解码比 bf16 快", "bf16+int8", "bf16")
    # 对照：同样是 int8 权重，没有边读边乘的内核、每一步先还原再乘，少读的字节被还原的开销抵消（与上一条配对）
    faster("对照：int8（fp32 激活，没有边读边乘内核，先还原再乘）解码比 fp32 快", "int8", "fp32")
    faster("对照：int4（fp32 激活，没有边读边乘内核，先解包还原再乘）解码比 fp32 快", "int4", "fp32")
    faster("bf16 解码比 fp32 快", "bf16", "fp32")
    faster("bf16+int8 解码比 fp32 快", "bf16+int8", "fp32")

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = ["tab:gray", "tab:blue", "tab:purple", "tab:orange", "tab:green"]
    axes[0].bar(VARIANTS, [measured[n] / 2**20 for n in VARIANTS], color=colors)
    axes[0].set_ylabel("weight MiB")
    axes[0].set_title("weight bytes (MiniMind2 26M)")
    for i, n in enumerate(VARIANTS):
        axes[1].scatter([i] * len(tok_s[n]), tok_s[n], color=colors[i], alpha=0.6)
        axes[1].hlines(median(tok_s[n]), i - 0.3, i + 0.3, color=colors[i])
    axes[1].set_xticks(range(len(VARIANTS)), VARIANTS)
    axes[1].set_ylabel("decode tokens / s (each window)")
    axes[1].set_title(f"batch 1 greedy decode, {torch.get_num_threads()} thread(s)")
    axes[1].set_ylim(0, 1.1 * max(max(v) for v in tok_s.values()))
    exp.save_figure(fig, "exp3_memory_and_speed.png")
    exp.finish()


if __name__ == "__main__":
    main()
