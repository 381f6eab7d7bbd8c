"""按种子并行：完整模式的几个种子各放进一个单线程子进程同时跑，结果与在一个进程里依次、单线程地跑逐位相同。

为什么：完整模式的几个种子彼此独立，却一个接一个地跑；实验里的小模型矩阵很小，多线程分不到多少活，
"每个种子一个单线程进程"让每个核各算一个种子。参考结果是单线程（OMP_NUM_THREADS=1）生成的；
每个子进程也只用一个线程、做的运算完全相同，所以数值与依次运行逐位相同——并行只改变墙钟时间，不改变任何结论。
（04-feedforward 实验 3 每个种子训练一次时，2 核 CPU 上单独运行：2 个子进程 288 s，依次单线程 461 s；JSON 逐位相同。）

    def run_seed(seed, steps):          # 必须是实验脚本顶层的函数：子进程按名字重新导入它
        ...                             # 这个种子要做的全部事情（自己设随机种子），返回普通数据/张量
        return {"acc": acc}

    add_workers_argument(parser)                                    # 给实验加 --workers
    workers = resolve_workers(exp.args.workers, exp.quick, exp.device, len(exp.seeds))
    per_seed = map_seeds(run_seed, exp.seeds, workers, steps)       # 按 exp.seeds 的顺序返回

- workers = 1（quick 模式的默认）：在本进程里依次调用，不起子进程，和没有这个模块时完全一样。
- 子进程用 spawn 方式启动（Linux/macOS/Windows 都有；macOS、Windows 只有它），
  子进程重新导入实验脚本（所以脚本必须有 `if __name__ == "__main__":`），再按名字找到 fn。
- 线程数：子进程启动时会重新导入脚本（连同 torch），这一步早于任何初始化函数；torch 在导入时读
  OMP_NUM_THREADS / MKL_NUM_THREADS 建线程池，所以父进程在启动子进程之前把这两个环境变量设成 1（用完恢复），
  子进程开始干活前再调用 torch.set_num_threads(1)。
- 参数与返回值按值传（标准 pickle 成字节）：张量不走 torch.multiprocessing 的共享内存，子进程退出后也安全。
- 子进程里的异常原样在父进程里抛出（附子进程的 traceback；SystemExit 仍是一行说明），其余子进程随即终止；
  子进程意外死掉（例如内存不够被杀）时抛 BrokenProcessPool，不会卡住。
- 输出：子进程的整行输出加上 "[seed 43] " 前缀；tqdm 进度条（以 \\r 重画的行）在子进程里丢掉，
  进度由父进程每完成一个种子打印一行。
- 只用于 CPU：CUDA/MPS 上各种子仍在本进程里依次运行（resolve_workers 返回 1 并说明）。
"""
import argparse
import multiprocessing
import os
import pickle
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager

import torch

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """本进程能用的 CPU 核数（容器/taskset 限制过的亲和性优先于机器的总核数）。"""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """给实验加 --workers（几个单线程子进程同时跑不同的种子）。"""
    parser.add_argument("--workers", type=int, default=None,
                        help="完整模式同时跑几个种子，每个种子一个单线程子进程，结果与依次运行逐位相同"
                             "（默认：CPU 上 min(种子数, CPU 核数)，quick 与 GPU 上 1）")


def resolve_workers(value, quick: bool, device, n_seeds: int) -> int:
    """--workers 的实际值：小于 1 时一行说明后退出；没给时 quick 为 1、完整模式为 min(种子数, 可用核数)；
    不会多于种子数；不是 CPU 时返回 1（GPU 自己并行，多个进程只会争同一块卡）。"""
    if value is not None and value < 1:
        raise SystemExit(f"--workers 必须 >= 1（收到 {value}）")
    if torch.device(device).type != "cpu":
        if value is not None and value > 1:
            print(f"--workers {value} 只用于 CPU；在 {device} 上各种子仍在本进程里依次运行", flush=True)
        return 1
    if value is None:
        value = 1 if quick else usable_cpus()
    return max(1, min(value, n_seeds))


