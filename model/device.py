"""选择计算设备：auto 时依次尝试 cuda → mps → cpu；显式指定但不可用时报清楚的错。另给出 CPU 型号，写进实验记录。"""
import functools
import platform
import subprocess

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(preference: str = "auto") -> torch.device:
    """按偏好返回 torch.device。

    preference: "auto" | "cpu" | "cuda" | "mps"。
    显式要求的设备不可用时抛 ValueError，说明缺什么、改用什么，绝不悄悄回退到 cpu。
    """
    choice = str(preference).strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "请求的设备 cuda 不可用：本机没有可用的 NVIDIA GPU，或安装的是 CPU 版 PyTorch"
                f"（torch {torch.__version__}）。请改用 --device cpu（或 --device auto 自动选择）。"
            )
        return torch.device("cuda")
    if choice == "mps":
        if not _mps_available():
            raise ValueError(
                "请求的设备 mps 不可用：mps 只在 Apple Silicon 的 macOS 上、且 PyTorch 带 MPS 支持时可用。"
                "请改用 --device cpu（或 --device auto 自动选择）。"
            )
        return torch.device("mps")
    raise ValueError(f"未知设备 {preference!r}：可选 {', '.join(DEVICE_CHOICES)}。")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """CPU 型号，例如 "AMD EPYC"、"Apple M2"；拿不到时返回 "unknown"。

    同一段代码在不同型号的 CPU 上，单线程的浮点累加顺序（向量指令宽度、内核实现）也可能不同，
    几百步训练后参考结果的小数点后第 2～3 位就会漂移。实验 JSON 记下它：对照数字前先看是不是同一种 CPU。
    """
    system = platform.system()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):  # x86；多数 ARM 的 Linux 没有这一行，走下面的兜底
                        return line.split(":", 1)[1].strip() or "unknown"
        except OSError:
            pass
    elif system == "Darwin":
        try:
            result = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                    capture_output=True, text=True, timeout=2, check=False)
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return platform.processor() or platform.machine() or "unknown"


def describe_device(device: torch.device | str) -> str:
    """一行可读描述，例如 "cuda (NVIDIA H100)"、"mps"、"cpu (AMD EPYC, 2 threads)"。"""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    return device.type
