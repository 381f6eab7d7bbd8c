"""实验用的设备选择：实现在 model/device.py（最底层，model/bench.py 与 trainer/ 也用它），这里按课程的习惯
以 modules.common.device 的名字提供给实验脚本。"""
from model.device import DEVICE_CHOICES, cpu_model, describe_device, get_device

__all__ = ["DEVICE_CHOICES", "cpu_model", "describe_device", "get_device"]
