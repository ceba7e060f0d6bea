"""The :class:`Transform` interface: an invertible map with a tractable log-determinant.

A transform ``f`` maps an input ``x`` (the data side) to ``y = f(x)`` (the latent side). Both
directions return the output and ``log|det ∂out/∂in|`` per example, so for a batch ``x`` of shape
``(B, *event_shape)``::

    y, logdet = t(x, context)            # logdet = log|det J_f(x)|,    shape (B,)
    x, logdet_inv = t.inverse(y, context)  # logdet_inv = log|det J_f⁻¹(y)| = -logdet

and the change-of-variables formula gives ``log p_X(x) = log p_Y(f(x)) + log|det J_f(x)|``
(Dinh et al. 2015, "NICE", eq. 1; Rezende & Mohamed 2015).

Every transform knows the per-example shape it takes (``event_shape``) and the shape it returns
(``output_shape``), so architectures can be assembled and checked before any data flows.
``context`` (class labels as a ``LongTensor`` of shape ``(B,)``, or ``None``) is accepted by every
transform; unconditional ones ignore it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from flowkit.errors import ShapeError
from flowkit.params import CheckedParameters

if TYPE_CHECKING:
    from flowkit.reconstruction import Rule

Shape = tuple[int, ...]


class Transform(CheckedParameters, nn.Module):
    """Base class of every invertible transform (plugins subclass it).

    Subclasses implement :meth:`forward` and :meth:`inverse`, both returning ``(out, logabsdet)``
    with ``logabsdet`` of shape ``(batch,)`` on the input's device and dtype. Their constructor's
    numbers declare their ranges (``hidden: Annotated[int, Range(1)] = 64``,
    :mod:`flowkit.params`): every call checks them, from a config or from Python.

    Class attributes that describe the transform to flowkit's tooling:

    ``volume_preserving``
        ``True`` when the log-determinant is identically zero (additive coupling, permutations,
        squeeze); objectives that do not need it may skip it.
    ``input_ranks``
        Which per-example ranks the transform accepts: ``1`` for vectors ``(D,)``, ``3`` for
        images ``(C, H, W)``.
    ``channel_multiple`` / ``size_multiple`` / ``min_channels`` / ``min_size``
        The channel (or, for vectors, feature) count and the image height/width must be multiples
        of / at least these; used by the conformance suite to draw valid shapes.
    ``test_params``
        Small hyper-parameters for the conformance suite; a list value means "draw one of these".
    ``inversion_rule``
        How memory-free backprop (:mod:`flowkit.execution.invertible_backprop`) reconstructs this
        block's input and gradients from its output, instead of storing its activations: a rule of
        :mod:`flowkit.reconstruction` — ``generic_rule`` (inverse, then recomputation: any block
        whose ``inverse`` recovers the input to round-off and whose ``forward`` is deterministic),
        ``reindex_rule`` (parameter-free re-indexings) — or the block's own, cheaper rule.
        ``None`` (the default): the block keeps ordinary autograd. It is read from the class's own
        body only, never inherited: a subclass may change the maths a rule relies on, so it is
        reconstructed only if it declares a rule too (``inversion_rule = Parent.inversion_rule``).
    ``exact_inverse``
        The older, coarser switch, inherited like any attribute: ``True`` means the generic rule
        when the class declares no ``inversion_rule``; ``False`` means never (it overrides any
        rule); ``None`` (the default) leaves the decision to ``inversion_rule``.
    """

    volume_preserving: ClassVar[bool] = False
    input_ranks: ClassVar[tuple[int, ...]] = (1, 3)
    channel_multiple: ClassVar[int] = 1
    size_multiple: ClassVar[int] = 1
    min_channels: ClassVar[int] = 1
    min_size: ClassVar[int] = 1
    test_params: ClassVar[dict[str, Any]] = {}
    inversion_rule: ClassVar[Rule | None] = None
    exact_inverse: ClassVar[bool | None] = None

    def __init__(self, event_shape: Shape, output_shape: Shape | None = None) -> None:
        super().__init__()
        self.event_shape: Shape = tuple(int(s) for s in event_shape)
        self.output_shape: Shape = (
            self.event_shape if output_shape is None else tuple(int(s) for s in output_shape)
        )

    # -- the interface -------------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data-side ``x`` to ``(y, log|det ∂y/∂x|)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map latent-side ``y`` to ``(x, log|det ∂x/∂y|)``."""
        raise NotImplementedError

    # -- helpers for implementations -----------------------------------------------------------
    @property
    def event_dim(self) -> int:
        """Number of scalars in one example (``prod(event_shape)``)."""
        return math.prod(self.event_shape)

    def zero_logdet(self, x: Tensor) -> Tensor:
        """A ``(batch,)`` zero log-determinant on ``x``'s device and dtype."""
        return x.new_zeros(x.shape[0])

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        """Raise :class:`ShapeError` unless ``x`` is ``(batch, *expected)`` for ``direction``."""
        expected = self.event_shape if direction == "forward" else self.output_shape
        if tuple(x.shape[1:]) != expected:
            raise ShapeError(
                f"{type(self).__name__}.{direction} expects inputs of shape (batch, "
                f"{', '.join(map(str, expected))}) but got {tuple(x.shape)}. Build the transform "
                f"for this data shape, or reshape the data (vector transforms take flattened "
                f"inputs; image transforms take (C, H, W))."
            )

    def extra_repr(self) -> str:
        if self.output_shape != self.event_shape:
            return f"event_shape={self.event_shape}, output_shape={self.output_shape}"
        return f"event_shape={self.event_shape}"


def require_rank(name: str, shape: Shape, ranks: tuple[int, ...], hint: str = "") -> None:
    """Raise a :class:`ShapeError` naming the expected and actual shapes if the rank is wrong."""
    if len(shape) not in ranks:
        kinds = " or ".join({1: "vectors (D,)", 3: "images (C, H, W)"}.get(r, f"rank {r}") for r in ranks)
        raise ShapeError(
            f"{name} takes {kinds} per example, but the data has shape {tuple(shape)}."
            + (f" {hint}" if hint else "")
        )


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(dim=1)  # not -1: B may be 0
