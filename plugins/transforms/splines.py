"""Monotone rational-quadratic splines with linear tails (Durkan et al. 2019), as pure functions.

On ``[−B, B]`` the map is a monotone rational-quadratic spline through ``K + 1`` knots
``(x_k, y_k)`` with positive derivatives ``δ_k`` at the knots (Gregory & Delbourgo 1982; Durkan,
Bekasov, Murray & Papamakarios 2019, "Neural Spline Flows", §3.1). In bin ``k``, with
``w_k = x_{k+1} − x_k``, ``h_k = y_{k+1} − y_k``, ``s_k = h_k / w_k`` and
``ξ = (x − x_k) / w_k ∈ [0, 1]``::

    y = y_k + h_k [s_k ξ² + δ_k ξ(1 − ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1 − ξ)]          (eq. 4)
    dy/dx = s_k² [δ_{k+1} ξ² + 2 s_k ξ(1 − ξ) + δ_k (1 − ξ)²] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1 − ξ)]²

Outside ``[−B, B]`` it is the identity (the "linear tails" of §3.3), so the boundary derivatives
are ``δ_0 = δ_K = 1`` and the map is continuously differentiable everywhere. The inverse solves
the quadratic ``a ξ² + b ξ + c = 0`` of Appendix A,

    a = h_k (s_k − δ_k) + (y − y_k) Δ,   b = h_k δ_k − (y − y_k) Δ,   c = −s_k (y − y_k),
    Δ = δ_{k+1} + δ_k − 2 s_k,

by its numerically stable root ``ξ = 2c / (−b − √(b² − 4ac))`` (no cancellation: ``−b`` and the
root have the same sign, and ``b² − 4ac ≥ 0`` is clamped at zero against round-off).

Parameters per scalar: ``K`` unnormalised widths, ``K`` unnormalised heights and ``K − 1``
unnormalised interior derivatives, ``3K − 1`` in all. Widths and heights are a softmax scaled to
``2B`` with a floor (``min_bin``), derivatives ``min_derivative + (1 − min_derivative)·softplus(u +
log(e − 1))``: all-zero parameters give equal bins and unit derivatives, i.e. the identity, so a
zero-initialised conditioner starts every spline flow at the identity.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.params import Range

#: ``softplus(_UNIT_SHIFT) = 1``: zero parameters give unit derivatives.
_UNIT_SHIFT = math.log(math.e - 1.0)
MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3


def spline_param_count(num_bins: int) -> int:
    """Parameters per scalar of a ``num_bins``-bin spline: ``3K − 1``."""
    return 3 * num_bins - 1


#: A spline's number of bins: at least 2, since one bin with the unit end derivatives that join
#: the identity tails is the identity itself, whatever its parameters (a layer that learns
#: nothing); at most what the floor ``MIN_BIN`` on every bin's share leaves room for.
NumBins = Annotated[int, Range(2, int(1 / MIN_BIN) - 1, note="one bin with identity tails is the identity")]
#: The half-width ``B`` of the interval ``[−B, B]`` the spline acts on (identity outside).
TailBound = Annotated[
    float, Range(0, min_inclusive=False, note="the spline acts on [-tail_bound, tail_bound]")
]


def _softmax(raw: Tensor) -> Tensor:
    """``softmax(raw)`` over the last dimension, written out: for the few bins of a spline this is
    4× faster forward and 2× with its backward than ``torch.softmax`` on a CPU (which loops over
    the short rows). The shift by the detached row maximum changes neither the value nor the
    gradient (softmax is invariant to a shift of its row) and keeps ``exp`` from overflowing."""
    e = torch.exp(raw - raw.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _knots(raw: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Bin sizes (``…, K``) and knot positions (``…, K + 1``) from ``−bound`` to ``bound``.

    The end knots are set, not summed, so they are exactly ``±bound`` whatever the round-off of
    the cumulative sum of the interior ones.
    """
    k = raw.shape[-1]
    sizes = MIN_BIN + (1.0 - MIN_BIN * k) * _softmax(raw)
    interior = (2.0 * bound) * torch.cumsum(sizes[..., :-1], dim=-1) - bound
    knots = F.pad(F.pad(interior, (1, 0), value=-bound), (0, 1), value=bound)
    return knots.diff(dim=-1), knots


