"""只量化权重（weight-only）：nn.Linear 的权重存成 int8 或 int4，前向时还原成浮点再做矩阵乘。

为什么只量化权重：逐 token 解码时激活只有一行 (1, H)，每一步却要把全部权重从内存读一遍，
所以解码受内存带宽限制。权重从 4 字节降到 1 字节（int8）或半字节（int4），常驻内存和每步要读的字节
按比例减少；激活、KV cache、词嵌入、RMSNorm 仍是浮点。

对称 round-to-nearest（RTN）：一组权重共用一个 scale，
    scale = max|w| / qmax（int8：qmax = 127；int4：qmax = 7）
    q = round(w / scale) ∈ [-qmax, qmax]，  还原 ŵ = q · scale
每个元素的误差 |w - ŵ| ≤ scale / 2。scale 由组内最大的 |w| 决定：一个离群值（outlier，见
Dettmers et al. 2022, LLM.int8()）会把整组的 scale 撑大，组里其余权重的精度都跟着变差——组越小，受连累的越少。
group_size 决定"一组"是什么：

    group_size   一组是                              scale 形状
    0            整个矩阵（per-tensor）                (1, 1)
    None         一个输出通道（权重的一整行，per-channel） (out, 1)
    g > 0        一行里连续 g 个输入（group-wise）       (out, in / g)

三种情况都可以写成"q 变形为 (scale 行数, 组数, 组长)，乘上 scale[..., None]"，量化与还原因此共用一套代码。
int4：两个值打包进一个 uint8（低 4 位放前半行的一列，高 4 位放后半行对应的一列，各存 q + 8 ∈ [1, 15]），
存储真的是 int8 的一半。
scale 一律存 float32：per-channel 时可以忽略；int4 每组 32 个时，32 bit 的 scale 分摊下来每个权重多 1 bit。

前向走哪条路（QuantizedLinear.forward）：
    int8 + per-channel + CPU + bfloat16 激活  → torch._weight_int8pack_mm（边读 int8 边乘，不先还原整个矩阵）
    其余（包括默认的 float32 激活）            → 先还原成激活的 dtype，再 F.linear
原因见 uses_int8_kernel。在 CPU 上用 float32 激活时，int8 省的是内存而不是时间：少读的字节被"还原"那一步抵消了。
"""
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

QMAX = {8: 127, 4: 7}  # 对称量化的最大整数：int8 不用 -128、int4 不用 -8，正负两边一样长
# 命令行 --quantize 的取值（trainer/model_loading.py、model/bench.py）→ quantize_model 的参数。int4 每 32 个输入一个 scale：
# 随机初始化的小模型上实测 logits 最大误差比每 128 个一组小约 20%，代价是 scale 每个权重多占 1 bit
# （MiniMind 各层的输入维都是 64 的倍数）
QUANTIZE_SCHEMES = {"int8": dict(bits=8, group_size=None), "int4": dict(bits=4, group_size=32)}


def check_scheme(bits: int, group_size: Optional[int], in_features: int) -> None:
    """bits / group_size 是否合法、能否用在输入维为 in_features 的权重上；不合法时抛出说明对策的 ValueError。"""
    if bits not in QMAX:
        raise ValueError(f"bits={bits!r} 不支持：只支持 8（int8）或 4（int4）")
    if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 0):
        raise ValueError(f"group_size={group_size!r} 不对：None = 每个输出通道一个 scale，0 = 整个矩阵一个，"
                         f"正整数 g = 每 g 个输入一个")
    if group_size and in_features % group_size:
        raise ValueError(f"group_size={group_size} 不整除输入维 {in_features}：请换一个能整除它的组长（如 32、64）")
    if bits == 4 and (in_features % 2 or (group_size and group_size % 2)):
        raise ValueError(f"int4 把两个值打包进一个字节，输入维（{in_features}）和 group_size（{group_size}）都必须是偶数")


