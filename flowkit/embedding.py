"""The :class:`Embedding` interface: a network that maps a context to conditioner features.

A conditional flow ``p(x | c)`` reads its context through an embedding ``h = E(c)`` that is
trained jointly with the flow (Radev et al. 2020, "BayesFlow: learning complex stochastic models
with invertible neural networks", §2.3: a summary network; Ardizzone et al. 2019, "Guided image
generation with conditional invertible neural networks", §3: a conditioning network). Every
conditioner of the transform, and a context-aware prior, reads ``h`` of shape ``(B, features)``.

Embeddings are plugins of the ``flowkit.embeddings`` entry-point group, chosen in the
``[embedding]`` config section. flowkit injects ``context_shape``, the per-example shape of the
raw context (``(k,)`` vectors, ``(C, H, W)`` images, ``(N, d)`` sets); the plugin sets
:attr:`Embedding.features`.

:class:`ContextStandardize` applies the training split's per-feature standardisation of the
context before the embedding (a fixed affine map; it needs no log-determinant because the
context is conditioned on, not modelled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowkit.errors import ShapeError
from flowkit.params import CheckedParameters
from flowkit.transform import Shape


class Embedding(CheckedParameters, nn.Module):
    """Base class of every context embedding (plugins subclass it).

    ``forward(context)`` maps ``(B, *context_shape)`` to ``(B, features)``; call
    :meth:`check_context` first to give a clear error for a malformed context. Set
    ``variable_leading = True`` for embeddings of sets, whose first per-example dimension (the
    number of observations) may differ between calls.
    """

    variable_leading: bool = False

    def __init__(self, context_shape: Shape, features: int) -> None:
        super().__init__()
        self.context_shape: Shape = tuple(int(s) for s in context_shape)
        self.features = int(features)

    def forward(self, context: Tensor) -> Tensor:
        """``(B, *context_shape) → (B, features)``."""
        raise NotImplementedError

    def check_context(self, context: Tensor) -> None:
        """Raise :class:`ShapeError` unless ``context`` is a float ``(B, *context_shape)``."""
        name = type(self).__name__
        expected = "(batch, " + ", ".join(map(str, self.context_shape)) + ")"
        if not context.dtype.is_floating_point:
            raise ShapeError(
                f"the model is conditioned on a real-valued context of shape {expected}, but got "
                f"{context.dtype} values of shape {tuple(context.shape)} (class labels?); give "
                f"the context as floats ({name})"
            )
        got = tuple(context.shape[1:])
        fits = got == self.context_shape or (
            self.variable_leading
            and len(got) == len(self.context_shape)
            and got[1:] == self.context_shape[1:]
            and got[0] >= 1
        )
        if context.dim() < 1 or not fits:
            raise ShapeError(
                f"the model is conditioned on a real-valued context of shape {expected}, but got "
                f"shape {tuple(context.shape)} ({name})"
            )

    def extra_repr(self) -> str:
        return f"context_shape={self.context_shape}, features={self.features}"


class ContextStandardize(nn.Module):
    """``c ↦ (c − mean) / std`` per context feature, with fixed statistics (buffers).

    The statistics are the training split's (:class:`~flowkit.data.DataMeta`
    ``standardization``), so a model keeps reading raw, user-unit contexts after it is reloaded.
    ``mean``/``std`` hold one value per scalar of the context (flattened), or one per feature of
    its last dimension (for sets: per feature of an observation).
    """

    mean: Tensor  # buffers (declared for type checkers: nn.Module types them Tensor | Module)
    std: Tensor

    def __init__(self, context_shape: Shape, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        shape = tuple(int(s) for s in context_shape)
        size = len(mean)
        if len(std) != size or size not in (math.prod(shape), shape[-1]):
            raise ShapeError(
                f"context standardisation has {size} means and {len(std)} standard deviations, "
                f"but the context has shape {shape}; the dataset's statistics do not fit it"
            )
        view = shape if size == math.prod(shape) else (shape[-1],)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float64).reshape(view))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float64).reshape(view))

    def forward(self, context: Tensor) -> Tensor:
        return (context - self.mean.to(context.dtype)) / self.std.to(context.dtype)
