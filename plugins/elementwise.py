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

from flowkit.elementwise import ElementwiseMap, stacked_params
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
    "soft_cap",
    "soft_clamp",
]

#: Glow's offset: ``e^{s} = sigmoid(ŝ + 2)``, so zero outputs scale by sigmoid(2) ≈ 0.88.
SCALE_OFFSET = 2.0
#: The bound of the ``soft-clamp`` log-scale, ``|s| < 5`` (one layer scales by at most ``e⁵``).
LOG_SCALE_BOUND = 5.0
#: :func:`soft_cap` of the ``sigmoid`` and ``capped-exp`` scales: the log-scale is unchanged up to
#: ``SCALE_KNEE`` in its expanding direction and stays below ``SCALE_CAP`` there, so the
#: sampling direction of one layer multiplies by less than ``e⁶ ≈ 403`` (see :class:`Affine`).
SCALE_KNEE = 4.0
SCALE_CAP = 6.0


class Additive(ElementwiseMap):
    """Additive map y = x + t, volume preserving (NICE, Dinh et al. 2015).

    ``y = x + t``, ``x = y − t``, ``log|det| = 0`` (Dinh, Krueger & Bengio 2015, "NICE:
    Non-linear Independent Components Estimation", §3.2, eq. (4)-(5)). One parameter, ``t``.

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).

    Arguments:

    None: ``additive`` takes no parameters; its one conditioner output per scalar is ``t``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.elementwise import Additive
        >>> g = Additive()
        >>> x, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
        >>> y, logdet = g.forward(x, [t])
        >>> y.tolist(), logdet.tolist()
        ([[1.5, 1.0]], [0.0])
        >>> g.inverse(y, [t])[0].tolist()
        [[1.0, 2.0]]
    """

    num_params = 1
    volume_preserving = True

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return x + params[0], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return y - params[0], y.new_zeros(y.shape[0])


# -- the named scale functions of the affine maps: raw output ŝ (and feature parameters) → s ------
def scaled_tanh(x: Tensor, scale: Tensor | float) -> Tensor:
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


def soft_cap(t: Tensor, knee: float = SCALE_KNEE, cap: float = SCALE_CAP) -> Tensor:
    """``t`` where ``t ≤ knee``; above, ``knee + w·tanh((t − knee)/w)`` with ``w = cap − knee``.

    Increasing, continuously differentiable (slope 1 at the knee from both sides) and below
    ``cap``; values up to the knee are returned unchanged, so a model whose values never pass it
    computes exactly what it computed without the cap. Example: ``soft_cap(torch.tensor([1.0,
    5.0, 1e9]))`` is ``[1.0, 4.92, 6.0]`` (knee 4, cap 6).
    """
    width = cap - knee
    excess = F.relu(t - knee)  # min(t, knee) + excess = t; no cancellation for huge t
    return t.clamp_max(knee) + scaled_tanh(excess / width, width)


def _exp_scale(raw: Tensor) -> Tensor:
    return raw


def _capped_exp_scale(raw: Tensor) -> Tensor:
    return soft_cap(raw)


def _tanh_scale(raw: Tensor, bound: Tensor) -> Tensor:
    return scaled_tanh(raw, bound)


def _sigmoid_scale(raw: Tensor) -> Tensor:
    # Glow's log sigmoid(ŝ + 2) ≤ 0, floored by the cap of its negation: e^{s} > e^{−6}, 1/e^{s} < 403
    return -soft_cap(-F.logsigmoid(raw + SCALE_OFFSET))


