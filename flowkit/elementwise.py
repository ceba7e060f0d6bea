"""Elementwise monotone maps: what a coupling or an autoregressive layer does to each scalar.

A coupling layer (Dinh, Krueger & Bengio 2015, "NICE", §3; Dinh, Sohl-Dickstein & Bengio 2017,
"Real NVP", §3.3) and an autoregressive layer (Papamakarios, Pavlakou & Murray 2017, "MAF",
§3.1; Kingma et al. 2016, "IAF", §4) transform every free scalar ``x_i`` by the same kind of
strictly monotone function, whose parameters ``θ_i`` a conditioner network computes from inputs
that never include ``x_i``::

    y_i = g(x_i; θ_i),     log|det ∂y/∂x| = Σ_i log|∂g(x_i; θ_i)/∂x_i|

(the Jacobian is triangular). The layers differ only in *where* ``θ`` comes from (a split of the
input, or a MADE); the map ``g`` is the same object in both. An :class:`ElementwiseMap` is that
``g`` and nothing more:

* it holds **no trainable parameters** (it is not an ``nn.Module``): everything it reads arrives
  in ``params`` — the conditioner's ``num_params`` outputs per scalar, then one tensor for each
  of its :attr:`~ElementwiseMap.feature_params` (learned per-feature values such as Real NVP's
  log-scale bound, which the *layer* creates and trains);
* ``forward(x, params) -> (y, logdet)`` and ``inverse(y, params) -> (x, logdet)`` act on a batch
  ``x`` of shape ``(B, ...)`` that holds only the transformed scalars; every tensor of ``params``
  broadcasts against ``x``; ``logdet`` has shape ``(B,)``, the sum over the example;
* zero conditioner outputs should give the identity (or close to it,
  :attr:`~ElementwiseMap.identity_at_zero`), because flowkit's conditioners start at zero.

A map is a plugin of the ``flowkit.elementwise`` entry-point group, so a third party adds one
with one class and one entry point, and gets a coupling (``--transform coupling --set
transform.map=NAME``) and an autoregressive flow (``--transform autoregressive``) for free, both
checked by :func:`flowkit.testing.check_elementwise`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, overload

import torch
from torch import Tensor

from flowkit.errors import ConfigError
from flowkit.params import CheckedParameters

__all__ = ["ElementwiseMap", "Inverted", "PackedParams", "build_map", "stacked_params"]


class PackedParams(Sequence[Tensor]):
    """A map's parameters ``θ_1 … θ_P`` that are slices of one conditioner output.

    ``packed`` holds ``θ_p`` at index ``p`` of dimension ``dim`` (an autoregressive layer's MADE
    output ``(B, P, D)``, ``dim = 1``); ``extra`` are the map's feature parameters that follow.
    Indexing gives the same views ``packed.select(dim, p)`` that ``unbind`` would, so any map reads
    it as a plain sequence; a map that wants all ``P`` of them in one tensor calls
    :func:`stacked_params`, which then costs one view instead of unbinding ``P`` tensors and
    stacking them again (two ``P``-way copies per call, forward and backward).
    """

    def __init__(self, packed: Tensor, dim: int, extra: Sequence[Tensor] = ()) -> None:
        self.packed = packed
        self.dim = dim % packed.dim()
        self.extra = tuple(extra)

    def __len__(self) -> int:
        return self.packed.shape[self.dim] + len(self.extra)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Tensor, ...]: ...

    def __getitem__(self, index: int | slice) -> Tensor | tuple[Tensor, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        count = self.packed.shape[self.dim]
        if index < 0:
            index += len(self)
        if 0 <= index < count:
            return self.packed.select(self.dim, index)
        if count <= index < len(self):
            return self.extra[index - count]
        raise IndexError(f"parameter index {index} out of range for {len(self)} parameters")


def stacked_params(params: Sequence[Tensor]) -> Tensor:
    """All of a map's parameters in one tensor, ``θ_p`` at index ``p`` of the last dimension
    (``torch.stack(params, -1)``; a view when ``params`` is a :class:`PackedParams` without
    extra parameters)."""
    if isinstance(params, PackedParams) and not params.extra:
        return params.packed.movedim(params.dim, -1)
    return torch.stack(tuple(params), dim=-1)


class ElementwiseMap(CheckedParameters):
    """Base class of a parameter-free, strictly monotone map ``y_i = g(x_i; θ_i)`` per scalar.

    Subclasses set the class (or instance) attributes below and implement :meth:`forward` and
    :meth:`inverse`. Their constructor's numbers declare ranges as any plugin's do
    (``num_bins: Annotated[int, Range(2)] = 8``); they are checked on every call.

    ``num_params``
        Conditioner outputs per transformed scalar (1 for a shift, 2 for a shift and a log-scale).
    ``feature_params``
        Learned per-feature (per channel, for images) parameters the layer creates for the map:
        ``name → initial value``; they follow the conditioner outputs in ``params``, in this order.
    ``volume_preserving``
        ``True`` when the log-determinant is identically zero.
    ``autoregressive``
        ``True`` when ``y_i`` depends on ``x_i`` and ``θ_i`` alone, as an autoregressive layer
        needs; ``False`` for maps that couple the scalars of an example through ``θ`` (GIN's
        zero-sum log-scales), which only couplings can use.
    ``identity_at_zero``
        ``True`` when zero conditioner outputs (and the initial ``feature_params``) give ``y = x``.
    ``test_params``
        Constructor arguments for the conformance checks; a list value means "one of these".
    """

    num_params: int = 1
    feature_params: Mapping[str, float] = {}
    volume_preserving: ClassVar[bool] = False
    autoregressive: ClassVar[bool] = True
    identity_at_zero: ClassVar[bool] = True
    test_params: ClassVar[dict[str, Any]] = {}

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``y = g(x; θ)`` and ``Σ log|g'(x; θ)|`` per example, shape ``(B,)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``x = g⁻¹(y; θ)`` and ``Σ log|(g⁻¹)'(y; θ)|`` per example (minus the forward's)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """``Name(arg=value, ...)`` for the constructor's arguments kept as attributes."""
        names = inspect.signature(type(self).__init__).parameters
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in names if hasattr(self, k))
        return f"{type(self).__name__}({args})"