class _SeedPrefixedLines:
    """子进程的 stdout/stderr：完整的一行加上种子前缀后整行写出；以 \\r 重画的进度条行丢掉。
    每次只写整行（短于管道的原子写入长度），两个子进程的输出不会在行内交错。"""

    def __init__(self, stream):
        self.stream = stream
        self.prefix = ""
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1].rstrip()  # \r 之前的是被重画掉的进度
            if line:
                self.stream.write(f"{self.prefix}{line}\n")
                self.stream.flush()
        self.pending = self.pending.rsplit("\r", 1)[-1]  # 还没写完的一行只留最后一次重画
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _run_name(seed) -> tuple[str, str]:
    """一个运行在进度行与输出前缀里的名字：整数种子是"种子 42" / "seed 42"；
    (主种子, 复制种子) 是"种子 42（复制 1042）" / "seed 42/1042"（见 modules/common/replicates.py）；
    (主种子, 部分名) 是"种子 42（memory）" / "seed 42/memory"（一个种子的活按实验的几部分拆开时）。"""
    if isinstance(seed, tuple) and len(seed) == 2:
        if isinstance(seed[1], str):
            return f"种子 {seed[0]}（{seed[1]}）", f"seed {seed[0]}/{seed[1]}"
        return f"种子 {seed[0]}（复制 {seed[1]}）", f"seed {seed[0]}/{seed[1]}"
    return f"种子 {seed}", f"seed {seed}"


def _init_worker() -> None:
    """每个子进程启动后调用一次：单线程；输出换成加前缀的整行。"""
    torch.set_num_threads(1)
    sys.stdout = _SeedPrefixedLines(sys.__stdout__)
    sys.stderr = _SeedPrefixedLines(sys.__stderr__)


def _run_in_worker(payload: bytes) -> bytes:
    """子进程里跑一个种子：payload = pickle((fn, seed, args))，返回 pickle(结果)。"""
    fn, seed, args = pickle.loads(payload)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _SeedPrefixedLines):
            stream.prefix = f"[{_run_name(seed)[1]}] "
    return pickle.dumps(fn(seed, *args))


@contextmanager
def _single_thread_env():
    """启动子进程期间把线程数环境变量设成 1（子进程继承启动那一刻的环境），结束后恢复父进程原来的值。"""
    saved = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    os.environ.update({name: "1" for name in THREAD_ENV_VARS})
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _terminate(executor: ProcessPoolExecutor) -> None:
    """出错时立刻结束仍在跑的子进程（否则解释器退出前要等它们把各自的种子跑完）。
    Python 3.14 起有公开的 terminate_workers()；更早的版本只能经 _processes 找到子进程。"""
    if hasattr(executor, "terminate_workers"):
        executor.terminate_workers()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def map_seeds(fn, seeds, workers: int, *args) -> list:
    """[fn(seed, *args) for seed in seeds]，按 seeds 的顺序返回；workers > 1 时分给这么多个单线程子进程。

    fn 必须是模块顶层定义的函数（子进程按名字导入它），每个种子自己设随机种子、不依赖别的种子的状态；
    args 与返回值要能 pickle（数字、字符串、列表、dict、张量）。"""
    seeds = list(seeds)
    if workers < 1:
        raise ValueError(f"workers 必须 >= 1，收到 {workers}")
    if workers == 1 or len(seeds) <= 1:
        return [fn(seed, *args) for seed in seeds]

    try:
        payloads = [pickle.dumps((fn, seed, args)) for seed in seeds]
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise TypeError(f"map_seeds 的 fn 必须是模块顶层的函数、参数要能 pickle（子进程按名字重新导入它们）：{e}") from e
    workers = min(workers, len(seeds))
    what = "个种子"
    if any(isinstance(seed, tuple) for seed in seeds):
        what = "个运行（种子 × 部分）" if any(isinstance(seed[1], str) for seed in seeds) else "个运行（种子 × 复制）"
    print(f"{len(seeds)} {what}分给 {workers} 个单线程子进程并行（结果与依次运行逐位相同）", flush=True)
    t0 = time.perf_counter()
    results = [None] * len(seeds)
    with _single_thread_env():  # 子进程按需启动（提交任务时），整个池的生命期里都保持单线程的环境变量
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker)
        try:
            index_of = {executor.submit(_run_in_worker, payload): i for i, payload in enumerate(payloads)}
            pending = set(index_of)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)  # 每完成一个就处理：打印进度，或抛出它的异常
                for future in sorted(done, key=index_of.get):
                    i = index_of[future]
                    results[i] = pickle.loads(future.result())  # 子进程里的异常在这里抛出
                    print(f"{_run_name(seeds[i])[0]} 完成（已用 {time.perf_counter() - t0:.0f} s）", flush=True)
        except BaseException:
            _terminate(executor)
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
    return results
