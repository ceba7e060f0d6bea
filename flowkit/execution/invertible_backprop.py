"""Memory-free backpropagation by inversion: reconstruct activations instead of storing them.

A stack of invertible blocks ``y = f_K ∘ … ∘ f_1(x)`` does not need to keep its intermediate
activations for the backward pass: every block's input can be recomputed from its output with
the block's exact inverse (Gomez, Ren, Urtasun & Grosse 2017, "The Reversible Residual Network:
Backpropagation Without Storing Activations", §4, Algorithm 1). :class:`InvertibleBackprop` wraps
a transform so that

* the forward pass runs without an autograd graph and keeps only each chain's final output (and
  the summed log-determinant);
* the backward pass walks the blocks in reverse: from the output ``h_k`` and its gradients
  ``(∂L/∂h_k, ∂L/∂logdet)`` it reconstructs the input ``h_{k-1} = f_k⁻¹(h_k)``, recomputes the
  block locally with gradients enabled and back-propagates through that one block, giving
  ``∂L/∂h_{k-1}`` and the block's parameter gradients; then the block's activations are dropped.

Peak memory is then one output per chain plus one block's local graph, instead of every block's
activations; the price is the reconstruction. For coupling-type blocks (masked couplings, Glow
couplings, RevNet blocks) the reconstruction and the local recomputation share their conditioner
evaluations (the conditioner reads the part that passes unchanged, which is known from the
output), so a training step costs about what per-block checkpointing costs, ``2F + B``, not
``3F + B``. Pure re-indexings (squeeze, subsample, permutations, reshapes) are orthogonal maps
whose transpose is their inverse, so their input gradient is the inverse applied to the output
gradient: no recomputation at all.

Which blocks are reconstructed: every block says so itself, through the
:class:`~flowkit.transform.Transform` interface. Its class declares ``inversion_rule``, one of the
core's generic rules (:func:`~flowkit.reconstruction.generic_rule`: inverse, then recomputation;
:func:`~flowkit.reconstruction.reindex_rule`: pure re-indexings) or a rule of its own module (the
couplings, the Glow coupling and the RevNet block share their conditioner evaluations); or it sets
the older switch ``exact_inverse = True`` (the generic rule). This module names no block type:
built-in plugins declare their rules exactly as third-party ones do. A rule is read from the
class's own body only, never inherited, so a subclass that changes the maths is not trusted
silently; ``exact_inverse = False`` opts a class out. See :func:`rule_for`. A reconstructed block
must have an ``inverse`` that recovers its input to round-off and a deterministic ``forward`` (no
dropout or other randomness, no batch statistics). Containers are entered:
:class:`~flowkit.composition.Sequential`, :class:`~flowkit.composition.Architecture` (its
``flow``) and :class:`~flowkit.composition.MultiScale` (the factor-out between levels runs under
ordinary autograd, which stores nothing for it); ``Inverse(t)`` is reconstructed when ``t`` is.
Every other block — an iterative or sequential inverse (MAF/IAF layers, planar flows, the nflows
bridge), or a container that overrides ``forward`` — runs with ordinary autograd inside the stack;
:func:`enable_invertible_backprop` logs their names.

Data-dependent initialisation still works: while any block with an ``initialized`` buffer (e.g.
actnorm) is uninitialised in training mode, the wrapper runs the ordinary forward. Without
gradients (``torch.no_grad``) or in evaluation mode the wrapper calls the transform directly.
``inverse`` is never wrapped (sampling does not build a graph through many blocks in training).
Double backward (``create_graph=True``) is not supported through the reconstructed blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeGuard, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from flowkit.composition import Architecture, Inverse, MultiScale, Sequential
from flowkit.execution.wrapper import HasTransform, TransparentWrapper
from flowkit.reconstruction import (
    Rule,
    RuleResult,
    add_grads,
    declared_rule,
    generic_rule,
    reindex_rule,
)
from flowkit.transform import Transform

__all__ = [
    "InvertibleBackprop",
    "Rule",
    "RuleResult",
    "enable_invertible_backprop",
    "generic_rule",
    "is_exact",
    "register_rule",
    "reindex_rule",
    "rule_for",
]


def rule_for(block: nn.Module) -> Rule | None:
    """How ``block`` is reconstructed, or ``None`` when it must keep ordinary autograd.

    ``exact_inverse = False`` (the class's or inherited) means never. Otherwise the rule the
    block's class declares in its own body (``inversion_rule``; an inherited one does not count,
    so a subclass that changes the maths is not trusted silently), else the generic rule when
    ``exact_inverse`` is true. ``Inverse(t)`` is exact when ``t`` is.
    """
    cls = type(block)
    flag = getattr(cls, "exact_inverse", None)
    if flag is False:
        return None
    rule = declared_rule(cls)
    if rule is not None:
        return rule
    if flag or (type(block) is Inverse and rule_for(block.base) is not None):
        return generic_rule
    return None


def register_rule(cls: type, rule: Rule = generic_rule) -> None:
    """Reconstruct blocks of exactly type ``cls`` with ``rule``: sets ``cls.inversion_rule``.

    For a class one cannot edit; a class of one's own declares ``inversion_rule = rule`` in its
    body instead. See :mod:`flowkit.reconstruction` for what a rule computes.
    """
    cls.inversion_rule = rule  # type: ignore[attr-defined]


def is_exact(block: nn.Module) -> bool:
    """``True`` when ``block`` is reconstructed from its output by inversion."""
    return rule_for(block) is not None


def _run_rule(
    rule: Rule,
    block: Transform,
    y: Tensor,
    context: Tensor | None,
    grad_y: Tensor,
    grad_logdet: Tensor,
    need_input_grad: bool,
    params: list[Tensor],
    chunks: int,
) -> RuleResult:
    """``rule`` on the whole batch, or on ``chunks`` slices of it one after the other.

    Every reconstructed block maps each example on its own (no batch statistics), so its input,
    input gradient and parameter gradients (summed over the slices) are the same either way;
    only one slice's local graph is alive at a time, which divides the block's share of the peak
    memory by ``chunks``. Re-indexings hold no graph and always run on the whole batch.
    """
    batch = y.shape[0]
    if chunks <= 1 or batch < 2 or rule is reindex_rule:
        return rule(block, y, context, grad_y, grad_logdet, need_input_grad, params)
    x: Tensor | None = None
    grad_x: Tensor | None = None
    param_grads: list[Tensor | None] = [None] * len(params)
    for rows in torch.arange(batch).tensor_split(min(chunks, batch)):
        part = slice(int(rows[0]), int(rows[-1]) + 1)
        x_part, grad_part, grads = rule(
            block,
            y[part],
            None if context is None else context[part],
            grad_y[part],
            grad_logdet[part],
            need_input_grad,
            params,
        )
        if x is None:
            x = x_part.new_empty((batch, *x_part.shape[1:]))
            grad_x = x.new_empty(x.shape) if need_input_grad else None
        x[part] = x_part
        if grad_x is not None:
            grad_x[part] = 0.0 if grad_part is None else grad_part
        del x_part, grad_part
        # out of place: a gradient may alias ``grad_y`` (e.g. of a parameter added to the output)
        param_grads = [add_grads(a, g) for a, g in zip(param_grads, grads)]
    assert x is not None
    return x, grad_x, param_grads


# -- the stack-level autograd function -----------------------------------------------------------
class _Chain:
    """A run of consecutive exact blocks, executed by :class:`_ChainFunction`."""

    def __init__(self, blocks: list[Transform], chunks: int) -> None:
        self.blocks = blocks
        self.rules = [rule_for(b) for b in blocks]
        self.chunks = chunks

    def trainable(self) -> tuple[list[Tensor], list[list[int]]]:
        """The blocks' trainable parameters (deduplicated) and, per block, their positions."""
        params: list[Tensor] = []
        where: dict[int, int] = {}
        per_block: list[list[int]] = []
        for block in self.blocks:
            idx = []
            for p in block.parameters():
                if p.requires_grad:
                    if id(p) not in where:
                        where[id(p)] = len(params)
                        params.append(p)
                    idx.append(where[id(p)])
            per_block.append(idx)
        return params, per_block

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        params, per_block = self.trainable()
        y, logdet = _ChainFunction.apply(self, per_block, x, context, *params)
        return y, logdet


