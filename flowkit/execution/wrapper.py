"""A transform that wraps another and stays invisible in checkpoints.

Training options that change *how* a transform is evaluated, not *what* it computes
(:class:`flowkit.execution.invertible_backprop.InvertibleBackprop`,
:class:`flowkit.execution.compiled.CompiledTraining`)
wrap the model's transform in a :class:`TransparentWrapper`. The wrapper's ``state_dict`` has the
wrapped transform's own keys, and it loads state dicts saved with or without a wrapper, so a
checkpoint does not depend on which options were on when it was written. ``inverse`` is the wrapped
transform's.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from flowkit.transform import Transform

__all__ = ["HasTransform", "TransparentWrapper"]


class HasTransform(Protocol):
    """What the ``enable_*`` functions wrap in place: a module with a ``transform`` (a model)."""

    transform: Transform


_BASE = "base."


def _strip_base(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    """State-dict post-hook: save the wrapped transform's entries under the wrapper's own keys."""
    inner = prefix + _BASE
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_base(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: read entries saved without the wrapper (or by it) into the wrapped transform."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if not key.startswith(prefix + _BASE):
            state_dict[prefix + _BASE + key[len(prefix) :]] = state_dict.pop(key)


def _initialized(module: nn.Module) -> bool:
    """A lazy block's ``initialized`` flag (through its cached ``is_initialized`` when it has one)."""
    check = getattr(module, "is_initialized", None)
    return bool(check()) if callable(check) else bool(module.initialized)


class TransparentWrapper(Transform):
    """Base class of wrappers that evaluate ``base`` differently but compute the same function.

    Subclasses override :meth:`forward`; shapes, ``volume_preserving``, ``inverse`` and the
    ``state_dict`` keys are ``base``'s.
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__(transform.event_shape, transform.output_shape)
        self.base = transform
        self.volume_preserving = transform.volume_preserving  # type: ignore[misc]
        self._lazy = [m for m in transform.modules() if isinstance(getattr(m, "initialized", None), Tensor)]
        self.register_state_dict_post_hook(_strip_base)
        self.register_load_state_dict_pre_hook(_add_base)

    def _ordinary(self) -> bool:
        """Whether a call should run ``base`` as it is: without gradients, in evaluation mode, or
        while a block's data-dependent initialisation (an ``initialized`` buffer still false in
        training mode, e.g. actnorm) is pending."""
        if not (torch.is_grad_enabled() and self.training):
            return True
        return any(m.training and not _initialized(m) for m in self._lazy)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The wrapped transform's forward pass."""
        return self.base(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The wrapped transform's inverse (ordinary autograd)."""
        return self.base.inverse(y, context)