Scale = Literal["exp", "tanh", "sigmoid", "soft-clamp", "capped-exp"]
#: name → (log-scale function, learned per-feature parameters it reads, identity at ŝ = 0).
SCALES: dict[str, tuple[Callable[..., Tensor], dict[str, float], bool]] = {
    "exp": (_exp_scale, {}, True),  # s = ŝ
    "tanh": (_tanh_scale, {"scale": 1.0}, True),  # s = c ⊙ tanh(ŝ), c learned (Real NVP)
    "sigmoid": (_sigmoid_scale, {}, False),  # e^s = sigmoid(ŝ + 2) (Glow), capped at e^s > e^-6
    "soft-clamp": (soft_clamp, {}, True),  # s = 5 tanh(ŝ / 5) (MAF)
    "capped-exp": (_capped_exp_scale, {}, True),  # s = ŝ up to 4, then < 6 (Glow's split prior)
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
      "Glow", §3.3 and the authors' code; zero outputs scale by ``sigmoid(2) ≈ 0.88``), with its
      logarithm floored smoothly: ``s = −soft_cap(−log sigmoid(ŝ + 2))``, exactly Glow's scale
      for ``e^{s} ≥ e^{−4} ≈ 0.018`` and always ``e^{s} > e^{−6} ≈ 0.0025``;
    * ``"soft-clamp"``: ``s = 5 tanh(ŝ / 5)``, ``|s| < 5`` (the MAF layers' bound);
    * ``"capped-exp"``: ``s = soft_cap(ŝ)``: ``s = ŝ`` for ``ŝ ≤ 4``, smoothly below 6 above,
      unbounded below (Glow's split prior, whose inverse multiplies by ``e^{s} = σ``).

    Why the caps (:func:`soft_cap`, knee 4, cap 6): the inverse of a layer multiplies by
    ``e^{−s}`` (``e^{s}`` for the inverted map), and ``ŝ`` is computed from the layer's other
    input. With Glow's unbounded ``1/sigmoid(ŝ + 2) ≈ e^{−ŝ−2}`` a large input gives a large
    ``|ŝ|`` and an exponentially larger output, which the next layer exponentiates again: on
    N(0, I) latents a 2-level Glow with weights perturbed by 0.1·N(0, 1) returned 90-100%
    non-finite samples in float64 (``docs/glow.md``, "Samples that explode"). Capped, one
    layer's inverse gain is below ``e⁶ ≈ 403`` and growth is at most geometric in the depth.

    ``shift_first`` applies the shift before the scale, ``y = (x + t) ⊙ e^{s}`` and
    ``x = y ⊙ e^{−s} − t`` (Glow's coupling, §3.3, Table 1); the log-determinant is the same.

    References:

    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.
    * Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018.
    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.

    Arguments:

    * ``scale`` ('exp' | 'tanh' | 'sigmoid' | 'soft-clamp' | 'capped-exp', default 'tanh'): the log-scale
      ``s`` from the conditioner's ``ŝ``: ``'exp'``, ``'tanh'``, ``'sigmoid'`` or ``'soft-clamp'`` (see
      above).
    * ``shift_first`` (bool, default False): shift before scaling, ``y = (x + t) ⊙ e^{s}`` (Glow).

    Example::

        >>> import torch
        >>> from flowkit.plugins.elementwise import Affine
        >>> g = Affine(scale="exp")
        >>> x = torch.tensor([[1.0, 2.0]])
        >>> t, s = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.5]])
        >>> y, logdet = g.forward(x, [t, s])  # y = x·e^s + t, log|det| = Σ s
        >>> torch.allclose(y, x * s.exp() + t), logdet.tolist()
        (True, [0.5])
        >>> torch.allclose(g.inverse(y, [t, s])[0], x)
        True
    """

    num_params = 2
    test_params: ClassVar[dict[str, Any]] = {
        "scale": ["tanh", "exp", "sigmoid", "soft-clamp", "capped-exp"],
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

    References:

    * Sorrenson, Rother & Köthe 2020, "Disentanglement by Nonlinear ICA with General Incompressible-flow
      Networks (GIN)", ICLR 2020.

    Arguments:

    * ``scale`` ('exp' | 'tanh' | 'sigmoid' | 'soft-clamp' | 'capped-exp', default 'tanh'): the log-scale
      ``s`` from the conditioner's ``ŝ``: ``'exp'``, ``'tanh'``, ``'sigmoid'`` or ``'soft-clamp'`` (see
      above).
    * ``shift_first`` (bool, default False): shift before scaling, ``y = (x + t) ⊙ e^{s}`` (Glow).

    Example::

        >>> import torch
        >>> from flowkit.plugins.elementwise import VolumePreservingAffine
        >>> g = VolumePreservingAffine(scale="exp")
        >>> x = torch.tensor([[1.0, 1.0]])
        >>> t, s = torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])
        >>> y, logdet = g.forward(x, [t, s])  # s - mean(s) = (-1, 1)
        >>> torch.allclose(y, torch.tensor([[-1.0, 1.0]]).exp()), logdet.tolist()
        (True, [0.0])
        >>> torch.allclose(g.inverse(y, [t, s])[0], x)
        True
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

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", NeurIPS 2019.
    * Gregory & Delbourgo 1982, "Piecewise Rational Quadratic Interpolation to Monotonic Data", IMA Journal of
      Numerical Analysis 2(2).

    Arguments:

    * ``num_bins`` (int in [2, 999], default 8): the number of spline bins ``K`` (``3K − 1`` parameters per
      transformed scalar).
    * ``tail_bound`` (float > 0, default 5.0): the spline acts on ``[−tail_bound, tail_bound]``; outside, the
      identity.

    Example::

        >>> import torch
        >>> from flowkit.plugins.elementwise import RQSpline
        >>> g = RQSpline(num_bins=4, tail_bound=3.0)
        >>> g.num_params  # 3K - 1 per scalar
        11
        >>> _ = torch.manual_seed(0)
        >>> x = torch.tensor([[-5.0, -1.0, 0.5, 2.0]])
        >>> params = list(torch.randn(g.num_params, 1, 4))
        >>> y, logdet = g.forward(x, params)
        >>> y[0, 0].item()  # outside [-3, 3]: the identity
        -5.0
        >>> torch.allclose(g.inverse(y, params)[0], x, atol=1e-5)
        True
    """

    test_params: ClassVar[dict[str, Any]] = {"num_bins": [3, 2], "tail_bound": [5.0, 2.0]}

    def __init__(self, *, num_bins: NumBins = 8, tail_bound: TailBound = 5.0) -> None:
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.num_params = spline_param_count(self.num_bins)

    def _spline(self, x: Tensor, params: Sequence[Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        out, log_det = rational_quadratic_spline(
            x, stacked_params(params), inverse=inverse, tail_bound=self.tail_bound
        )
        return out, sum_except_batch(log_det)

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, False)

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self._spline(y, params, True)