class Inverted(ElementwiseMap):
    """The inverse map ``g⁻¹`` as a map: ``forward`` and ``inverse`` of ``base`` swap roles.

    With ``g(z) = z·e^{s} + t`` (an affine map), ``Inverted(g)`` is ``y = (x − t)·e^{−s}``: the
    density direction of MAF (Papamakarios et al. 2017, "MAF", eq. (3),
    ``u_i = (x_i − μ_i)·exp(−α_i)``) and of Glow's learned split prior. Everything else
    (parameters, feature parameters, volume preservation) is ``base``'s.
    """

    def __init__(self, base: ElementwiseMap) -> None:
        self.base = base
        self.num_params = base.num_params
        self.feature_params = base.feature_params
        self.volume_preserving = base.volume_preserving  # type: ignore[misc]
        self.autoregressive = base.autoregressive  # type: ignore[misc]
        self.identity_at_zero = base.identity_at_zero  # type: ignore[misc]

    def forward(self, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``g⁻¹(x; θ)``."""
        return self.base.inverse(x, params)

    def inverse(self, y: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``g(y; θ)``."""
        return self.base.forward(y, params)

    def __repr__(self) -> str:
        return f"Inverted({self.base!r})"


def build_map(spec: str | ElementwiseMap, params: Mapping[str, Any] | None, owner: str) -> ElementwiseMap:
    """The map ``spec`` names (a ``flowkit.elementwise`` plugin, built with ``params``) or is.

    Raises :class:`~flowkit.errors.ConfigError` for parameters given with a map object, or for
    something that is neither a name nor an :class:`ElementwiseMap`; unknown names get the
    registry's list of known maps.
    """
    if isinstance(spec, ElementwiseMap):
        if params:
            raise ConfigError(
                f"{owner}: map_params {dict(params)} were given with a map object "
                f"({spec!r}); build the object with them instead."
            )
        return spec
    if not isinstance(spec, str):
        raise ConfigError(
            f"{owner}: map must be the name of an elementwise map (flowkit list) "
            f"or a flowkit.elementwise.ElementwiseMap, got {spec!r}."
        )
    from flowkit.registry import elementwise

    built: ElementwiseMap = elementwise.build(spec, params or {}, expect=ElementwiseMap)
    return built
