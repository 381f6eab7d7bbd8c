"""交替计时：判断"A 比 B 快"时，让两边在同一个进程里轮流计时，按窗口配对，再过共享的噪声检验。

为什么不各测一次：机器上的其他负载（别的进程、CPU 降频、缓存）时有时无，先测 A 再测 B，
负载恰好落在 B 上，B 就"慢了"。轮流计时让每个窗口里 A 和 B 都跑一遍、先后顺序逐窗口轮换，
同一时段的负载两边都受到；再把每个窗口里的一对时间配起来比较（与 model/bench.py 的做法相同）。

计时噪声是乘性的（忙的时候所有操作都慢同一个比例），所以比较的是 log(秒数) 的窗口配对差：
    v = compare_speed(times["fused"], times["eager"])   # 声明：fused 比 eager 快
    exp.conclude_verdict("融合实现更快", v, f"快 {speed_ratio(times['fused'], times['eager']):.2f}×")
v.mean_delta 是 log 比值（0.1 ≈ 快 10%）。
"""
import math
import time
from statistics import median
from typing import Callable, Dict, List, Optional

import torch

from model.bench import sync
from modules.common.noise import Verdict, compare


def alternating_timings(fns: Dict[str, Callable[[], object]], device: Optional[torch.device] = None, windows: int = 7,
                        calls_per_window: int = 1, warmup: int = 1) -> Dict[str, List[float]]:
    """每个窗口里把 fns 的每一个各调用 calls_per_window 次并计时（顺序逐窗口轮换），
    返回 {名字: [每个窗口里每次调用的秒数]}。先各热身 warmup 次（分配内存、首次编译不计入）。"""
    if windows < 2 or calls_per_window < 1:
        raise ValueError(f"windows 至少为 2（要估计噪声）、calls_per_window 至少为 1，收到 {windows}、{calls_per_window}")
    device = device or torch.device("cpu")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for w in range(windows):
        order = names[w % len(names):] + names[:w % len(names)]  # 轮换谁先测
        for name in order:
            sync(device)
            start = time.perf_counter()
            for _ in range(calls_per_window):
                fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / calls_per_window)
    return times


def compare_speed(times_a: List[float], times_b: List[float]) -> Verdict:
    """声明"a 比 b 快"：log(秒数) 按窗口配对，过共享噪声检验（unit="windows"）。"""
    return compare([math.log(t) for t in times_a], [math.log(t) for t in times_b], "less", unit="windows")


def speed_ratio(times_a: List[float], times_b: List[float]) -> float:
    """b 的用时 / a 的用时，取各窗口比值的中位数（> 1 表示 a 快）。"""
    return median(b / a for a, b in zip(times_a, times_b))
