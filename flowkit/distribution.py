"""A flow as a ``torch.distributions.Distribution``: ``flow(c)`` is ``p(x | c)``.

:class:`FlowDistribution` wraps a :class:`~flowkit.model.Flow` and a context, so a flow fits any
code written for ``torch.distributions`` (a training loop ``loss = -flow(c).log_prob(x).mean()``,
a variational family, a simulation-based-inference posterior)::

    flow = flowkit.flows.MAF(features=6, context=2)
    loss = -flow(c).log_prob(x).mean()            # c: (B, 2), x: (B, 6)
    theta = flow(c_obs).sample((1000,))           # c_obs: (2,) → (1000, 6)

Shapes follow ``torch.distributions``: the batch shape is the context's leading shape (``()``
for one context vector or for an unconditional flow), the event shape is the data's per-example
shape; ``log_prob(x)`` takes ``x`` of shape ``(*sample, *batch, *event)`` and ``sample(s)``
returns ``(*s, *batch, *event)``. The densities are exact (change of variables, Rezende &
Mohamed 2015, eq. (1)); :meth:`FlowDistribution.rsample_and_log_prob` gets both from one inverse
pass, ``log p(x) = log p_Z(z) − log|det ∂x/∂z|``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

from flowkit.errors import ShapeError

if TYPE_CHECKING:
    from flowkit.model import Flow

#: A shape as torch's :class:`Distribution` methods take it (``torch.types._size``).
_SizeLike = Size | list[int] | tuple[int, ...]


class FlowDistribution(Distribution):
    """``p(x | context)`` of a :class:`~flowkit.model.Flow` (build it with ``flow(context)``).

    ``context`` is ``None`` (unconditional flows), class labels of shape ``(*batch,)``, or a
    real-valued context of shape ``(*batch, *context_shape)`` (``(k,)`` for one observation,
    ``(B, k)`` for a batch of them).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None = None) -> None:
        self.flow = flow
        self.context = context
        self._context_rank = self._rank_of(context)
        batch_shape = Size() if context is None else context.shape[: context.dim() - self._context_rank]
        super().__init__(batch_shape, Size(flow.event_shape), validate_args=False)

    def _rank_of(self, context: Tensor | None) -> int:
        """Number of trailing context dimensions that make up one example's context."""
        shape = self.flow.context_shape
        if context is None:
            return 0
        if shape is None:  # class labels (or a float context the flow will refuse by name)
            if context.is_floating_point():
                self.flow.embed_context(context)  # raises the model's clear error
            return 0
        rank = len(shape)
        if (
            context.dim() < rank
            or tuple(context.shape[context.dim() - rank :])[1:] != shape[1:]
            or (
                not getattr(self.flow.embedding, "variable_leading", False)
                and tuple(context.shape[context.dim() - rank :]) != shape
            )
        ):
            raise ShapeError(
                f"the context of this flow has shape (*batch, {', '.join(map(str, shape))}), but "
                f"got {tuple(context.shape)}"
            )
        return rank

    # -- shapes ----------------------------------------------------------------------------------
    def _flat_context(self, sample_shape: Size) -> Tensor | None:
        """The context repeated for ``sample_shape`` and flattened to one per example."""
        if self.context is None:
            return None
        per_example = self.context.shape[self.context.dim() - self._context_rank :]
        expanded = self.context.expand(*sample_shape, *self.context.shape)
        return expanded.reshape(-1, *per_example)

    def _split_value(self, x: Tensor) -> Size:
        """The sample shape of ``x`` (``(*sample, *batch, *event)``); checks the trailing shape."""
        tail = (*self.batch_shape, *self.event_shape)
        if x.dim() < len(tail) or tuple(x.shape[x.dim() - len(tail) :]) != tail:
            raise ShapeError(
                f"log_prob expects values of shape (*sample, {', '.join(map(str, tail))}) (batch "
                f"shape {tuple(self.batch_shape)}, event shape {tuple(self.event_shape)}), but "
                f"got {tuple(x.shape)}"
            )
        return x.shape[: x.dim() - len(tail)]

    # -- the distribution --------------------------------------------------------------------------
    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log p(x | context)``, shape ``(*sample, *batch)``."""
        sample_shape = self._split_value(value)
        lead = (*sample_shape, *self.batch_shape)
        x = value.reshape(math.prod(lead), *self.event_shape)
        return self.flow.log_prob(x, self._flat_context(sample_shape)).reshape(lead)

    def rsample_and_log_prob(self, sample_shape: _SizeLike = ()) -> tuple[Tensor, Tensor]:
        """Reparameterised samples ``(*sample, *batch, *event)`` and their log-densities."""
        sample_shape = Size(sample_shape)
        lead = (*sample_shape, *self.batch_shape)
        x, log_p = self.flow.sample_and_log_prob(math.prod(lead), self._flat_context(sample_shape))
        return x.reshape(*lead, *self.event_shape), log_p.reshape(lead)

    def rsample(self, sample_shape: _SizeLike = ()) -> Tensor:
        """Reparameterised samples: gradients reach the flow's parameters (and the context)."""
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: _SizeLike = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def sample_and_log_prob(self, sample_shape: _SizeLike = ()) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)

    def expand(self, batch_shape: _SizeLike, _instance: object = None) -> FlowDistribution:
        batch_shape = Size(batch_shape)
        if self.context is None:
            if batch_shape:
                raise ShapeError(
                    "an unconditional flow has batch shape (); give it a batch of "
                    "contexts instead of expanding it"
                )
            return self
        per_example = self.context.shape[self.context.dim() - self._context_rank :]
        return FlowDistribution(self.flow, self.context.expand(*batch_shape, *per_example))

    def __repr__(self) -> str:
        return (
            f"FlowDistribution(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"
        )
