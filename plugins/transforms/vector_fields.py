"""Vector fields of continuous normalizing flows, and how objectives find and report them.

A continuous normalizing flow (:mod:`flowkit.plugins.transforms.cnf`) integrates
``dx/dt = v(x, t, c)``; its log-determinant needs the trace of the Jacobian ``∂v/∂x`` along the
way (Chen et al. 2018, "Neural Ordinary Differential Equations", NeurIPS, Thm. 1). The networks
here compute ``v`` *and* Jacobian-vector products ``(∂v/∂x)·e`` in one pass, by propagating the
tangents ``e`` through the layers next to the activations (forward-mode differentiation written
out: a linear layer maps a tangent by its weight without the bias, a smooth activation ``σ``
multiplies it by ``σ'(pre-activation)``). That gives

* the exact trace, ``tr ∂v/∂x = Σ_i e_iᵀ (∂v/∂x) e_i`` over the ``D`` unit vectors, as ``D``
  tangents in one batched pass, and
* Hutchinson's estimate ``εᵀ (∂v/∂x) ε`` (Hutchinson 1989; FFJORD, Grathwohl et al. 2019, §3.1)
  with one tangent,

with ordinary first-order autograd through both (no double backward), under ``torch.no_grad``
and ``torch.inference_mode`` too. Both networks read the time and the context at *every* layer
(concatenated to the layer's input: features for the MLP, constant channels for the conv net;
FFJORD's "concat" layers) and zero-initialise their last layer, so a fresh flow is the identity.

The activation must be smooth for the trace to be defined everywhere: ``softplus``, ``tanh`` or
``silu`` (ReLU's derivative jumps, so the divergence is a step function and the ODE's log-det is
not differentiable in ``x``).

Two helpers for objectives (no ODE solver is imported here):

* :func:`find_vector_field` — the transform that has a vector field (the
  :class:`VectorFieldTransform` protocol: ``velocity(x, t, context)`` and ``time_horizon``),
  looking through flowkit's checkpoint-transparent wrappers (``train.compile``,
  ``train.invertible_backprop``);
* :func:`solver_terms` — ``{"nfe": …}``, the number of function evaluations of the last solve of
  every ODE block in a transform, for the training log (``mle`` logs it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.errors import ConfigError
from flowkit.execution.wrapper import TransparentWrapper

Activation = Literal["softplus", "tanh", "silu"]
ACTIVATIONS: tuple[str, ...] = ("softplus", "tanh", "silu")


def activation_and_slope(pre: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``(σ(pre), σ'(pre))`` for a smooth activation ``kind``."""
    if kind == "tanh":
        out = torch.tanh(pre)
        return out, 1.0 - out * out
    if kind == "softplus":
        return F.softplus(pre), torch.sigmoid(pre)
    if kind == "silu":
        gate = torch.sigmoid(pre)
        return pre * gate, gate * (1.0 + pre * (1.0 - gate))
    raise ConfigError(
        f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)} "
        f"(smooth, so that the Jacobian's trace is defined)"
    )


