"""Affine layers ``y = act(x Wᵀ + b)`` on PyTorch's oneDNN kernels where they are faster.

On x86 CPUs PyTorch runs float32 ``nn.Linear`` through MKL's GEMM, which on some processors
(AMD EPYC with AVX-512, for one) reaches about half the FLOP/s of the oneDNN GEMM that PyTorch
also ships (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses for
frozen CPU linear layers). :func:`linear` computes the same function with that kernel and the
ReLU fused into it as a post-op, and its backward runs the two GEMMs of a linear layer,

    ∂L/∂x = g W        ∂L/∂W = gᵀ x        ∂L/∂b = Σ_batch g,   g = ∂L/∂y ⊙ 1[y > 0] (ReLU),

on oneDNN too. It applies to float32 tensors on the CPU when the kernel is present and agrees
with :func:`torch.nn.functional.linear` on a probe, for layers big enough to gain
(``MIN_MACS``); everything else (float64, CUDA, other dtypes, a PyTorch build without oneDNN,
double backward, small layers) goes through the ordinary ops. The parameters are the ordinary
``nn.Linear`` ones, so models and checkpoints do not change.

The kernel is a private PyTorch operator, so it is feature-detected, never assumed: the first
eligible call checks that ``torch.ops.mkldnn`` has it and that it agrees with the ordinary ops on
a probe (:func:`onednn_linear_active`). A build without it, or one whose kernel changed its
signature, runs the ordinary ops; a kernel that raises on a real call switches the process to
the ordinary ops for good, with one :class:`OneDNNFallbackWarning`, and that call is answered by
the ordinary ops too.

Whether this path is the default is *measured*, not assumed: oneDNN's GEMM is about twice as
fast as MKL's on an AVX-512 AMD EPYC but 15% slower on an AVX2 one (issue 21). The first call
for each (training or inference, batch × in → out, bias, ReLU, contiguous input, thread count)
times both paths on that call's shapes (:mod:`flowkit.execution.autotune`: a few interleaved
calls, a fraction of a second, cached in ``autotune.json`` for later runs on the machine) and
keeps the faster; the ordinary ops stay unless oneDNN is clearly faster. ``FLOWKIT_ONEDNN=1``
forces the oneDNN path wherever it applies, ``FLOWKIT_ONEDNN=0`` (or :func:`set_onednn_linear`)
the ordinary ops everywhere, without measuring; the switch also covers the fused convolutions of
:mod:`flowkit.execution.onednn_conv`. Under ``torch.compile`` tracing nothing is measured: the
oneDNN path is used where it applies, as before the autotune.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.execution import autotune

__all__ = ["OneDNNFallbackWarning", "linear", "onednn_linear_active", "onednn_mode", "set_onednn_linear"]

_ENV = "FLOWKIT_ONEDNN"
#: The autotune operation names of the two modes of :func:`linear`.
OP_TRAIN, OP_INFER = "linear.train", "linear.infer"
#: The candidates: oneDNN's kernels, and ``F.linear`` (the portable default).
ONEDNN, ATEN = "onednn", "aten"


def _mode_from(value: str | None) -> str:
    """``FLOWKIT_ONEDNN``'s value as a mode: ``off`` (0, false, no, off), ``on`` (1, true, yes,
    on) or ``auto`` (unset, empty, ``auto``: measured)."""
    text = (value or "auto").strip().lower()
    if text in ("0", "false", "no", "off"):
        return "off"
    return "on" if text in ("1", "true", "yes", "on") else "auto"


_mode: str = _mode_from(os.environ.get(_ENV))
_probed: bool | None = None  # None: not probed yet
#: Below this many multiply-adds (batch × in × out) the ordinary ops win: the custom autograd
#: function's Python overhead (~50 µs a layer, forward and backward) outweighs the faster GEMM.
#: Measured crossover on the 2-core AMD EPYC, 1 thread: ~2M (256×64×64 slower, 256×128×128 faster).
MIN_MACS = 1 << 21


def set_onednn_linear(enabled: bool | str | None) -> None:
    """Force (``True``), bypass (``False``) or measure (``None``, ``"auto"``: the default) the
    oneDNN paths of :func:`linear` and :func:`flowkit.execution.onednn_conv.conv2d`; also takes a
    mode string of :func:`onednn_mode`, to restore one."""
    global _mode
    if enabled is None or isinstance(enabled, str):
        _mode = _mode_from(enabled)
    else:
        _mode = "on" if enabled else "off"


def _setting() -> dict[str, str]:
    """The forced path of each oneDNN operation (none in ``auto`` mode), for
    :func:`flowkit.execution.autotune.summary` and so the benchmark reports."""
    if _mode == "auto":
        return {}
    choice = f"{ONEDNN if _mode == 'on' else ATEN} (FLOWKIT_ONEDNN={int(_mode == 'on')})"
    return {op: choice for op in (OP_TRAIN, OP_INFER, "conv2d.infer")}


def onednn_mode() -> str:
    """The switch: ``auto`` (measured per shape, the default), ``on`` (forced) or ``off``."""
    return _mode


class OneDNNFallbackWarning(RuntimeWarning):
    """A private oneDNN kernel failed on a real call; the ordinary ops are used from then on."""


def has_mkldnn_op(name: str) -> bool:
    """Whether this PyTorch build has the operator ``torch.ops.mkldnn.<name>`` (private API)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, name)
    except Exception:  # an unexpected torch.ops layout counts as "missing"
        return False


