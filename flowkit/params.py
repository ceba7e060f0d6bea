"""Validate plugin parameters from the plugin's typed signature, before any training starts.

A plugin is a class or function whose keyword parameters carry type hints::

    class AffineCoupling(Transform):
        def __init__(self, event_shape: tuple[int, ...], *,
                     hidden: Annotated[int, Range(1)] = 64,
                     conditioner: Literal["mlp", "conv"] = "mlp") -> None: ...

Config values are checked against those hints (``int``, ``float``, ``bool``, ``str``,
``Literal``, ``Optional``/unions, ``list``/``tuple`` of those, ``dict``, ``Path``). Some parameters
are *injected* by flowkit rather than set by the user (``event_shape``, ``shape``,
``num_classes``, ``data_dir``, ``seed``); a plugin receives the ones its signature names.

**Ranges.** A number's allowed values are declared once, beside the parameter, with
``typing.Annotated`` and the markers of this module: ``Annotated[int, Range(1)]`` (at least 1),
``Annotated[float, Range(0, min_inclusive=False)]`` (greater than 0),
``Annotated[float, Range(0, 0.5, max_inclusive=False)]`` (in ``[0, 0.5)``),
``Annotated[int, Range(1), Odd()]``. They work inside unions and containers too
(``Annotated[int, Range(1)] | None``, ``list[Annotated[int, Range(1)]]``). Every ``float`` must
also be finite (no ``nan``, ``inf``) unless its ``Range`` says ``finite=False``.

The same declaration is enforced on both roads into a plugin:

* config values, by :func:`validate_parameters` / :func:`check_value` (``flowkit run
  --dry-run``, :func:`flowkit.config.resolve`, ``registry.build``): a :class:`ConfigError` names
  the section, the key, the value, the allowed range and the default;
* direct Python calls (``RealNVP((2,), hidden=0)``): every subclass of ``Transform``, ``Prior``,
  ``Objective`` and ``Embedding`` has its ``__init__`` checked (:class:`CheckedParameters`), and
  any other class or function opts in with the :func:`checked` decorator (dataset functions).

Checks that involve several parameters, or the data's shape, stay in the plugin's own code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from flowkit.errors import ConfigError, did_you_mean

#: Parameter names flowkit fills in itself; users may not set them in a config.
INJECTED = frozenset(
    {"event_shape", "shape", "num_classes", "data_dir", "seed", "context_features", "context_shape"}
)

_NO_DEFAULT: Any = inspect.Parameter.empty


# -- the markers -------------------------------------------------------------------------------
def _num(x: float) -> str:
    """A bound as people write it: ``1``, ``0.5``, ``1e-06``, ``4294967295``."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


