"""What a conditioner reads of the context: one rule for every conditional block.

A flow models ``p(x | c)`` by letting its conditioner networks read ``c`` next to the
conditioning half of ``x`` (Winkler et al. 2019, "Learning likelihoods with conditional
normalizing flows"; Papamakarios et al. 2017, "Masked autoregressive flow", §3.4). A context is
one of

* class labels — a ``LongTensor`` of shape ``(B,)`` with values in ``[0, num_classes)``, read as a
  one-hot vector (the class-conditional flows of Kingma & Dhariwal 2018, "Glow", §5);
* a real vector — a float tensor ``(B, k)``: the output of the model's embedding network (see
  :mod:`flowkit.embedding`), read as it is.

A conditional block is built with ``num_classes`` (labels) or ``context_features = k`` (vectors;
it wins when both are given) and calls :func:`context_features_of` on every call; it raises a
:class:`~flowkit.errors.ShapeError` naming the problem when the context is missing or malformed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class ContextSpec:
    """How a conditional block reads its context: ``width`` input features per example.

    ``kind`` is ``"labels"`` (one-hot of ``width`` classes) or ``"vector"`` (``width`` reals).
    """

    kind: str
    width: int

    def features(self, context: Tensor | None, like: Tensor, owner: str) -> Tensor:
        """The ``(B, width)`` conditioner input for ``context``, in ``like``'s dtype and device."""
        return context_features_of(context, self, like, owner)


def context_spec(
    owner: str,
    conditional: bool | None,
    num_classes: int | None,
    context_features: int | None,
) -> ContextSpec | None:
    """The :class:`ContextSpec` of a block, or ``None`` for an unconditional one.

    ``conditional`` is the block's own switch: ``True`` requires a context, ``False`` ignores
    one, ``None`` (automatic) makes the block conditional exactly when a real-valued context is
    given (``context_features``) — class labels stay opt-in, as before real-valued contexts
    existed. Raises :class:`~flowkit.errors.ConfigError` for ``conditional=True`` without any.
    """
    if context_features is not None and context_features < 1:
        raise ConfigError(f"{owner}: context_features must be at least 1, got {context_features}")
    if conditional is None:
        conditional = context_features is not None
    if not conditional:
        return None
    if context_features is not None:
        return ContextSpec("vector", int(context_features))
    if num_classes is None or num_classes < 1:
        raise ConfigError(
            f"{owner}: conditional=true needs a context: class labels (a labelled dataset gives "
            f"num_classes) or a real-valued context (a dataset with a context, e.g. data=table "
            f"with data.context_columns, gives context_features); num_classes is {num_classes}. "
            f"Use such a dataset, or set conditional=false."
        )
    return ContextSpec("labels", int(num_classes))


def context_width(spec: ContextSpec | None) -> int:
    """Extra conditioner inputs for ``spec`` (0 when unconditional)."""
    return 0 if spec is None else spec.width


def context_features_of(context: Tensor | None, spec: ContextSpec, like: Tensor, owner: str) -> Tensor:
    """Validate ``context`` against ``spec`` and return it as ``(B, width)`` conditioner input.

    Labels become one-hot vectors; real vectors are cast to ``like``'s dtype and device. Raises
    :class:`ShapeError` for a missing context, a wrong batch size or width, labels where a vector
    is expected (and vice versa), and labels out of range.
    """
    batch = like.shape[0]
    if spec.kind == "labels":
        what = f"class labels: a LongTensor of shape ({batch},) with values in [0, {spec.width})"
    else:
        what = f"a real-valued context: a float tensor of shape ({batch}, {spec.width})"
    if context is None:
        raise ShapeError(
            f"{owner} is conditional and needs {what}, but got no context. Pass the "
            f"context, or build it unconditional (conditional=false)."
        )
    if spec.kind == "labels":
        if context.dtype.is_floating_point or context.dtype.is_complex or tuple(context.shape) != (batch,):
            raise ShapeError(
                f"{owner} expects {what}, but got {context.dtype} of shape {tuple(context.shape)}."
            )
        if batch and (int(context.min()) < 0 or int(context.max()) >= spec.width):
            raise ShapeError(
                f"{owner}: class labels must lie in [0, {spec.width}), got values "
                f"in [{int(context.min())}, {int(context.max())}]."
            )
        return F.one_hot(context.long(), spec.width).to(device=like.device, dtype=like.dtype)
    if not context.dtype.is_floating_point:
        raise ShapeError(
            f"{owner} expects {what}, but got {context.dtype} values (class labels?)"
            f" of shape {tuple(context.shape)}. Give the context as floats."
        )
    if tuple(context.shape) != (batch, spec.width):
        raise ShapeError(f"{owner} expects {what}, but got shape {tuple(context.shape)}.")
    return context.to(device=like.device, dtype=like.dtype)


def append_context(h: Tensor, features: Tensor) -> Tensor:
    """Append ``(B, K)`` context ``features`` to a conditioner input along dimension 1.

    Vectors ``(B, D)`` become ``(B, D + K)``; images ``(B, C, H, W)`` get ``K`` constant channels
    (each feature broadcast over the spatial positions) and become ``(B, C + K, H, W)``.
    """
    if h.dim() > 2:
        features = features.reshape(*features.shape, *([1] * (h.dim() - 2)))
        features = features.expand(-1, -1, *h.shape[2:])
    return torch.cat([h, features], dim=1)
