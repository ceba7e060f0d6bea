"""Masked autoregressive flows: MAF and IAF, built on one MADE affine autoregressive layer.

One layer is the affine autoregressive map and its inverse (Papamakarios, Pavlakou & Murray 2017,
"Masked Autoregressive Flow for Density Estimation", §3.1, eq. (2)-(3))::

    parallel:    w_d = (z_d − μ_d(z_<d)) · exp(−α_d(z_<d)),      log|det ∂w/∂z| = −Σ_d α_d
    sequential:  z_d = w_d · exp(α_d(z_<d)) + μ_d(z_<d),          log|det ∂z/∂w| = +Σ_d α_d

with ``(μ, α)`` the two outputs of a :class:`~flowkit.plugins.transforms.made.MADE` run on ``z``.
The parallel direction needs one MADE pass (every ``z_<d`` is known); the sequential one needs
``D`` passes, because ``z_d`` is only known once ``z_<d`` is. MAF uses the parallel map as
flowkit's ``forward`` (data → latent: fast density, slow sampling); IAF (Kingma et al. 2016,
"Improving Variational Inference with Inverse Autoregressive Flow", §4) uses it as ``inverse``
(latent → data: fast sampling, slow density). With the same weights an IAF layer *is* a MAF layer
run backwards (Papamakarios et al. 2017, §3.2).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec, context_width
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.made import MADE
from flowkit.transform import Shape, Transform, require_rank, sum_except_batch

Direction = Literal["maf", "iaf"]

#: Soft bound on the log-scale: ``α = B · tanh(α_raw / B)`` keeps ``|α| < B`` (so one layer scales
#: a coordinate by at most ``e^B``) while ``α ≈ α_raw`` for ``|α_raw| ≪ B``.
LOG_SCALE_BOUND = 5.0


def soft_clamp(t: Tensor, bound: float) -> Tensor:
    """``bound · tanh(t / bound)``: smooth, odd, identity near 0, with values in ``(−bound, bound)``."""
    return bound * torch.tanh(t / bound)


def _require_vector_size(owner: str, dim: int) -> None:
    if dim < 2:
        raise ShapeError(
            f"{owner} needs at least 2 scalars per example (an autoregressive order over D ≥ 2 "
            f"variables), but the data has {dim}. Use a transform for 1-d data, e.g. a "
            f"diagonal scaling."
        )


class AutoregressiveAffine(Transform):
    """MADE affine autoregressive layer w = (z − μ(z_<d)) ⊙ exp(−α(z_<d)); MAF or IAF direction.

    Parallel map (one MADE pass): ``w_d = (z_d − μ_d(z_<d)) exp(−α_d(z_<d))``, log-det
    ``−Σ α_d``; sequential inverse (``D`` passes): ``z_d = w_d exp(α_d(z_<d)) + μ_d(z_<d)``, log-det
    ``+Σ α_d`` (Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation",
    §3.1, eq. (2)-(5)). ``direction="maf"`` makes the parallel map ``forward`` (``z = x``, the data;
    ``w = u``, the latent); ``direction="iaf"`` makes it ``inverse`` (``z = u``, ``w = x``), i.e. the
    IAF sampling step ``x = (u − μ(u)) ⊙ exp(−α(u))`` — Kingma et al. 2016, "Improving Variational
    Inference with Inverse Autoregressive Flow", eq. (10), ``x = u ⊙ exp(α') + μ'`` with
    ``α' = −α``, ``μ' = −μ exp(−α)``: the same family, parameterised so that an IAF layer is
    exactly a MAF layer with ``forward``/``inverse`` swapped.

    ``α = 5 tanh(α_raw / 5)`` (soft bound, :data:`LOG_SCALE_BOUND`). ``reverse_order`` reverses the
    autoregressive order (MADE input degrees ``D..1``), used between stacked layers. The sequential
    direction is a loop of ``D`` full MADE passes over the whole batch: pass ``i`` fixes the
    ``i``-th coordinate in the order (its ``μ, α`` depend only on coordinates already fixed), so
    after ``D`` passes every coordinate and the log-det are exact. With ``conditional=true``
    one-hot labels enter the MADE as an unmasked context.
    """

    input_ranks = (1,)
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [8], "num_hidden": [1, 2], "direction": ["maf", "iaf"],
        "reverse_order": [False, True],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        direction: Direction = "maf",
        reverse_order: bool = False,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        owner = type(self).__name__
        require_rank(owner, self.event_shape, self.input_ranks, "Flatten the data first.")
        _require_vector_size(owner, self.event_dim)
        if direction not in ("maf", "iaf"):
            raise ConfigError(f"{owner}: direction must be 'maf' or 'iaf', got {direction!r}.")
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.direction: Direction = direction
        self.reverse_order = bool(reverse_order)
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        dim = self.event_dim
        order = list(range(dim - 1, -1, -1)) if self.reverse_order else None
        extra = context_width(self.context_spec)
        self.made = MADE(dim, hidden, num_hidden, num_outputs=2, order=order,
                         context_features=extra)

    # -- the two maps --------------------------------------------------------------------------
    def _shift_log_scale(self, z: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """One MADE pass on ``z``: ``(μ(z_<d), α(z_<d))``, each ``(B, D)``."""
        mu, raw = self.made(z, labels).unbind(1)
        return mu, soft_clamp(raw, LOG_SCALE_BOUND)

    def _labels(self, z: Tensor, context: Tensor | None) -> Tensor | None:
        """The MADE's context input: one-hot labels or the real-valued context (or ``None``)."""
        if self.context_spec is None:
            return None
        return self.context_spec.features(context, z, type(self).__name__)

    def _parallel(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``w = (z − μ(z)) ⊙ exp(−α(z))`` in one MADE pass; log-det ``−Σ α``."""
        mu, alpha = self._shift_log_scale(z, self._labels(z, context))
        return (z - mu) * torch.exp(-alpha), -sum_except_batch(alpha)

    def _sequential(self, w: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """Solve ``z = w ⊙ exp(α(z)) + μ(z)`` with ``D`` MADE passes; log-det ``+Σ α``."""
        labels = self._labels(w, context)
        z = torch.zeros_like(w)
        alpha = z
        for _ in range(self.event_dim):  # pass i fixes the i-th coordinate in the order
            mu, alpha = self._shift_log_scale(z, labels)
            z = w * torch.exp(alpha) + mu
        return z, sum_except_batch(alpha)

    # -- the Transform interface ---------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → latent: one MADE pass for MAF, ``D`` sequential passes for IAF."""
        self.check_input(x)
        if self.direction == "maf":
            return self._parallel(x, context)
        return self._sequential(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent → data: ``D`` sequential passes for MAF, one MADE pass for IAF."""
        self.check_input(y, "inverse")
        if self.direction == "maf":
            return self._sequential(y, context)
        return self._parallel(y, context)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, direction={self.direction!r}, "
                f"reverse_order={self.reverse_order}, conditional={self.conditional}")


class _AutoregressiveFlow(Architecture):
    """A stack of :class:`AutoregressiveAffine` layers in one direction, alternating the order.

    Images are flattened first; the latent has shape ``(D,)``. Subclasses set ``direction``.
    """

    direction: ClassVar[Direction] = "maf"
    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 (images only need C·H·W ≥ 2)
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3], "hidden": [8], "num_hidden": [1, 2],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 5,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        owner = type(self).__name__
        shape = tuple(int(s) for s in event_shape)
        require_rank(owner, shape, self.input_ranks,
                     "Give vectors as (D,) or images as (C, H, W); images are flattened.")
        dim = math.prod(shape)
        super().__init__(shape, (dim,))
        _require_vector_size(owner, dim)
        context_spec(owner, conditional, num_classes, context_features)  # checks the choice
        steps: list[Transform] = []
        if len(shape) != 1:
            steps.append(Flatten(shape))
        steps += [
            AutoregressiveAffine(
                (dim,), direction=self.direction, reverse_order=bool(k % 2), hidden=hidden,
                num_hidden=num_hidden, conditional=conditional, num_classes=num_classes,
                context_features=context_features,
            )
            for k in range(num_layers)
        ]
        self.flow = Sequential(steps)



class MAF(_AutoregressiveFlow):
    """Masked Autoregressive Flow: MADE affine layers, one-pass density (Papamakarios et al. 2017).

    ``num_layers`` layers ``u_d = (x_d − μ_d(x_<d)) · exp(−α_d(x_<d))``, ``log|det J| = −Σ_d α_d``,
    with ``(μ, α)`` from a MADE of ``num_hidden`` masked layers of ``hidden`` ReLU units and the
    autoregressive order reversed between layers (Papamakarios, Pavlakou & Murray 2017, "Masked
    Autoregressive Flow for Density Estimation", §3.1-3.2; MADE: Germain et al. 2015). Cost:
    ``forward`` (density) is one MADE pass per layer; ``inverse`` (sampling) is sequential, ``D``
    passes per layer. ``α = 5 tanh(α_raw / 5)`` for stability. Images are flattened; the latent
    has shape ``(D,)``, ``D ≥ 2``. ``conditional=true`` feeds one-hot labels to every MADE.
    """

    direction = "maf"


class IAF(_AutoregressiveFlow):
    """Inverse Autoregressive Flow: MADE affine layers, one-pass sampling (Kingma et al. 2016).

    The MAF layers run the other way: ``inverse`` (latent → data, sampling) is the parallel map
    ``x_d = (u_d − μ_d(u_<d)) · exp(−α_d(u_<d))``, i.e. ``x = u ⊙ exp(α'(u)) + μ'(u)`` with
    ``α' = −α``, ``μ' = −μ e^{−α}`` (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016,
    "Improving Variational Inference with Inverse Autoregressive Flow", §4, eq. (10)-(11);
    Papamakarios et al. 2017, "MAF", §3.2), one MADE pass per layer; ``forward`` (data → latent,
    density) is sequential, ``D`` passes per layer, so maximum-likelihood training is ``D`` times
    slower than MAF's. Parameters, order reversal, the soft bound on ``α``, flattening and
    ``conditional`` are as in ``maf``.
    """

    direction = "iaf"