class Constraint:
    """Base of the markers that restrict a number beside its type (``Annotated[int, Range(1)]``).

    A subclass says in words what it requires (:meth:`words`, for messages), in symbols
    (:meth:`symbol`, for ``flowkit list --params``), and whether a value satisfies it
    (:meth:`accepts`); ``note`` is an optional explanation or fix, added to the message.
    """

    note: str = ""

    def accepts(self, value: float) -> bool:
        raise NotImplementedError

    def words(self) -> str:
        raise NotImplementedError

    def symbol(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Constraint):
    """The number must lie between ``minimum`` and ``maximum`` (``None``: no bound on that side).

    Bounds are inclusive unless ``min_inclusive``/``max_inclusive`` say otherwise. For a
    ``float``, ``finite=False`` also allows ``nan`` and ``±inf`` (floats are finite otherwise).
    ``note`` explains the range or says what a special value means, e.g. ``"0: off"``.
    """

    minimum: float | None = None
    maximum: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    note: str = ""
    finite: bool = True

    def accepts(self, value: float) -> bool:
        if value != value:  # nan: no bound can place it
            return not self.finite
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value < lo if self.min_inclusive else value <= lo):
            return False
        return not (hi is not None and (value > hi if self.max_inclusive else value >= hi))

    def words(self) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            if self.min_inclusive and self.max_inclusive:
                return f"between {_num(lo)} and {_num(hi)}"
            if not self.min_inclusive and not self.max_inclusive:
                return f"strictly between {_num(lo)} and {_num(hi)}"
            return f"in {self._interval()}"
        if lo is not None:
            return f"at least {_num(lo)}" if self.min_inclusive else f"greater than {_num(lo)}"
        if hi is not None:
            return f"at most {_num(hi)}" if self.max_inclusive else f"less than {_num(hi)}"
        return "any number"

    def symbol(self) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            text = f"in {self._interval()}"
        elif lo is not None:
            text = f"{'≥' if self.min_inclusive else '>'} {_num(lo)}"
        elif hi is not None:
            text = f"{'≤' if self.max_inclusive else '<'} {_num(hi)}"
        else:
            text = ""
        if not self.finite:
            text = f"{text} (nan/inf allowed)".strip()
        return text

    def _interval(self) -> str:
        left = "[" if self.min_inclusive else "("
        right = "]" if self.max_inclusive else ")"
        return f"{left}{_num(self.minimum)}, {_num(self.maximum)}{right}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class Odd(Constraint):
    """The integer must be odd (e.g. a kernel size whose ``k // 2`` padding keeps the size)."""

    note: str = ""

    def accepts(self, value: float) -> bool:
        return float(value).is_integer() and int(value) % 2 == 1

    def words(self) -> str:
        return "an odd number"

    def symbol(self) -> str:
        return "odd"


#: The seeds flowkit accepts: every generator it seeds (torch's, numpy's) takes them, and the
#: streams it derives from them (``seed · 7919 + step``) stay in torch's range.
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Range(0, SEED_MAX)]


def constraints_of(hint: Any) -> tuple[Constraint, ...]:
    """The :class:`Constraint` markers of an ``Annotated`` hint (``()`` for any other hint)."""
    if typing.get_origin(hint) is Annotated:
        return tuple(m for m in typing.get_args(hint)[1:] if isinstance(m, Constraint))
    return ()


def _finite_required(hint: Any) -> bool:
    return not any(isinstance(c, Range) and not c.finite for c in constraints_of(hint))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class OutOfRangeError(ConfigError):
    """The value has the right type but is outside what the parameter allows."""


def _fail(where: str, requirement: str, note: str, value: Any, default: Any) -> OutOfRangeError:
    message = f"{where} must be {requirement}"
    if note:
        message += f" ({note})"
    message += f", got {value!r}"
    if default is not _NO_DEFAULT and default is not None:
        message += f"; the default is {default!r}"
    return OutOfRangeError(message + ".")


def _check_constraints(value: Any, hint: Any, where: str, default: Any) -> None:
    """Raise unless the number ``value`` satisfies the constraints of ``hint`` (and is finite)."""
    found = constraints_of(hint)
    if not math.isfinite(value) and _finite_required(hint):
        bounded = [
            c for c in found if isinstance(c, Range) and (c.minimum is not None or c.maximum is not None)
        ]
        words = f" {bounded[0].words()}" if bounded else ""
        raise _fail(where, f"a finite number{words}", bounded[0].note if bounded else "", value, default)
    for constraint in found:
        if not constraint.accepts(value):
            raise _fail(where, constraint.words(), constraint.note, value, default)


# -- type hints --------------------------------------------------------------------------------
def _signature(target: Callable[..., Any]) -> inspect.Signature:
    if inspect.isclass(target):
        return inspect.signature(target.__init__)
    return inspect.signature(target)


def _function_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s type hints with their ``Annotated`` extras; an annotation that cannot be resolved
    (a name imported only for type checkers) is left out, the others are kept."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: resolve one annotation at a time
        pass
    inner = inspect.unwrap(fn)
    namespace = dict(getattr(inner, "__globals__", {}))
    module = sys.modules.get(getattr(inner, "__module__", "") or "")
    if module is not None:
        namespace = {**vars(module), **namespace}
    hints: dict[str, Any] = {}
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:
            continue
    return hints


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    return _function_hints(fn)


