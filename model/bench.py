"""模型速度基准：训练步（前向+反向+AdamW，float32）与生成（KV cache 开/关）的 tokens/s，
以及 KV cache 生成的上限（一步解码只做矩阵-向量乘时的速度）；--speculative 时再测投机解码（model/speculative.py），
--quantize int8|int4 时再测只量化权重的模型（model/quantization.py）的权重字节与生成速度。

用法：python -m model.bench [--shape baby|small|default|all] [--family minimind2|minimind3] [--steps N]
                          [--device auto|cpu|cuda|mps] [--compile] [--speculative [--num_draft_tokens K]]
                          [--quantize int8|int4]
这是基准脚本，不是测试：数字取决于机器，请在自己的机器上跑一遍再比较。
"""
import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from model.model_minimind import FAMILIES, MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.quantization import QUANTIZE_SCHEMES, quantize_model, weight_bytes  # noqa: E402
from model.reference_gpt import reference_like  # noqa: E402
from model.device import describe_device, get_device  # noqa: E402

# 每种形状：模型配置 + 训练 batch（batch_size × seq_len）
SHAPES = {
    "baby": dict(config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=65), batch_size=12, seq_len=64),
    "small": dict(config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=6400), batch_size=8, seq_len=256),
    "default": dict(config=dict(), batch_size=4, seq_len=256),  # 该家族的默认配置：MiniMind2 26M / minimind-3 64M
}
PROMPT_LEN = 16
NEW_TOKENS = 128
NUM_DRAFT_TOKENS = 4  # --speculative 时草稿每轮提出的 token 数 γ 的默认值


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def fastest_call_seconds(fn, device, windows: int, calls_per_window: int = 1) -> float:
    """fn 调用 windows × calls_per_window 次，按窗口计时，返回最快那个窗口里每次调用的秒数。

    取最快而不是平均（像 timeit 一样）：机器上其他负载只会让某些窗口变慢，最快的窗口最接近真实速度。
    """
    best = float("inf")
    for _ in range(windows):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls_per_window):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / calls_per_window)
    return best


def train_step(model, vocab_size, batch_size, seq_len, device):
    """返回一个"训练一步"的函数（前向 + 反向 + AdamW，float32），已先跑 2 步热身；--compile 时编译也发生在热身里。"""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)

    def step():
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    return step


def alternating_fastest_seconds(fns, device, windows: int, calls_per_window: int = 1) -> list:
    """几个函数按窗口轮流计时（A 一个窗口、B 一个窗口……），返回各自最快窗口里每次调用的秒数。

    轮流测，机器速度的漂移对它们的影响相同，它们之间的比值才可信。
    """
    best = [float("inf")] * len(fns)
    for _ in range(windows):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fastest_call_seconds(fn, device, windows=1, calls_per_window=calls_per_window))
    return best


def bench_train(steps_to_time, tokens_per_step, steps, device, windows=5) -> list:
    """每个模型的训练 tokens/s：steps 步分成若干个计时窗口，取各自最快的窗口；有多个模型时按窗口轮流测。"""
    windows = min(windows, steps)
    seconds = alternating_fastest_seconds(steps_to_time, device, windows, calls_per_window=steps // windows)
    return [tokens_per_step / s for s in seconds]


def bench_generate(model, use_cache, device, repeats=3) -> float:
    """batch=1，16 个 token 的 prompt，贪心生成 128 个新 token；返回新 token/s（取最快一次）。

    先完整生成一遍不计时（与训练的热身步一样）：第一遍要分配 KV cache 增长所需的内存、初始化 MKL 等，
    在 2 核 CPU 上比之后慢 20% 以上，计进去测到的就不是稳定速度。
    """
    model.eval()
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_LEN), device=device)

    def generate():
        # eos_token_id=-1：不可能被生成，保证每次都生成满 128 个 token
        return model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=-1, use_cache=use_cache)

    assert generate().shape[1] == PROMPT_LEN + NEW_TOKENS  # 热身
    return NEW_TOKENS / fastest_call_seconds(generate, device, windows=repeats)


