"""Autograd functions with their backward passes written out.

Autograd differentiates a composite operation kernel by kernel; on a CPU, where a small model's
step is many small kernels, a few whole-tensor operations written by hand cost less
(docs/performance.md). Each is checked against autograd's gradient (tests/test_variants.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class RMSNormFunction(torch.autograd.Function):
    """y = x̂ · g with x̂ = x · r, r = 1 / √(mean(x²) + ε); its gradients in a few whole-tensor
    operations: ∂x = r · (∂x̂ - x̂ · mean(∂x̂ ⊙ x̂)) with ∂x̂ = ∂y ⊙ g, and ∂g = Σ ∂y ⊙ x̂."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # ‖x‖ in one reduction kernel; mean(x²) = ‖x‖² / d on the small (..., 1) tensor.
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
        x_hat = x * r  # (..., d)
        ctx.save_for_backward(x_hat, r, weight)
        return x_hat * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        x_hat, r, weight = ctx.saved_tensors
        grad_x_hat = grad * weight
        x_hat = x_hat.to(grad_x_hat.dtype)  # under autocast x̂ may be bf16 and the gradient fp32
        dot = torch.linalg.vecdot(grad_x_hat, x_hat).unsqueeze(-1).div_(x_hat.size(-1))  # (..., 1)
        grad_x = torch.addcmul(grad_x_hat, x_hat, dot, value=-1).mul_(r)
        grad_weight = None
        if ctx.needs_input_grad[1]:  # Σ over every position of ∂y ⊙ x̂, one fused reduction
            grad_weight = torch.linalg.vecdot(grad.flatten(0, -2), x_hat.flatten(0, -2), dim=0)
        return grad_x, grad_weight, None


class ReLUSquared(torch.autograd.Function):
    """y = ReLU(x)²; ∂x = 2·ReLU(x) ⊙ ∂y, which is already 0 where x ≤ 0: one product, instead of
    autograd's derivative of a power and a ReLU's mask."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (r,) = ctx.saved_tensors
        return grad * (r + r)