def _kernel() -> Any:
    return torch.ops.mkldnn._linear_pointwise


def warn_fallback(kernel: str, exc: BaseException) -> None:
    """The :class:`OneDNNFallbackWarning` that ``kernel`` failed on a real call (with ``exc``) and
    the ordinary PyTorch ops take over; it points at the caller of the fall-back."""
    warnings.warn(
        f"flowkit: {kernel} failed ({type(exc).__name__}: {exc}); using the ordinary PyTorch ops from now on",
        OneDNNFallbackWarning,
        stacklevel=4,
    )


def _fall_back(exc: BaseException) -> None:
    """Switch this process to the ordinary ops after the kernel failed on a real call."""
    global _probed
    _probed = False
    warn_fallback("the oneDNN linear kernel", exc)


def _probe() -> bool:
    """Whether the oneDNN kernel exists and matches ``F.linear`` (+ ReLU) on a small input."""
    try:
        if not has_mkldnn_op("_linear_pointwise"):
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 7, generator=gen)
        w = torch.randn(3, 7, generator=gen)
        b = torch.randn(3, generator=gen)
        g = torch.randn(5, 3, generator=gen)
        with torch.no_grad():
            got = _kernel()(x, w, b, "relu", [], "")
            back = _gemm(g.t(), x.t())  # strided operands, as in the weight gradient
        return bool(
            torch.allclose(got, F.relu(F.linear(x, w, b)), atol=1e-5)
            and torch.allclose(back, g.t() @ x, atol=1e-5)
        )
    except Exception:  # a changed signature or a broken build: the ordinary ops
        return False


def onednn_linear_active() -> bool:
    """Whether :func:`linear` may use oneDNN for float32 CPU tensors in this process: the switch
    is not off and the kernel exists and passed its probe (which path a shape takes is then
    measured, :func:`linear`)."""
    global _probed
    if _mode == "off":
        return False
    if _probed is None:
        _probed = _probe()
    return _probed


