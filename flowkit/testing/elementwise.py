"""Conformance of an elementwise monotone map: alone, in a coupling, in an autoregressive flow.

An :class:`~flowkit.elementwise.ElementwiseMap` ``y_i = g(x_i; θ_i)`` is usable in a layer only
if it inverts and reports ``Σ_i log|∂g(x_i; θ_i)/∂x_i|`` exactly (Dinh et al. 2017, "Real NVP",
§3.3: the coupling's Jacobian is triangular, its diagonal ``g'``). :func:`check_map` checks the
map on its own against autograd in float64; :func:`check_elementwise` then runs every transform
check (:func:`~flowkit.testing.check_plugin`) on the registered ``coupling`` — vectors and
images, with and without a real-valued context — and, when the map allows it
(``autoregressive``), on the registered ``autoregressive`` flow in both directions. The
transforms are found by name in the registry, as a third party's would be.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.elementwise import ElementwiseMap, build_map
from flowkit.testing.checks import CONTEXT_FEATURES, JACOBIAN_ATOL, JACOBIAN_RTOL, _local_rng

__all__ = ["check_elementwise", "check_map"]

#: Small conditioners for the transform checks (the map, not the network, is under test).
SMALL_COUPLING = {"hidden": 8, "num_hidden": 1, "num_blocks": 1}
SMALL_AUTOREGRESSIVE = {"hidden": 8, "num_hidden": 1, "num_layers": 2}


def _fail(name: str, check: str, message: str) -> AssertionError:
    return AssertionError(f"[{name}] {check} check failed: {message}")


def _resolve(
    spec: str | ElementwiseMap | Callable[..., ElementwiseMap], params: Mapping[str, Any] | None
) -> tuple[ElementwiseMap, str]:
    """The map under test and its name for messages (a name, an object or a class/factory)."""
    if isinstance(spec, str):
        return build_map(spec, params, f"[elementwise] {spec}"), spec
    if isinstance(spec, ElementwiseMap):
        return build_map(spec, params, type(spec).__name__), type(spec).__name__
    built = spec(**dict(params or {}))
    return built, getattr(spec, "__name__", type(built).__name__)


def _params(m: ElementwiseMap, x: Tensor, scale: float, gen: torch.Generator) -> tuple[Tensor, ...]:
    """``num_params`` random conditioner outputs like ``x``, then the feature parameters at their
    initial values plus noise, one per channel (broadcast along the last dimension)."""
    outputs = tuple(scale * torch.randn(x.shape, generator=gen, dtype=x.dtype) for _ in range(m.num_params))
    features = tuple(
        float(v) + 0.1 * torch.randn(x.shape[1], 1, generator=gen, dtype=x.dtype)
        for v in m.feature_params.values()
    )
    return (*outputs, *features)


def check_map(
    spec: str | ElementwiseMap | Callable[..., ElementwiseMap],
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    input_scale: float = 1.0,
    param_scale: float = 0.5,
) -> None:
    """Check one map on its own (raises :class:`AssertionError` naming the check).

    * ``contract``: an :class:`~flowkit.elementwise.ElementwiseMap`, not an ``nn.Module``, with no
      tensor attributes (it is parameter-free), ``num_params ≥ 1``; outputs of the input's shape
      and dtype, log-dets of shape ``(B,)``;
    * ``round-trip``: ``g⁻¹(g(x)) = x`` and the two log-dets cancel (float64);
    * ``log-det``: the forward log-det is ``Σ log|∂y_i/∂x_i|`` by autograd, and ``y_i`` depends
      on ``x_i`` only (float64);
    * ``identity``: zero conditioner outputs give ``y = x`` when ``identity_at_zero``;
    * ``pickle``: the map survives ``pickle`` and computes the same.
    """
    m, name = _resolve(spec, params)
    if not isinstance(m, ElementwiseMap) or isinstance(m, nn.Module):
        raise _fail(
            name,
            "contract",
            f"expected a flowkit.elementwise.ElementwiseMap that is not an nn.Module, got {type(m).__name__}",
        )
    held = [k for k, v in vars(m).items() if isinstance(v, (Tensor, nn.Module))]
    if held:
        raise _fail(
            name,
            "contract",
            f"a map holds no tensors or modules (the layer owns the "
            f"learned ones: declare feature_params), found {held}",
        )
    if not isinstance(m.num_params, int) or m.num_params < 1:
        raise _fail(name, "contract", f"num_params must be a positive int, got {m.num_params!r}")
    with _local_rng(seed):
        gen = torch.Generator().manual_seed(seed)
        x = input_scale * torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
        theta = _params(m, x, param_scale, gen)
        y, logdet = m.forward(x, theta)
        if y.shape != x.shape or y.dtype != x.dtype or logdet.shape != (3,):
            raise _fail(
                name,
                "contract",
                f"forward returned {tuple(y.shape)} {y.dtype} and a "
                f"log-det of shape {tuple(logdet.shape)} for inputs "
                f"{tuple(x.shape)} {x.dtype}; expected the input's "
                f"shape and dtype, and (3,)",
            )
        back, logdet_inv = m.inverse(y, theta)
        err = float((back - x).abs().max())
        if not torch.allclose(back, x, atol=1e-8, rtol=1e-8):
            raise _fail(name, "round-trip", f"inverse(forward(x)) differs from x by {err:.3g}")
        if not torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-8):
            raise _fail(
                name,
                "round-trip",
                f"the forward and inverse log-dets do not cancel: {logdet.tolist()} vs {logdet_inv.tolist()}",
            )
        _check_logdet(m, name, x, theta, logdet)
        if m.identity_at_zero:
            zero = tuple(torch.zeros_like(x) for _ in range(m.num_params))
            start = tuple(torch.full((2, 1), float(v), dtype=x.dtype) for v in m.feature_params.values())
            y0, logdet0 = m.forward(x, (*zero, *start))
            if not (torch.allclose(y0, x, atol=1e-10) and logdet0.abs().max() < 1e-10):
                raise _fail(
                    name,
                    "identity",
                    "zero conditioner outputs do not give y = x (set "
                    "identity_at_zero = False if that is intended)",
                )
        clone = pickle.loads(pickle.dumps(m))
        if not torch.equal(clone.forward(x, theta)[0], y):
            raise _fail(name, "pickle", "the unpickled map computes something else")


def _check_logdet(m: ElementwiseMap, name: str, x: Tensor, theta: tuple[Tensor, ...], logdet: Tensor) -> None:
    """``logdet = Σ log|g'|`` by autograd, and the Jacobian is diagonal."""

    def flat(v: Tensor) -> Tensor:
        return m.forward(v.reshape(x.shape), theta)[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    diagonal = jac.diagonal()
    off = float((jac - torch.diag(diagonal)).abs().max())
    if off > 1e-12:
        raise _fail(
            name,
            "log-det",
            f"output i depends on inputs other than x_i (largest "
            f"off-diagonal derivative {off:.3g}); an elementwise map "
            f"must act on each scalar alone",
        )
    expected = diagonal.abs().log().reshape(x.shape).flatten(1).sum(1)
    if not torch.allclose(logdet, expected, atol=JACOBIAN_ATOL, rtol=JACOBIAN_RTOL):
        err = float((logdet - expected).abs().max())
        raise _fail(name, "log-det", f"the log-det differs from Σ log|∂y_i/∂x_i| by {err:.3g}")


def check_elementwise(
    spec: str | ElementwiseMap | Callable[..., ElementwiseMap],
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    input_scale: float = 1.0,
    context_features: int | None = CONTEXT_FEATURES,
) -> None:
    """Check a map alone (:func:`check_map`) and through the registered ``coupling`` and
    ``autoregressive`` transforms (every :func:`~flowkit.testing.check_transform` check).

    ``spec`` is a registered name (``flowkit.elementwise`` group), a map object, or a map class
    with ``params``. The coupling runs on vectors ``(6,)`` (half split, MLP) and images
    ``(2, 4, 4)`` (checkerboard, residual conv net) and, with ``context_features``, with a
    ``(B, k)`` float context; the autoregressive flow (vectors ``(5,)``, two layers, both
    directions) only when the map's ``autoregressive`` attribute allows it.
    """
    from flowkit.testing.runner import check_plugin

    m, _ = _resolve(spec, params)
    check_map(m, seed=seed, input_scale=input_scale)
    kw: dict[str, Any] = {"seed": seed, "input_scale": input_scale}
    for shape in ((6,), (2, 4, 4)):
        check_plugin("coupling", shape, {"map": m, **SMALL_COUPLING}, **kw)
        if context_features:
            check_plugin(
                "coupling", shape, {"map": m, **SMALL_COUPLING}, context_features=context_features, **kw
            )
    if not m.autoregressive:
        return
    for direction in ("maf", "iaf"):
        flow = {"map": m, "direction": direction, **SMALL_AUTOREGRESSIVE}
        check_plugin("autoregressive", (5,), flow, **kw)
        if context_features:
            check_plugin("autoregressive", (5,), flow, context_features=context_features, **kw)
