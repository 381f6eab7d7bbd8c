"""测一段代码执行期间分配内存的峰值：CUDA 用分配器统计，CPU 用 torch.profiler 记下的每一次分配/释放。

    result, peak, retained = measure_allocations(fn, device)
    peak      执行期间比开始时多分配的最高字节数（开始前已存在的张量不算）
    retained  fn 返回时仍未释放的新分配字节数（fn 的返回值、被 autograd 保存的张量、新建的梯度……）

CPU 没有 torch.cuda.max_memory_allocated 这样的计数器；profile_memory=True 的 profiler 会为每一次张量分配和释放
记一个事件（带字节数），按时间顺序累加就是"当前多占了多少"，它的最大值就是峰值。
在 profiler 第一次开启之前分配、测量中才释放的内存块，profiler 不知道它的大小，这次释放不计入（PyTorch 会打印一行 CPUAllocator 警告）：
量的是"新分配了多少"，不是进程的总内存。
profiler 每次启停会在 stderr 打印一行 "USDT ... profiler_start/stop" 日志，不影响结果。
这里读的是 profiler 的事件树（torch._C._profiler，PyTorch 2.x 的内部接口）：读不到时给出一句明确的错误。
"""
import torch


def _cpu_allocation_deltas(prof) -> list:
    """profiler 事件树里所有分配事件的 (时间, 字节数)；释放的字节数为负。"""
    try:
        from torch._C._profiler import _EventType
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"这个 PyTorch 版本（{torch.__version__}）的 profiler 读不到分配事件（{e}）；"
                           "请用 requirements.txt 里的 PyTorch 版本，或在 CUDA 上运行") from e
    deltas, stack = [], list(roots)
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            deltas.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    deltas.sort()
    return deltas


def measure_allocations(fn, device: torch.device):
    """运行 fn()，返回 (fn 的返回值, 峰值字节数, 结束时仍保留的字节数)，都相对于开始时。"""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start, torch.cuda.memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"measure_allocations 只支持 cpu 和 cuda，收到 {device}")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    current = peak = 0
    for _, size in _cpu_allocation_deltas(prof):
        current += size
        peak = max(peak, current)
    return result, peak, current
