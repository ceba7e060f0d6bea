"""Reconstruction rules: how memory-free backprop rebuilds a block's input and gradients.

:class:`~flowkit.execution.invertible_backprop.InvertibleBackprop` keeps no activations; in the
backward pass it asks each block's *rule* for the block's input and gradients, given its output::

    rule(block, y, context, grad_y, grad_logdet, need_input_grad, params) -> (x, grad_x, grads)

``y`` is the block's output and ``grad_y``, ``grad_logdet`` the gradients ``∂L/∂y`` and
``∂L/∂logdet``; the rule returns the input ``x = f⁻¹(y)``, ``∂L/∂x`` (``None`` when
``need_input_grad`` is false) and the gradients of ``params`` (the block's trainable parameters,
in order; ``None`` for unused ones). With ``chunks > 1`` the rule is called once per slice of the
batch (``y``, the gradients and ``context`` sliced alike), so it must treat examples independently.

A block declares its rule itself, with the class attribute
:attr:`~flowkit.transform.Transform.inversion_rule`; the core's own blocks and the built-in
plugins do it exactly as a third-party block does. Two generic rules live here:

* :func:`generic_rule` — any exact block: the inverse without a graph, then the forward with one;
* :func:`reindex_rule` — parameter-free re-indexings (permutations, squeezes, reshapes, zero
  padding), whose transpose is their inverse: no recomputation at all.

A block-specific rule (a coupling that shares one conditioner pass between the inverse and the
recomputation, a RevNet block) lives in the block's own module, uses only the block's public
methods, and builds on the helpers :func:`leaf`, :func:`vjp` and :func:`add_grads`.

This module depends on nothing but :mod:`torch` and the :class:`~flowkit.transform.Transform`
interface, so that any module — :mod:`flowkit.composition` included — can declare a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
from torch import Tensor

from flowkit.transform import Transform

__all__ = [
    "Rule",
    "RuleResult",
    "add_grads",
    "declared_rule",
    "generic_rule",
    "leaf",
    "reindex_rule",
    "vjp",
]

#: ``(x, ∂L/∂x or None, parameter gradients)`` returned by a reconstruction rule.
RuleResult = tuple[Tensor, Tensor | None, list[Tensor | None]]
#: ``rule(block, y, context, grad_y, grad_logdet, need_input_grad, params) -> RuleResult``; the
#: block is an instance of the class that declares the rule (hence ``Any``: a rule may be typed
#: for that class).
Rule = Callable[[Any, Tensor, Tensor | None, Tensor, Tensor, bool, list[Tensor]], RuleResult]


# -- gradient helpers ----------------------------------------------------------------------------
def vjp(
    outputs: Sequence[Tensor],
    grads: Sequence[Tensor],
    inputs: Sequence[Tensor],
) -> list[Tensor | None]:
    """``Σ_i grads_i · ∂outputs_i/∂inputs`` (``None`` where an input is unused)."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
    if not pairs or not inputs:
        return [None] * len(inputs)
    out = torch.autograd.grad([o for o, _ in pairs], list(inputs), [g for _, g in pairs], allow_unused=True)
    return list(out)


@overload
def add_grads(a: Tensor, b: Tensor | None) -> Tensor: ...
@overload
def add_grads(a: Tensor | None, b: Tensor) -> Tensor: ...
@overload
def add_grads(a: Tensor | None, b: Tensor | None) -> Tensor | None: ...
def add_grads(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Sum of two optional gradients (``None`` only when both are)."""
    if a is None:
        return b
    return a if b is None else a + b


def leaf(t: Tensor, requires_grad: bool = True) -> Tensor:
    """A fresh autograd leaf holding ``t``'s values (shares storage; never modified)."""
    return t.detach().requires_grad_(requires_grad)


# -- the generic rules ---------------------------------------------------------------------------
def generic_rule(
    block: Transform,
    y: Tensor,
    context: Tensor | None,
    grad_y: Tensor,
    grad_logdet: Tensor,
    need_input_grad: bool,
    params: list[Tensor],
) -> RuleResult:
    """Any exact block: ``x = f⁻¹(y)`` without a graph, then ``f(x)`` with one, then its VJP."""
    with torch.no_grad():
        x, _ = block.inverse(y, context)
    with torch.enable_grad():
        x_leaf = leaf(x, need_input_grad)
        out, logdet = block(x_leaf, context)
        inputs = [x_leaf, *params] if need_input_grad else params
        grads = vjp([out, logdet], [grad_y, grad_logdet], inputs)
    if need_input_grad:
        return x, grads[0], grads[1:]
    return x, None, grads


def reindex_rule(
    block: Transform,
    y: Tensor,
    context: Tensor | None,
    grad_y: Tensor,
    grad_logdet: Tensor,
    need_input_grad: bool,
    params: list[Tensor],
) -> RuleResult:
    """Parameter-free re-indexing ``y = P x`` with ``Pᵀ = P⁻¹``: ``x = P⁻¹ y``, ``∂L/∂x = P⁻¹ ∂L/∂y``.

    Holds for permutations of the entries (squeeze, subsample, channel permutations, reshapes)
    and for the zero-padding embedding, whose transpose (a crop) is its left inverse. It holds no
    graph, so the wrapper always runs it on the whole batch.
    """
    with torch.no_grad():
        x, _ = block.inverse(y, context)
        grad_x = block.inverse(grad_y, context)[0] if need_input_grad else None
    return x, grad_x, [None] * len(params)


def declared_rule(cls: type) -> Rule | None:
    """The ``inversion_rule`` that ``cls`` declares in its own body (never an inherited one).

    A rule encodes the maths of the class that declares it, so a subclass — which may change that
    maths through any method — is reconstructed only if it declares a rule itself (often just
    ``inversion_rule = Parent.inversion_rule``). A ``staticmethod`` is unwrapped.
    """
    rule = vars(cls).get("inversion_rule")
    if isinstance(rule, staticmethod):
        rule = rule.__func__
    return rule
