"""``input_projection``: x W^T + b over every step at once, with a backward that stays fast for few inputs.

SAB precomputes the input half of every step's LSTM gates in one product, (T·B, I) × (I, 4H). Autograd's
own backward of that product (``F.linear``, ``addmm``) forms the weight gradient as (4H, T·B) × (T·B, I),
a product with a long inner dimension and a thin output, which BLAS runs very slowly: 470 ms against 40 ms
for the same numbers as ((I, T·B) × (T·B, 4H))ᵀ at T=1000, B=64, I=10, H=128 on one CPU thread (measured),
half of a whole SAB update. This function takes that second route; everything else is the plain formula.
"""
from __future__ import annotations

import torch


class _InputProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, weight)
        ctx.shape = x.shape
        return torch.addmm(bias, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        g_x = g.mm(weight).view(ctx.shape) if ctx.needs_input_grad[0] else None
        g_weight = flat.t().mm(g).t() if ctx.needs_input_grad[1] else None  # (I, T·B) × (T·B, 4H), then ᵀ
        g_bias = g.sum(dim=0) if ctx.needs_input_grad[2] else None
        return g_x, g_weight, g_bias


def input_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (..., I) W^T (W: (O, I)) + b (O,): ``F.linear``'s values and gradients (``tests/test_projection.py``)."""
    return _InputProjection.apply(x, weight, bias)
