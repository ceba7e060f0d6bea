"""Autoregressive flows: one MADE conditioner × any elementwise map (MAF, IAF, spline, …).

One layer applies an elementwise monotone map (:mod:`flowkit.elementwise`) to every coordinate,
its parameters a :class:`~flowkit.plugins.transforms.made.MADE` output of the coordinates before
it in the order (Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density
Estimation", §3.1; Germain et al. 2015, "MADE")::

    parallel:    w_d = g(z_d; θ_d(z_<d))        one MADE pass: every z_<d is known
    sequential:  z_d = g⁻¹(w_d; θ_d(z_<d))      D passes: z_d is known once z_<d is

and ``log|det ∂w/∂z| = Σ_d log g'(z_d; θ_d)`` (the Jacobian is triangular in the order).
``direction="maf"`` makes the parallel map flowkit's ``forward`` (data → latent: fast density,
slow sampling); ``"iaf"`` makes it ``inverse`` (latent → data: fast sampling, slow density;
Kingma et al. 2016, "Improving Variational Inference with Inverse Autoregressive Flow", §4). With
the same weights an IAF layer *is* a MAF layer run backwards (Papamakarios et al. 2017, §3.2).

MAF and IAF use the inverse of the affine map with the soft-clamped log-scale, so the parallel
map is ``w_d = (z_d − μ_d) · exp(−α_d)`` with ``α = 5 tanh(α_raw / 5)`` (eq. (3) of Papamakarios
et al.); ``rq-autoregressive`` uses the rational-quadratic spline (Durkan et al. 2019, "Neural
Spline Flows", RQ-NSF (AR)); the registered ``autoregressive`` takes any map by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from flowkit.composition import Architecture, Flatten, Sequential
from flowkit.context import context_spec, context_width
from flowkit.elementwise import ElementwiseMap, Inverted, PackedParams, build_map
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Range
from flowkit.plugins.elementwise import LOG_SCALE_BOUND, Affine, soft_clamp
from flowkit.plugins.transforms.conditioners import layer_args
from flowkit.plugins.transforms.made import MADE
from flowkit.transform import Shape, Transform, require_rank

__all__ = [
    "IAF",
    "LOG_SCALE_BOUND",
    "MAF",
    "MAF_MAP",
    "Autoregressive",
    "AutoregressiveLayer",
    "FlatStack",
    "soft_clamp",
]

Direction = Literal["maf", "iaf"]

#: MAF's and IAF's map: ``w = (z − μ) ⊙ exp(−α)``, ``α = 5 tanh(α_raw / 5)``, parameters ``(μ, α_raw)``.
MAF_MAP = Inverted(Affine(scale="soft-clamp", shift_first=False))


def _require_vector_size(owner: str, dim: int) -> None:
    if dim < 2:
        raise ShapeError(
            f"{owner} needs at least 2 scalars per example (two halves to couple, or an "
            f"autoregressive order over D ≥ 2 variables), but the data has {dim}. Use a "
            f"transform for 1-d data, e.g. a diagonal scaling."
        )


class AutoregressiveLayer(Transform):
    """One MADE autoregressive layer w_d = g(z_d; θ_d(z_<d)) with any elementwise map g.

    Parallel map (one MADE pass): ``w_d = g(z_d; θ_d(z_<d))``, log-det ``Σ_d log g'(z_d)``;
    sequential inverse (``D`` passes): pass ``i`` fixes the ``i``-th coordinate in the order,
    ``z_d = g⁻¹(w_d; θ_d(z_<d))``, so after ``D`` passes every coordinate and the log-det are
    exact (Papamakarios et al. 2017, "MAF", §3.1-3.2; Kingma et al. 2016, "IAF", §4; MADE:
    Germain et al. 2015). ``direction="maf"`` makes the parallel map ``forward``, ``"iaf"``
    ``inverse``. ``map`` names an elementwise map (``map_params`` its arguments) or is an
    ``ElementwiseMap`` whose scalars are independent given their parameters (``autoregressive``).
    The MADE has ``num_hidden`` masked layers of ``hidden`` ReLU units and a zero-initialised
    output; ``reverse_order`` reverses the order (input degrees ``D..1``), used between stacked
    layers. A context (one-hot labels or a real vector) enters the MADE unmasked.
    """

    input_ranks = (1,)
    min_channels = 2
    test_params: ClassVar[dict[str, Any]] = {
        "map": ["affine", "rq-spline"],
        "hidden": [8],
        "num_hidden": [1, 2],
        "direction": ["maf", "iaf"],
        "reverse_order": [False, True],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        map: str | ElementwiseMap = "affine",
        map_params: dict[str, Any] | None = None,
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
        elementwise = build_map(map, map_params, owner)
        if not elementwise.autoregressive:
            raise ConfigError(
                f"{owner}: the map {elementwise!r} couples the scalars of an example "
                f"through its parameters, so it cannot be autoregressive; use it in "
                f"a coupling."
            )
        if direction not in ("maf", "iaf"):
            raise ConfigError(f"{owner}: direction must be 'maf' or 'iaf', got {direction!r}.")
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.elementwise_map = elementwise
        self.volume_preserving = elementwise.volume_preserving  # type: ignore[misc]
        self.direction: Direction = direction
        self.reverse_order = bool(reverse_order)
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        dim = self.event_dim
        order = list(range(dim - 1, -1, -1)) if self.reverse_order else None
        self.made = MADE(
            dim,
            hidden,
            num_hidden,
            num_outputs=elementwise.num_params,
            order=order,
            context_features=context_width(self.context_spec),
        )
        for name, value in elementwise.feature_params.items():
            if hasattr(self, name):
                raise ConfigError(
                    f"{owner}: the map {elementwise!r} declares a feature parameter "
                    f"{name!r}, a name the layer already uses; rename it."
                )
            self.register_parameter(name, nn.Parameter(torch.full((dim,), float(value))))
        self._feature_names = tuple(elementwise.feature_params)

    # -- the conditioner -----------------------------------------------------------------------
    def _features(self, z: Tensor, context: Tensor | None) -> Tensor | None:
        """The MADE's context input: one-hot labels or the real-valued context (or ``None``)."""
        if self.context_spec is None:
            return None
        return self.context_spec.features(context, z, type(self).__name__)

    def _params(self, z: Tensor, features: Tensor | None) -> Sequence[Tensor]:
        """One MADE pass: the map's parameters of every coordinate from ``z_<d``, then the
        map's feature parameters."""
        made = self.made(z, features)  # (B, num_params, D)
        return PackedParams(made, 1, tuple(getattr(self, name) for name in self._feature_names))

    def conditioner_params(self, z: Tensor, context: Tensor | None) -> Sequence[Tensor]:
        """The map's parameters ``θ_d(z_<d)`` of every coordinate, each ``(B, D)``, and its
        feature parameters."""
        return self._params(z, self._features(z, context))

    # -- the two maps --------------------------------------------------------------------------
    def _parallel(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``w = g(z; θ(z))`` in one MADE pass."""
        return self.elementwise_map.forward(z, self.conditioner_params(z, context))

    def _sequential(self, w: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """Solve ``w = g(z; θ(z))`` for ``z`` with ``D`` MADE passes."""
        features = self._features(w, context)
        z = torch.zeros_like(w)
        logdet = w.new_zeros(w.shape[0])
        for _ in range(self.event_dim):  # pass i fixes the i-th coordinate in the order
            z, logdet = self.elementwise_map.inverse(w, self._params(z, features))
        return z, logdet

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
        return (
            f"{super().extra_repr()}, map={self.elementwise_map!r}, "
            f"direction={self.direction!r}, reverse_order={self.reverse_order}, "
            f"conditional={self.conditional}"
        )


class FlatStack(Architecture):
    """``num_layers`` layers on the flattened input (``Flatten`` first for images; ``D ≥ 2``).

    The shell of the stacked flows (``maf``, ``iaf``, ``nsf``, ``rq-autoregressive``,
    ``autoregressive``): ``layer(dim, k)`` builds the ``k``-th layer on vectors ``(D,)``. The
    latent has shape ``(D,)`` with ``D`` the number of input scalars.
    """

    input_ranks = (1, 3)
    min_channels = 2  # vectors need D ≥ 2 (images only need C·H·W ≥ 2)

    def __init__(self, event_shape: Shape, num_layers: int, layer: Callable[[int, int], Transform]) -> None:
        owner = type(self).__name__
        shape = tuple(int(s) for s in event_shape)
        require_rank(
            owner,
            shape,
            self.input_ranks,
            "Give vectors as (D,) or images as (C, H, W); images are flattened.",
        )
        dim = math.prod(shape)
        super().__init__(shape, (dim,))
        _require_vector_size(owner, dim)
        steps: list[Transform] = [] if len(shape) == 1 else [Flatten(shape)]
        steps += [layer(dim, k) for k in range(num_layers)]
        self.flow = Sequential(steps)


def _made_layers(
    elementwise: ElementwiseMap, direction: Direction, args: Mapping[str, Any]
) -> Callable[[int, int], Transform]:
    """``layer(dim, k)`` of a :class:`FlatStack` of MADE layers (``maf``, ``iaf``, ``autoregressive``).

    The ``k``-th layer is an :class:`AutoregressiveLayer` with the map ``elementwise`` in
    ``direction``, its autoregressive order reversed when ``k`` is odd; ``args``
    (:func:`~flowkit.plugins.transforms.conditioners.layer_args`) are the same for every layer.
    """
    return lambda dim, k: AutoregressiveLayer(
        (dim,), map=elementwise, direction=direction, reverse_order=bool(k % 2), **args
    )


class _AffineAutoregressive(FlatStack):
    """A stack of MADE affine layers in one direction, alternating the order (MAF, IAF)."""

    direction: ClassVar[Direction] = "maf"
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3],
        "hidden": [8],
        "num_hidden": [1, 2],
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
        context_spec(type(self).__name__, conditional, num_classes, context_features)  # checks it
        args = layer_args(hidden, num_hidden, conditional, num_classes, context_features)
        layers = _made_layers(MAF_MAP, self.direction, args)
        super().__init__(event_shape, num_layers, layers)


class MAF(_AffineAutoregressive):
    """Masked Autoregressive Flow: MADE affine layers, one-pass density (Papamakarios et al. 2017).

    ``num_layers`` layers ``u_d = (x_d − μ_d(x_<d)) · exp(−α_d(x_<d))``, ``log|det J| = −Σ_d α_d``,
    with ``(μ, α)`` from a MADE of ``num_hidden`` masked layers of ``hidden`` ReLU units and the
    autoregressive order reversed between layers (Papamakarios, Pavlakou & Murray 2017, "Masked
    Autoregressive Flow for Density Estimation", §3.1-3.2; MADE: Germain et al. 2015). Cost:
    ``forward`` (density) is one MADE pass per layer; ``inverse`` (sampling) is sequential, ``D``
    passes per layer. ``α = 5 tanh(α_raw / 5)`` for stability. Images are flattened; the latent
    has shape ``(D,)``, ``D ≥ 2``. ``conditional=true`` feeds one-hot labels to every MADE.

    References:

    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    * Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation", ICML
      2015.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 5): the number of MADE affine layers.
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
        >>> from flowkit.plugins.transforms.autoregressive import MAF
        >>> _ = torch.manual_seed(0)
        >>> flow = MAF((3,), num_layers=2, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 3)
        >>> z, logdet = flow(x)
        >>> x_back, inv_logdet = flow.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_logdet, -logdet, atol=1e-5)
        (True, True)
    """

    direction = "maf"


class IAF(_AffineAutoregressive):
    """Inverse Autoregressive Flow: MADE affine layers, one-pass sampling (Kingma et al. 2016).

    The MAF layers run the other way: ``inverse`` (latent → data, sampling) is the parallel map
    ``x_d = (u_d − μ_d(u_<d)) · exp(−α_d(u_<d))``, i.e. ``x = u ⊙ exp(α'(u)) + μ'(u)`` with
    ``α' = −α``, ``μ' = −μ e^{−α}`` (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016,
    "Improving Variational Inference with Inverse Autoregressive Flow", §4, eq. (10)-(11);
    Papamakarios et al. 2017, "MAF", §3.2), one MADE pass per layer; ``forward`` (data → latent,
    density) is sequential, ``D`` passes per layer, so maximum-likelihood training is ``D`` times
    slower than MAF's. Parameters, order reversal, the soft bound on ``α``, flattening and
    ``conditional`` are as in ``maf``.

    References:

    * Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improving Variational Inference with
      Inverse Autoregressive Flow", NeurIPS 2016.
    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 5): the number of MADE affine layers.
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
        >>> from flowkit.plugins.transforms.autoregressive import IAF
        >>> _ = torch.manual_seed(0)
        >>> flow = IAF((3,), num_layers=2, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> u = torch.randn(8, 3)
        >>> x, logdet = flow.inverse(u)  # sampling: one MADE pass per layer
        >>> u_back, fwd_logdet = flow(x)
        >>> torch.allclose(u_back, u, atol=1e-5), torch.allclose(fwd_logdet, -logdet, atol=1e-5)
        (True, True)
    """

    direction = "iaf"


class Autoregressive(FlatStack):
    """Autoregressive flow with any elementwise map: MADE layers w_d = g(z_d; θ_d(z_<d)).

    ``num_layers`` :class:`AutoregressiveLayer` layers with the order reversed between them
    (Papamakarios et al. 2017, "MAF", §3.1-3.2; MADE: Germain et al. 2015), each with its own
    MADE of ``num_hidden`` × ``hidden`` units and the elementwise map ``map`` (``flowkit list``:
    ``affine``, ``additive``, ``rq-spline``, or a third party's), built with ``map_params``. In
    ``direction="maf"`` the map's forward is the density direction (one pass per layer;
    sampling takes ``D``), in ``"iaf"`` it is the sampling direction. Images are flattened; the
    latent has shape ``(D,)``, ``D ≥ 2``. ``conditional=true`` feeds the context to every MADE.

    References:

    * Papamakarios, Pavlakou & Murray 2017, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    * Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation", ICML
      2015.
    * Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improving Variational Inference with
      Inverse Autoregressive Flow", NeurIPS 2016.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``map`` (str | ElementwiseMap, default 'affine'): the elementwise map ``g``: a registered name
      (``flowkit list elementwise``) or an ``ElementwiseMap`` object whose ``autoregressive`` is true.
    * ``map_params`` (dict[str, Any] | None, default None): arguments of the named map; ``None``: its
      defaults.
    * ``direction`` ('maf' | 'iaf', default 'maf'): ``'maf'``: the map's forward is the density direction (one
      pass per layer); ``'iaf'``: it is the sampling direction.
    * ``num_layers`` (int ≥ 1, default 5): the number of autoregressive layers.
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
        >>> from flowkit.plugins.transforms.autoregressive import Autoregressive
        >>> _ = torch.manual_seed(0)
        >>> flow = Autoregressive((3,), map="affine", map_params={"scale": "soft-clamp"}, num_layers=2)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in flow.parameters()]  # as if trained
        >>> x = torch.randn(8, 3)
        >>> z, logdet = flow(x)  # density: one MADE pass per layer
        >>> x_back, inv_logdet = flow.inverse(z)  # sampling: D passes per layer
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(inv_logdet, -logdet, atol=1e-5)
        (True, True)
    """

    test_params: ClassVar[dict[str, Any]] = {
        "map": ["affine", "rq-spline", "additive"],
        "num_layers": [2, 1],
        "hidden": [8],
        "num_hidden": [1],
        "direction": ["maf", "iaf"],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        map: str | ElementwiseMap = "affine",
        map_params: dict[str, Any] | None = None,
        direction: Direction = "maf",
        num_layers: Annotated[int, Range(1)] = 5,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        owner = type(self).__name__
        context_spec(owner, conditional, num_classes, context_features)  # checks the choice
        elementwise = build_map(map, map_params, owner)
        args = layer_args(hidden, num_hidden, conditional, num_classes, context_features)
        layers = _made_layers(elementwise, direction, args)
        super().__init__(event_shape, num_layers, layers)
        self.volume_preserving = elementwise.volume_preserving  # type: ignore[misc]
