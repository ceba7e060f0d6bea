"""The built-in elementwise monotone maps (entry-point group ``flowkit.elementwise``).

Each is the ``g`` of ``y_i = g(x_i; θ_i)`` (see :mod:`flowkit.elementwise`); a coupling
(:class:`~flowkit.plugins.transforms.coupling.Coupling`) or an autoregressive layer
(:class:`~flowkit.plugins.transforms.autoregressive.AutoregressiveLayer`) supplies ``θ``:

========================== ============================================== ===========
name                       map                                             parameters
========================== ============================================== ===========
``additive``               ``y = x + t``  (NICE)                           ``t``
``affine``                 ``y = x·e^{s} + t``, ``s`` from a named scale    ``t, ŝ``
``volume-preserving-affine`` the affine map with ``Σ s = 0``  (GIN)        ``t, ŝ``
``rq-spline``              monotone rational-quadratic spline  (NSF)       ``3K − 1``
========================== ============================================== ===========

Every map is the identity (or, for Glow's sigmoid scale, a constant scaling) when its conditioner
outputs are zero, as flowkit's conditioners are at initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.elementwise import ElementwiseMap
from flowkit.errors import ConfigError
from flowkit.plugins.transforms.splines import (
    NumBins,
    TailBound,
    rational_quadratic_spline,
    spline_param_count,
)
from flowkit.transform import sum_except_batch

__all__ = [
    "SCALES",
    "SCALE_OFFSET",
    "Additive",
    "Affine",
    "RQSpline",
    "Scale",
    "VolumePreservingAffine",
    "scaled_tanh",
    "soft_clamp",
]

#: Glow's offset: ``e^{s} = sigmoid(ŝ + 2)``, so zero outputs scale by sigmoid(2) ≈ 0.88.
SCALE_OFFSET = 2.0
#: The bound of the ``soft-clamp`` log-scale, ``|s| < 5`` (one layer scales by at most ``e⁵``).
LOG_SCALE_BOUND = 5.0


class Additive(ElementwiseMap):
    """Additive map y = x + t, volume preserving (NICE, Dinh et al. 2015).

    ``y = x + t``, ``x = y − t``, ``log|det| = 0`` (Dinh, Krueger & Bengio 2015, "NICE:
    Non-linear Independent Components Estimation", §3.2, eq. (4)-(5)). One parameter, ``t``.
    """

    num_params = 1
    volume_preserving = True

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return x + params[0], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return y - params[0], y.new_zeros(y.shape[0])


# -- the named scale functions of the affine maps: raw output ŝ (and feature parameters) → s ------
def scaled_tanh(x: Tensor, scale: Tensor) -> Tensor:
    """``scale ⊙ tanh(x)``, computed as ``σ(2x) ⊙ 2·scale − scale`` (the same function).

    PyTorch's CPU ``tanh`` kernel is several times slower than its ``sigmoid`` (135 vs 19 µs on
    a 256 × 392 float32 batch, 2 threads), and it was the largest element-wise cost of a Real NVP
    step. Written this way autograd keeps one batch-sized tensor (``σ(2x)``) for backward, as
    ``tanh`` did; the values differ by float round-off (~1e-7 in float32).
    """
    return torch.sigmoid(2 * x) * (2 * scale) - scale


def soft_clamp(t: Tensor, bound: float = LOG_SCALE_BOUND) -> Tensor:
    """``bound · tanh(t / bound)``: smooth, odd, identity near 0, with values in ``(−bound, bound)``."""
    return bound * torch.tanh(t / bound)


def _exp_scale(raw: Tensor) -> Tensor:
    return raw


def _tanh_scale(raw: Tensor, bound: Tensor) -> Tensor:
    return scaled_tanh(raw, bound)


def _sigmoid_scale(raw: Tensor) -> Tensor:
    return F.logsigmoid(raw + SCALE_OFFSET)


Scale = Literal["exp", "tanh", "sigmoid", "soft-clamp"]
#: name → (log-scale function, learned per-feature parameters it reads, identity at ŝ = 0).
SCALES: dict[str, tuple[Callable[..., Tensor], dict[str, float], bool]] = {
    "exp": (_exp_scale, {}, True),  # s = ŝ
    "tanh": (_tanh_scale, {"scale": 1.0}, True),  # s = c ⊙ tanh(ŝ), c learned (Real NVP)
    "sigmoid": (_sigmoid_scale, {}, False),  # e^s = sigmoid(ŝ + 2) (Glow)
    "soft-clamp": (soft_clamp, {}, True),  # s = 5 tanh(ŝ / 5) (MAF)
}


class Affine(ElementwiseMap):
    """Affine map y = x·e^{s} + t with a named scale function s(ŝ) (Real NVP, Glow, MAF).

    ``y = x ⊙ e^{s} + t``, ``x = (y − t) ⊙ e^{−s}``, ``log|det| = Σ s`` (Dinh, Sohl-Dickstein &
    Bengio 2017, "Density estimation using Real NVP", §3.3, eq. (6)-(9)). Parameters ``(t, ŝ)``
    and the log-scale ``s`` from ``ŝ`` by ``scale``:

    * ``"exp"``: ``s = ŝ`` (unbounded);
    * ``"tanh"``: ``s = c ⊙ tanh(ŝ)`` with ``c`` a learned per-feature (per-channel) bound
      starting at 1, as in the Real NVP authors' code (feature parameter ``scale``);
    * ``"sigmoid"``: ``e^{s} = sigmoid(ŝ + 2)``, a scale in ``(0, 1)`` (Kingma & Dhariwal 2018,
      "Glow", §3.3 and the authors' code; zero outputs scale by ``sigmoid(2) ≈ 0.88``);
    * ``"soft-clamp"``: ``s = 5 tanh(ŝ / 5)``, ``|s| < 5`` (the MAF layers' bound).

    ``shift_first`` applies the shift before the scale, ``y = (x + t) ⊙ e^{s}`` and
    ``x = y ⊙ e^{−s} − t`` (Glow's coupling, §3.3, Table 1); the log-determinant is the same.
    """

    num_params = 2
    test_params: ClassVar[dict[str, Any]] = {
        "scale": ["tanh", "exp", "sigmoid", "soft-clamp"],
        "shift_first": [False, True],
    }

    def __init__(self, *, scale: Scale = "tanh", shift_first: bool = False) -> None:
        if scale not in SCALES:
            raise ConfigError(
                f"{type(self).__name__}: unknown scale {scale!r}; choose one of "
                f"{', '.join(map(repr, SCALES))}."
            )
        self.scale = scale
        self.shift_first = bool(shift_first)
        self._log_scale, features, identity = SCALES[scale]
        self.feature_params = features
        self.identity_at_zero = identity  # type: ignore[misc]

    def log_scale(self, params: Sequence[Tensor]) -> Tensor:
        """``s`` from ``params = (t, ŝ, *feature parameters)``."""
        return self._log_scale(params[1], *params[2:])

    def _apply(self, x: Tensor, t: Tensor, s: Tensor, inverse: bool) -> Tensor:
        if self.shift_first:
            return x * torch.exp(-s) - t if inverse else (x + t) * torch.exp(s)
        return (x - t) * torch.exp(-s) if inverse else torch.addcmul(t, x, torch.exp(s))

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        s = self.log_scale(params)
        return self._apply(x, params[0], s, False), sum_except_batch(s)

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        s = self.log_scale(params)
        return self._apply(y, params[0], s, True), -sum_except_batch(s)


class VolumePreservingAffine(Affine):
    """Affine map whose log-scales sum to zero over the example, so log|det| = 0 (GIN).

    ``y = x ⊙ e^{s} + t`` with ``s = ŝ_s − mean(ŝ_s)``, the mean over all transformed scalars of
    the example and ``ŝ_s`` the affine map's scaled log-scale; hence ``Σ s = 0`` and
    ``log|det J| = 0`` exactly (Sorrenson, Rother & Köthe 2020, "Disentanglement by Nonlinear ICA
    with General Incompressible-flow Networks (GIN)", §3). Unlike the additive map it still moves
    volume between dimensions. With one transformed scalar ``s = 0``. The mean couples the
    scalars of an example through their parameters, so it serves couplings, not autoregressive
    layers (``autoregressive = False``).
    """

    volume_preserving = True
    autoregressive = False
    test_params: ClassVar[dict[str, Any]] = {"scale": ["tanh", "exp"], "shift_first": [False]}

    def log_scale(self, params: Sequence[Tensor]) -> Tensor:
        s = super().log_scale(params)
        return s - s.flatten(1).mean(1).reshape(-1, *([1] * (s.dim() - 1)))

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._apply(x, params[0], self.log_scale(params), False), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._apply(y, params[0], self.log_scale(params), True), y.new_zeros(y.shape[0])


class RQSpline(ElementwiseMap):
    """Monotone rational-quadratic spline with linear tails (Durkan et al. 2019, NSF).

    On ``[−B, B]`` (``B = tail_bound``) a spline of ``K = num_bins`` rational-quadratic bins,
    outside it the identity; in bin ``k`` with ``ξ = (x − x_k)/w_k`` and ``s_k = h_k/w_k``::

        y = y_k + h_k [s_k ξ² + δ_k ξ(1 − ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1 − ξ)]

    and ``log|det| = Σ log g'(x)`` (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline
    Flows", §3.1, eq. (4); Gregory & Delbourgo 1982); the inverse solves a quadratic in closed
    form (:func:`~flowkit.plugins.transforms.splines.rational_quadratic_spline`). ``3K − 1``
    parameters per scalar: unnormalised widths, heights and interior derivatives.
    """

    test_params: ClassVar[dict[str, Any]] = {"num_bins": [3, 2], "tail_bound": [5.0, 2.0]}

    def __init__(self, *, num_bins: NumBins = 8, tail_bound: TailBound = 5.0) -> None:
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.num_params = spline_param_count(self.num_bins)

    def _spline(self, x: Tensor, params: Sequence[Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        out, log_det = rational_quadratic_spline(
            x, torch.stack(tuple(params), dim=-1), inverse=inverse, tail_bound=self.tail_bound
        )
        return out, sum_except_batch(log_det)

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, False)

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._spline(y, params, True)
