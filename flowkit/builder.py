"""Build in one place: a resolved config becomes a :class:`~flowkit.model.Flow` and an
:class:`~flowkit.objective.Objective`.

The interface modules (:mod:`flowkit.model`, :mod:`flowkit.objective`) know nothing of configs or
the registry; this module reads the config, finds each plugin by name in the registry
(:mod:`flowkit.registry`) and calls it with the parameters the config gives and the values the
data injects (``event_shape``, ``num_classes``, ``context_features``, …)::

    [data] ──► preprocess ─┐
    [embedding] ──► embedding (real-valued context only)
    [transform] ──► transform (event_shape, num_classes, context_features injected)
    [prior] ──► prior (shape, num_classes, context_features injected)  ──► Flow
    [objective] ──► parse_objective: (name, weight, params) terms ──► one plugin or a WeightedSum

Plugins may choose values at build time for parameters the config leaves unset (Real NVP's
``hidden`` width is 256 for vectors, 64 for images). A plugin that reports them through an
``effective_params() -> dict`` method has them written into the run's ``config.toml``
(:func:`record_effective_values`), so the run folder alone rebuilds the same model even after a
default changes.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from flowkit import registry
from flowkit.config import (
    DEFAULT_EMBEDDING,
    ObjectiveTerm,
    is_weighted_sum,
    parse_objective,
)
from flowkit.data.base import DataMeta
from flowkit.data.preprocess import build_preprocess
from flowkit.embedding import ContextStandardize, Embedding
from flowkit.errors import ConfigError
from flowkit.model import Flow
from flowkit.objective import Objective, WeightedSum
from flowkit.params import user_parameters, validate_parameters
from flowkit.prior import Prior
from flowkit.transform import Transform

__all__ = ["build_model", "build_objective", "record_effective_values"]


# -- the model ---------------------------------------------------------------------------------
def _split(section: Mapping[str, Any], generic: tuple[str, ...] = ()) -> tuple[str, dict]:
    params = {k: v for k, v in section.items() if k != "name" and k not in generic}
    return section["name"], params


def build_model(config: Mapping[str, Any], meta: DataMeta) -> Flow:
    """Build the :class:`Flow` a resolved config describes for data described by ``meta``."""
    missing = [k for k in ("data", "transform", "prior") if not isinstance(config.get(k), Mapping)]
    if missing:
        raise ConfigError(
            f"build_model needs a resolved config, with the sections [data], [transform] and "
            f"[prior]; this one lacks {', '.join(f'[{k}]' for k in missing)}. Build one with "
            f"flowkit.load_config(transform=..., data=..., overrides=[...]) (it fills in every "
            f"default), or use the classes of flowkit.flows"
        )
    data_cfg = config["data"]
    preprocess = build_preprocess(
        data_cfg.get("preprocess", "auto"),
        meta.shape,
        data_cfg.get("alpha", 0.05),
        meta.default_preprocess,
        meta.standardization,
    )
    embedding, context_norm = _build_context(config.get("embedding", DEFAULT_EMBEDDING), meta)
    features = None if embedding is None else embedding.features
    # what the transform and the prior are both given: the labels' and the context's widths
    conditioning = {"num_classes": meta.num_classes, "context_features": features}
    t_name, t_params = _split(config["transform"])
    _require_context_support("transform", t_name, registry.transforms.get(t_name), t_params, meta)
    transform = registry.transforms.build(
        t_name, t_params, injected={"event_shape": preprocess.output_shape, **conditioning}, expect=Transform
    )
    p_name, p_params = _split(config["prior"])
    prior = registry.priors.build(
        p_name, p_params, injected={"shape": transform.output_shape, **conditioning}, expect=Prior
    )
    if prior.conditional and not meta.num_classes:
        raise ConfigError(
            f"prior '{p_name}' is class-conditional but dataset '{data_cfg['name']}' has no "
            f"labels; choose an unconditional prior such as 'gaussian'"
            + (" or the context-aware 'conditional-gaussian'" if meta.context_shape else "")
        )
    return Flow(
        transform,
        prior,
        preprocess,
        levels=meta.levels,
        num_classes=meta.num_classes,
        embedding=embedding,
        context_norm=context_norm,
    )


def _build_context(
    section: Mapping[str, Any],
    meta: DataMeta,
) -> tuple[Embedding | None, ContextStandardize | None]:
    """The embedding network (and the context standardisation) for a real-valued context."""
    if meta.context_shape is None:
        return None, None
    name, params = _split(section)
    embedding = registry.embeddings.build(
        name, params, injected={"context_shape": meta.context_shape}, expect=Embedding
    )
    stats = meta.standardization or {}
    norm = None
    if "context_mean" in stats and "context_std" in stats:
        norm = ContextStandardize(meta.context_shape, stats["context_mean"], stats["context_std"])
    return embedding, norm


def _require_context_support(
    kind: str, name: str, factory: Any, params: Mapping[str, Any], meta: DataMeta
) -> None:
    """A plugin that cannot read a real-valued context says so before anything is built."""
    if meta.context_shape is None:
        return
    accepted: Mapping[str, inspect.Parameter]
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "context_features" not in accepted:
        raise ConfigError(
            f"{kind} '{name}' cannot take a context, but the data has a real-valued context of "
            f"shape {tuple(meta.context_shape)}. Choose a conditional {kind} (for example maf, "
            f"realnvp, affine-coupling, glow, nice, gin; `flowkit list transforms` shows which "
            f"take context_features), or use data without a context."
        )
    if params.get("conditional") is False:
        raise ConfigError(
            f"[{kind}] {name}: conditional=false would ignore the data's context of shape "
            f"{tuple(meta.context_shape)}; remove conditional=false (a dataset with a context "
            f"makes conditional transforms condition on it), or use data without a context."
        )


# -- effective values --------------------------------------------------------------------------
_KINDS = {"transform": "transform", "embedding": "embedding", "prior": "prior"}


def record_effective_values(config: Mapping[str, Any], model: Flow) -> dict[str, Any]:
    """``config`` with the values the model's plugins chose for parameters it leaves unset.

    A transform, prior or embedding may report the values it actually uses through an
    ``effective_params() -> dict`` method (e.g. ``{"hidden": 256}`` when ``hidden`` was left to
    its build-time default). Every reported key that is one of the plugin's parameters and is
    unset in ``config`` is filled in; values the config sets are never changed. Building the
    returned config gives the same model, even once a default changes. A reported value that
    fails the plugin's own parameter checks is a :class:`ConfigError` (a plugin bug).
    """
    out = copy.deepcopy(dict(config))
    parts = {"transform": model.transform, "embedding": model.embedding, "prior": model.prior}
    for section, part in parts.items():
        report = getattr(part, "effective_params", None)
        if part is None or not callable(report) or section not in out:
            continue
        values = report() or {}
        name = out[section]["name"]
        factory = registry.registry(_KINDS[section]).get(name)
        accepted = user_parameters(factory)
        filled = {
            k: _plain_value(v)
            for k, v in values.items()
            if k in accepted and out[section].get(k) is None and v is not None
        }
        if not filled:
            continue
        merged = {**out[section], **filled}
        try:
            validate_parameters(
                factory, {k: v for k, v in merged.items() if k != "name"}, f"[{section}] {name}"
            )
        except ConfigError as exc:
            raise ConfigError(
                f"{section} '{name}' reported effective parameters {filled} that "
                f"its own parameter checks refuse: {exc}"
            ) from exc
        out[section] = merged
    return out


def _plain_value(value: Any) -> Any:
    """A TOML-writable copy of a parameter value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


# -- the objective -----------------------------------------------------------------------------
def build_objective(
    objective: Mapping[str, Any] | Sequence[ObjectiveTerm],
) -> Objective:
    """Build an objective from its parsed terms (or from a resolved ``[objective]`` section).

    One term of weight 1 is the plugin itself; anything else is a
    :class:`~flowkit.objective.WeightedSum` of the terms, each with its own parameters.
    """
    terms = parse_objective(objective) if isinstance(objective, Mapping) else tuple(objective)
    if not terms:
        raise ConfigError('[objective] needs at least one term, e.g. name = "mle"')
    if not is_weighted_sum(terms):
        return registry.objectives.build(terms[0].name, terms[0].params)
    built = {t.name: registry.objectives.build(t.name, t.params) for t in terms}
    return WeightedSum(built, {t.name: t.weight for t in terms})
