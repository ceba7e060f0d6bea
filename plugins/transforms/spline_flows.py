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

from typing import Annotated, Any, ClassVar

from flowkit.params import Range
from flowkit.plugins.elementwise import RQSpline
from flowkit.plugins.transforms.autoregressive import AutoregressiveLayer, FlatStack
from flowkit.plugins.transforms.coupling import ConditionerKind, Coupling, MaskKind, coupling_rule
from flowkit.plugins.transforms.splines import NumBins, TailBound
from flowkit.transform import Shape, Transform

__all__ = ["NSF", "RQAutoregressive", "RQCoupling"]


class RQCoupling(Coupling):
    """Rational-quadratic spline coupling y_B = RQS(x_B; θ(x_A)) (Durkan et al. 2019, RQ-NSF (C)).

    ``y_A = x_A``; every scalar of ``x_B`` goes through its own monotone rational-quadratic
    spline with ``num_bins`` bins on ``[−tail_bound, tail_bound]`` and identity tails, whose
    ``3·num_bins − 1`` parameters the conditioner computes from ``x_A`` (Durkan, Bekasov, Murray &
    Papamakarios 2019, "Neural Spline Flows", §3; the spline of Gregory & Delbourgo 1982): a
    :class:`~flowkit.plugins.transforms.coupling.Coupling` with the ``rq-spline`` map.
    ``log|det J| = Σ_B log g'(x_B)``; the inverse solves each spline's quadratic in closed form.
    ``mask``, ``parity``, the conditioner (``mlp``/``conv``, ``hidden``, ``num_hidden``,
    ``num_blocks``) and the context are as in ``affine-coupling``.

    Arguments: ``num_bins ≥ 2`` (default 8), ``tail_bound > 0`` (default 5: standardised data
    lie mostly inside).
    """

    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [4, 8],
        "num_hidden": [1],
        "num_blocks": [1],
        "parity": [False, True],
        "num_bins": [2, 3],
        "tail_bound": [2.0, 5.0],
    }
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass

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
        super().__init__(
            event_shape,
            map=RQSpline(num_bins=num_bins, tail_bound=tail_bound),
            mask=mask,
            parity=parity,
            conditioner=conditioner,
            hidden=hidden,
            num_hidden=num_hidden,
            num_blocks=num_blocks,
            conditional=conditional,
            num_classes=num_classes,
            context_features=context_features,
        )


class _SplineStack(FlatStack):
    """``num_layers`` spline layers over the flattened input; subclasses choose the layer.

    The parameters (shared by ``nsf`` and ``rq-autoregressive``): ``num_layers ≥ 1``,
    ``num_bins ≥ 2`` bins on ``[−tail_bound, tail_bound]``, conditioners of ``num_hidden`` ×
    ``hidden`` units, and the context arguments of every conditional transform.
    """

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
        layer_args = {
            "hidden": hidden,
            "num_hidden": num_hidden,
            "conditional": conditional,
            "num_classes": num_classes,
            "context_features": context_features,
        }
        spline = RQSpline(num_bins=num_bins, tail_bound=tail_bound)
        super().__init__(event_shape, num_layers, lambda dim, k: self._layer(dim, k, spline, **layer_args))

    def _layer(self, dim: int, k: int, spline: RQSpline, **layer_args: Any) -> Transform:
        raise NotImplementedError


class NSF(_SplineStack):
    """Neural spline flow of ``num_layers`` rational-quadratic couplings (Durkan et al. 2019).

    ``num_layers`` ``rq-coupling`` layers on the "half" split with alternating parity, MLP
    conditioners of ``num_hidden`` layers of ``hidden`` units, ``num_bins`` bins on
    ``[−tail_bound, tail_bound]`` (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline
    Flows", RQ-NSF (C)). Images are flattened; the latent has shape ``(D,)``, ``D ≥ 2``.
    """

    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3],
        "hidden": [8],
        "num_hidden": [1],
        "num_bins": [2, 4],
    }

    def _layer(self, dim: int, k: int, spline: RQSpline, **layer_args: Any) -> Transform:
        return RQCoupling(
            (dim,),
            num_bins=spline.num_bins,
            tail_bound=spline.tail_bound,
            mask="half",
            parity=bool(k % 2),
            conditioner="mlp",
            **layer_args,
        )


class RQAutoregressive(_SplineStack):
    """Autoregressive neural spline flow: ``num_layers`` MADE spline layers (Durkan et al. 2019).

    ``num_layers`` MADE layers ``w_d = g_d(z_d; θ_d(z_<d))`` with monotone rational-quadratic
    splines of ``num_bins`` bins on ``[−tail_bound, tail_bound]`` (identity outside), the
    autoregressive order reversed between layers, MADEs of ``num_hidden`` × ``hidden`` units
    (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", RQ-NSF (AR); the spline
    counterpart of ``maf``): an ``autoregressive`` flow with the ``rq-spline`` map. Density in one
    pass per layer, sampling in ``D``. Images are flattened; the latent has shape ``(D,)``,
    ``D ≥ 2``.
    """

    test_params: ClassVar[dict[str, Any]] = {
        # one layer: D sequential passes per inverse make the float64 Jacobian checks the
        # suite's most expensive; stacks (and the reversed order) are tested in test_splines.py
        "num_layers": [1],
        "hidden": [8],
        "num_hidden": [1],
        "num_bins": [2, 4],
    }

    def _layer(self, dim: int, k: int, spline: RQSpline, **layer_args: Any) -> Transform:
        return AutoregressiveLayer((dim,), map=spline, reverse_order=bool(k % 2), **layer_args)
