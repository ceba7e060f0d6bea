"""The sinh-arcsinh map as an elementwise map: one class, and flowkit builds the flows around it.

Registered in the ``flowkit.elementwise`` entry-point group, it gives a coupling
(``--transform coupling --set transform.map=sinh-arcsinh``) and an autoregressive flow
(``--transform autoregressive --set transform.map=sinh-arcsinh``) whose conditioners compute the
skew and tail weight of every scalar (Jones & Pewsey 2009, "Sinh-arcsinh distributions",
Biometrika 96(4), §2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from flowkit.elementwise import ElementwiseMap
from flowkit.transform import sum_except_batch
from torch import Tensor
from torch.nn import functional as F

from flowkit_example.sinh_arcsinh import half_log1p_square, log_cosh

_UNIT = math.log(math.e - 1.0)  # softplus(_UNIT) = 1


class SinhArcsinhMap(ElementwiseMap):
    """Sinh-arcsinh map y = sinh(b·asinh(x) − a) with conditioned skew a and tail weight b.

    ``log|dy/dx| = log b + log cosh(b·asinh(x) − a) − ½ log(1 + x²)`` (Jones & Pewsey 2009,
    "Sinh-arcsinh distributions", Biometrika 96(4), §2); parameters ``(a, b̂)`` with
    ``b = 0.1 + 0.9·softplus(b̂ + log(e − 1))``, so zero parameters give the identity.
    """

    num_params = 2

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        a, b = params[0], 0.1 + 0.9 * F.softplus(params[1] + _UNIT)
        u = b * torch.asinh(x) - a
        return torch.sinh(u), sum_except_batch(torch.log(b) + log_cosh(u) - half_log1p_square(x))

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        a, b = params[0], 0.1 + 0.9 * F.softplus(params[1] + _UNIT)
        v = (torch.asinh(y) + a) / b
        return torch.sinh(v), sum_except_batch(log_cosh(v) - half_log1p_square(y) - torch.log(b))
