"""The sinh-arcsinh flow: an elementwise bijection with learnable skew and tail weight.

Jones & Pewsey (2009), "Sinh-arcsinh distributions", Biometrika 96(4), 761–780, §2: applying
``S_{a,b}(x) = sinh(b · arcsinh(x) − a)`` to a Gaussian gives a family whose parameter ``a`` sets
the skewness and ``b > 0`` the tail weight (``b < 1``: heavier tails than the input, ``b > 1``:
lighter). Used as a flow layer it reshapes each marginal; stacked with couplings or permutations
it adds skew and heavy tails that affine layers cannot express.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from flowkit.params import Range
from flowkit.transform import Shape, Transform, require_rank, sum_except_batch
from torch import Tensor, nn
from torch.nn import functional as F

_LOG2 = math.log(2.0)


def log_cosh(u: Tensor) -> Tensor:
    """``log cosh(u)`` without overflow: ``|u| + log(1 + e^{−2|u|}) − log 2``."""
    a = u.abs()
    return a + F.softplus(-2.0 * a) - _LOG2


def half_log1p_square(x: Tensor) -> Tensor:
    """``½ log(1 + x²) = log √(1 + x²)`` without overflowing ``x²`` (via ``hypot``)."""
    return torch.log(torch.hypot(x, torch.ones_like(x)))


def inverse_softplus(value: float) -> float:
    """The ``r`` with ``softplus(r) = log(1 + e^r) = value`` (``value > 0``)."""
    return value + math.log(-math.expm1(-value))


class SinhArcsinh(Transform):
    """Elementwise sinh-arcsinh flow y = sinh(b·asinh(x) − a) with learnable skew a and tail weight b.

    Per scalar (Jones & Pewsey 2009, "Sinh-arcsinh distributions", Biometrika 96(4), §2, eq. 2)::

        y = sinh(b · asinh(x) − a)          x = sinh((asinh(y) + a) / b)
        log|dy/dx| = log b + log cosh(b · asinh(x) − a) − ½ log(1 + x²)

    summed over the event for the log-determinant. ``a`` (skew) and ``b`` (tail weight) have the
    shape of one example, so every feature, or every pixel of every channel, gets its own pair;
    ``b = softplus(ρ) + min_tailweight`` stays positive. A fresh layer is the identity
    (``a = 0``, ``b = 1``) unless ``init_scale > 0`` adds ``N(0, init_scale²)`` noise to ``a`` and
    ``ρ``. Works on vectors ``(D,)`` and images ``(C, H, W)``; the shape is unchanged and the
    context (class labels) is ignored.
    """

    input_ranks: ClassVar[tuple[int, ...]] = (1, 3)
    test_params: ClassVar[dict[str, Any]] = {"min_tailweight": [0.1, 0.5], "init_scale": [0.0, 0.5]}

    def __init__(
        self,
        event_shape: Shape,
        *,
        # the ranges are checked by flowkit, from a config and from Python alike
        min_tailweight: Annotated[
            float,
            Range(
                0,
                1,
                min_inclusive=False,
                max_inclusive=False,
                note="so that the layer can start as the identity, tail weight 1",
            ),
        ] = 0.1,
        init_scale: Annotated[float, Range(0, note="std of the initial noise")] = 0.0,
    ) -> None:
        super().__init__(event_shape)
        require_rank("sinh-arcsinh", self.event_shape, self.input_ranks)
        self.min_tailweight = float(min_tailweight)
        identity = inverse_softplus(1.0 - self.min_tailweight)  # softplus(ρ) + min = 1
        self.skew = nn.Parameter(torch.randn(self.event_shape) * init_scale)
        self.raw_tailweight = nn.Parameter(
            torch.full(self.event_shape, identity) + torch.randn(self.event_shape) * init_scale
        )

    @property
    def tailweight(self) -> Tensor:
        """The tail weight ``b = softplus(ρ) + min_tailweight`` (shape ``event_shape``)."""
        return F.softplus(self.raw_tailweight) + self.min_tailweight

    def _coefficients(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` in the dtype of the input, so float64 data gives float64 results."""
        return self.skew.to(dtype=like.dtype), self.tailweight.to(dtype=like.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = sinh(b·asinh(x) − a)`` and ``Σ [log b + log cosh(b·asinh(x) − a) − ½ log(1+x²)]``."""
        self.check_input(x)
        skew, tail = self._coefficients(x)
        u = tail * torch.asinh(x) - skew
        logdet = sum_except_batch(torch.log(tail) + log_cosh(u) - half_log1p_square(x))
        return torch.sinh(u), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = sinh((asinh(y) + a)/b)`` and ``Σ [log cosh((asinh(y) + a)/b) − ½ log(1+y²) − log b]``."""
        self.check_input(y, "inverse")
        skew, tail = self._coefficients(y)
        v = (torch.asinh(y) + skew) / tail
        logdet = sum_except_batch(log_cosh(v) - half_log1p_square(y) - torch.log(tail))
        return torch.sinh(v), logdet

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_tailweight={self.min_tailweight}"