def parameter_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """The type hints of ``target``'s parameters (a class: its ``__init__``), ranges included."""
    return _hints(target)


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


def describe_parameters(
    target: Callable[..., Any], reserved: frozenset[str] = INJECTED
) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` strings for every user parameter, for listings and docs.

    The type includes the declared range: ``("hidden", "int ≥ 1", "64")``.
    """
    hints = _hints(target)
    rows = []
    for name, p in user_parameters(target, reserved).items():
        hint = hints.get(name, p.annotation)
        type_s = _type_name(hint) if hint is not inspect.Parameter.empty else "any"
        default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
        rows.append((name, type_s, default))
    return rows


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base = _type_name(typing.get_args(hint)[0])
        marks = ", ".join(filter(None, (c.symbol() for c in constraints_of(hint))))
        return f"{base} {marks}" if marks else base
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    return getattr(hint, "__name__", str(hint))


# -- config values -----------------------------------------------------------------------------
def check_value(value: Any, hint: Any, where: str, *, default: Any = _NO_DEFAULT) -> Any:
    """``value`` converted to ``hint`` where lossless, else raise :class:`ConfigError`.

    Declared ranges (``Annotated[int, Range(1)]``) are enforced, and a ``float`` must be finite
    unless its range allows otherwise. ``default``, when given, is named in range messages.
    """
    return _check(value, hint, where, default, finite=True)


def _check(value: Any, hint: Any, where: str, default: Any, finite: bool) -> Any:
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        out = _check(value, args[0], where, default, finite=False)  # finiteness checked below
        if _is_number(out):
            _check_constraints(out, hint, where, default)
        return out
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        hint_s = did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(f"{where} must be one of {choices}, got {value!r}.{hint_s}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        out_of_range: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where, default, finite)
            except OutOfRangeError as exc:  # the type fits, the value does not: say why
                out_of_range.append(exc)
            except ConfigError:
                continue
        if out_of_range:
            raise out_of_range[0]
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list ({_type_name(hint)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            items = [
                _check(v, a, f"{where}[{i}]", _NO_DEFAULT, True) for i, (v, a) in enumerate(zip(value, args))
            ]
        else:
            inner = args[0] if args else Any
            items = [_check(v, inner, f"{where}[{i}]", _NO_DEFAULT, True) for i, v in enumerate(value)]
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
            try:
                out = float(value)
            except OverflowError:
                raise _fail(where, "a finite number", "", value, default) from None
            if finite and not math.isfinite(out):
                raise _fail(where, "a finite number", "", value, default)
            return out
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
    (default: :data:`INJECTED`) may not be set by the user. Declared ranges are enforced.
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
        kwargs[key] = check_value(value, hints.get(key, Any), f"{where} {key}", default=allowed[key].default)
    for name, p in allowed.items():
        if p.default is inspect.Parameter.empty and name not in kwargs:
            raise ConfigError(f"{where}: missing required parameter '{name}'")
    for name, value in (injected or {}).items():
        if name in sig.parameters:
            kwargs[name] = value
    return kwargs


# -- direct Python calls -----------------------------------------------------------------------
def _needs_check(hint: Any) -> bool:
    """Whether ``hint`` declares a constraint or holds a float (which must be finite)."""
    if hint is float:
        return True
    if constraints_of(hint):
        return True
    return any(_needs_check(a) for a in typing.get_args(hint) if a is not Ellipsis)


def _kind_fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is the kind of thing ``hint`` (a union member) describes."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    if _is_number(value):
        return base in (int, float)
    if isinstance(value, (list, tuple)):
        return typing.get_origin(base) in (list, tuple, Sequence) or base in (list, tuple)
    return False


def check_constraints(
    value: Any, hint: Any, where: str, default: Any = _NO_DEFAULT, *, finite: bool = True
) -> None:
    """Raise :class:`ConfigError` if ``value`` breaks a range declared in ``hint``.

    The check of Python calls: types are not enforced or converted (numpy integers, tensors and
    the like pass through), only the numbers found where ``hint`` declares a range, and floats,
    which must be finite unless allowed.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        check_constraints(value, args[0], where, default, finite=False)  # checked below
        if _is_number(value):
            _check_constraints(value, hint, where, default)
    elif hint is float:
        if finite and _is_number(value) and not math.isfinite(value):
            raise _fail(where, "a finite number", "", value, default)
    elif origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None) and _kind_fits(value, a)]
        errors: list[ConfigError] = []
        for member in members:
            try:
                check_constraints(value, member, where, default, finite=finite)
                return
            except ConfigError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
    elif (origin in (list, tuple, Sequence) or hint in (list, tuple)) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = list(zip(value, args))
        else:
            pairs = [(v, args[0] if args else Any) for v in value]
        for i, (item, item_hint) in enumerate(pairs):
            check_constraints(item, item_hint, f"{where}[{i}]")


@dataclass(frozen=True)
class _Plan:
    """What a checked callable verifies: its parameters by position, and those with checks."""

    positional: tuple[str, ...]
    checks: dict[str, tuple[Any, Any]]  # name → (hint, default)
    method: bool


def _plan(fn: Callable[..., Any]) -> _Plan:
    sig = inspect.signature(fn)
    hints = _function_hints(fn)
    positional = tuple(
        name
        for name, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    checks = {
        name: (hints[name], p.default)
        for name, p in sig.parameters.items()
        if name in hints
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and _needs_check(hints[name])
    }
    return _Plan(positional, checks, method=bool(positional) and positional[0] == "self")


F = TypeVar("F", bound=Callable[..., Any])


def checked(target: F) -> F:
    """Check the declared ranges of ``target``'s arguments on every call (a decorator).

    For a function (a dataset plugin) or a class (its own ``__init__``). Messages name the owner
    and the parameter: ``moons: n_train must be at least 1, got 0; the default is 20000.``
    Subclasses of flowkit's plugin base classes are checked without it (:class:`CheckedParameters`).
    """
    if inspect.isclass(target):
        init = target.__dict__.get("__init__")
        if init is not None and not getattr(init, "__flowkit_checked__", False):
            # wraps the class's own __init__ in place, which a type checker cannot follow
            target.__init__ = checked(init)  # type: ignore[method-assign]
        return target
    fn = target
    plan: _Plan | None = None

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal plan
        if plan is None:
            plan = _plan(fn)
        if plan.checks:
            owner = type(args[0]).__name__ if plan.method and args else fn.__name__
            named = [*zip(plan.positional, args), *kwargs.items()]
            for name, value in named:
                if name in plan.checks:
                    hint, default = plan.checks[name]
                    check_constraints(value, hint, f"{owner}: {name}", default)
        return fn(*args, **kwargs)

    wrapper.__flowkit_checked__ = True  # type: ignore[attr-defined]
    return typing.cast(F, wrapper)


class CheckedParameters:
    """Mixin of the plugin base classes: each subclass's own ``__init__`` is :func:`checked`.

    ``Transform``, ``Prior``, ``Objective`` and ``Embedding`` inherit it, so a plugin declares
    ``hidden: Annotated[int, Range(1)] = 64`` and nothing else: ``MyFlow((2,), hidden=0)`` raises
    the same :class:`ConfigError` a config would.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        checked(cls)


def check_fields(obj: Any, where: str) -> None:
    """Check a dataclass instance's fields against their declared ranges (``where``: ``"[train]"``)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        hint = hints.get(field.name)
        if hint is not None and _needs_check(hint):
            default = _NO_DEFAULT if field.default is dataclasses.MISSING else field.default
            check_constraints(getattr(obj, field.name), hint, f"{where} {field.name}", default)