def draft_config(config: MiniMindConfig, shape_config: dict) -> MiniMindConfig:
    """--speculative 的草稿模型：同一家族、同一词表，隐藏维度与层数各减半（头数不变，所以 head_dim 也减半）。"""
    return MiniMindConfig(**{**shape_config, "hidden_size": config.hidden_size // 2,
                             "num_hidden_layers": max(1, config.num_hidden_layers // 2)}, family=config.family)


def bench_speculative(model, draft, device, num_draft_tokens=NUM_DRAFT_TOKENS, repeats=3) -> dict:
    """batch=1 贪心生成 NEW_TOKENS 个新 token：普通 KV cache 生成与投机解码轮流计时（各取最快一次），
    返回投机解码的 tokens/s、它与普通生成的速度比、接受率 α 和每次目标前向产出的 token 数。"""
    model.eval()
    draft.eval()
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_LEN), device=device)
    last_stats = []

    def plain():
        return model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=-1)

    def speculative():
        out, stats = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=-1, draft_model=draft,
                                    num_draft_tokens=num_draft_tokens, return_stats=True)
        last_stats[:] = [stats]
        return out

    plain()  # 热身（同 bench_generate）
    speculative()
    plain_s, spec_s = alternating_fastest_seconds([plain, speculative], device, windows=repeats)
    stats = last_stats[0]  # 贪心、同一个 prompt：每次的 α 都一样
    return {"spec_tok_s": NEW_TOKENS / spec_s, "spec_vs_cache": plain_s / spec_s,
            "spec_alpha": stats.acceptance_rate, "spec_tokens_per_call": stats.tokens_per_target_call}


def bench_quantized(model, scheme: str, device, repeats=3) -> dict:
    """model 的一份量化副本（scheme：QUANTIZE_SCHEMES 的键）：权重字节，以及与原模型轮流计时的 KV cache 生成速度。

    激活保持模型原来的 float32：CPU 上 int8 的"边读边乘"内核只对 bfloat16 激活向量化（model/quantization.py::uses_int8_kernel），
    所以这里每一步是"还原成 float32 再乘"——省的是内存，速度见表。"""
    quantized = quantize_model(copy.deepcopy(model), **QUANTIZE_SCHEMES[scheme]).to(device).eval()
    model.eval()
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_LEN), device=device)
    fns = [lambda m=m: m.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=-1) for m in (model, quantized)]
    for fn in fns:
        fn()  # 热身
    plain_s, quantized_s = alternating_fastest_seconds(fns, device, windows=repeats)
    return {"weights_mib": weight_bytes(model) / 2**20, "q_weights_mib": weight_bytes(quantized) / 2**20,
            "q_gen_tok_s": NEW_TOKENS / quantized_s, "q_vs_fp": plain_s / quantized_s}


def decode_matmuls(model) -> Callable[[], None]:
    """返回一个无参函数：只做一步解码里的矩阵-向量乘（每个 nn.Linear 作用于 1 个 token）。

    有 KV cache 时每生成一个 token，都要把全部权重从内存读一遍、每个权重只乘一次：
    计算量很小，速度由内存带宽（模型放不进缓存时）决定。这个函数的耗时是 KV cache 生成每个 token 耗时的下限，
    实测的生成速度离它越近，说明 Python 与算子调度的开销越小（02-inference 实验 2 与它轮流计时）。
    """
    device = next(model.parameters()).device
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.randn(1, 1, linear.in_features, device=device) for linear in linears]  # 各 (1, 1, in)

    @torch.inference_mode()
    def one_token():
        for linear, x in zip(linears, inputs):
            F.linear(x, linear.weight)
    return one_token


def bench_decode_matmuls(model, device, repeats=50) -> float:
    """decode_matmuls 的 tokens/s（5 个窗口取最快）：KV cache 生成速度的上限。"""
    one_token = decode_matmuls(model)
    one_token()  # 热身
    return 1.0 / fastest_call_seconds(one_token, device, windows=5, calls_per_window=repeats)


