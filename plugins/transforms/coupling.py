"""Coupling layers: a split × a conditioner × an elementwise monotone map.

A split cuts the input into a conditioning side ``x_A``, which passes through unchanged, and a
transformed side ``x_B``; a conditioner network computes the parameters ``θ`` of an elementwise
monotone map ``g`` (:mod:`flowkit.elementwise`) from ``x_A`` (and the context); ``g`` maps
``x_B`` (Dinh et al. 2015, "NICE", §3.2; Dinh et al. 2017, "Real NVP", §3.3, eq. (9))::

    y_A = x_A,   y_B = g(x_B; θ(x_A)),   log|det J| = Σ_B log|g'(x_B; θ)|

and the inverse needs only the conditioner's forward pass, on ``y_A = x_A``. :class:`Coupling`
is that one mechanism; NICE's additive coupling, Real NVP's affine coupling, GIN's, Glow's, its
split prior and the neural-spline coupling are configurations of it (a map, a split, a
conditioner), as is the registered ``coupling`` with any map of the ``flowkit.elementwise``
group.

* **Splits** (:mod:`~flowkit.plugins.transforms.masks`): ``"half"``/``"alternate"`` for vectors,
  ``"channel"``/``"checkerboard"`` for images, or an explicit list of conditioning indices along
  dimension 1 (features, or channels). Every split but the checkerboard selects whole features
  (channels), so the layer cuts ``x`` into ``x_A = x[:, cond]`` and ``x_B = x[:, free]`` (one
  ``split`` and one ``cat`` for two contiguous halves); the conditioner reads only ``x_A`` and
  writes only the parameters of ``x_B``. The checkerboard feeds ``m ⊙ x`` to a convolutional
  conditioner and maps the gathered pixels ``x_B`` of every channel.
* **Conditioners** (:mod:`~flowkit.plugins.transforms.conditioners`): ``"mlp"``, ``"conv"`` (or
  ``"resnet"``), ``"glow"``, a name added with ``register_conditioner``, or a factory
  ``(in_channels, out_channels) -> nn.Module`` passed from Python. The context (class labels or a
  real vector, :mod:`flowkit.context`) is appended to the conditioner's input.
* **Maps**: by name (``additive``, ``affine``, ``volume-preserving-affine``, ``rq-spline``, or a
  third party's) with ``map_params``, or as an :class:`~flowkit.elementwise.ElementwiseMap`
  object. Learned per-feature parameters the map declares (``feature_params``, e.g. Real NVP's
  log-scale bound ``scale``) are parameters of the layer, one per feature (per channel).

Named ``mlp``/``conv`` conditioners are built at full size (every feature in, every parameter
out) and then cut to the split (:meth:`MLP.narrow`), so their initial weights and the
random-number stream are those of the masked formulation, and checkpoints of full-size
conditioners still load (the unused rows and columns are dropped).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from flowkit.context import append_context, context_spec, context_width
from flowkit.elementwise import ElementwiseMap, PackedParams, build_map
from flowkit.errors import ConfigError, ShapeError
from flowkit.params import Range
from flowkit.plugins.elementwise import Additive, Affine, VolumePreservingAffine, scaled_tanh
from flowkit.plugins.transforms.conditioners import (
    ConditionerFactory,
    Narrowed,
    conditioner_factory,
)
from flowkit.plugins.transforms.masks import build_split, slice_indices
from flowkit.reconstruction import RuleResult, leaf, vjp
from flowkit.transform import Shape, Transform, require_rank

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "ConditionerKind",
    "Coupling",
    "GINCoupling",
    "MaskKind",
    "coupling_rule",
    "masked_coupling_rule",
    "scaled_tanh",
]

MaskKind = Literal["half", "alternate", "checkerboard", "channel"]
ConditionerKind = Literal["mlp", "conv"]
#: Where the conditioner writes each parameter: ``"blocks"`` (parameter ``p`` of the ``n``
#: transformed features in output channels ``[p·n, (p+1)·n)``) or ``"interleaved"`` (``p::P``).
Layout = Literal["blocks", "interleaved"]


def _default_kinds(
    owner: str,
    event_shape: Shape,
    mask: Any,
    conditioner: Any,
) -> tuple[Any, Any]:
    """Fill in the per-rank defaults and check that ``mlp``/``conv`` fit the rank."""
    is_vector = len(event_shape) == 1
    mask = ("half" if is_vector else "checkerboard") if mask is None else mask
    conditioner = ("mlp" if is_vector else "conv") if conditioner is None else conditioner
    if conditioner == "mlp" and not is_vector:
        raise ShapeError(
            f"{owner}: conditioner='mlp' takes vectors (D,), but the input has image shape "
            f"{tuple(event_shape)}; use conditioner='conv' (the default for images), or flatten "
            f"the data to ({math.prod(event_shape)},) first (e.g. with the 'nice' model)."
        )
    if conditioner == "conv" and is_vector:
        raise ShapeError(
            f"{owner}: conditioner='conv' takes images (C, H, W), but the input has shape "
            f"{tuple(event_shape)}; use conditioner='mlp' (the default for vectors)."
        )
    return mask, conditioner


def coupling_rule(
    block: Coupling,
    y: Tensor,
    context: Tensor | None,
    grad_y: Tensor,
    grad_logdet: Tensor,
    need_input_grad: bool,
    params: list[Tensor],
) -> RuleResult:
    """Memory-free backprop of a coupling: one conditioner pass serves inverse and recomputation.

    ``x_A = y_A`` gives ``θ = net(y_A)`` (graph kept), ``x_B = g⁻¹(y_B; θ)`` without a graph,
    and ``g(x_B; θ)`` is recomputed from the leaf ``x_B``, so one backward gives every gradient:
    ``∂L/∂x_B`` by the map, ``∂L/∂x_A = ∂L/∂y_A + ∂L/∂θ · ∂θ/∂x_A`` (Dinh et al. 2017, "Real NVP",
    eq. (9); Gomez et al. 2017, "The Reversible Residual Network", §3). Exact for any map whose
    inverse is exact; a rule of :mod:`flowkit.reconstruction`'s protocol using only the block's
    public methods (:meth:`Coupling.parts`, :meth:`~Coupling.join`,
    :meth:`~Coupling.conditioner_params`, :meth:`~Coupling.elementwise`).
    """
    y_a, y_b = block.parts(y)
    grad_ya, grad_yb = block.parts(grad_y)
    with torch.enable_grad():
        a_leaf = leaf(y_a, need_input_grad)
        theta = block.conditioner_params(a_leaf, context)
        with torch.no_grad():
            x_b, _ = block.elementwise(y_b, [t.detach() for t in theta], inverse=True)
        b_leaf = leaf(x_b, need_input_grad)
        out_b, logdet = block.elementwise(b_leaf, theta)
        leaves = [b_leaf, a_leaf] if need_input_grad else []
        grads = vjp([out_b, logdet], [grad_yb, grad_logdet], [*leaves, *params])
    x = block.join(y_a, x_b)
    if not need_input_grad:
        return x, None, grads
    grad_a = grad_ya if grads[1] is None else grad_ya + grads[1]
    grad_b = grads[0] if grads[0] is not None else torch.zeros_like(x_b)
    return x, block.join(grad_a, grad_b), grads[2:]


#: The former name of :func:`coupling_rule` (it served the masked couplings only).
masked_coupling_rule = coupling_rule


class Coupling(Transform):
    """Coupling layer y_B = g(x_B; θ(x_A)), y_A = x_A, with any elementwise map (Dinh et al. 2017).

    ``y_A = x_A``, ``y_B = g(x_B; θ(x_A))``, ``log|det J| = Σ_B log|g'(x_B; θ)|``; the inverse
    is ``x_B = g⁻¹(y_B; θ(y_A))`` (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using
    Real NVP", §3.3, eq. (9)). ``map`` names an elementwise map (``flowkit list``: ``additive``,
    ``affine``, ``volume-preserving-affine``, ``rq-spline``, or a third party's) built with
    ``map_params``, or is an ``ElementwiseMap`` object. ``mask`` is ``"half"`` or
    ``"alternate"`` (vectors), ``"checkerboard"`` or ``"channel"`` (images), or a list of the
    conditioning indices along dimension 1; ``parity`` swaps the sides. The conditioner is
    ``"mlp"`` (``num_hidden`` layers of ``hidden`` units), ``"conv"``/``"resnet"`` (``hidden``
    channels, ``num_blocks`` residual blocks), ``"glow"`` (``hidden`` channels), or a factory
    ``(in_channels, out_channels) -> nn.Module`` from Python; its last layer starts at zero.
    With a context (``conditional``), class labels (one-hot) or a real vector are appended to
    the conditioner's input.

    References:

    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.
    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``map`` (str | ElementwiseMap, default 'affine'): the elementwise map ``g``: a registered name
      (``flowkit list elementwise``) or an ``ElementwiseMap`` object.
    * ``map_params`` (dict[str, Any] | None, default None): arguments of the named map, e.g.
      ``{"num_bins": 4}`` for ``rq-spline``; ``None``: its defaults.
    * ``mask`` ('half' | 'alternate' | 'checkerboard' | 'channel' | list[int ≥ 0] | None, default None): which
      inputs condition (``x_A``): ``'half'`` (the first ``⌊D/2⌋``) or ``'alternate'`` (even indices) for
      vectors, ``'checkerboard'`` (pixels with ``h + w`` even) or ``'channel'`` (the first ``⌊C/2⌋`` channels)
      for images; ``None``: ``'half'`` for vectors, ``'checkerboard'`` for images; or a list of the
      conditioning indices along dimension 1.
    * ``parity`` (bool, default False): swap the roles of ``x_A`` and ``x_B``.
    * ``conditioner`` (str | ConditionerFactory | None, default None): the network ``θ(x_A)``: ``'mlp'``,
      ``'conv'``/``'resnet'``, ``'glow'``, or a factory ``(in_channels, out_channels) -> nn.Module``;
      ``None``: ``'mlp'`` for vectors, ``'conv'`` for images.
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
        >>> from flowkit.plugins.transforms.coupling import Coupling
        >>> _ = torch.manual_seed(0)
        >>> layer = Coupling((6,), map="rq-spline", map_params={"num_bins": 4}, hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in layer.parameters()]  # as if trained
        >>> x = torch.randn(8, 6)
        >>> y, logdet = layer(x)
        >>> y.shape, logdet.shape
        (torch.Size([8, 6]), torch.Size([8]))
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
        True
    """

    input_ranks: ClassVar[tuple[int, ...]] = (1, 3)
    min_channels = 2  # vector masks need D ≥ 2; the channel mask needs C ≥ 2
    min_size = 2  # a checkerboard on a 1×1 image leaves nothing to transform
    test_params: ClassVar[dict[str, Any]] = {
        "map": ["affine", "additive", "rq-spline"],
        "hidden": [4, 8],
        "num_hidden": [1],
        "num_blocks": [1],
        "parity": [False, True],
    }
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass
    #: how the conditioner's outputs hold the map's parameters (see :data:`Layout`)
    output_layout: ClassVar[Layout] = "blocks"
    #: ``param_order[i]``: the output block holding the map's ``i``-th parameter (``None``: in order)
    param_order: ClassVar[tuple[int, ...] | None] = None
    #: build a named ``mlp``/``conv`` conditioner at full size, then narrow it to the split
    full_size_init: ClassVar[bool] = True
    # buffers (declared for type checkers: nn.Module types them Tensor | Module); free_positions
    # is None when the sides are slices, and read only when they are not (self.slices is None)
    mask: Tensor
    free_positions: Tensor

    def __init__(
        self,
        event_shape: Shape,
        *,
        map: str | ElementwiseMap = "affine",
        map_params: dict[str, Any] | None = None,
        mask: MaskKind | list[Annotated[int, Range(0)]] | None = None,
        parity: bool = False,
        conditioner: str | ConditionerFactory | None = None,
        hidden: Annotated[int, Range(1)] = 64,
        num_hidden: Annotated[int, Range(1)] = 2,
        num_blocks: Annotated[int, Range(0)] = 2,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        owner = type(self).__name__
        require_rank(
            owner,
            self.event_shape,
            self.input_ranks,
            "Flatten the data for vectors, or give images as (C, H, W).",
        )
        elementwise = build_map(map, map_params, owner)
        mask, conditioner = _default_kinds(owner, self.event_shape, mask, conditioner)
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        self.elementwise_map = elementwise
        self.volume_preserving = elementwise.volume_preserving  # type: ignore[misc]
        split = build_split(mask, self.event_shape, parity, owner)
        self.mask_kind = split.kind
        self.conditioner_kind = (
            conditioner
            if isinstance(conditioner, str)
            else getattr(conditioner, "__name__", type(conditioner).__name__)
        )
        self._effective = {"mask": mask, "conditioner": conditioner}
        self.slices = split.slices
        self.register_buffer("mask", split.mask, persistent=False)
        self.register_buffer("free_positions", split.free_positions, persistent=False)
        self._halves = self._contiguous_halves()
        factory = conditioner_factory(
            conditioner,
            len(self.event_shape),
            owner,
            hidden=hidden,
            num_hidden=num_hidden,
            num_blocks=num_blocks,
        )
        self._build_net(factory, elementwise.num_params, context_width(self.context_spec))
        # learned per-feature (per-channel) parameters of the map, after the network as before
        shape = (self.event_shape[0],) + (1,) * (len(self.event_shape) - 1)
        for name, value in elementwise.feature_params.items():
            if hasattr(self, name):
                raise ConfigError(
                    f"{owner}: the map {elementwise!r} declares a feature parameter "
                    f"{name!r}, a name the coupling already uses; rename it."
                )
            self.register_parameter(name, nn.Parameter(torch.full(shape, float(value))))
        self._feature_names = tuple(elementwise.feature_params)

    def _build_net(self, factory: ConditionerFactory, num_params: int, extra: int) -> None:
        """The conditioner: full-size for the checkerboard; else reading ``x_A`` (and the
        context) and writing the ``num_params`` parameters of ``x_B`` only."""
        channels = self.event_shape[0]
        self._narrowed: Narrowed = {}
        if self.slices is None:
            self.net = factory(channels + extra, num_params * channels)
            return
        cond = slice_indices(self.slices.cond, channels)
        free = slice_indices(self.slices.free, channels)
        if not (self.full_size_init and getattr(factory, "narrowable", False)):
            self.net = factory(len(cond) + extra, num_params * len(free))
            return
        self.net = factory(channels + extra, num_params * channels)
        inputs = cond + list(range(channels, channels + extra))
        if self.output_layout == "blocks":
            outputs = [p * channels + j for p in range(num_params) for j in free]
        else:
            outputs = [j * num_params + p for j in free for p in range(num_params)]
        narrowed = self.net.narrow(inputs, outputs)  # type: ignore[operator]
        self._narrowed = {f"net.{k}": v for k, v in narrowed.items()}
        self._full_sizes = {"inputs": channels + extra, "outputs": num_params * channels}

    def _contiguous_halves(self) -> tuple[bool, int, int] | None:
        """``(cond first, |A|, |B|)`` when the two sides are contiguous blocks of dimension 1."""
        if self.slices is None or not all(isinstance(s, slice) and (s.step or 1) == 1 for s in self.slices):
            return None
        cond, free = self.slices
        assert isinstance(cond, slice) and isinstance(free, slice)
        return cond.start == 0, cond.stop - cond.start, free.stop - free.start

    # -- the public face of the mechanism (what coupling_rule uses) -----------------------------
    @property
    def sliced(self) -> bool:
        """``True`` when the sides are whole features (channels) ``x[:, cond]``, ``x[:, free]``
        (:attr:`slices`); ``False`` for the checkerboard (:attr:`mask`, :attr:`free_positions`)."""
        return self.slices is not None

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_A, x_B)``: the conditioner's input and the transformed scalars.

        Sliced: ``x[:, cond]`` and ``x[:, free]`` (two views for contiguous halves). Checkerboard:
        ``m ⊙ x`` (full size) and the transformed pixels of every channel, ``(B, C, H·W/2)``.
        """
        if self.slices is None:
            gathered = x.flatten(2).index_select(2, self.free_positions)
            return self.mask.to(dtype=x.dtype) * x, gathered
        if self._halves is not None:
            cond_first, n_cond, n_free = self._halves
            first, second = x.split([n_cond, n_free] if cond_first else [n_free, n_cond], dim=1)
            return (first, second) if cond_first else (second, first)
        return x[:, self.slices.cond], x[:, self.slices.free]

    def join(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        """The full tensor with the conditioning entries of ``x_a`` and the transformed ``y_b``."""
        if self.slices is None:
            flat = x_a.flatten(2).index_copy(2, self.free_positions, y_b)
            return flat.reshape(x_a.shape)
        if self._halves is not None:
            # (``split``'s backward is one concatenation; two slices would each scatter their
            # gradient into a zero-filled full-size tensor)
            return torch.cat([x_a, y_b] if self._halves[0] else [y_b, x_a], dim=1)
        out = x_a.new_empty(x_a.shape[0], *self.event_shape)
        out[:, self.slices.cond] = x_a
        out[:, self.slices.free] = y_b
        return out

    def conditioner_params(self, x_a: Tensor, context: Tensor | None) -> Sequence[Tensor]:
        """The map's ``num_params`` parameters of ``x_B``, each shaped like :meth:`parts`'s
        ``x_B``, from ``x_A`` (and the context's features when conditional): views of the
        conditioner's output, packed (:class:`~flowkit.elementwise.PackedParams`) so that a map
        that wants them in one tensor (the spline) gets a view, not a stack."""
        h = x_a
        if self.context_spec is not None:
            h = append_context(h, self.context_spec.features(context, x_a, type(self).__name__))
        out = self.net(h)
        if self.slices is None:
            out = out.flatten(2).index_select(2, self.free_positions)
        count = self.elementwise_map.num_params
        if self.param_order is None:  # θ_p = out[:, p·n:(p+1)·n] (blocks) or out[:, p::count]
            if self.output_layout == "blocks":
                return PackedParams(out.unflatten(1, (count, -1)), 1)
            return PackedParams(out.unflatten(1, (-1, count)), 2)
        if self.output_layout == "blocks":
            found = out.chunk(count, dim=1)
        else:
            found = tuple(out[:, p::count] for p in range(count))
        return found if self.param_order is None else tuple(found[i] for i in self.param_order)

    def elementwise(
        self,
        x_b: Tensor,
        params: Sequence[Tensor],
        inverse: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``g(x_b; θ)`` (or ``g⁻¹``) and its log-determinant, ``θ`` being
        :meth:`conditioner_params`'s outputs followed by the map's feature parameters."""
        features = tuple(getattr(self, name) for name in self._feature_names)
        if features:
            if self.slices is None:
                features = tuple(f.flatten(1) for f in features)  # (C, 1, 1) → (C, 1)
            else:
                features = tuple(f[self.slices.free] for f in features)
        apply = self.elementwise_map.inverse if inverse else self.elementwise_map.forward
        if isinstance(params, PackedParams):
            return apply(x_b, PackedParams(params.packed, params.dim, (*params.extra, *features)))
        return apply(x_b, (*params, *features))

    # -- the Transform interface ---------------------------------------------------------------
    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        x_a, x_b = self.parts(x)
        y_b, logdet = self.elementwise(x_b, self.conditioner_params(x_a, context), inverse)
        return self.join(x_a, y_b), logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = (x_A, g(x_B; θ(x_A)))`` and ``Σ log|g'|``."""
        self.check_input(x)
        return self._couple(x, context, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = (y_A, g⁻¹(y_B; θ(y_A)))`` and ``−Σ log|g'|``."""
        self.check_input(y, "inverse")
        return self._couple(y, context, inverse=True)

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for this plugin's unset keys (``mask``,
        ``conditioner``: per-rank defaults), for recording the resolved config."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: v for k, v in self._effective.items() if k in names and isinstance(v, (str, list))}

    # -- checkpoints of older layouts --------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load checkpoints of older layouts: drop the mask (saved before it was derived from the
        configuration), and the unused rows and columns of full-size conditioners' first and last
        layers (written before the conditioner was narrowed; they only ever multiplied zeros)."""
        state_dict.pop(prefix + "mask", None)
        for name, (dim, index) in self._narrowed.items():
            key = prefix + name
            value = state_dict.get(key)
            full = self._full_sizes["inputs" if dim == 1 else "outputs"]
            if (
                isinstance(value, Tensor)
                and value.dim() > dim
                and value.shape[dim] == full
                and full != len(index)
            ):
                where = torch.tensor(index, dtype=torch.long, device=value.device)
                state_dict[key] = value.index_select(dim, where)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, map={self.elementwise_map!r}, mask={self.mask_kind!r}, "
            f"conditioner={self.conditioner_kind!r}, conditional={self.conditional}"
        )


class _NamedCoupling(Coupling):
    """A coupling whose class fixes the map (``default_map``): the masked couplings' keys."""

    default_map: ClassVar[ElementwiseMap]
    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [4, 8],
        "num_hidden": [1],
        "num_blocks": [1],
        "parity": [False, True],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
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
            map=self.default_map,
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


class AdditiveCoupling(_NamedCoupling):
    """Additive coupling layer y_B = x_B + t(x_A) (NICE, Dinh et al. 2015); volume preserving.

    ``y_A = x_A``, ``y_B = x_B + t(x_A)``; inverse ``x_B = y_B − t(y_A)``; ``log|det J| = 0``
    (Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", §3.2,
    eq. (4)-(5)): a :class:`Coupling` with the ``additive`` map. ``x_A``/``x_B`` are chosen by
    ``mask`` ("half" or "alternate" for vectors, "checkerboard" or "channel" for images) and
    ``parity`` swaps them; ``t`` is an MLP (``hidden`` units × ``num_hidden`` layers) or a
    residual conv net (``hidden`` channels, ``num_blocks`` blocks). With ``conditional=true``
    one-hot class labels are fed to ``t``.

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
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
        >>> from flowkit.plugins.transforms.coupling import AdditiveCoupling
        >>> _ = torch.manual_seed(0)
        >>> layer = AdditiveCoupling((4,), hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in layer.parameters()]  # as if trained
        >>> x = torch.randn(8, 4)
        >>> y, logdet = layer(x)
        >>> logdet.abs().max().item()  # volume preserving
        0.0
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-6)
        True
    """

    default_map = Additive()
    volume_preserving = True
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass


class AffineCoupling(_NamedCoupling):
    """Affine coupling layer y_B = x_B ⊙ exp(s(x_A)) + t(x_A) (Real NVP, Dinh et al. 2017).

    ``y_A = x_A``, ``y_B = x_B ⊙ exp(s(x_A)) + t(x_A)``; inverse
    ``x_B = (y_B − t(y_A)) ⊙ exp(−s(y_A))``; ``log|det J| = Σ_j s_j(x_A)`` (Dinh, Sohl-Dickstein &
    Bengio 2017, "Density estimation using Real NVP", §3.3, eq. (6)-(9)): a :class:`Coupling`
    with the ``affine`` map and its ``tanh`` scale, ``s = scale ⊙ tanh(s_raw)`` with ``scale`` a
    learnable per-feature (vectors) or per-channel (images) factor initialised to 1, as in the
    authors' implementation, so that early training cannot produce huge scales. The conditioner
    writes ``s_raw`` before ``t``. ``mask``, ``parity``, the conditioner and ``conditional`` are
    as in ``additive-coupling``.

    References:

    * Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP", ICLR 2017.

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
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
        >>> from flowkit.plugins.transforms.coupling import AffineCoupling
        >>> _ = torch.manual_seed(0)
        >>> layer = AffineCoupling((4,), hidden=16)
        >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in layer.parameters()]  # as if trained
        >>> x = torch.randn(8, 4)
        >>> y, logdet = layer(x)
        >>> x_back, inv_logdet = layer.inverse(y)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(inv_logdet, -logdet, atol=1e-6)
        (True, True)
    """

    default_map = Affine(scale="tanh")
    param_order = (1, 0)  # the conditioner's outputs are (s_raw, t); the map's are (t, s_raw)
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass


class GINCoupling(_NamedCoupling):
    """GIN coupling: affine coupling with zero-sum log-scales, so log|det J| = 0 (GIN §3).

    ``y_A = x_A``, ``y_B = x_B ⊙ exp(s(x_A)) + t(x_A)`` with ``s = ŝ − mean(ŝ)`` over the
    transformed entries ``B`` and ``ŝ = scale ⊙ tanh(raw)`` the bounded log-scale of
    ``affine-coupling``; hence ``Σ_j s_j = 0`` and ``log|det J| = 0`` exactly (Sorrenson, Rother &
    Köthe 2020, "Disentanglement by Nonlinear ICA with General Incompressible-flow Networks
    (GIN)", §3; the affine coupling is Dinh et al. 2017, "Real NVP", eq. (6)-(9)): a
    :class:`Coupling` with the ``volume-preserving-affine`` map. Masks, conditioners and
    ``conditional`` are as in ``affine-coupling``. When only one entry is transformed, ``s = 0``
    and the block is additive.
    """

    default_map = VolumePreservingAffine(scale="tanh")
    param_order = (1, 0)
    volume_preserving = True
    inversion_rule = coupling_rule  # memory-free backprop: one conditioner pass
