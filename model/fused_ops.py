"""RMSNorm 与 RoPE 的"手写反向"版本：前向数学与 model_minimind.py 里的可读实现完全相同，只是反向更省。

为什么需要：小模型在 CPU 上训练时，矩阵乘之外的时间主要花在逐元素运算上，而它们受内存带宽限制。
autograd 会为 RMSNorm 的 pow → mean → add → rsqrt → mul → mul 每一步各存一个中间张量、
反向再各走一遍；RoPE 的 cat/neg/mul/add 同理。把反向的公式直接写出来，存的中间张量和读写内存的次数都少了
（modules/01-foundation/01-normalization 实验 4：RMSNorm 为反向保存的激活从 2 份减到 1 份，
交替计时下单个 RMSNorm 前向+反向快 1.3 倍）。

由 MiniMindConfig.fused_ops 选择（默认开启）；tests/test_model.py 证明两条路径的输出和梯度一致。
注意：这里只实现了一阶导数（训练够用），不支持二阶导（如 torch.autograd.grad(create_graph=True)）。
"""
import torch


class RMSNormFunction(torch.autograd.Function):
    """y = w · x̂，x̂ = x · r，r = 1/√(mean(x²) + eps)。

    反向（对最后一维，H 为维度）：
        ∂L/∂w = Σ_batch g · x̂
        ∂L/∂x = r · (g·w − x̂ · mean(g·w·x̂))
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x_float = x.float()
        r = torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        x_hat = x_float * r  # (..., H)
        ctx.save_for_backward(x_hat, r, weight)
        ctx.input_dtype = x.dtype
        return weight * x_hat.type_as(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x_hat, r, weight = ctx.saved_tensors
        grad_out = grad_out.float()
        grad_weight = (grad_out * x_hat).reshape(-1, x_hat.shape[-1]).sum(0).to(weight.dtype)
        g = grad_out * weight  # (..., H)
        grad_x = r * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
        return grad_x.to(ctx.input_dtype), grad_weight, None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_half_transposed(x: torch.Tensor) -> torch.Tensor:
    """rotate_half 的转置：[x1, x2] → [x2, -x1]。"""
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], -x[..., :half]), dim=-1)


class RotaryFunction(torch.autograd.Function):
    """y = x·cos + rotate_half(x)·sin，即按角度 θ 旋转每一对维度。

    旋转矩阵是正交的，反向就是按 −θ 转回去：∂L/∂x = g·cos + rotate_halfᵀ(g·sin)。
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return x * cos + _rotate_half(x) * sin

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return grad_out * cos + _rotate_half_transposed(grad_out * sin), None, None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not _needs_grad(x, weight):  # 推理时不需要反向，省掉 autograd.Function 的调用开销
        return weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)
    return RMSNormFunction.apply(x, weight, eps)


def apply_rotary_pos_emb_fused(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                               unsqueeze_dim: int = 1):
    """与 model_minimind.apply_rotary_pos_emb 同签名、同结果。"""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if not _needs_grad(q, k):
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    return RotaryFunction.apply(q, cos, sin), RotaryFunction.apply(k, cos, sin)