def run_benchmark(name: str, steps: int, device: torch.device, compile_model: bool = False,
                  family: str = "minimind2", reference: bool = False, speculative: bool = False,
                  num_draft_tokens: int = NUM_DRAFT_TOKENS, quantize: Optional[str] = None) -> dict:
    """测一种形状：参数量、训练 tokens/s、生成 tokens/s（有/无 KV cache）；
    reference=True 时紧接着测同形状朴素 GPT 的训练速度（model/reference_gpt.py）；
    speculative=True 时再测以半尺寸模型为草稿的投机解码（见 bench_speculative）；
    quantize="int8"/"int4" 时再测量化副本（见 bench_quantized）。"""
    spec = SHAPES[name]
    config = MiniMindConfig(**spec["config"], family=family)
    model = MiniMindForCausalLM(config).to(device)
    matmul_only = bench_decode_matmuls(model, device)
    if compile_model:
        # 编译缓存挂在 forward 的代码对象上、各形状共用，有重编译次数上限：换形状时清空，免得后面的形状退回 eager
        torch._dynamo.reset()
        model.compile()  # 之后 model(...) 都走编译后的版本；编译发生在各项的热身里，不计时
    gen_cache = bench_generate(model, True, device)
    gen_nocache = bench_generate(model, False, device)
    speculative_result = {}
    if speculative:
        draft = MiniMindForCausalLM(draft_config(config, spec["config"])).to(device)
        speculative_result = bench_speculative(model, draft, device, num_draft_tokens)
    quantized_result = bench_quantized(model, quantize, device) if quantize else {}
    train_shape = (config.vocab_size, spec["batch_size"], spec["seq_len"], device)
    steps_to_time = [train_step(model, *train_shape)]
    if reference:
        gpt = reference_like(config, spec["seq_len"]).to(device)
        if compile_model:
            gpt.compile()
        steps_to_time.append(train_step(gpt, *train_shape))
    train_tok_s = bench_train(steps_to_time, spec["batch_size"] * spec["seq_len"], steps, device)
    result = {"shape": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
              "batch": f"{spec['batch_size']}x{spec['seq_len']}", "train_tok_s": train_tok_s[0],
              "gen_cache_tok_s": gen_cache, "gen_nocache_tok_s": gen_nocache, "cache_speedup": gen_cache / gen_nocache,
              "gen_matmul_only_tok_s": matmul_only, **speculative_result, **quantized_result}
    if reference:
        result["reference_train_tok_s"] = train_tok_s[1]
        result["train_vs_reference"] = train_tok_s[0] / train_tok_s[1]
    return result


def busy_cores(seconds: float = 0.5) -> Optional[float]:
    """此刻被别的程序占用的核数（约数）。Linux 上读两次 /proc/stat；其他系统退而用 1 分钟平均负载；都没有时返回 None。"""
    stat = Path("/proc/stat")
    if stat.is_file():
        def total_and_idle():
            ticks = [int(x) for x in stat.read_text(encoding="utf-8").splitlines()[0].split()[1:]]
            return sum(ticks), ticks[3] + ticks[4]  # idle + iowait

        total0, idle0 = total_and_idle()
        time.sleep(seconds)
        total1, idle1 = total_and_idle()
        return (1 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or 1)
    if hasattr(os, "getloadavg"):  # macOS；Windows 两者都没有
        return os.getloadavg()[0]
    return None


def warn_if_busy(device: torch.device):
    """CPU 上别的程序在跑时，多线程的计时会慢好几倍（线程互相空等）：开始前看一眼，提醒而不是默默给出偏慢的数字。"""
    busy = busy_cores() if device.type == "cpu" else None
    if busy is not None and busy > 0.5:
        print(f"注意：开始前约有 {busy:.1f} 个核（共 {os.cpu_count()} 个）正被别的程序占用，下面的数字会偏慢；"
              "想和 README 的参考值比较，请在机器空闲时再测。")


