"""Validate plugin parameters from the plugin's typed signature, before any training starts.

A plugin is a class or function whose keyword parameters carry type hints::

    class AffineCoupling(Transform):
        def __init__(self, event_shape: tuple[int, ...], *, hidden: int = 64,
                     conditioner: Literal["mlp", "conv"] = "mlp") -> None: ...

Config values are checked against those hints (``int``, ``float``, ``bool``, ``str``,
``Literal``, ``Optional``/unions, ``list``/``tuple`` of those, ``dict``, ``Path``). Some parameters
are *injected* by flowkit rather than set by the user (``event_shape``, ``shape``,
``num_classes``, ``data_dir``, ``seed``); a plugin receives the ones its signature names.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from flowkit.errors import ConfigError, did_you_mean

#: Parameter names flowkit fills in itself; users may not set them in a config.
INJECTED = frozenset({"event_shape", "shape", "num_classes", "data_dir", "seed",
                      "context_features", "context_shape"})


def _signature(target: Callable[..., Any]) -> inspect.Signature:
    if inspect.isclass(target):
        return inspect.signature(target.__init__)  # type: ignore[misc]
    return inspect.signature(target)


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to no checking
        return {}


def user_parameters(
    target: Callable[..., Any], reserved: frozenset[str] = INJECTED
) -> dict[str, inspect.Parameter]:
    """The parameters a user may set in a config (everything but ``self`` and ``reserved``)."""
    params = {}
    for name, p in _signature(target).parameters.items():
        if name == "self" or name in reserved:
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        params[name] = p
    return params


def describe_parameters(target: Callable[..., Any]) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` strings for every user parameter, for listings and docs."""
    hints = _hints(target)
    rows = []
    for name, p in user_parameters(target).items():
        hint = hints.get(name, p.annotation)
        type_s = _type_name(hint) if hint is not inspect.Parameter.empty else "any"
        default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
        rows.append((name, type_s, default))
    return rows


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to ``hint`` where lossless, else raise :class:`ConfigError`."""
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        hint_s = did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(f"{where} must be one of {choices}, got {value!r}.{hint_s}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list ({_type_name(hint)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            items = [check_value(v, a, f"{where}[{i}]")
                     for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table (dict), got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where} must be a path, got {value!r}")
    return value


def validate_parameters(
    target: Callable[..., Any],
    params: Mapping[str, Any],
    where: str,
    injected: Mapping[str, Any] | None = None,
    reserved: frozenset[str] = INJECTED,
) -> dict[str, Any]:
    """Check ``params`` against ``target``'s signature and return the keyword arguments to call it.

    ``where`` names the config section in messages (e.g. ``"[transform] realnvp"``).
    ``injected`` values are passed only when the signature asks for them; ``reserved`` names
    (default: :data:`INJECTED`) may not be set by the user.
    """
    sig = _signature(target)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    allowed = user_parameters(target, reserved)
    hints = _hints(target)
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        if key in reserved:
            raise ConfigError(f"{where}: '{key}' is set by flowkit from the data; remove it")
        if key not in allowed:
            if accepts_any:
                kwargs[key] = value
                continue
            known = ", ".join(allowed) or "none"
            raise ConfigError(
                f"{where}: unknown parameter '{key}'.{did_you_mean(key, allowed)} "
                f"Parameters it takes: {known}."
            )
        kwargs[key] = check_value(value, hints.get(key, Any), f"{where} {key}")
    for name, p in allowed.items():
        if p.default is inspect.Parameter.empty and name not in kwargs:
            raise ConfigError(f"{where}: missing required parameter '{name}'")
    for name, value in (injected or {}).items():
        if name in sig.parameters:
            kwargs[name] = value
    return kwargs
