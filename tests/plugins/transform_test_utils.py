"""Helpers shared by the transform plugin tests: parameter noise and the autograd log-det."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from flowkit.transform import Transform


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Add noise to every parameter, so zero-initialised layers stop being the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def jacobian_logdet(t: Transform, x: Tensor, context: Tensor | None = None) -> Tensor:
    """``log|det ∂t(x)/∂x|`` per example, by autograd (for small inputs)."""
    values = []
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def flat(v: Tensor, ctx: Tensor | None = ctx) -> Tensor:
            return t(v.reshape(1, *x.shape[1:]), ctx)[0].reshape(-1)

        jac = jacobian(flat, x[i].reshape(-1), vectorize=True)
        values.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(values)