def main(argv=None):
    parser = argparse.ArgumentParser(description="MiniMind 训练/生成速度基准（tokens/s）")
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all", help="要测的模型形状")
    parser.add_argument("--family", choices=FAMILIES, default="minimind2",
                        help="模型家族：minimind2（默认）或 minimind3（多了 QK-norm，默认配置 64M）")
    parser.add_argument("--steps", type=int, default=20, help="计时的训练步数，分 5 个窗口取最快（另有 2 步热身）")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="模型先 torch.compile 再测训练和生成（需要 C++ 编译器；每种形状首次编译约 1 分钟）")
    parser.add_argument("--reference", action="store_true",
                        help="再测同形状的朴素 GPT（model/reference_gpt.py）的训练速度，打印 MiniMind 与它的比值")
    parser.add_argument("--speculative", action="store_true",
                        help="再测投机解码（草稿 = 同家族、隐藏维度和层数减半的模型），与普通 KV cache 生成轮流计时")
    parser.add_argument("--num_draft_tokens", type=int, default=NUM_DRAFT_TOKENS,
                        help="--speculative 时草稿每轮提出的 token 数 γ")
    parser.add_argument("--quantize", choices=list(QUANTIZE_SCHEMES), default=None,
                        help="再测只量化权重的副本：权重 MiB 与 KV cache 生成 tokens/s（与原模型轮流计时）")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error("--steps 必须是正整数")
    if args.num_draft_tokens <= 0:
        parser.error("--num_draft_tokens 必须是正整数")
    if args.quantize and args.compile:
        parser.error("--quantize 不能与 --compile 同用：量化层的前向没有为编译调过；请分开测")
    if args.speculative and args.compile:
        parser.error("--speculative 不能与 --compile 同用：验证时每轮输入的长度都在变，编译会反复重来；请分开测")
    try:
        device = get_device(args.device)
    except ValueError as e:
        parser.exit(2, f"错误：{e}\n")

    torch.manual_seed(0)
    names = list(SHAPES) if args.shape == "all" else [args.shape]
    warn_if_busy(device)
    print(f"family={args.family}  device={describe_device(device)}  torch={torch.__version__}  steps={args.steps}  "
          f"train: float32, AdamW  generation: batch 1, prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, greedy"
          f"{'  (torch.compile)' if args.compile else ''}")
    header = (f"{'shape':<8}{'params':>9}{'batch':>10}{'train tok/s':>13}{'gen tok/s (cache)':>19}"
              f"{'gen tok/s (no cache)':>22}{'speedup':>9}{'matmul-only bound':>19}")
    if args.reference:
        header += f"{'GPT train tok/s':>17}{'MiniMind/GPT':>14}"
    if args.speculative:
        header += f"{f'spec tok/s (γ={args.num_draft_tokens})':>20}{'spec/cache':>12}{'α':>7}{'tok/call':>10}"
    if args.quantize:
        header += f"{'weights MiB':>13}{f'{args.quantize} MiB':>11}{f'{args.quantize} tok/s':>12}{f'{args.quantize}/fp32':>11}"
    print(header)
    print("-" * len(header))
    for name in names:
        r = run_benchmark(name, args.steps, device, args.compile, args.family, args.reference,
                          args.speculative, args.num_draft_tokens, args.quantize)
        reference = f"{r['reference_train_tok_s']:>17,.0f}{r['train_vs_reference']:>13.2f}x" if args.reference else ""
        speculative = (f"{r['spec_tok_s']:>20,.0f}{r['spec_vs_cache']:>11.2f}x{r['spec_alpha']:>7.2f}"
                       f"{r['spec_tokens_per_call']:>10.2f}") if args.speculative else ""
        quantized = (f"{r['weights_mib']:>13.1f}{r['q_weights_mib']:>11.1f}{r['q_gen_tok_s']:>12,.0f}"
                     f"{r['q_vs_fp']:>10.2f}x") if args.quantize else ""
        print(f"{name:<8}{r['params_m']:>8.2f}M{r['batch']:>10}{r['train_tok_s']:>13,.0f}"
              f"{r['gen_cache_tok_s']:>19,.0f}{r['gen_nocache_tok_s']:>22,.0f}{r['cache_speedup']:>8.1f}x"
              f"{r['gen_matmul_only_tok_s']:>19,.0f}{reference}{speculative}{quantized}", flush=True)
    print("matmul-only bound：一步解码只做它的矩阵-向量乘（读一遍全部权重）时的 tokens/s，是 KV cache 生成速度的上限。")
    if args.speculative:
        print("spec：投机解码，草稿是同家族、隐藏维度和层数减半的模型；spec/cache 是它与普通 KV cache 生成轮流计时的速度比，"
              "α 是草稿 token 的接受率，tok/call 是每次目标前向产出的 token 数。\n"
              "这里两个模型都是随机权重，α 与训练无关、没有意义（未训练的模型贪心解码常常只是重复上一个 token："
              "两者都这样时 α 虚高，否则很低）；spec/cache 只说明这套机制在这个 α 下的开销或收益。"
              "真实的加速要用训练好的目标与草稿模型测（trainer/eval_llm.py --draft_weights 会打印 α）。")
    if args.quantize:
        print(f"{args.quantize}：只量化权重（词嵌入与共享它的 lm_head 保持浮点），weights MiB 是 state_dict 的字节；"
              f"{args.quantize} tok/s 是 KV cache 生成速度，{args.quantize}/fp32 是与原模型轮流计时的速度比。"
              "激活是 float32：每步先把权重还原成 float32 再乘，省的是内存，不一定省时间（见 model/quantization.py）。")


if __name__ == "__main__":
    main()
