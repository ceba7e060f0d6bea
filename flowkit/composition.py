"""Ways to combine transforms: sequence, inverse, reshape and multi-scale factor-out.

These live in the core so that every architecture plugin (``nice``, ``realnvp``, later ``glow``
and ``revnet``) is assembled from the same few pieces, and composite models get the same
conformance checks as single blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from flowkit.errors import ShapeError
from flowkit.reconstruction import reindex_rule
from flowkit.transform import Shape, Transform


class Sequential(Transform):
    """Composition ``f = f_K ∘ … ∘ f_1``; log-determinants add up.

    ``log|det J_f(x)| = Σ_k log|det J_{f_k}(h_{k-1})|`` with ``h_0 = x`` and ``h_k = f_k(h_{k-1})``.
    Adjacent shapes are checked when the sequence is built.
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        steps = list(transforms)
        if not steps:
            raise ValueError("Sequential needs at least one transform")
        for prev, nxt in itertools.pairwise(steps):
            if prev.output_shape != nxt.event_shape:
                raise ShapeError(
                    f"cannot chain {type(prev).__name__} (output {prev.output_shape}) into "
                    f"{type(nxt).__name__} (input {nxt.event_shape})"
                )
        super().__init__(steps[0].event_shape, steps[-1].output_shape)
        self.steps = nn.ModuleList(steps)
        self.volume_preserving = all(s.volume_preserving for s in steps)  # type: ignore[misc]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = self.zero_logdet(x)
        for step in self.steps:
            x, logdet = step(x, context)
            total = total + logdet
        return x, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = self.zero_logdet(y)
        # a list first: ``reversed`` on an nn.ModuleList looks each step up by its string index
        for step in reversed(cast("list[Transform]", list(self.steps))):
            y, logdet = step.inverse(y, context)
            total = total + logdet
        return y, total

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Transform]:
        return cast("Iterator[Transform]", iter(self.steps))  # nn.ModuleList types its items Module


class Architecture(Transform):
    """A named architecture assembled from other transforms (``nice``, ``realnvp``, ``glow``, …).

    Subclasses build their steps in ``__init__`` and assign the composite to ``self.flow``;
    forward and inverse check the input shape (a clear :class:`ShapeError` naming both shapes)
    and delegate, so every architecture behaves the same at its boundary.
    """

    flow: Transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.flow(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        return self.flow.inverse(y, context)


class Inverse(Transform):
    """The inverse ``f⁻¹`` of a transform, as a transform: forward and inverse swap roles."""

    def __init__(self, transform: Transform) -> None:
        super().__init__(transform.output_shape, transform.event_shape)
        self.base = transform
        self.volume_preserving = transform.volume_preserving  # type: ignore[misc]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base.inverse(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base(y, context)


class Reshape(Transform):
    """Reshape each example from ``event_shape`` to ``output_shape`` (log-det 0)."""

    volume_preserving = True
    inversion_rule = reindex_rule  # memory-free backprop: a re-indexing, nothing to recompute

    def __init__(self, event_shape: Shape, output_shape: Shape) -> None:
        if math.prod(event_shape) != math.prod(output_shape):
            raise ShapeError(f"cannot reshape {tuple(event_shape)} into {tuple(output_shape)}")
        super().__init__(event_shape, output_shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return x.reshape(x.shape[0], *self.output_shape), self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        return y.reshape(y.shape[0], *self.event_shape), self.zero_logdet(y)


def Flatten(event_shape: Shape) -> Reshape:
    """Flatten each example to a vector of ``prod(event_shape)`` features."""
    return Reshape(event_shape, (math.prod(event_shape),))


class MultiScale(Transform):
    """Multi-scale architecture with factor-out (Dinh et al. 2017, "Real NVP", §3.6).

    ``levels[0]`` takes the input. After every level but the last, the second half of the channels
    is factored out (it goes straight to the latent) and the first half continues into the next
    level, so deeper levels work on fewer dimensions. The latent is the concatenation of every
    factored-out part and the last level's output, flattened: shape ``(D,)`` with
    ``D = prod(event_shape)``. The log-determinant is the sum over levels.
    """

    def __init__(self, levels: Sequence[Transform]) -> None:
        levels = list(levels)
        if not levels:
            raise ValueError("MultiScale needs at least one level")
        sizes: list[int] = []
        for i, (lvl, nxt) in enumerate(itertools.pairwise(levels)):
            c, *spatial = lvl.output_shape
            keep = (c - c // 2, *spatial)
            if nxt.event_shape != keep:
                raise ShapeError(
                    f"MultiScale level {i + 1} expects {nxt.event_shape} but level {i} keeps "
                    f"{keep} after factoring out half of {lvl.output_shape}"
                )
            sizes.append((c // 2) * math.prod(spatial))
        sizes.append(math.prod(levels[-1].output_shape))
        total = sum(sizes)
        super().__init__(levels[0].event_shape, (total,))
        if total != math.prod(levels[0].event_shape):
            raise ShapeError("MultiScale levels must preserve the number of dimensions")
        self.levels = nn.ModuleList(levels)
        self.sizes = sizes

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        total = self.zero_logdet(x)
        parts = []
        h = x
        for i, lvl in enumerate(self.levels):
            h, logdet = lvl(h, context)
            total = total + logdet
            if i < len(self.levels) - 1:
                keep = h.shape[1] - h.shape[1] // 2
                parts.append(h[:, keep:].reshape(h.shape[0], -1))
                h = h[:, :keep]
        parts.append(h.reshape(h.shape[0], -1))
        return torch.cat(parts, dim=1), total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(y, "inverse")
        total = self.zero_logdet(y)
        parts = list(torch.split(y, self.sizes, dim=1))
        levels = cast("list[Transform]", list(self.levels))  # nn.ModuleList types its items Module
        last = levels[-1]
        h = parts[-1].reshape(y.shape[0], *last.output_shape)
        for i in range(len(levels) - 1, -1, -1):
            lvl = levels[i]
            if i < len(levels) - 1:
                c, *spatial = lvl.output_shape
                out = parts[i].reshape(y.shape[0], c // 2, *spatial)
                h = torch.cat([h, out], dim=1)
            h, logdet = lvl.inverse(h, context)
            total = total + logdet
        return h, total
