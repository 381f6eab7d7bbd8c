"""实验 2：解码的时间花在哪里？——逐 token 延迟、预填充 vs 解码、离"只做矩阵乘"的上限有多远。

模型是真实的 MiniMindForCausalLM，**随机初始化**：时间只取决于形状（矩阵多大、要读多少字节），与权重的值无关。
默认单线程（--threads 1）：batch 1 的解码每一步只有几十个小矩阵-向量乘，2 核上开 2 个线程收益很小、机器忙时抖动很大。

  1. 逐 token 延迟 vs 位置（26M MiniMind2）：在 8 个位置 p（上下文已有 p 个 token，最大 --max-position）上测"生成下一个
     token 的一步"——有 KV cache 时是 generate(use_cache=True) 的一步（cache 里 p−1 个，前向 1 个新 token），无 cache 时是
     generate(use_cache=False) 的一步（整段 p 个 token 重算一遍）。每个窗口对"延迟 ~ 位置"做最小二乘，斜率记成"每 100 个位置
     多几毫秒"。无 cache 时每步的计算量正比于 p，延迟随 p 线性增长、生成 N 个 token 的总时间 ∝ N²；有 cache 时每步的矩阵乘
     与位置无关，只有注意力读的 K/V 随 p 变长，延迟几乎是平的。
     为什么不在一次 generate 里逐步计时：那样位置与时间一起增长，机器负载在这一两秒里的涨落会被当成"随位置变化"
     （在有别的程序在跑的机器上，这足以让有 cache 的斜率看起来有几毫秒）。所以每个窗口把位置的顺序打乱，
     同一位置上 cache / no cache 紧挨着各测 3 次（先后交替）、取最快的一次（同 timeit 与 model/bench.py：别的程序只会让
     某几次变慢，最快的一次最接近这一步本身的耗时）。
  2. 预填充 vs 解码（26M）：同样 --prefill-len 个 token，一次前向全部算完（预填充，建好 KV cache）vs 一个一个喂进去
     （解码，每步 1 个 token、带 cache）。两者产出同一个 KV cache（会核对），做的乘法一样多；差别在于权重读几遍：
     预填充读 1 遍、每个权重乘 T 次，解码读 T 遍、每遍乘 1 次。算术强度 = FLOPs / 字节：
        FLOPs ≈ 2·(Linear 参数)·token 数 + 注意力 4·L·nh·hd·(query, key) 对数      （FlopCounterMode 核对矩阵乘部分）
        字节  ≈ 4·(Linear 参数)·读权重的遍数 + KV cache 的读写
     预填充的强度约是解码的 T 倍。与本机的"平衡点"（峰值 FLOP/s ÷ 内存带宽，下面第 3 部分测）比较：
     强度低于平衡点的受带宽限制，高于它的受算力限制。
  3. 各尺寸离上限多远：baby（0.9M）→ small（4.6M）→ 26M → 104M（MiniMind2 的两种真实尺寸），每个尺寸测
        decode       model.generate 带 cache 时每步的耗时（去掉第 0 步预填充）
        matmul-only  同一步里的矩阵-向量乘单独做（每个 nn.Linear 乘 1 个 token，model/bench.py::decode_matmuls）
     两者一步一步交替（解码一步、紧接着 matmul-only 一次），比值不受负载涨落影响；各尺寸之间按窗口轮流。
     matmul-only / decode = 真实解码达到了"只做矩阵乘"上限的几成；其余是 RMSNorm、RoPE、注意力、拼 KV cache 这些小算子
     与 Python 的调度开销。同一组窗口里还测本机的读带宽（对 256 MiB 的张量求和）、复制带宽与单线程矩阵乘峰值，
     给出带宽屋顶线：每 token 至少要 Linear 权重字节 / 读带宽 秒。权重装得进 CPU 缓存的小模型（baby、small）不受这条线约束。

完整模式对 3 个种子（不同的随机权重与 prompt）各测一遍：噪声检验把各种子的计时窗口合在一起（unit="windows"），
表里的数字是各种子中位数的 mean ± std。

    python exp2_decode_anatomy.py --quick
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from statistics import median  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from model.bench import SHAPES, busy_cores, decode_matmuls, sync  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.experiment_base import Experiment, format_mean_std, mean_std  # noqa: E402
from modules.common.noise import compare, exceeds  # noqa: E402
from modules.common.timing import alternating_timings, speed_ratio  # noqa: E402
from modules.common.visualization import plt, set_style  # noqa: E402

# 四种尺寸：前三个是 model/bench.py::SHAPES 的 baby / small / default，104M 是 MiniMind2 的大号（hidden 768、16 层）
SIZES = {"baby": SHAPES["baby"]["config"], "small": SHAPES["small"]["config"], "26M": SHAPES["default"]["config"],
         "104M": dict(hidden_size=768, num_hidden_layers=16)}
MAIN_SIZE = "26M"  # 第 1、2 部分用的模型
PROMPT_LEN = 16  # 第 3 部分解码用的 prompt 长度
N_POSITIONS = 8  # 第 1 部分测几个位置
REPEATS = 3  # 第 1 部分每个位置、每种方式每窗口测几次（取最快的一次）
BIG_TENSOR_MIB = 256  # 测带宽的张量：远大于 32 MiB 的 L3，读写都要走内存
PEAK_MATMUL_N = 1024  # 测单线程矩阵乘峰值：1024×1024 @ 1024×1024
# 事先定好的阈值（写进结论文字，不看结果调）
CACHE_SLOPE_FRACTION = 0.1  # "有 cache 的斜率远小于无 cache"：小于它的 1/10
LONGEST_SPEEDUP = 2.0  # 最长位置上 cache 至少快 2 倍
# "只做矩阵乘时读权重的速度超过读带宽的一半"比的是两种都走内存的测量（矩阵-向量乘 vs 对大张量求和），它们受别的进程
# 抢内存带宽的影响不同：一次 quick 运行的计时窗口只量到这几秒里的涨落，量不到机器负载的变化。quick 只打印测量值与原因
# （conclude_verdict 的 quick_reason），完整模式（3 个种子的窗口合在一起）照常判定
QUICK_REASON_BANDWIDTH = ("随机器负载变的硬件测量：quick 种子 1、5 上 ✅、7 上 ❔，2026-12-06 的普查（2 核机器上还有别的"
                          "实验在跑）种子 11 上 ❌，同一天重跑种子 42 从 ✅ 变成 ❔；随机权重的种子不改变要测的量，"
                          "变的是同时在抢内存带宽的进程")
PREFILL_SPEEDUP = 2.0  # 预填充的 tokens/s 至少是解码的 2 倍
FRACTION_THRESHOLD = 0.5  # "开销为主" / "矩阵乘为主" 的分界：达到 matmul-only 上限的一半


def add_args(parser):
    parser.add_argument("--max-position", type=int, default=None, help="第 1 部分的最大位置（默认 quick 96 / 完整 160，>= 16）")
    parser.add_argument("--prefill-len", type=int, default=None, help="第 2 部分的 token 数 T（默认 quick 64 / 完整 128，>= 8）")
    parser.add_argument("--decode-tokens", type=int, default=None, help="第 3 部分每个窗口解码的 token 数（默认 quick 9 / 完整 17，>= 4）")
    parser.add_argument("--windows", type=int, default=None, help="每个种子交替计时的窗口数（默认 quick 5 / 完整 5，>= 3）")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"第 3 部分的尺寸，逗号分隔，从小到大（默认 {','.join(SIZES)}）")
    parser.add_argument("--threads", type=int, default=1, help="CPU 上 PyTorch 的线程数（默认 1）")


def fit_line(xs, ys) -> tuple:
    """最小二乘直线 y = a + b·x，返回 (a, b)：b = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²，a = ȳ − b·x̄。"""
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)
    return y_mean - b * x_mean, b


def generation_seconds(intercept: float, slope: float, n_tokens: int) -> float:
    """一步的延迟是 a + b·p 时，从空上下文生成 n 个 token（位置 p = 1..n）的总时间 Σ(a + b·p) = n·a + b·n(n+1)/2：
    b > 0（无 cache）时随 n 平方增长，b ≈ 0（有 cache）时线性增长。"""
    return n_tokens * intercept + slope * n_tokens * (n_tokens + 1) / 2


def sweep_positions(max_position: int, n_positions: int = N_POSITIONS) -> list:
    """n 个等间隔的位置 max/n, 2·max/n, ..., max（四舍五入到整数）。"""
    return [round(max_position * (i + 1) / n_positions) for i in range(n_positions)]


@torch.inference_mode()
def position_sweep(model, ids, positions, windows: int, device, repeats: int = REPEATS, seed: int = 0) -> dict:
    """在每个位置 p 上测"生成下一个 token 的一步"要多久。ids: (1, ≥ max(positions))。
    返回 {"cache" / "no cache": [每个窗口一行：按 positions 顺序，每个位置 repeats 次里最快的秒数]}。

        cache:    cache 里已有 p−1 个 token（事先用一次预填充建好），只前向第 p 个 —— generate(use_cache=True) 的一步
        no cache: 整段 p 个 token 前向一遍                                    —— generate(use_cache=False) 的一步

    每个窗口把位置的顺序打乱（random.Random(seed + 窗口号)），同一位置上两种方式紧挨着交替测：负载涨落不会与位置相关。"""
    caches = {p: model(ids[:, :p - 1], use_cache=True).past_key_values if p > 1 else None for p in positions}
    steps = {"cache": lambda p: model(ids[:, p - 1:p], past_key_values=caches[p], use_cache=True, logits_to_keep=1),
             "no cache": lambda p: model(ids[:, :p], logits_to_keep=1)}  # 前向不改动 caches[p]（torch.cat 产生新张量）
    for p in positions:  # 热身
        for step in steps.values():
            step(p)
    out = {name: [] for name in steps}
    for w in range(windows):
        order = list(positions)
        random.Random(seed + w).shuffle(order)
        seconds = {name: {} for name in steps}
        for p in order:
            samples = {name: [] for name in steps}
            for r in range(repeats):
                for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):  # 先后交替
                    sync(device)
                    start = time.perf_counter()
                    steps[name](p)
                    sync(device)
                    samples[name].append(time.perf_counter() - start)
            for name in steps:
                seconds[name][p] = min(samples[name])
        for name in steps:
            out[name].append([seconds[name][p] for p in positions])
    return out


def faster_by(times_a, times_b, factor: float):
    """声明"a 比 b 至少快 factor 倍"：log(factor·a) 与 log(b) 按窗口配对，过共享噪声检验（factor=1 即 compare_speed）。"""
    return compare([math.log(factor * a) for a in times_a], [math.log(b) for b in times_b], "less", unit="windows")


def linear_params(model: nn.Module) -> tuple:
    """(Transformer 块里 Linear 的参数量, lm_head 的参数量)。解码每个 token 都要把这两部分权重各读一遍、各乘一次；
    词嵌入与 lm_head 共享，查表只读一行，不算。"""
    head = model.lm_head.weight.numel()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)) - head, head


def forward_cost(config: MiniMindConfig, block_params: int, head_params: int, n_new: int, n_past: int,
                 n_logits: int = 1, dtype_bytes: int = 4) -> dict:
    """一次前向（n_past 个 token 已在 KV cache 里，新算 n_new 个，只对最后 n_logits 个位置算 lm_head）的 FLOPs 与字节。

    matmul FLOPs   = 2·block_params·n_new + 2·head_params·n_logits       （每个权重对每个 token 一次乘加）
    attention FLOPs = 4·L·nh·hd·Σ_i (n_past + i)，i = 1..n_new         （QKᵀ 与 AV，每个 (query, key) 对各 2·hd；因果，只算可见的对）
    bytes          = dtype_bytes·(block_params + head_params)             （权重读一遍）
                   + dtype_bytes·2·L·nkv·hd·(n_past + n_new)              （KV cache：读历史 + 写新的；激活忽略不计）
    """
    L, nh, nkv, hd = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    matmul = 2 * block_params * n_new + 2 * head_params * n_logits
    pairs = n_new * n_past + n_new * (n_new + 1) // 2
    attention = 4 * L * nh * hd * pairs
    weight_bytes = dtype_bytes * (block_params + head_params)
    kv_bytes = dtype_bytes * 2 * L * nkv * hd * (n_past + n_new)
    return {"matmul_flops": matmul, "attention_flops": attention, "flops": matmul + attention,
            "weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "bytes": weight_bytes + kv_bytes}


def prefill_and_decode_cost(config: MiniMindConfig, block_params: int, head_params: int, T: int) -> dict:
    """同样 T 个 token：一次预填充 vs T 步解码（第 t 步 cache 里已有 t−1 个）的总 FLOPs、总字节与算术强度。"""
    prefill = forward_cost(config, block_params, head_params, n_new=T, n_past=0)
    steps = [forward_cost(config, block_params, head_params, n_new=1, n_past=t) for t in range(T)]
    decode = {key: sum(s[key] for s in steps) for key in prefill}
    for cost in (prefill, decode):
        cost["intensity"] = cost["flops"] / cost["bytes"]
    return {"prefill": prefill, "decode": decode}


@torch.inference_mode()
def counted_flops(model, input_ids, past_key_values=None) -> dict:
    """FlopCounterMode 实测一次前向的 FLOPs，按算子分：{"mm": ..., "bmm": ...}。
    nn.Linear 走 aten.mm；flash_attn=False 的手写注意力（QKᵀ、AV）走 aten.bmm；CPU 上 SDPA 的融合内核不计数。"""
    with FlopCounterMode(display=False) as counter:
        model(input_ids, past_key_values=past_key_values, use_cache=True, logits_to_keep=1)
    return {str(op).split(".")[-1]: v for op, v in counter.get_flop_counts()["Global"].items()}


def machine_probes(device) -> dict:
    """本机的三个基本速度（各返回一个无参函数）：读带宽（对大张量求和）、复制带宽（读 + 写）、矩阵乘峰值。"""
    n = BIG_TENSOR_MIB * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # 先碰一遍每一页：第一次写要缺页中断，会慢 10 倍
    a = torch.randn(PEAK_MATMUL_N, PEAK_MATMUL_N, device=device)
    b = torch.randn(PEAK_MATMUL_N, PEAK_MATMUL_N, device=device)
    return {"read": lambda: src.sum(), "copy": lambda: dst.copy_(src), "matmul": lambda: a @ b}


def measure_prefill_vs_decode(model, T: int, windows: int, device) -> dict:
    """同样 T 个 token：一次前向全部算完（预填充）vs 一个一个喂进去（解码，带 cache），轮流计时。
    返回 {"seconds": {"prefill"/"decode": [每窗口秒数]}, "kv_cache_max_diff": 两种方式建出的 KV cache 的最大差,
          "ids": 这 T 个 token (1, T), "cache": 预填充建出的 KV cache（之后数 FLOPs 用）}。"""
    ids = torch.randint(3, model.config.vocab_size, (1, T), device=device)

    @torch.inference_mode()
    def prefill():
        return model(ids, use_cache=True, logits_to_keep=1).past_key_values

    @torch.inference_mode()
    def decode():
        past = None
        for t in range(T):
            past = model(ids[:, t:t + 1], past_key_values=past, use_cache=True, logits_to_keep=1).past_key_values
        return past

    cache_prefill, cache_decode = prefill(), decode()  # 兼作热身
    diff = max((a - b).abs().max().item() for layer_p, layer_d in zip(cache_prefill, cache_decode)
               for a, b in zip(layer_p, layer_d))
    seconds = alternating_timings({"prefill": prefill, "decode": decode}, device, windows=windows, warmup=0)
    return {"seconds": seconds, "kv_cache_max_diff": diff, "ids": ids, "cache": cache_prefill}


def decode_with_matmul_only(model, prompt, new_tokens: int, matmuls, device) -> tuple:
    """model.generate 带 cache 贪心生成 new_tokens 个 token；每一步结束（streamer 回调）后紧接着计时一次 matmuls()。
    返回 (解码每一步的秒数, matmul-only 每次的秒数)，都去掉第 0 步（prompt 的预填充）。

    两者一步一步交替：同一时刻的机器负载同时落在一对测量上，它们的比值才稳（先整段解码、再整段 matmul-only，
    中间负载一变，比值就跟着变）。"""
    decode, matmul = [], []
    step_start = [time.perf_counter()]

    def on_token(_token):
        sync(device)
        decode.append(time.perf_counter() - step_start[0])
        start = time.perf_counter()
        matmuls()
        sync(device)
        matmul.append(time.perf_counter() - start)
        step_start[0] = time.perf_counter()

    out = model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=-1, streamer=on_token)
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return decode[1:], matmul[1:]


def measure_sizes(models: dict, n_dec: int, windows: int, device) -> dict:
    """各尺寸轮流测真实解码与 matmul-only（见 decode_with_matmul_only），外加本机的读/复制带宽与矩阵乘峰值。
    每个窗口里每个尺寸解码 n_dec 步，两者各取窗口内的中位数：别的程序偶尔抢走几毫秒，只污染个别步。"""
    prompts = {name: torch.randint(3, m.config.vocab_size, (1, PROMPT_LEN), device=device) for name, m in models.items()}
    matmuls = {name: decode_matmuls(m) for name, m in models.items()}
    decode_step = {name: [] for name in models}  # 每窗口一个：解码一步的中位数秒数
    matmul_call = {name: [] for name in models}  # 每窗口一个：matmul-only 一次的中位数秒数

    def paired(name):
        def run():
            decode, matmul = decode_with_matmul_only(models[name], prompts[name], n_dec, matmuls[name], device)
            decode_step[name].append(median(decode))
            matmul_call[name].append(median(matmul))
        return run

    probes = machine_probes(device)
    fns = {**{f"size {name}": paired(name) for name in models}, **{f"probe {k}": fn for k, fn in probes.items()}}
    for name in models:  # 热身（不记录）
        decode_with_matmul_only(models[name], prompts[name], 3, matmuls[name], device)
    for fn in probes.values():
        fn()
    times = alternating_timings(fns, device, windows=windows, warmup=0)
    return {"decode_step_seconds": decode_step, "matmul_only_seconds": matmul_call,
            "probe_seconds": {k: times[f"probe {k}"] for k in probes}}


def run_seed(exp, seed: int, args: dict) -> dict:
    """一个种子：建模型（随机权重）、测三部分，返回原始的逐窗口测量。"""
    exp.seed_everything(seed)
    device, windows, T = exp.device, args["windows"], args["prefill_len"]
    models = {name: MiniMindForCausalLM(MiniMindConfig(**SIZES[name])).to(device).eval()
              for name in SIZES if name in args["sizes"] or name == MAIN_SIZE}  # 按 SIZES 的顺序建：随机权重可复现
    model = models[MAIN_SIZE]

    # 1. 逐 token 延迟 vs 位置
    positions = sweep_positions(args["max_position"])
    context = torch.randint(3, model.config.vocab_size, (1, positions[-1]), device=device)
    step_seconds = position_sweep(model, context, positions, windows, device, seed=seed)
    # 2. 预填充 vs 解码；矩阵乘 FLOPs：公式 vs FlopCounterMode（预填充 T 个、cache 里有 T 个时解码 1 个）
    pd = measure_prefill_vs_decode(model, T, windows, device)
    block_params, head_params = linear_params(model)
    counted = {mode: sum(v for op, v in flops.items() if op in ("mm", "addmm"))  # 只取 Linear 的部分
               for mode, flops in (("prefill", counted_flops(model, pd["ids"])),
                                   ("decode", counted_flops(model, pd["ids"][:, :1], pd["cache"])))}
    formula = {"prefill": forward_cost(model.config, block_params, head_params, T, 0)["matmul_flops"],
               "decode": forward_cost(model.config, block_params, head_params, 1, T)["matmul_flops"]}
    # 3. 各尺寸
    sizes = measure_sizes({name: models[name] for name in args["size_order"]}, args["decode_tokens"], windows, device)
    return {"positions": positions, "step_seconds": step_seconds, "prefill_decode_seconds": pd["seconds"],
            "kv_cache_max_diff": pd["kv_cache_max_diff"], **sizes,
            "counted_matmul_flops": counted, "formula_matmul_flops": formula,
            "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
            "linear_weight_bytes": {name: 4 * sum(linear_params(m)) for name, m in models.items()},
            "layers": {name: m.config.num_hidden_layers for name, m in models.items()},
            "main_linear_params": [block_params, head_params]}


def summarize_seed(raw: dict, args: dict) -> dict:
    """一个种子的逐窗口派生量：斜率、最长位置的延迟、tokens/s、各尺寸的比例、本机带宽与峰值。"""
    positions, n = raw["positions"], raw["positions"][-1]
    lines = {k: [fit_line(positions, run) for run in runs] for k, runs in raw["step_seconds"].items()}
    slope = {k: [100e3 * b for _, b in v] for k, v in lines.items()}
    last = {k: [run[-1] for run in runs] for k, runs in raw["step_seconds"].items()}
    total = {k: [generation_seconds(a, b, n) for a, b in v] for k, v in lines.items()}
    T = args["prefill_len"]
    pd = raw["prefill_decode_seconds"]
    bytes_read = BIG_TENSOR_MIB * 2**20
    probe = raw["probe_seconds"]
    read_bw = [bytes_read / t for t in probe["read"]]  # 字节/秒
    copy_bw = [2 * bytes_read / t for t in probe["copy"]]  # 读 + 写
    peak = [2 * PEAK_MATMUL_N ** 3 / t for t in probe["matmul"]]  # FLOP/s
    per_token = raw["decode_step_seconds"]
    matmul = raw["matmul_only_seconds"]
    fraction = {name: [m / d for m, d in zip(matmul[name], per_token[name])] for name in args["size_order"]}
    roofline = {name: [raw["linear_weight_bytes"][name] / bw for bw in read_bw] for name in args["size_order"]}
    roofline_fraction = {name: [r / d for r, d in zip(roofline[name], per_token[name])] for name in args["size_order"]}
    matmul_bw_fraction = {name: [raw["linear_weight_bytes"][name] / m / bw for m, bw in zip(matmul[name], read_bw)]
                          for name in args["size_order"]}
    return {"slope_ms_per_100": slope, "longest_step_seconds": last, "fitted_total_seconds": total,
            "prefill_tok_s": [T / t for t in pd["prefill"]], "decode_tok_s": [T / t for t in pd["decode"]],
            "read_gb_s": [b / 1e9 for b in read_bw], "copy_gb_s": [b / 1e9 for b in copy_bw],
            "peak_gflop_s": [p / 1e9 for p in peak], "balance_flop_per_byte": [p / b for p, b in zip(peak, read_bw)],
            "decode_ms_per_token": {k: [1e3 * t for t in v] for k, v in per_token.items()},
            "matmul_ms_per_token": {k: [1e3 * t for t in v] for k, v in matmul.items()},
            "matmul_fraction": fraction, "roofline_ms_per_token": {k: [1e3 * t for t in v] for k, v in roofline.items()},
            "roofline_fraction": roofline_fraction, "matmul_bw_fraction": matmul_bw_fraction,
            "non_matmul_ms_per_layer": {k: [1e3 * (d - m) / raw["layers"][k] for d, m in zip(per_token[k], matmul[k])]
                                        for k in args["size_order"]}}


def lookup(record: dict, keys) -> list:
    """record[k1][k2]…：取出一个种子的某一组逐窗口值。"""
    for k in keys:
        record = record[k]
    return record


def pooled(per_seed: list, *keys) -> list:
    """把各种子的逐窗口值按 keys 取出并首尾相接（噪声检验的单位是窗口）。"""
    return [v for s in per_seed for v in lookup(s, keys)]


def seed_medians(per_seed: list, *keys) -> list:
    """各种子的逐窗口值取中位数，每个种子一个数（用来报 mean ± std）。"""
    return [median(lookup(s, keys)) for s in per_seed]


def parse_args(exp) -> dict:
    a = exp.args
    args = {"max_position": a.max_position or (96 if exp.quick else 160), "prefill_len": a.prefill_len or (64 if exp.quick else 128),
            "decode_tokens": a.decode_tokens or (9 if exp.quick else 17), "windows": a.windows or 5}
    order = [s.strip() for s in a.sizes.split(",") if s.strip()]
    unknown = [s for s in order if s not in SIZES]
    problems = []
    if unknown or len(order) < 2 or len(set(order)) != len(order):
        problems.append(f"--sizes 要是 {','.join(SIZES)} 中至少两个不重复的名字（收到 {a.sizes!r}）")
    if args["max_position"] < 16 or args["prefill_len"] < 8 or args["decode_tokens"] < 4 or args["windows"] < 3 or a.threads < 1:
        problems.append(f"需要 --max-position >= 16、--prefill-len >= 8、--decode-tokens >= 4、--windows >= 3、--threads >= 1"
                        f"（收到 {args['max_position']}、{args['prefill_len']}、{args['decode_tokens']}、{args['windows']}、{a.threads}）")
    if problems:
        raise SystemExit("错误：" + "；".join(problems))
    order.sort(key=list(SIZES).index)  # 从小到大
    args.update(size_order=order, sizes=set(order))
    return args


def main():
    exp = Experiment(__file__, description="解码的时间花在哪里：逐 token 延迟 vs 位置、预填充 vs 解码、各尺寸离 matmul-only 上限多远（随机权重）",
                     extra_args=add_args)
    args = parse_args(exp)
    if exp.device.type == "cpu":
        torch.set_num_threads(exp.args.threads)
    busy_before = busy_cores()
    raws, per_seed = [], []
    for seed in exp.seeds:
        raws.append(run_seed(exp, seed, args))
        per_seed.append(summarize_seed(raws[-1], args))
        print(f"种子 {seed} 测完（{time.strftime('%H:%M:%S')}）", flush=True)
    busy_after = busy_cores()
    if busy_before is not None and busy_after is not None:
        print(f"机器负载：开始前约 {busy_before:.1f} 个核、测完时约 {busy_after:.1f} 个核正被别的程序占用（共 {os.cpu_count()} 个）；"
              "负载高时每个数都偏慢，但比值与判定用的是同一时段的配对测量")
    raw0, order, T, n = raws[0], args["size_order"], args["prefill_len"], args["max_position"]
    smallest, largest = order[0], order[-1]

    def ms(*keys, scale=1.0, digits=3):
        return format_mean_std([scale * v for v in seed_medians(per_seed, *keys)], digits)

    # ---- 表 1：逐 token 延迟 ----
    last_ratio = [speed_ratio(s["longest_step_seconds"]["cache"], s["longest_step_seconds"]["no cache"]) for s in per_seed]
    exp.print_table(["step", "slope (ms / 100 positions)", f"step ms at position {n}", f"fitted total s, {n} tokens from scratch"],
                    [[k, ms("slope_ms_per_100", k), ms("longest_step_seconds", k, scale=1e3), ms("fitted_total_seconds", k)]
                     for k in ("cache", "no cache")],
                    title=f"1. {MAIN_SIZE}：生成下一个 token 的一步 vs 位置（位置 {', '.join(map(str, raw0['positions']))}；"
                          f"{args['windows']} 窗口 × {len(exp.seeds)} 种子，每位置 {REPEATS} 次取最快，{torch.get_num_threads()} 线程）")

    # ---- 表 2：预填充 vs 解码 ----
    cfg = MiniMindConfig(**SIZES[MAIN_SIZE])
    cost = prefill_and_decode_cost(cfg, *raw0["main_linear_params"], T)
    balance = seed_medians(per_seed, "balance_flop_per_byte")
    mean_peak = mean_std(seed_medians(per_seed, "peak_gflop_s"))[0] * 1e9
    mean_bw = mean_std(seed_medians(per_seed, "read_gb_s"))[0] * 1e9
    rows = []
    for mode, tok_key in (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s")):
        c = cost[mode]
        bound_s = max(c["flops"] / mean_peak, c["bytes"] / mean_bw)  # 屋顶线：算力与带宽中更慢的那个
        rows.append([mode, ms(tok_key, digits=4), f"{c['flops'] / 1e9:.2f}", f"{c['bytes'] / 2**20:.1f}",
                     f"{c['intensity']:.2f}", f"{T / bound_s:,.0f}"])
    exp.print_table(["mode", "tokens/s", "GFLOPs", "MiB moved", "FLOP/byte", "roofline tokens/s"], rows,
                    title=f"2. {MAIN_SIZE}：同样 T={T} 个 token，一次预填充 vs 逐 token 解码；"
                          f"本机平衡点（峰值 / 读带宽）{format_mean_std(balance, 3)} FLOP/byte")

    # ---- 表 3：各尺寸 ----
    exp.print_table(["size", "params", "decode ms/token", "matmul-only ms", "matmul / decode", "roofline ms",
                     "roofline / decode", "matmul-only BW / read BW", "non-matmul ms / layer"],
                    [[name, f"{raw0['params'][name] / 1e6:.2f}M", ms("decode_ms_per_token", name), ms("matmul_ms_per_token", name),
                      ms("matmul_fraction", name, digits=2), ms("roofline_ms_per_token", name),
                      ms("roofline_fraction", name, digits=2), ms("matmul_bw_fraction", name, digits=2),
                      ms("non_matmul_ms_per_layer", name, digits=2)] for name in order],
                    title=f"3. 带 KV cache 的解码 vs 只做矩阵乘（每窗口 {args['decode_tokens'] - 1} 步）；屋顶线 = Linear 权重字节 / 读带宽"
                          f"（读 {ms('read_gb_s')} GB/s，复制 {ms('copy_gb_s')} GB/s（读+写），矩阵乘峰值 {ms('peak_gflop_s')} GFLOP/s）")

    exp.save_metrics({"config": {"prompt_len": PROMPT_LEN, **{k: v for k, v in args.items() if k != "sizes"},
                                 "threads": torch.get_num_threads(), "random_weights": True, "main_size": MAIN_SIZE,
                                 "n_positions": N_POSITIONS, "repeats": REPEATS, "big_tensor_mib": BIG_TENSOR_MIB, "peak_matmul_n": PEAK_MATMUL_N,
                                 "thresholds": {"cache_slope_fraction": CACHE_SLOPE_FRACTION, "longest_speedup": LONGEST_SPEEDUP,
                                                "prefill_speedup": PREFILL_SPEEDUP, "fraction": FRACTION_THRESHOLD}},
                      "busy_cores": {"before": busy_before, "after": busy_after},
                      "cost": cost, "raw": raws, "per_seed": per_seed})

    # ---- 结论 ----
    slopes_nc, slopes_c = pooled(per_seed, "slope_ms_per_100", "no cache"), pooled(per_seed, "slope_ms_per_100", "cache")
    exp.conclude_verdict("无 KV cache 时每步延迟随位置增长（斜率 > 0）：每步重算整段前缀，生成 N 个 token 的总时间 ∝ N²",
                         exceeds(slopes_nc, 0.0, "greater", unit="windows"),
                         evidence=f"斜率 {ms('slope_ms_per_100', 'no cache')} ms / 100 个位置")
    exp.conclude_verdict(f"有 KV cache 时每步延迟几乎不随位置变：斜率小于无 cache 斜率的 {CACHE_SLOPE_FRACTION:g} 倍",
                         compare(slopes_c, [CACHE_SLOPE_FRACTION * s for s in slopes_nc], "less", unit="windows"),
                         evidence=f"cache {ms('slope_ms_per_100', 'cache')} vs 无 cache {ms('slope_ms_per_100', 'no cache')} ms / 100 个位置")
    exp.conclude_verdict(f"最长位置（{n}）上，有 cache 的一步至少快 {LONGEST_SPEEDUP:g} 倍",
                         faster_by(pooled(per_seed, "longest_step_seconds", "cache"),
                                   pooled(per_seed, "longest_step_seconds", "no cache"), LONGEST_SPEEDUP),
                         evidence=f"{ms('longest_step_seconds', 'cache', scale=1e3)} ms vs {ms('longest_step_seconds', 'no cache', scale=1e3)} ms，"
                                  f"快 {format_mean_std(last_ratio, 3)} 倍")
    exp.conclude("预填充与逐 token 解码建出同一个 KV cache（最大差 < 1e-4）：两者做的是同一份计算",
                 holds=all(r["kv_cache_max_diff"] < 1e-4 for r in raws),
                 evidence=f"最大差 {max(r['kv_cache_max_diff'] for r in raws):.2e}")
    exp.conclude("FlopCounterMode 量出的矩阵乘 FLOPs 等于公式 2·(块内 Linear 参数)·token 数 + 2·(lm_head 参数)",
                 holds=all(r["counted_matmul_flops"] == r["formula_matmul_flops"] for r in raws),
                 evidence=f"预填充 T={T}：{raw0['counted_matmul_flops']['prefill']:,} vs {raw0['formula_matmul_flops']['prefill']:,}；"
                          f"解码 1 个：{raw0['counted_matmul_flops']['decode']:,} vs {raw0['formula_matmul_flops']['decode']:,}")
    pd_prefill, pd_decode = pooled(per_seed, "prefill_tok_s"), pooled(per_seed, "decode_tok_s")
    exp.conclude_verdict(f"同样 {T} 个 token，预填充的 tokens/s 至少是逐 token 解码的 {PREFILL_SPEEDUP:g} 倍",
                         faster_by([T / v for v in pd_prefill], [T / v for v in pd_decode], PREFILL_SPEEDUP),
                         evidence=f"{ms('prefill_tok_s', digits=4)} vs {ms('decode_tok_s', digits=4)} tokens/s；"
                                  f"算术强度 {cost['prefill']['intensity']:.1f} vs {cost['decode']['intensity']:.2f} FLOP/byte"
                                  f"（{cost['prefill']['intensity'] / cost['decode']['intensity']:.0f} 倍，T={T}）")
    balance_windows = pooled(per_seed, "balance_flop_per_byte")
    exp.conclude_verdict("解码的算术强度低于本机平衡点（峰值 FLOP/s ÷ 读带宽）：受内存带宽限制",
                         exceeds(balance_windows, cost["decode"]["intensity"], "greater", unit="windows"),
                         evidence=f"解码 {cost['decode']['intensity']:.2f} FLOP/byte vs 平衡点 {format_mean_std(balance, 3)}")
    exp.conclude_verdict(f"预填充（T={T}）的算术强度高于本机平衡点：受算力限制",
                         exceeds(balance_windows, cost["prefill"]["intensity"], "less", unit="windows"),
                         evidence=f"预填充 {cost['prefill']['intensity']:.1f} FLOP/byte vs 平衡点 {format_mean_std(balance, 3)}")
    # 比例是两个时间之比，噪声是乘性的：与 compare_speed 一样在 log 上做配对检验
    log_fraction = {nm: [math.log(f) for f in pooled(per_seed, "matmul_fraction", nm)] for nm in order}
    exp.conclude_verdict(f"最小的 {smallest} 解码达不到 matmul-only 上限的 {FRACTION_THRESHOLD:g}：时间主要花在矩阵乘以外（小算子与调度开销）",
                         exceeds(log_fraction[smallest], math.log(FRACTION_THRESHOLD), "less", unit="windows"),
                         evidence=f"matmul-only / decode = {ms('matmul_fraction', smallest, digits=2)}")
    exp.conclude_verdict(f"最大的 {largest} 解码超过 matmul-only 上限的 {FRACTION_THRESHOLD:g}：矩阵乘（读权重）占了大头",
                         exceeds(log_fraction[largest], math.log(FRACTION_THRESHOLD), "greater", unit="windows"),
                         evidence=f"matmul-only / decode = {ms('matmul_fraction', largest, digits=2)}")
    exp.conclude_verdict(f"模型越大，解码离 matmul-only 上限越近：{largest} 的比例高于 {smallest}",
                         compare(log_fraction[largest], log_fraction[smallest], "greater", unit="windows"),
                         evidence=f"{ms('matmul_fraction', largest, digits=2)} vs {ms('matmul_fraction', smallest, digits=2)}"
                                  f"（中间各尺寸见表 3）")
    exp.conclude_verdict(f"最大的 {largest} 只做矩阵乘时读权重的速度超过本机读带宽的 {FRACTION_THRESHOLD:g}：矩阵-向量乘受带宽限制",
                         exceeds([math.log(f) for f in pooled(per_seed, "matmul_bw_fraction", largest)],
                                 math.log(FRACTION_THRESHOLD), "greater", unit="windows"),
                         evidence=f"{ms('matmul_bw_fraction', largest, digits=2)} × 读带宽 {ms('read_gb_s')} GB/s",
                         quick_reason=QUICK_REASON_BANDWIDTH)

    # ---- 图 ----
    set_style()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    positions = raw0["positions"]
    for k, color in (("cache", "tab:blue"), ("no cache", "tab:red")):
        runs = raw0["step_seconds"][k]
        ax.scatter(positions, [1e3 * median([r[i] for r in runs]) for i in range(len(positions))], color=color)
        a, b = fit_line(positions, [median([r[i] for r in runs]) for i in range(len(positions))])
        ax.plot(positions, [1e3 * (a + b * p) for p in positions], color=color, label=f"{k}: {100e3 * b:.1f} ms / 100 positions")
    ax.set_xlabel("position p (tokens already in context)")
    ax.set_ylabel("ms for the next token (median of windows)")
    ax.set_title(f"{MAIN_SIZE}: one generation step vs position")
    ax.legend()
    ax = axes[0, 1]
    lengths = list(range(1, n + 1))
    for k, color in (("cache", "tab:blue"), ("no cache", "tab:red")):
        a, b = fit_line(positions, [median([r[i] for r in raw0["step_seconds"][k]]) for i in range(len(positions))])
        ax.plot(lengths, [generation_seconds(a, b, m) for m in lengths], color=color, label=k)
    ax.set_xlabel("tokens generated from scratch (N)")
    ax.set_ylabel("total seconds (from the fitted lines)")
    ax.set_title("total cost: linear with cache, quadratic without")
    ax.legend()
    ax = axes[1, 0]
    x = range(len(order))
    ax.bar([i - 0.2 for i in x], [mean_std(seed_medians(per_seed, "matmul_fraction", nm))[0] for nm in order], 0.4,
           label="matmul-only / decode", color="tab:green")
    ax.bar([i + 0.2 for i in x], [mean_std(seed_medians(per_seed, "roofline_fraction", nm))[0] for nm in order], 0.4,
           label="bandwidth roofline / decode", color="tab:gray")
    ax.axhline(FRACTION_THRESHOLD, color="black", lw=0.8, ls="--")
    ax.set_xticks(list(x), [f"{nm}\n{raw0['params'][nm] / 1e6:.1f}M" for nm in order])
    ax.set_ylabel("fraction of bound reached")
    ax.set_title("decode (1 token, KV cache) vs its bounds")
    ax.legend()
    ax = axes[1, 1]
    for key, label, color in (("decode_ms_per_token", "real decode", "tab:blue"), ("matmul_ms_per_token", "matmul-only", "tab:green"),
                              ("roofline_ms_per_token", "weight bytes / read BW", "tab:gray")):
        ax.plot([raw0["params"][nm] / 1e6 for nm in order], [mean_std(seed_medians(per_seed, key, nm))[0] for nm in order],
                "o-", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("ms per token")
    ax.set_title("time per decoded token vs model size")
    ax.legend()
    fig.tight_layout()
    exp.save_figure(fig, "exp2_decode_anatomy.png")
    exp.finish()


if __name__ == "__main__":
    main()