def scale_shape(out_features: int, in_features: int, group_size: Optional[int]) -> Tuple[int, int]:
    """scale 的形状 (行数, 组数)：per-tensor (1, 1)，per-channel (out, 1)，group-wise (out, in / g)。"""
    if group_size == 0:
        return 1, 1
    return out_features, in_features // (group_size or in_features)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, in) 的 int8，取值 [-7, 7] → (out, in / 2) 的 uint8：第 j 列进低 4 位，第 j + in/2 列进高 4 位。

    按"前半行 / 后半行"配对而不是"相邻两列"：解包时两半各是一整块连续内存（torch.cat），
    不必交错写回，实测快约一倍。
    """
    u = (q + 8).to(torch.uint8)  # 移到 [1, 15]，每个值正好 4 位
    half = q.shape[1] // 2
    return u[:, :half] | (u[:, half:] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """pack_int4 的逆：(out, in / 2) 的 uint8 → (out, in) 的 int8。"""
    low, high = packed & 0x0F, packed >> 4  # 各 (out, in / 2)：前半行、后半行
    return torch.cat([low, high], dim=1).to(torch.int8) - 8


def quantize_weight(w: torch.Tensor, bits: int = 8,
                    group_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """对称 RTN 量化 w (out, in)。返回 (q, scale)：

    q：bits=8 时为 int8 (out, in)；bits=4 时为打包的 uint8 (out, in / 2)。
    scale：float32，形状见 scale_shape。全零的一组 scale 取 float32 最小正数（q 全为 0，避免 0/0）。
    """
    out_features, in_features = w.shape
    check_scheme(bits, group_size, in_features)
    rows, n_groups = scale_shape(out_features, in_features, group_size)
    qmax = QMAX[bits]
    groups = w.detach().float().reshape(rows, n_groups, -1)  # (行数, 组数, 组长)
    scale = (groups.abs().amax(dim=-1) / qmax).clamp(min=torch.finfo(torch.float32).tiny)  # (行数, 组数)
    # |w| ≤ max|w| = qmax·scale，所以 w / scale 不会超出 ±qmax；clamp 只防浮点舍入的边角
    q = torch.round(groups / scale[..., None]).clamp(-qmax, qmax).to(torch.int8).reshape(out_features, in_features)
    return (pack_int4(q) if bits == 4 else q), scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, bits: int = 8,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """quantize_weight 的逆：ŵ = q · scale，形状 (out, in)，dtype 为要参与矩阵乘的类型。"""
    q = unpack_int4(q) if bits == 4 else q  # (out, in)
    rows, n_groups = scale.shape
    # int8/int4 的整数在 bf16/fp16 里都能精确表示，直接在目标 dtype 里乘，省一次 float32 中转；
    # 原地乘：只分配一块 (out, in) 的内存（在 2 核测试机上，每次多分配几 MB 都要付缺页的代价，原地乘快一个数量级）
    w = q.to(dtype)  # (out, in)
    w.view(rows, n_groups, -1).mul_(scale.to(dtype)[..., None])  # (行数, 组数, 组长) × (行数, 组数, 1)
    return w


def uses_int8_kernel(x: torch.Tensor) -> bool:
    """int8 per-channel 的前向遇到激活 x 时，是否交给 torch._weight_int8pack_mm。

    这是 ATen 的私有算子：x (N, in) 浮点，w (out, in) int8，scale (out,) 与 x 同 dtype，输出 (N, out)。
    它在 x86 CPU 上只给 bfloat16 写了向量化实现（AVX2 / AVX-512）；float32、float16 走逐元素的标量循环
    （aarch64 上三种 dtype 都有 NEON 实现，但没有在 ARM 机器上测过，这里同样只用于 bfloat16）。
    实测（2 核 AMD EPYC，AVX2，PyTorch 2.13，单线程）：26M 模型 float32 激活强制走它，解码比"还原再 F.linear"
    慢约 3 倍；bfloat16 激活走它，比 bfloat16 的原模型快约 20%。所以只在 CPU + bfloat16 时用它；
    GPU 上一律还原再乘，不依赖私有算子在各后端的实现。
    """
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and hasattr(torch, "_weight_int8pack_mm")


class QuantizedLinear(nn.Module):
    """无 bias 的线性层，权重以 int8 / 打包 int4 存成 buffer（qweight、scale），所以 state_dict 也是小的。

    构造出来的是全零的骨架（用来 load_state_dict）；从现成的 nn.Linear 量化请用 from_linear。
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group_size: Optional[int] = None):
        super().__init__()
        check_scheme(bits, group_size, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        if bits == 4:
            qweight = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)  # 两个 int4 一个字节
        else:
            qweight = torch.zeros(out_features, in_features, dtype=torch.int8)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", torch.ones(scale_shape(out_features, in_features, group_size)))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: Optional[int] = None) -> "QuantizedLinear":
        if linear.bias is not None:
            raise ValueError("QuantizedLinear 只处理无 bias 的 nn.Linear（MiniMind 的线性层都没有 bias）")
        layer = cls(linear.in_features, linear.out_features, bits, group_size)
        layer.qweight, layer.scale = quantize_weight(linear.weight, bits, group_size)
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 8 and self.group_size is None and uses_int8_kernel(x):
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight,
                                          self.scale.view(-1).to(x.dtype))  # (N, out)，N = x 除最后一维外的元素数
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, dequantize_weight(self.qweight, self.scale, self.bits, x.dtype))

    def extra_repr(self) -> str:
        group = {None: "per-channel", 0: "per-tensor"}.get(self.group_size, f"group_size={self.group_size}")
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {group}"


def _is_skipped(name: str, skip: Iterable[str]) -> bool:
    """name 是 skip 里某一项本身，或以 ".<该项>" 结尾（"lm_head"、"down_proj" 都能用）。"""
    return any(name == s or name.endswith("." + s) for s in skip)


def quantize_model(model: nn.Module, bits: int = 8, group_size: Optional[int] = None,
                   skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """把 model 里除 skip 以外的每个 nn.Linear 原地换成 QuantizedLinear，返回 model。

    量化设置记在 model.quantization = {"bits": ..., "group_size": ...}（不写进 config：
    config.save 出的 .json 描述的是浮点模型的结构）。
    lm_head 默认跳过：MiniMind 的 lm_head 与 embed_tokens 共享同一个矩阵，嵌入层要按 token 取行、保持浮点，
    量化 lm_head 只会多存一份 int 副本，反而更大。不共享权重（tie_word_embeddings=False）时可以传 skip=()。
    """
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"模型已经量化过（{model.quantization}）：请从浮点权重重新加载后再量化")
    skip = tuple(skip)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not _is_skipped(name, skip)]
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, linear in targets:
        if id(linear.weight) in embedding_weights:
            raise ValueError(f"{name} 与词嵌入共享权重，量化它不省内存（嵌入仍要保留浮点那份）：请把 {name!r} 放进 skip")
        check_scheme(bits, group_size, linear.in_features)  # 先全部检查，避免换了一半才报错
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedLinear.from_linear(linear, bits, group_size))
    model.quantization = {"bits": bits, "group_size": group_size}
    return model


def weight_bytes(model: nn.Module) -> int:
    """模型状态占的字节数：state_dict 里的张量（共享存储的只算一次，如绑定的 lm_head / embed_tokens）。

    不含 RoPE 的 cos/sin 表这类非持久 buffer：它们不存盘，随时可以重算。
    """
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