class _ChainFunction(torch.autograd.Function):
    """Forward through a chain without a graph; backward by reconstruction, block by block."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        chain: _Chain,
        per_block: list[list[int]],
        x: Tensor,
        context: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        h = x
        total = x.new_zeros(x.shape[0])
        for block in chain.blocks:
            h, logdet = block(h, context)
            total = total + logdet
        if h.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            h = h.clone()  # never hand out (or later read) the caller's storage as our output
        ctx.chain = chain  # type: ignore[attr-defined]
        ctx.per_block = per_block  # type: ignore[attr-defined]
        ctx.params = params  # type: ignore[attr-defined]
        # None is allowed (torch's docstring: "Arguments can also be None"); its annotation says Tensor
        ctx.save_for_backward(h, context)  # type: ignore[arg-type]
        return h, total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        y, context = ctx.saved_tensors
        chain: _Chain = ctx.chain
        params: tuple[Tensor, ...] = ctx.params
        param_grads: list[Tensor | None] = [None] * len(params)
        y = y.detach()
        grad: Tensor | None = grad_y
        for k in range(len(chain.blocks) - 1, -1, -1):
            block, rule = chain.blocks[k], chain.rules[k]
            assert rule is not None and grad is not None
            idx = ctx.per_block[k]
            need = k > 0 or bool(ctx.needs_input_grad[2])
            y, grad, grads = _run_rule(
                rule, block, y, context, grad, grad_logdet, need, [params[i] for i in idx], chain.chunks
            )
            for i, g in zip(idx, grads):
                param_grads[i] = add_grads(param_grads[i], g)
        return (None, None, grad, None, *param_grads)


# -- planning: which parts of a transform run through chains -------------------------------------
_M = TypeVar("_M", bound=nn.Module)


def _enters(module: nn.Module, cls: type[_M]) -> TypeGuard[_M]:
    """``True`` for ``cls`` and subclasses that keep ``cls.forward`` (so entering is safe)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


