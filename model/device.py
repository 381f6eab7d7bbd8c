"""选择计算设备：auto 时依次尝试 cuda → mps → cpu；显式指定但不可用时报清楚的错。"""
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


def describe_device(device: torch.device | str) -> str:
    """一行可读描述，例如 "cuda (NVIDIA H100)"、"mps"、"cpu (2 threads)"。"""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
