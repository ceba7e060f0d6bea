"""Flows for your own code: build a model from Python, no config file, no training run.

Each function returns a :class:`~flowkit.model.Flow` — the very object ``flowkit run`` builds
from a config (it goes through the same :func:`~flowkit.builder.build_model`), so its registered
plugins, checks and checkpoints are the ones the command line uses. ``flow(c)`` is
``p(x | c)`` as a ``torch.distributions.Distribution``::

    import torch
    from flowkit import flows

    flow = flows.MAF(features=6, context=2, transforms=5)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for x, c in loader:                              # x: (B, 6), c: (B, 2)
        loss = -flow(c).log_prob(x).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    samples = flow(torch.tensor([0.3, 1.2])).sample((1000,))      # (1000, 6)

``context`` is the per-example shape of a real-valued context: an int ``k`` for vectors, a
tuple for images ``(C, H, W)`` or sets ``(N, d)`` (choose ``embedding="conv"`` or
``"deepset"``), or ``None`` for an unconditional flow. ``flow.config`` is the resolved config,
so :func:`build` with it (or ``flowkit run --config``) rebuilds the same architecture and
``flow.load_state_dict`` restores its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowkit.builder import build_model, record_effective_values
from flowkit.data.base import DataMeta
from flowkit.model import Flow
from flowkit.transform import Shape

__all__ = ["GIN", "IAF", "MAF", "NICE", "NSF", "RealNVP", "build"]


def _shape(value: int | Shape | None) -> Shape | None:
    if value is None or value == 0:
        return None
    return (int(value),) if isinstance(value, int) else tuple(int(s) for s in value)


def build(
    transform: str,
    features: int | Shape,
    context: int | Shape | None = None,
    *,
    embedding: str | Mapping[str, Any] = "identity",
    prior: str | Mapping[str, Any] = "gaussian",
    **params: Any,
) -> Flow:
    """A :class:`Flow` with the registered ``transform`` (any name ``flowkit list`` shows).

    ``features`` is the data's per-example shape (an int for vectors), ``context`` the
    context's (see the module docstring); ``params`` are the transform's parameters
    (``flowkit list transforms --params``). ``embedding`` and ``prior`` are plugin names, or
    mappings with a ``name`` and parameters (e.g. ``{"name": "mlp", "features": 8}``).
    """
    from flowkit.config import defaults, merge, resolve

    params = {k: v for k, v in params.items() if v is not None}  # None: the plugin's default
    shape = _shape(features)
    if shape is None:
        raise ValueError("features must be a positive int or a shape tuple")
    section = {"name": embedding} if isinstance(embedding, str) else dict(embedding)
    prior_section = {"name": prior} if isinstance(prior, str) else dict(prior)
    config = merge(
        defaults(),
        {
            "transform": {"name": transform, **params},
            "embedding": section,
            "prior": prior_section,
            "data": {"preprocess": "none"},
        },
    )
    config["transform"] = {"name": transform, **params}  # not merged with realnvp's defaults
    config["prior"] = prior_section
    config["embedding"] = section
    resolved = resolve(config)
    flow = build_model(resolved, DataMeta(shape=shape, context_shape=_shape(context)))
    flow.config = record_effective_values(resolved, flow)
    return flow


def _stack(
    transform: str,
    depth: str,
    features: int | Shape,
    context: int | Shape | None,
    transforms: int,
    hidden: int | None,
    num_hidden: int,
    options: Mapping[str, Any],
) -> Flow:
    """:func:`build` of a stack of ``transforms`` layers, the number passed as the transform's own
    parameter ``depth`` (``num_layers``, ``num_couplings``, ``num_blocks``)."""
    layers: dict[str, Any] = {depth: transforms}
    return build(transform, features, context, **layers, hidden=hidden, num_hidden=num_hidden, **options)


def MAF(
    features: int,
    context: int | Shape | None = None,
    *,
    transforms: int = 5,
    hidden: int = 64,
    num_hidden: int = 2,
    **options: Any,
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al. 2017): registered transform ``maf``.

    ``transforms`` MADE affine layers of ``num_hidden`` × ``hidden`` units, order reversed
    between layers; the context enters every MADE (§3.4). ``options``: ``embedding``, ``prior``.
    """
    return _stack("maf", "num_layers", features, context, transforms, hidden, num_hidden, options)


def IAF(
    features: int,
    context: int | Shape | None = None,
    *,
    transforms: int = 5,
    hidden: int = 64,
    num_hidden: int = 2,
    **options: Any,
) -> Flow:
    """Inverse autoregressive flow (Kingma et al. 2016): registered transform ``iaf``.

    One-pass sampling, sequential density; sizes as :func:`MAF`.
    """
    return _stack("iaf", "num_layers", features, context, transforms, hidden, num_hidden, options)


def RealNVP(
    features: int | Shape,
    context: int | Shape | None = None,
    *,
    transforms: int = 8,
    hidden: int | None = None,
    num_hidden: int = 2,
    **options: Any,
) -> Flow:
    """Affine couplings (Dinh et al. 2017): registered transform ``realnvp``.

    For vectors, ``transforms`` couplings on alternating halves with MLP conditioners
    (``num_hidden`` × ``hidden`` units, default 256); for images ``(C, H, W)`` the multi-scale
    architecture (``options`` such as ``num_scales``, ``num_blocks``).
    """
    return _stack("realnvp", "num_layers", features, context, transforms, hidden, num_hidden, options)


def NICE(
    features: int | Shape,
    context: int | Shape | None = None,
    *,
    transforms: int = 4,
    hidden: int = 256,
    num_hidden: int = 3,
    **options: Any,
) -> Flow:
    """Additive couplings and a diagonal scaling (Dinh et al. 2015): transform ``nice``."""
    return _stack("nice", "num_couplings", features, context, transforms, hidden, num_hidden, options)


def GIN(
    features: int | Shape,
    context: int | Shape | None = None,
    *,
    transforms: int = 8,
    hidden: int | None = None,
    num_hidden: int = 2,
    **options: Any,
) -> Flow:
    """Volume-preserving affine couplings (Sorrenson et al. 2020): registered transform ``gin``."""
    return _stack("gin", "num_blocks", features, context, transforms, hidden, num_hidden, options)


def NSF(
    features: int | Shape,
    context: int | Shape | None = None,
    *,
    transforms: int = 5,
    bins: int = 8,
    hidden: int = 64,
    num_hidden: int = 2,
    coupling: bool = False,
    tail_bound: float = 5.0,
    **options: Any,
) -> Flow:
    """Neural spline flow (Durkan et al. 2019): monotone rational-quadratic splines.

    Autoregressive by default (registered transform ``rq-autoregressive``, like zuko's ``NSF``:
    one-pass density, ``D`` passes to sample); ``coupling=True`` gives the coupling version
    (``nsf``: one pass both ways). ``bins`` bins on ``[−tail_bound, tail_bound]``, identity
    outside.
    """
    name = "nsf" if coupling else "rq-autoregressive"
    return build(
        name,
        features,
        context,
        num_layers=transforms,
        num_bins=bins,
        tail_bound=tail_bound,
        hidden=hidden,
        num_hidden=num_hidden,
        **options,
    )