class _Plan:
    """How one (sub)transform runs under the wrapper; callable as ``plan(x, context)``."""

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class _Plain(_Plan):
    """A block without an exact inverse: ordinary autograd."""

    def __init__(self, block: Transform) -> None:
        self.block = block

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.block(x, context)


class _Steps(_Plan):
    """A sequence of sub-plans (chains, plain blocks, multi-scale nodes); log-dets add up."""

    def __init__(self, items: list[_Plan]) -> None:
        self.items = items

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total: Tensor | None = None
        for item in self.items:
            x, logdet = item(x, context)
            total = logdet if total is None else total + logdet
        assert total is not None
        return x, total


class _ChainPlan(_Plan):
    """A chain of exact blocks."""

    def __init__(self, blocks: list[Transform], chunks: int) -> None:
        self.chain = _Chain(blocks, chunks)

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.chain(x, context)


class _Checked(_Plan):
    """An architecture's boundary check, then its flow's plan."""

    def __init__(self, arch: Architecture, inner: _Plan) -> None:
        self.arch, self.inner = arch, inner

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self.arch.check_input(x)
        return self.inner(x, context)


class _MultiScaleView:
    """Stands in for a :class:`MultiScale` as ``self`` of ``MultiScale.forward``, with planned levels.

    Running the core's own ``MultiScale.forward`` on this view keeps the factor-out logic in one
    place; only the levels are replaced by their plans.
    """

    def __init__(self, module: MultiScale, levels: list[_Plan]) -> None:
        self.module = module
        self.levels = levels

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        self.module.check_input(x, direction)

    def zero_logdet(self, x: Tensor) -> Tensor:
        return self.module.zero_logdet(x)