def rational_quadratic_spline(
    x: Tensor,
    params: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """The spline ``y = g(x)`` (or ``x = g⁻¹(y)``) and ``log|dout/din|`` elementwise.

    ``x``: any shape ``S``; ``params``: ``S + (3K − 1,)``. Returns two tensors of shape ``S``.
    Inputs outside ``[−tail_bound, tail_bound]`` pass unchanged with log-derivative 0.
    """
    num_bins = (params.shape[-1] + 1) // 3
    if params.shape[-1] != spline_param_count(num_bins) or params.shape[:-1] != x.shape:
        raise ValueError(
            f"spline parameters of shape {tuple(params.shape)} do not fit inputs of "
            f"shape {tuple(x.shape)} (expected (..., 3K - 1))"
        )
    bound = float(tail_bound)
    widths, x_knots = _knots(params[..., :num_bins], bound)
    heights, y_knots = _knots(params[..., num_bins : 2 * num_bins], bound)
    inner = MIN_DERIVATIVE + (1.0 - MIN_DERIVATIVE) * F.softplus(params[..., 2 * num_bins :] + _UNIT_SHIFT)
    # δ_0 = δ_K = 1: C¹ joins with the tails
    derivs = F.pad(inner, (1, 1), value=1.0)

    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)  # the spline branch sees finite, in-range values only
    search = y_knots if inverse else x_knots
    # interior knots only: v at ±bound lands in the first/last bin without an epsilon
    if num_bins == 1:
        index = torch.zeros((*v.shape, 1), dtype=torch.long, device=v.device)
    else:
        index = torch.searchsorted(search[..., 1:-1].contiguous(), v.unsqueeze(-1).contiguous())
        index = index.clamp(0, num_bins - 1)
    # the six per-bin quantities of each scalar's bin, in one gather (one kernel, forward and
    # backward, instead of six)
    per_bin = torch.stack(
        [x_knots[..., :-1], widths, y_knots[..., :-1], heights, derivs[..., :-1], derivs[..., 1:]],
        dim=-2,
    )
    picked = per_bin.gather(-1, index.unsqueeze(-2).expand(*index.shape[:-1], 6, 1))
    x_k, w, y_k, h, d_k, d_k1 = picked.squeeze(-1).unbind(-1)
    s = h / w
    delta = d_k1 + d_k - 2.0 * s

    if inverse:
        dy = v - y_k
        a = h * (s - d_k) + dy * delta
        b = h * d_k - dy * delta
        c = -s * dy
        disc = (b * b - 4.0 * a * c).clamp(min=0.0)
        xi = (2.0 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        out = x_k + xi * w
    else:
        xi = ((v - x_k) / w).clamp(0.0, 1.0)
        t = xi * (1.0 - xi)
        out = y_k + h * (s * xi * xi + d_k * t) / (s + delta * t)
    t = xi * (1.0 - xi)
    denom = s + delta * t
    # g'(x) = s² [δ_{k+1} ξ² + 2 s ξ(1 − ξ) + δ_k (1 − ξ)²] / denom², one log of the product
    # (each factor is ≥ MIN_BIN- or MIN_DERIVATIVE-sized, so it neither under- nor overflows)
    slope = s * s * (d_k1 * xi * xi + 2.0 * s * t + d_k * (1.0 - xi) ** 2) / (denom * denom)
    log_slope = torch.log(slope)
    log_det = -log_slope if inverse else log_slope
    return torch.where(inside, out, x), torch.where(inside, log_det, 0.0)
