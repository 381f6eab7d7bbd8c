"""model.device（实验经 modules.common.device 使用）：自动选择顺序、显式选择不可用时的报错、设备描述。"""
import platform

import pytest
import torch

from model.device import cpu_model, describe_device, get_device


def fake_hardware(monkeypatch, *, cuda: bool, mps: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda"),
    (False, True, "mps"),
    (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    fake_hardware(monkeypatch, cuda=cuda, mps=mps)
    assert get_device("auto") == torch.device(expected)
    assert get_device() == torch.device(expected)


def test_explicit_cpu_always_works(monkeypatch):
    fake_hardware(monkeypatch, cuda=True, mps=True)
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("choice", ["cuda", "mps"])
def test_unavailable_explicit_choice_raises_clear_error(monkeypatch, choice):
    fake_hardware(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ValueError) as info:
        get_device(choice)
    message = str(info.value)
    assert choice in message and "不可用" in message and "--device cpu" in message


def test_available_explicit_choice_is_returned(monkeypatch):
    fake_hardware(monkeypatch, cuda=True, mps=True)
    assert get_device("cuda") == torch.device("cuda")
    assert get_device("mps") == torch.device("mps")


def test_unknown_choice_lists_valid_ones():
    with pytest.raises(ValueError, match="auto, cpu, cuda, mps"):
        get_device("tpu")


def test_describe_device(monkeypatch):
    assert describe_device(torch.device("cpu")) == f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    assert describe_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    assert describe_device("cuda") == "cuda (NVIDIA H100)"


def test_cpu_model_is_recorded_and_falls_back(monkeypatch):
    name = cpu_model()
    assert isinstance(name, str) and name.strip() == name and name
    # 拿不到型号的系统（这里假装是 Windows）退回 platform.processor()，再退回 machine()，最后 "unknown"
    read = cpu_model.__wrapped__
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6 Model 85")
    assert read() == "Intel64 Family 6 Model 85"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert read() == "unknown"