class _MultiScalePlan(_Plan):
    """A multi-scale transform whose levels run through their own plans."""

    def __init__(self, module: MultiScale, levels: list[_Plan]) -> None:
        self.view = _MultiScaleView(module, levels)

    def __call__(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return MultiScale.forward(self.view, x, context)  # type: ignore[arg-type]


def _flatten(module: Transform) -> Iterator[Transform]:
    """The steps of nested sequences and architectures, in order (other modules as they are)."""
    if _enters(module, Architecture) and _enters(module.flow, Sequential):
        # the outer Sequential checked the shapes; an architecture's check adds nothing inside
        yield from _flatten(module.flow)
    elif _enters(module, Sequential):
        for step in module.steps:  # an nn.ModuleList of transforms (its items are typed Module)
            yield from _flatten(cast(Transform, step))
    else:
        yield module


def _plan(module: Transform, fallbacks: list[Transform], chunks: int) -> _Plan:
    """Build the plan of ``module``, appending the blocks that keep ordinary autograd."""
    if _enters(module, Architecture):
        return _Checked(module, _plan(module.flow, fallbacks, chunks))
    if _enters(module, MultiScale):
        levels = cast("list[Transform]", list(module.levels))  # an nn.ModuleList of transforms
        return _MultiScalePlan(module, [_plan(lvl, fallbacks, chunks) for lvl in levels])
    items: list[_Plan] = []
    run: list[Transform] = []
    for step in _flatten(module) if _enters(module, Sequential) else [module]:
        if rule_for(step) is not None:
            run.append(step)
            continue
        if run:
            items.append(_ChainPlan(run, chunks))
            run = []
        if _enters(step, MultiScale) or _enters(step, Architecture):
            items.append(_plan(step, fallbacks, chunks))
        else:
            fallbacks.append(step)
            items.append(_Plain(step))
    if run:
        items.append(_ChainPlan(run, chunks))
    return items[0] if len(items) == 1 else _Steps(items)


# -- the wrapper ---------------------------------------------------------------------------------
class InvertibleBackprop(TransparentWrapper):
    """Memory-free training of an invertible transform: activations are reconstructed, not stored.

    ``InvertibleBackprop(t)`` computes exactly what ``t`` computes — same outputs, same
    log-determinants, same gradients up to round-off — but its forward pass keeps no activations
    of the blocks with an exact inverse; the backward pass reconstructs each block's input from
    its output, ``h_{k-1} = f_k⁻¹(h_k)``, and back-propagates through that block alone (Gomez et
    al. 2017, "The Reversible Residual Network", §4, Algorithm 1). See the module docstring for
    which blocks are reconstructed. The wrapper's ``state_dict`` has the same keys as ``t``'s, so
    checkpoints load with or without it. ``fallback_names`` lists the blocks that keep ordinary
    autograd (``t``'s module paths).

    Each block is reconstructed and back-propagated on ``chunks`` slices of the batch in turn
    (default 2): the same gradients, with the block's local graph (its conditioner's activations
    and gradient buffers) divided by ``chunks``. On the benchmark stack two slices cut the peak
    from 0.080× to 0.060× of ordinary autograd at no measurable cost in time
    (``benchmarks/invertible_backprop.py``); ``chunks=1`` runs each block on the whole batch.
    """

    def __init__(self, transform: Transform, chunks: int = 2) -> None:
        if isinstance(transform, InvertibleBackprop):
            transform = transform.base
        if int(chunks) != chunks or chunks < 1:
            raise ValueError(f"chunks must be a positive integer, got {chunks!r}")
        super().__init__(transform)
        self.chunks = int(chunks)
        fallbacks: list[Transform] = []
        self._plan = _plan(transform, fallbacks, self.chunks)
        names = {id(m): name for name, m in transform.named_modules()}
        self.fallback_names: list[str] = [
            f"{names.get(id(m)) or '(the whole transform)'} ({type(m).__name__})" for m in fallbacks
        ]

    def _needs_plain_forward(self, context: Tensor | None) -> bool:
        """Ordinary forward without gradients, in eval mode, or while a lazy init is pending."""
        # chains pass no gradient to the context (class labels never need one)
        return self._ordinary() or (context is not None and context.requires_grad)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(t(x), log|det J_t(x)|)``, storing no activations of exact blocks for backward."""
        if self._needs_plain_forward(context):
            return self.base(x, context)
        self.check_input(x)
        return self._plan(x, context)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunks={self.chunks}, fallbacks={len(self.fallback_names)}"


def enable_invertible_backprop(
    model: HasTransform, log: Callable[[str], None] = print, chunks: int = 2
) -> list[str]:
    """Wrap ``model.transform`` in :class:`InvertibleBackprop`; return the fallback blocks' names.

    Used by the trainer when ``[train] invertible_backprop = true``. The model's parameters,
    their order and its ``state_dict`` keys are unchanged, so the optimiser and checkpoints are
    unaffected; calling it twice is harmless. ``log`` receives one line naming the blocks that keep
    ordinary autograd (when there are any). ``chunks`` is :class:`InvertibleBackprop`'s (``[train]
    invertible_backprop_chunks``).
    """
    transform = model.transform
    if not isinstance(transform, InvertibleBackprop) or transform.chunks != chunks:
        transform = InvertibleBackprop(transform, chunks)
        model.transform = transform
    names = list(transform.fallback_names)
    if names:
        log(
            f"invertible backprop: {len(names)} block(s) without an exact inverse keep ordinary "
            f"autograd (their activations are stored): {', '.join(names)}"
        )
    else:
        log("invertible backprop: every block is reconstructed from its output")
    return names
