"""Preprocessing as invertible transforms, so its log-determinant is counted in the likelihood.

Image pixels ``k ∈ {0, …, L−1}`` are stored as ``k / L``. Uniform dequantization
``x = (k + u) / L, u ~ U[0, 1)`` makes them continuous (Theis et al. 2016; Uria et al. 2013), and a
model density ``p(x)`` on ``[0, 1]^D`` bounds the discrete likelihood:
``bits/dim = (−log p(x) / D + log L) / log 2``. ``logit`` preprocessing
(Dinh et al. 2017, "Real NVP", §4.1) then maps ``x`` to ``w = logit(α + (1 − 2α) x)`` with

    log|det ∂w/∂x| = Σ_i [ log(1 − 2α) − log s_i − log(1 − s_i) ],  s = α + (1 − 2α) x,

which :class:`~flowkit.model.Flow` adds to the transform's log-determinant, so reported numbers
compare with published ones.

``standardize`` preprocessing (tabular data) maps ``w = (x − μ) / σ`` with the training split's
per-feature mean and standard deviation, ``log|det ∂w/∂x| = −Σ_i log σ_i``; counting it keeps
reported NLLs in the units of the raw data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated

import torch
from torch import Tensor
from torch.nn import functional as F

from flowkit.errors import ConfigError
from flowkit.params import Range
from flowkit.transform import Shape, Transform, sum_except_batch

PREPROCESS_CHOICES = ("auto", "none", "logit", "center", "standardize")


def dequantize(x: Tensor, levels: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Add ``U[0, 1/levels)`` noise to quantized data ``k / levels`` (no-op without levels)."""
    if not levels:
        return x
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + noise / levels


class Identity(Transform):
    """No preprocessing (continuous data such as the 2-D toys)."""

    volume_preserving = True
    domain = None

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y, self.zero_logdet(y)


class Center(Transform):
    """``w = x − 1/2``: data in ``[0, 1]`` centred on zero (as in Glow); log-det 0."""

    volume_preserving = True
    domain = (0.0, 1.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y + 0.5, self.zero_logdet(y)


class Logit(Transform):
    """``w = logit(α + (1 − 2α) x)`` for ``x ∈ [0, 1]`` (Real NVP §4.1), with its log-det."""

    domain = (0.0, 1.0)

    def __init__(
        self,
        event_shape: Shape,
        alpha: Annotated[float, Range(0, 0.5, max_inclusive=False, note="data.alpha, the logit's α")] = 0.05,
    ) -> None:
        super().__init__(event_shape)
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        w = torch.log(s) - torch.log1p(-s)
        logdet = math.log(1.0 - 2.0 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return w, sum_except_batch(logdet)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(y)
        x = (s - self.alpha) / (1.0 - 2.0 * self.alpha)
        # log|ds/dy| = log s + log(1 - s) = -softplus(-y) - softplus(y)
        logdet = -F.softplus(-y) - F.softplus(y) - math.log(1.0 - 2.0 * self.alpha)
        return x, sum_except_batch(logdet)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


class Standardize(Transform):
    """``w = (x − μ) / σ`` per feature, with μ and σ from the training split.

    ``mean`` and ``std`` hold one value per scalar of an example (flattened, row-major) and are
    kept as buffers (saved with the model, moved with it); computations follow the input's dtype
    and device. ``log|det ∂w/∂x| = −Σ log σ``, the same for every example.
    """

    domain = None
    mean: Tensor  # buffers (declared for type checkers: nn.Module types them Tensor | Module)
    std: Tensor

    def __init__(self, event_shape: Shape, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(event_shape)
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        for name, values in (("x_mean", mean_t), ("x_std", std_t)):
            if values.numel() != self.event_dim:
                raise ConfigError(
                    f"standardization {name} has {values.numel()} values but the data has "
                    f"{self.event_dim} features per example (shape {self.event_shape}); the "
                    f"statistics belong to other data: rebuild them from this dataset"
                )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ConfigError("standardization statistics must be finite with x_std > 0")
        self.register_buffer("mean", mean_t.reshape(self.event_shape))
        self.register_buffer("std", std_t.reshape(self.event_shape))

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        log_std = self.std.to(device=x.device, dtype=torch.float64).log().sum()
        return self.zero_logdet(x) + sign * log_std.to(x.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = (x - self.mean.to(x)) / self.std.to(x)
        return w, self._logdet(x, -1.0)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = y * self.std.to(y) + self.mean.to(y)
        return x, self._logdet(y, 1.0)


def build_preprocess(
    kind: str,
    shape: Shape,
    alpha: float,
    default: str,
    standardization: Mapping[str, Sequence[float]] | None = None,
) -> Transform:
    """The preprocessing named by ``data.preprocess`` (``auto``: the dataset's default).

    ``standardization`` holds the dataset's training statistics (``x_mean``, ``x_std``) that
    ``standardize`` needs (:attr:`flowkit.data.DataMeta.standardization`).
    """
    if kind == "auto":
        kind = default
    if kind == "none":
        return Identity(shape)
    if kind == "center":
        return Center(shape)
    if kind == "logit":
        return Logit(shape, alpha)
    if kind == "standardize":
        if not standardization or "x_mean" not in standardization or "x_std" not in standardization:
            raise ConfigError(
                "data.preprocess = 'standardize' needs the training split's per-feature mean and "
                "standard deviation, and this dataset provides no statistics; use a dataset that "
                'computes them (e.g. data = "table") or another data.preprocess (none, center)'
            )
        return Standardize(shape, standardization["x_mean"], standardization["x_std"])
    raise ConfigError(f"data.preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {kind!r}")
