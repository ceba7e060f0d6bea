"""Neural spline flows: rational-quadratic coupling and autoregressive layers (Durkan et al. 2019).

Both layer kinds apply the monotone rational-quadratic spline of
:mod:`flowkit.plugins.transforms.splines` to each transformed scalar, with its ``3K − 1``
parameters computed by a conditioner (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural
Spline Flows", §3.2 "RQ-NSF (C)" and "RQ-NSF (AR)"):

* ``rq-coupling``: one coupling layer; the conditioning half ``x_A`` passes unchanged and the
  spline parameters of ``x_B`` are an MLP or conv net of ``x_A`` (the masks, conditioners and
  context of ``affine-coupling``);
* ``nsf``: ``num_layers`` of them on alternating halves (images are flattened);
* ``rq-autoregressive``: ``num_layers`` autoregressive layers, the parameters of ``x_d`` a MADE
  output of ``x_<d``, the order reversed between layers (fast density, ``D`` passes to sample).

The log-determinant is the sum of the splines' log-derivatives; inputs outside
``[−tail_bound, tail_bound]`` pass through the identity tails. Every layer starts as the identity
(zero-initialised conditioners give equal bins and unit derivatives).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec, context_width
from flowkit.errors import ShapeError
from flowkit.params import Range
from flowkit.plugins.transforms.coupling import ConditionerKind, MaskKind, _Coupling
from flowkit.plugins.transforms.made import MADE
from flowkit.plugins.transforms.splines import (
    NumBins,
    TailBound,
    rational_quadratic_spline,
    spline_param_count,
)
from flowkit.transform import Shape, Transform, require_rank, sum_except_batch


class RQCoupling(_Coupling):
    """Rational-quadratic spline coupling y_B = RQS(x_B; θ(x_A)) (Durkan et al. 2019, RQ-NSF (C)).

    ``y_A = x_A``; every scalar of ``x_B`` goes through its own monotone rational-quadratic
    spline with ``num_bins`` bins on ``[−tail_bound, tail_bound]`` and identity tails, whose
    ``3·num_bins − 1`` parameters the conditioner computes from ``x_A`` (Durkan, Bekasov, Murray &
    Papamakarios 2019, "Neural Spline Flows", §3; the spline of Gregory & Delbourgo 1982).
    ``log|det J| = Σ_B log g'(x_B)``; the inverse solves each spline's quadratic in closed form.
    ``mask``, ``parity``, the conditioner (``mlp``/``conv``, ``hidden``, ``num_hidden``,
    ``num_blocks``) and the context are as in ``affine-coupling``.

    Arguments: ``num_bins ≥ 2`` (default 8), ``tail_bound > 0`` (default 5: standardised data
    lie mostly inside).
    """

    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [4, 8], "num_hidden": [1], "num_blocks": [1], "parity": [False, True],
        "num_bins": [2, 3], "tail_bound": [2.0, 5.0],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_bins: NumBins = 8,
        tail_bound: TailBound = 5.0,
        mask: MaskKind | None = None,
        parity: bool = False,
        conditioner: ConditionerKind | None = None,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        num_blocks: Annotated[int, Range(0)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        self.num_bins = int(num_bins)  # plain attributes, read by _Coupling.__init__
        self.tail_bound = float(tail_bound)
        self.num_params = spline_param_count(self.num_bins)
        super().__init__(event_shape, mask=mask, parity=parity, conditioner=conditioner,
                         hidden=hidden, num_hidden=num_hidden, num_blocks=num_blocks,
                         conditional=conditional, num_classes=num_classes,
                         context_features=context_features)

    def _spline(self, x: Tensor, params: tuple[Tensor, ...], inverse: bool) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline(x, torch.stack(params, dim=-1), inverse=inverse,
                                         tail_bound=self.tail_bound)

    def _couple(
        self, x: Tensor, params: tuple[Tensor, ...], free: Tensor, inverse: bool,
    ) -> tuple[Tensor, Tensor]:
        out, log_det = self._spline(x, params, inverse)
        return torch.where(free.bool(), out, x), sum_except_batch(free * log_det)

    def _couple_part(
        self, x_b: Tensor, params: tuple[Tensor, ...], inverse: bool,
    ) -> tuple[Tensor, Tensor]:
        out, log_det = self._spline(x_b, params, inverse)
        return out, sum_except_batch(log_det)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_bins={self.num_bins}, tail_bound={self.tail_bound}"


class _SplineStack(Architecture):
    """``num_layers`` spline layers over the flattened input; subclasses choose the layer.

    The parameters (shared by ``nsf`` and ``rq-autoregressive``): ``num_layers ≥ 1``,
    ``num_bins ≥ 2`` bins on ``[−tail_bound, tail_bound]``, conditioners of ``num_hidden`` ×
    ``hidden`` units, and the context arguments of every conditional transform.
    """

    input_ranks = (1, 3)
    min_channels = 2  # D ≥ 2: two halves to couple, or an autoregressive order

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 5,
        num_bins: NumBins = 8,
        tail_bound: TailBound = 5.0,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        layer_args = {"num_bins": num_bins, "tail_bound": tail_bound, "hidden": hidden,
                      "num_hidden": num_hidden, "conditional": conditional,
                      "num_classes": num_classes, "context_features": context_features}
        owner = type(self).__name__
        shape = tuple(int(s) for s in event_shape)
        require_rank(owner, shape, self.input_ranks)
        dim = math.prod(shape)
        super().__init__(shape, (dim,))
        if dim < 2:
            raise ShapeError(f"{owner} needs at least 2 scalars per example (two halves, or an "
                             f"order to follow), but the data has shape {shape}.")
        steps: list[Transform] = [] if len(shape) == 1 else [Flatten(shape)]
        steps += [self._layer(dim, k, **layer_args) for k in range(num_layers)]
        self.flow = Sequential(steps)

    def _layer(self, dim: int, k: int, **layer_args: Any) -> Transform:
        raise NotImplementedError


class NSF(_SplineStack):
    """Neural spline flow of ``num_layers`` rational-quadratic couplings (Durkan et al. 2019).

    ``num_layers`` ``rq-coupling`` layers on the "half" split with alternating parity, MLP
    conditioners of ``num_hidden`` layers of ``hidden`` units, ``num_bins`` bins on
    ``[−tail_bound, tail_bound]`` (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline
    Flows", RQ-NSF (C)). Images are flattened; the latent has shape ``(D,)``, ``D ≥ 2``.
    """

    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3], "hidden": [8], "num_hidden": [1], "num_bins": [2, 4],
    }

    def _layer(self, dim: int, k: int, **layer_args: Any) -> Transform:
        return RQCoupling((dim,), mask="half", parity=bool(k % 2), conditioner="mlp",
                          **layer_args)


class AutoregressiveSpline(Transform):
    """MADE rational-quadratic autoregressive layer w_d = RQS(z_d; θ_d(z_<d)) (RQ-NSF (AR)).

    Parallel (one MADE pass): every ``w_d = g_d(z_d)`` with the spline parameters ``θ_d`` of
    ``z_<d`` (Durkan et al. 2019, "Neural Spline Flows", §3.2; MADE: Germain et al. 2015), log-det
    ``Σ_d log g_d'(z_d)``; sequential inverse: ``D`` MADE passes, pass ``i`` inverting the ``i``-th
    coordinate in the order. The context enters the MADE unmasked (as in ``maf``).
    """

    input_ranks = (1,)
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [8], "num_hidden": [1, 2], "num_bins": [2, 4], "reverse_order": [False, True],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_bins: NumBins = 8,
        tail_bound: TailBound = 5.0,
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
        if self.event_dim < 2:
            raise ShapeError(f"{owner} needs at least 2 scalars per example (an autoregressive "
                             f"order), but the data has {self.event_dim}.")
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.num_bins = int(num_bins)
        self.tail_bound = float(tail_bound)
        self.reverse_order = bool(reverse_order)
        dim = self.event_dim
        order = list(range(dim - 1, -1, -1)) if self.reverse_order else None
        self.made = MADE(dim, hidden, num_hidden, num_outputs=spline_param_count(self.num_bins),
                         order=order, context_features=context_width(self.context_spec))

    def _params(self, z: Tensor, h: Tensor | None) -> Tensor:
        """Spline parameters ``(B, D, 3K − 1)`` of every coordinate from ``z_<d``."""
        return self.made(z, h).transpose(1, 2)

    def _features(self, z: Tensor, context: Tensor | None) -> Tensor | None:
        return None if self.context_spec is None else self.context_spec.features(
            context, z, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → latent in one MADE pass."""
        self.check_input(x)
        out, log_det = rational_quadratic_spline(x, self._params(x, self._features(x, context)),
                                                 tail_bound=self.tail_bound)
        return out, sum_except_batch(log_det)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent → data in ``D`` MADE passes (pass ``i`` fixes the ``i``-th coordinate)."""
        self.check_input(y, "inverse")
        h = self._features(y, context)
        x = torch.zeros_like(y)
        log_det = torch.zeros_like(y)
        for _ in range(self.event_dim):
            x, log_det = rational_quadratic_spline(y, self._params(x, h), inverse=True,
                                                   tail_bound=self.tail_bound)
        return x, sum_except_batch(log_det)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_bins={self.num_bins}, "
                f"tail_bound={self.tail_bound}, reverse_order={self.reverse_order}")


class RQAutoregressive(_SplineStack):
    """Autoregressive neural spline flow: ``num_layers`` MADE spline layers (Durkan et al. 2019).

    ``num_layers`` :class:`AutoregressiveSpline` layers, ``w_d = g_d(z_d; θ_d(z_<d))`` with
    monotone rational-quadratic splines of ``num_bins`` bins on ``[−tail_bound, tail_bound]``
    (identity outside), the autoregressive order reversed between layers, MADEs of
    ``num_hidden`` × ``hidden`` units (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline
    Flows", RQ-NSF (AR); the spline counterpart of ``maf``). Density in one pass per layer,
    sampling in ``D``. Images are flattened; the latent has shape ``(D,)``, ``D ≥ 2``.
    """

    test_params: ClassVar[dict[str, Any]] = {
        # one layer: D sequential passes per inverse make the float64 Jacobian checks the
        # suite's most expensive; stacks (and the reversed order) are tested in test_splines.py
        "num_layers": [1], "hidden": [8], "num_hidden": [1], "num_bins": [2, 4],
    }

    def _layer(self, dim: int, k: int, **layer_args: Any) -> Transform:
        return AutoregressiveSpline((dim,), reverse_order=bool(k % 2), **layer_args)