def _eligible(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    # the size first: it settles most small layers with integer arithmetic alone
    return (
        x.shape[0] * weight.shape[0] * weight.shape[1] >= MIN_MACS
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.shape[-1] == weight.shape[1]
        and (bias is None or bias.dtype == torch.float32)
        and onednn_linear_active()
    )


def _dense(t: Tensor) -> Tensor:
    """``t`` if it is row- or column-major (a transposed view is), else a contiguous copy.

    oneDNN takes either order at full speed but falls back to a slow reference kernel for
    other strides, such as a column slice of a wider matrix seen transposed.
    """
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _rows(x: Tensor) -> Tensor:
    """``x`` if its rows are contiguous (a column slice of a wider batch is), else a copy.

    The forward kernel reads such an input in place at full speed.
    """
    return x if x.stride(-1) == 1 else x.contiguous()


def _gemm(a: Tensor, b_t: Tensor) -> Tensor:
    """``a @ b_tᵀ`` on oneDNN (row- or column-major operands are used in place)."""
    return _kernel()(_dense(a), _dense(b_t), None, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``act(x Wᵀ + b)`` with oneDNN forward and backward GEMMs (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        y = _kernel()(_rows(x), weight, bias, "relu" if relu else "none", [], "")
        ctx.relu = relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad_y = torch.ops.aten.threshold_backward(grad_y, y, 0)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        fused = not torch.is_grad_enabled() and onednn_linear_active()
        if fused:
            try:
                grad_x = _gemm(grad_y, weight.t()) if need_x else None
                grad_w = _gemm(grad_y.t(), x.t()) if need_w else None
            except Exception as exc:  # the private kernel failed: the ordinary ops below
                _fall_back(exc)
                fused = False
        if not fused:  # create_graph=True (differentiable ops for double backward), or fallback
            grad_x = grad_y @ weight if need_x else None
            grad_w = grad_y.t() @ x if need_w else None
        grad_b = grad_y.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b, None


def _training(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def _use_onednn(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool, train: bool) -> bool:
    """Whether this eligible call takes the oneDNN path: forced, or measured faster here."""
    if _mode == "on" or torch.compiler.is_compiling():
        return True
    signature = (x.shape[0], weight.shape[1], weight.shape[0], bias is not None, relu, x.is_contiguous())
    op = OP_TRAIN if train else OP_INFER
    return (
        autotune.default_tuner().choose(
            op, signature, lambda: _candidates(x, weight, bias, relu, train), default=ATEN
        )
        == ONEDNN
    )


def _candidates(
    x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool, train: bool
) -> dict[str, Callable[[], Any]]:
    """One call of each path on this call's shapes and layout (for the autotune): the forward
    pass, and in training the backward pass too, on detached copies (no gradient reaches the
    caller's tensors)."""
    act = "relu" if relu else "none"
    xd, wd = x.detach(), weight.detach()
    bd = None if bias is None else bias.detach()
    if not train:

        def onednn() -> Tensor:
            with torch.no_grad():
                return _kernel()(_rows(xd), wd, bd, act, [], "")

        def aten() -> Tensor:
            with torch.no_grad():
                return _ordinary(xd, wd, bd, relu)

        return {ONEDNN: onednn, ATEN: aten}
    leaves = [xd.requires_grad_(x.requires_grad), wd.requires_grad_(weight.requires_grad)]
    if bd is not None:
        leaves.append(bd.requires_grad_(bias.requires_grad))  # type: ignore[union-attr]
    wanted = [t for t in leaves if t.requires_grad]
    grad_y = torch.randn(x.shape[0], weight.shape[0], generator=torch.Generator().manual_seed(0))

    def step(forward: Callable[[], Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.enable_grad():
                return torch.autograd.grad(forward(), wanted, grad_y)

        return run

    def fused() -> Tensor:
        return _OneDNNLinear.apply(xd, wd, bd, relu)

    return {ONEDNN: step(fused), ATEN: step(lambda: _ordinary(xd, wd, bd, relu))}


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``y = x Wᵀ + b``, or ``ReLU(x Wᵀ + b)`` with ``relu=True``, for ``x`` of shape ``(B, in)``.

    Same values (up to float round-off) and gradients as ``F.relu(F.linear(x, weight, bias))``;
    float32 CPU tensors run on oneDNN where that was measured faster (module docstring).
    ``weight`` is ``(out, in)``, ``bias`` ``(out,)``.
    """
    if (
        x.dim() == 2
        and x.shape[0] * weight.shape[0] * weight.shape[1] >= MIN_MACS
        and _eligible(x, weight, bias)
    ):  # the size first: no further call for small layers
        train = _training(x, weight, bias)
        if _use_onednn(x, weight, bias, relu, train):
            try:
                if train:
                    return _OneDNNLinear.apply(x, weight, bias, relu)
                return _kernel()(_rows(x), weight, bias, "relu" if relu else "none", [], "")
            except Exception as exc:  # the private kernel failed: the ordinary ops, from now on
                _fall_back(exc)
    return _ordinary(x, weight, bias, relu)


def _ordinary(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """The portable path: ``F.linear``, and the ReLU in place on its fresh output (as
    ``nn.ReLU(inplace=True)`` after ``nn.Linear``: no second activation buffer; autograd keeps
    the ReLU's output, which the GEMM's backward does not need)."""
    y = F.linear(x, weight, bias)
    return F.relu_(y) if relu else y


autotune.register_setting(_setting)
