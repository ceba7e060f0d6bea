"""2-d convolutions with their ReLU and residual addition fused, when no gradient is needed.

Sampling, density evaluation and the graph-free forward pass of memory-free backprop
(:mod:`flowkit.execution.invertible_backprop`) evaluate conditioner networks without autograd. There,
:func:`conv2d` computes

    y = ReLU(conv(x) + r)      (the ReLU and the residual ``r`` optional)

in one call of PyTorch's oneDNN convolution with post-ops (``torch.ops.mkldnn.
_convolution_pointwise``, the kernel ``torch.compile`` uses for frozen CPU convolutions), which
saves the separate element-wise passes over the activations. A caller that owns ``r`` and no
longer needs it may let the result overwrite it (``overwrite_residual=True``): oneDNN then
accumulates the convolution into ``r``'s buffer (its in-place variant,
``_convolution_pointwise_``), which on a 64-channel 16×16 batch of 64 costs 0.2 ms over the bare
convolution, against 0.4 ms for the out-of-place addition. It applies to float32 CPU batches
of ``nn.Conv2d`` layers with zero padding, when the kernel is present and matches the ordinary
ops on a probe; everything else — and every call that needs a gradient — runs the ordinary ops,
with the same values. The kernels are private PyTorch operators: a build that lacks them (or
whose signature changed) fails the probe and runs the ordinary ops, and a kernel that raises on a
real call switches the process to the ordinary ops with one
:class:`~flowkit.execution.onednn_linear.OneDNNFallbackWarning`.

Whether the fused call is the default is measured per shape, as for the linear layers: the first
call for each (input shape and memory format, weight shape, stride, padding, dilation, groups,
ReLU, residual kind, thread count) times the fused call against the ordinary ops on that call's
own inputs (:mod:`flowkit.execution.autotune`, cached on disk) and keeps the faster (calls
below :data:`MIN_MACS_MEASURED` multiply-adds take the fused call unmeasured).
``FLOWKIT_ONEDNN=1`` forces the fused call where it applies and ``FLOWKIT_ONEDNN=0`` (or
:func:`flowkit.execution.onednn_linear.set_onednn_linear`) switches it off together with the
fused linear layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.execution import autotune
from flowkit.execution import onednn_linear as _linear

__all__ = ["conv2d"]

#: The autotune operation name and candidates (the ordinary ops are the portable default).
OP = "conv2d.infer"
ONEDNN, ATEN = _linear.ONEDNN, _linear.ATEN
#: Below this many multiply-adds (batch × output pixels × weight size) the fused call is used
#: without measuring: one kernel call instead of three (convolution, addition, ReLU) costs less
#: Python and dispatch overhead, and timing so small a call is mostly noise.
MIN_MACS_MEASURED = 1 << 20

_probed: bool | None = None


def _kernels() -> tuple[Any, Any, Any]:
    ops = torch.ops.mkldnn._convolution_pointwise
    return ops.default, ops.binary, torch.ops.mkldnn._convolution_pointwise_.binary


def _probe() -> bool:
    """Whether the fused kernels exist and match the ordinary ops on a small channels-last batch."""
    try:
        if not (
            _linear.has_mkldnn_op("_convolution_pointwise")
            and _linear.has_mkldnn_op("_convolution_pointwise_")
        ):
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 3, 3, 3, generator=gen)
        b = torch.randn(4, generator=gen)
        r = torch.randn(2, 4, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        unary, binary, binary_ = _kernels()
        with torch.no_grad():
            got = unary(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
            got_res = binary(x, r, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [], None)
            into = r.clone()
            got_into = binary_(into, x, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [], None)
            want = F.relu(F.conv2d(x, w, b, padding=1) + r)
        return bool(
            torch.allclose(got, F.relu(F.conv2d(x, w, b, padding=1)), atol=1e-5)
            and torch.allclose(got_res, want, atol=1e-5)
            and got_into.data_ptr() == into.data_ptr()
            and torch.allclose(into, want, atol=1e-5)
        )
    except Exception:  # a changed signature or a broken build: the ordinary ops
        return False


def _fall_back(exc: BaseException) -> None:
    """Switch this process to the ordinary ops after a fused kernel failed on a real call."""
    global _probed
    _probed = False
    _linear.warn_fallback("the fused oneDNN convolution", exc)


def _active() -> bool:
    global _probed
    if not _linear.onednn_linear_active():  # the shared switch (and a oneDNN build)
        return False
    if _probed is None:
        _probed = _probe()
    return _probed


def _padding(conv: nn.Conv2d) -> list[int] | None:
    """The explicit symmetric padding of ``conv``, or ``None`` when it has none ('same' with an
    even kernel, a non-zero padding mode)."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "same":
        if any(k % 2 == 0 for k in conv.kernel_size) or any(d != 1 for d in conv.dilation):
            return None
        return [(k - 1) // 2 for k in conv.kernel_size]
    if conv.padding == "valid":
        return [0, 0]
    return list(conv.padding)  # type: ignore[arg-type]


def _fusable(x: Tensor, conv: nn.Conv2d, residual: Tensor | None) -> bool:
    if torch.is_grad_enabled() and (
        x.requires_grad
        or conv.weight.requires_grad
        or (conv.bias is not None and conv.bias.requires_grad)
        or (residual is not None and residual.requires_grad)
    ):
        return False
    if (
        x.dim() != 4
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or conv.weight.dtype != torch.float32
        or not _active()
    ):
        return False
    if residual is not None and not (
        residual.dtype == torch.float32
        and tuple(residual.shape) == (x.shape[0], conv.out_channels, *x.shape[2:])
        and tuple(conv.stride) == (1, 1)
        and residual.is_contiguous(memory_format=torch.channels_last)
        == x.is_contiguous(memory_format=torch.channels_last)
    ):
        return False
    return _padding(conv) is not None


def conv2d(
    x: Tensor,
    conv: nn.Conv2d,
    *,
    relu: bool = False,
    residual: Tensor | None = None,
    overwrite_residual: bool = False,
) -> Tensor:
    """``ReLU(conv(x) + residual)``; ``relu`` and ``residual`` optional.

    ``residual`` has the output's shape (fused only for stride 1 and the input's spatial size,
    as in a residual block). Without autograd, float32 CPU batches run as one fused
    oneDNN call (module docstring); otherwise ``conv(x)``, then the addition and the ReLU in place
    on that fresh output.
    ``overwrite_residual=True`` allows the fused call to write the result into ``residual``'s
    buffer (and return it); pass it only for a residual the caller created and does not read
    again. Calls that need a gradient never overwrite it.
    """
    if _fusable(x, conv, residual) and _use_fused(x, conv, relu, residual, overwrite_residual):
        try:
            return _fused(x, conv, relu, residual, overwrite_residual)
        except Exception as exc:  # the private kernel failed: the ordinary ops, from now on
            _fall_back(exc)
    return _ordinary(x, conv, relu, residual)


def _fused(
    x: Tensor, conv: nn.Conv2d, relu: bool, residual: Tensor | None, overwrite_residual: bool
) -> Tensor:
    """The one oneDNN call (see :func:`conv2d`)."""
    unary, binary, binary_ = _kernels()
    args = (conv.weight, conv.bias, _padding(conv), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is None:
        return unary(x, *args, "relu" if relu else "none", [], "")
    if overwrite_residual:
        return binary_(residual, x, *args, "add", None, "relu" if relu else None, [], None)
    return binary(x, residual, *args, "add", None, "relu" if relu else None, [], None)


def _ordinary(x: Tensor, conv: nn.Conv2d, relu: bool, residual: Tensor | None, hooks: bool = True) -> Tensor:
    """``conv(x)`` (its forward hooks run, unless ``hooks`` is false), ``+ residual``, ReLU."""
    y = conv(x) if hooks else conv._conv_forward(x, conv.weight, conv.bias)
    if residual is not None:
        # in place into the fresh convolution output (autograd saves the convolution's input and
        # weight, not its output): no new buffer; 3–4% off the step of benchmarks/invertible_backprop.py
        y = y.add_(residual)
    return F.relu_(y) if relu else y


def _use_fused(
    x: Tensor, conv: nn.Conv2d, relu: bool, residual: Tensor | None, overwrite_residual: bool
) -> bool:
    """Whether this fusable call takes the fused path: forced, or measured faster here."""
    if _linear.onednn_mode() == "on" or torch.compiler.is_compiling():
        return True
    w = conv.weight.shape
    if x.shape[0] * x.shape[2] * x.shape[3] * w[0] * w[1] * w[2] * w[3] < MIN_MACS_MEASURED:
        return True  # one call instead of three; too small to be worth timing
    kind = "none" if residual is None else ("add-into" if overwrite_residual else "add")
    signature = (
        tuple(x.shape),
        x.is_contiguous(memory_format=torch.channels_last),
        tuple(conv.weight.shape),
        tuple(conv.stride),
        str(conv.padding),
        tuple(conv.dilation),
        conv.groups,
        conv.bias is not None,
        relu,
        kind,
    )
    return (
        autotune.default_tuner().choose(
            OP, signature, lambda: _candidates(x, conv, relu, residual, overwrite_residual), default=ATEN
        )
        == ONEDNN
    )


def _candidates(
    x: Tensor, conv: nn.Conv2d, relu: bool, residual: Tensor | None, overwrite_residual: bool
) -> dict[str, Callable[[], Any]]:
    """One call of each path on this call's inputs (the residual a scratch copy: the fused
    in-place variant writes into it, and what it holds does not change the time; the module's
    forward hooks do not run)."""
    scratch = (
        None
        if residual is None
        else residual.clone(
            memory_format=torch.channels_last
            if residual.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
    )

    def fused() -> Tensor:
        with torch.no_grad():
            return _fused(x, conv, relu, scratch, overwrite_residual)

    def ordinary() -> Tensor:
        with torch.no_grad():
            return _ordinary(x, conv, relu, scratch, hooks=False)

    return {ONEDNN: fused, ATEN: ordinary}
