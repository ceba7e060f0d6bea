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
from flowkit.plugins.transforms.conditioners import layer_args
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

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", NeurIPS 2019.
    * Gregory & Delbourgo 1982, "Piecewise Rational Quadratic Interpolation to Monotonic Data", IMA Journal of
      Numerical Analysis 2(2).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_bins`` (int in [2, 999], default 8): the number of spline bins ``K`` (``3K − 1`` parameters per
      transformed scalar).
    * ``tail_bound`` (float > 0, default 5.0): the spline acts on ``[−tail_bound, tail_bound]``; outside, the
      identity. The default 5 holds most of standardised data.
    * ``mask`` ('half' | 'alternate' | 'checkerboard' | 'channel' | None, default None): which inputs
      condition (``x_A``): ``'half'`` (the first ``⌊D/2⌋``) or ``'alternate'`` (even indices) for vectors,
      ``'checkerboard'`` (pixels with ``h + w`` even) or ``'channel'`` (the first ``⌊C/2⌋`` channels) for
      images; ``None``: ``'half'`` for vectors, ``'checkerboard'`` for images.
    * ``parity`` (bool, default False): swap the roles of ``x_A`` and ``x_B``.
    * ``conditioner`` ('mlp' | 'conv' | None, default None): the network ``θ(x_A)``: ``'mlp'`` for vectors,
      ``'conv'`` (a residual conv net) for images; ``None``: chosen by the rank.
    * ``hidden`` (int ≥ 1, default 64): hidden units (``mlp``) or channels (``conv``) of the conditioner.
    * ``num_hidden`` (int ≥ 1, default 2): hidden layers of the ``mlp`` conditioner.
    * ``num_blocks`` (int ≥ 0, default 2): residual blocks of the ``conv`` conditioner.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.spline_flows import RQCoupling
        >>> _ = torch.manual_seed(0)
        >>> layer = RQCoupling((4,), num_bins=4, tail_bound=3.0, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in layer.parameters()]  # as if trained
        >>> x = torch.tensor([[0.5, -1.0, 2.0, 10.0]])
        >>> y, logdet = layer(x)
        >>> y[0, 3].item()  # outside [-3, 3] the tails are the identity
        10.0
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
        True
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
        args = layer_args(hidden, num_hidden, conditional, num_classes, context_features)
        spline = RQSpline(num_bins=num_bins, tail_bound=tail_bound)
        super().__init__(event_shape, num_layers, lambda dim, k: self._layer(dim, k, spline, **args))

    def _layer(self, dim: int, k: int, spline: RQSpline, **layer_args: Any) -> Transform:
        raise NotImplementedError


class NSF(_SplineStack):
    """Neural spline flow of ``num_layers`` rational-quadratic couplings (Durkan et al. 2019).

    ``num_layers`` ``rq-coupling`` layers on the "half" split with alternating parity, MLP
    conditioners of ``num_hidden`` layers of ``hidden`` units, ``num_bins`` bins on
    ``[−tail_bound, tail_bound]`` (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline
    Flows", RQ-NSF (C)). Images are flattened; the latent has shape ``(D,)``, ``D ≥ 2``.

    The flow is ``f = c_K ∘ … ∘ c_1`` with ``log|det J_f(x)| = Σ_k log|det J_{c_k}|``, every ``c_k`` a
    coupling ``y_B = RQS(x_B; θ_k(x_A))``, ``y_A = x_A``.

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", NeurIPS 2019.
    * Gregory & Delbourgo 1982, "Piecewise Rational Quadratic Interpolation to Monotonic Data", IMA Journal of
      Numerical Analysis 2(2).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 5): the number of spline couplings ``K``.
    * ``num_bins`` (int in [2, 999], default 8): the number of spline bins ``K`` (``3K − 1`` parameters per
      transformed scalar).
    * ``tail_bound`` (float > 0, default 5.0): the spline acts on ``[−tail_bound, tail_bound]``; outside, the
      identity.
    * ``hidden`` (int ≥ 1, default 64): hidden units of the MLP conditioners.
    * ``num_hidden`` (int ≥ 1, default 2): hidden layers of the MLP conditioners.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.spline_flows import NSF
        >>> _ = torch.manual_seed(0)
        >>> flow = NSF((4,), num_layers=2, num_bins=4, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 4)
        >>> z, logdet = flow(x)
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
        True
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

    References:

    * Durkan, Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", NeurIPS 2019.
    * Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation", ICML
      2015.
    * Gregory & Delbourgo 1982, "Piecewise Rational Quadratic Interpolation to Monotonic Data", IMA Journal of
      Numerical Analysis 2(2).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 5): the number of MADE spline layers.
    * ``num_bins`` (int in [2, 999], default 8): the number of spline bins ``K`` (``3K − 1`` parameters per
      transformed scalar).
    * ``tail_bound`` (float > 0, default 5.0): the spline acts on ``[−tail_bound, tail_bound]``; outside, the
      identity.
    * ``hidden`` (int ≥ 1, default 64): hidden units of each MADE layer.
    * ``num_hidden`` (int ≥ 1, default 2): masked hidden layers of each MADE.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.spline_flows import RQAutoregressive
        >>> _ = torch.manual_seed(0)
        >>> flow = RQAutoregressive((3,), num_layers=2, num_bins=4, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 3)
        >>> z, logdet = flow(x)
        >>> x_back, inv_logdet = flow.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_logdet, -logdet, atol=1e-5)
        (True, True)
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
