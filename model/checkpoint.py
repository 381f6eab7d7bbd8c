"""读写 MiniMind 的权重文件，把学习者最常踩的坑变成一句说清楚的错误。

- Git-LFS 指针：没装 git-lfs 就 clone，.pth 只是一个 130 字节的文本文件；
- 配置不匹配：用 512 维的配置去加载 768 维的权重——报出"这份权重看起来是什么配置"；
- 前缀：torch.compile 存下的 `_orig_mod.`、DDP 存下的 `module.`，加载前去掉；
- 保存：先写临时文件、读回校验，再原子地 rename，断电或磁盘满不会留下半个文件。
"""
import os
from pathlib import Path
from typing import Dict

import torch

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM

LFS_POINTER_PREFIX = b"version https://git-lfs"
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(ValueError):
    """权重文件不能用；消息说明原因和该怎么做。"""


def load_state_dict_file(path) -> Dict[str, torch.Tensor]:
    """读一个 .pth/.pt 权重文件，返回去掉包装前缀的 state_dict。"""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"找不到权重文件 {path}；请检查路径，或先下载/训练出这个文件")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(LFS_POINTER_PREFIX):
        raise CheckpointError(f"{path} 是 Git-LFS 指针文件（{path.stat().st_size} 字节），不是真正的权重：\n"
                              "  请安装 git-lfs 后在仓库里运行 `git lfs pull`，或直接从模型页面下载该文件。")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # 截断、损坏或不是 torch 保存的文件
        raise CheckpointError(f"{path} 无法作为 PyTorch 权重读取（{type(e).__name__}: {e}）；文件可能下载不完整，请重新获取") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} 里不是 state_dict（参数名 → 张量的字典）")
    state = {}
    for key, value in obj.items():
        while key.startswith(WRAPPER_PREFIXES):  # 可能层层包装，如 "module._orig_mod."
            key = key.split(".", 1)[1]
        state[key] = value
    return state


def infer_config(state: Dict[str, torch.Tensor]) -> dict:
    """从 state_dict 的形状推断主要超参数（只用于报错时提示）。"""
    guess = {}
    if "model.embed_tokens.weight" in state:
        guess["vocab_size"], guess["hidden_size"] = state["model.embed_tokens.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("model.layers.")}
    if layers:
        guess["num_hidden_layers"] = max(layers) + 1
    guess["use_moe"] = any(".mlp.experts." in k for k in state)
    guess["family"] = "minimind3" if any(".self_attn.q_norm." in k for k in state) else "minimind2"
    return guess


def load_pretrained(path, config: MiniMindConfig) -> MiniMindForCausalLM:
    """按 config 建模型并严格加载权重；不匹配时报出 checkpoint 的实际形状和推断的配置。"""
    state = load_state_dict_file(path)
    model = MiniMindForCausalLM(config)
    expected = model.state_dict()
    mismatched = [f"{k}: 文件里 {tuple(v.shape)}，配置需要 {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if mismatched or missing or unexpected:
        details = mismatched[:3] + [f"缺少 {k}" for k in missing[:3]] + [f"多出 {k}" for k in unexpected[:3]]
        raise CheckpointError(
            f"{path} 与当前配置不匹配：\n  " + "\n  ".join(details)
            + f"\n这份权重看起来是 {infer_config(state)}；当前配置是 family={config.family!r}, "
              f"hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
              f"use_moe={config.use_moe}。请用与权重一致的配置。")
    model.load_state_dict(state, strict=True)
    return model


def atomic_save(obj, path, check=None) -> Path:
    """原子地 torch.save：写临时文件 → 读回并用 check(原对象, 读回的对象) 核对 → os.replace 到目标位置。"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    try:
        reloaded = torch.load(tmp, map_location="cpu", weights_only=False)
        ok = check(obj, reloaded) if check is not None else True
    except Exception:
        ok = False
    if not ok:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"保存 {path} 后读回校验失败（磁盘满或写入出错？），原文件未被改动")
    os.replace(tmp, path)
    return path


def save_checkpoint(model: torch.nn.Module, path) -> Path:
    """保存 state_dict（与 MiniMind 发布的 .pth 同格式），原子写入并核对键和形状。"""
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v.detach().cpu()
             for k, v in model.state_dict().items()}

    def same_keys_and_shapes(saved, reloaded):
        return reloaded.keys() == saved.keys() and all(reloaded[k].shape == v.shape for k, v in saved.items())

    return atomic_save(state, path, same_keys_and_shapes)