class FieldNet(nn.Module):
    """Base of the vector-field networks: layers that read ``[h, t, c]`` at every depth.

    ``forward(x, s, c)`` is ``v``; ``jvp(x, s, c, tangents)`` is ``(v, (∂v/∂x)·tangents)`` with
    ``tangents`` of shape ``(B, K, *event_shape)`` (``K`` directions per example). ``s`` is the
    time, shape ``(B,)``; ``c`` the ``(B, k)`` context features or ``None``.
    """

    layers: nn.ModuleList

    def __init__(self, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            activation_and_slope(torch.zeros(()), activation)  # raises the ConfigError
        self.activation = activation

    def _stack(
        self, layer: Callable[[int, int], nn.Module], outer: int, hidden: int, num_hidden: int, extra: int
    ) -> None:
        """``self.layers``: ``layer(in, out)`` from ``outer`` through ``num_hidden`` of ``hidden``
        back to ``outer``, every layer reading ``extra`` more inputs (time, context); the last one
        zero-initialised, so a fresh field is ``v = 0``."""
        widths = [outer] + [hidden] * num_hidden + [outer]
        self.layers = nn.ModuleList(layer(a + extra, b) for a, b in itertools.pairwise(widths))
        last = self.layers[-1]
        assert isinstance(last, nn.Linear | nn.Conv2d)
        nn.init.zeros_(last.weight)
        assert last.bias is not None  # Conv2d types it Tensor | None
        nn.init.zeros_(last.bias)

    # subclasses: the affine map of one layer on [h, extra], and its linear part on tangents
    def _layer(self, layer: nn.Module, h: Tensor, extra: Tensor) -> Tensor:
        raise NotImplementedError

    def _layer_tangent(self, layer: nn.Module, tangents: Tensor, width: int) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _extra(s: Tensor, context: Tensor | None) -> Tensor:
        """The ``(B, 1 + k)`` features every layer reads besides the hidden state."""
        extra = s.reshape(-1, 1)
        return extra if context is None else torch.cat([extra, context], dim=1)

    def forward(self, x: Tensor, s: Tensor, context: Tensor | None = None) -> Tensor:
        extra = self._extra(s, context)
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = self._layer(layer, h, extra)
            if i < last:
                h = activation_and_slope(h, self.activation)[0]
        return h

    def jvp(self, x: Tensor, s: Tensor, context: Tensor | None, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """``v`` and the Jacobian-vector products ``(∂v/∂x) e_k`` for ``tangents = (e_k)``."""
        extra = self._extra(s, context)
        h, tan = x, tangents
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            width = h.shape[1]
            pre = self._layer(layer, h, extra)
            tan = self._layer_tangent(layer, tan, width)
            if i < last:
                h, slope = activation_and_slope(pre, self.activation)
                tan = tan * slope.unsqueeze(1)
            else:
                h = pre
        return h, tan


class MLPField(FieldNet):
    """``v(x, t, c)`` for vectors ``(D,)``: ``num_hidden`` layers of ``hidden`` units.

    Layer ``l`` maps ``[h_{l−1}, t, c] ↦ σ(W_l [h_{l−1}, t, c] + b_l)``; the output layer is
    linear and zero-initialised.
    """

    def __init__(
        self, features: int, hidden: int, num_hidden: int, context: int = 0, activation: str = "softplus"
    ) -> None:
        super().__init__(activation)
        self._stack(nn.Linear, features, hidden, num_hidden, 1 + context)

    def _layer(self, layer: nn.Module, h: Tensor, extra: Tensor) -> Tensor:
        return layer(torch.cat([h, extra], dim=1))

    def _layer_tangent(self, layer: nn.Module, tangents: Tensor, width: int) -> Tensor:
        assert isinstance(layer, nn.Linear)
        return F.linear(tangents, layer.weight[:, :width])


class ConvField(FieldNet):
    """``v(x, t, c)`` for images ``(C, H, W)``: ``num_hidden`` 3×3 conv layers of ``hidden``
    channels, the time and the context features appended as constant channels to every layer's
    input; the output conv is zero-initialised. Padding keeps the size, so examples stay
    independent and any ``H × W`` is accepted."""

    def __init__(
        self, channels: int, hidden: int, num_hidden: int, context: int = 0, activation: str = "softplus"
    ) -> None:
        super().__init__(activation)
        self._stack(lambda a, b: nn.Conv2d(a, b, 3, padding=1), channels, hidden, num_hidden, 1 + context)

    def _layer(self, layer: nn.Module, h: Tensor, extra: Tensor) -> Tensor:
        planes = extra.reshape(*extra.shape, 1, 1).expand(-1, -1, *h.shape[2:])
        return layer(torch.cat([h, planes], dim=1))

    def _layer_tangent(self, layer: nn.Module, tangents: Tensor, width: int) -> Tensor:
        assert isinstance(layer, nn.Conv2d)
        b, k = tangents.shape[:2]
        flat = tangents.reshape(b * k, *tangents.shape[2:])
        out = F.conv2d(flat, layer.weight[:, :width], None, layer.stride, layer.padding)
        return out.reshape(b, k, *out.shape[1:])


# ---------------------------------------------------------------------------------------------
# the protocol objectives use, and the training-log hook
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class VectorFieldTransform(Protocol):
    """A transform that is the flow of a vector field ``dx/dt = v(x, t, c)`` on ``[0, T]``.

    Its ``forward`` maps data (``t = 0``) to the latent (``t = T = time_horizon``).
    ``velocity(x, t, context)`` returns ``v`` with ``x``'s shape; ``t`` is a number or a ``(B,)``
    tensor of times in ``[0, T]``; ``context`` is what the transform's ``forward`` takes (labels or
    the embedded real-valued context). Flow matching regresses ``velocity`` directly.
    """

    time_horizon: float

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor: ...


def find_vector_field(transform: nn.Module) -> VectorFieldTransform | None:
    """``transform`` itself, or the transform a checkpoint-transparent wrapper evaluates, when it
    has a vector field; ``None`` otherwise. (``Inverse`` is not looked through: its field would
    run backwards.)"""
    seen: nn.Module | None = transform
    while seen is not None:
        if isinstance(seen, VectorFieldTransform):
            return seen
        seen = seen.base if isinstance(seen, TransparentWrapper) else None
    return None


def solver_terms(transform: nn.Module) -> dict[str, float]:
    """``{"nfe": N}``: function evaluations of the last forward/inverse solve, summed over every
    ODE block in ``transform`` (``{}`` when it has none). Blocks declare themselves with the class
    attribute ``reports_nfe = True`` and keep the count in ``last_nfe``."""
    total, found = 0, False
    for module in transform.modules():
        if getattr(type(module), "reports_nfe", False):
            found = True
            total += int(getattr(module, "last_nfe", 0))
    return {"nfe": float(total)} if found else {}
