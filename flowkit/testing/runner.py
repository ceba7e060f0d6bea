"""Running every check on one transform plugin: :func:`check_transform`, :func:`run_checks`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowkit.params import validate_parameters
from flowkit.transform import Shape, Transform

if TYPE_CHECKING:
    pass

from flowkit.testing.checks import (
    CONTEXT_FEATURES,
    JACOBIAN_ATOL,
    JACOBIAN_RTOL,
    PERTURBATION,
    ROUND_TRIP_ATOL,
    ROUND_TRIP_RTOL,
    Factory,
    _call,
    _local_rng,
    _plugin_name,
    check_context,
    check_context_shape,
    check_dtype_device,
    check_gradients,
    check_logdet,
    check_output_contract,
    check_pickle,
    check_prior_inverse,
    check_round_trip,
    check_state_dict,
    perturb_parameters,
)
from flowkit.testing.strategies import example_params, example_shapes


# ---------------------------------------------------------------------------------------------
# running every check on one transform
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """Outcome of one check on one shape (what ``flowkit check NAME`` prints)."""

    check: str
    shape: Shape
    passed: bool
    message: str
    #: checked with a context: class labels, or a real-valued one (``context_features`` set)
    conditional: bool = False
    #: the width ``k`` of the real-valued context, ``None`` for labels or no context
    context_features: int | None = None

    @property
    def variant(self) -> str:
        """``"unconditional"``, ``"labels"`` or ``"context k=K"`` (a real-valued context)."""
        if self.context_features is not None:
            return f"context k={self.context_features}"
        return "labels" if self.conditional else "unconditional"


@dataclass
class _Case:
    """A built, initialised and perturbed transform with its inputs, ready to be checked."""

    name: str
    shape: Shape
    factory: Factory
    kwargs: dict[str, Any]
    seed: int
    module: Transform
    x: Tensor
    y: Tensor
    x_other: Tensor
    context: Tensor | None
    num_classes: int | None
    conditional: bool
    context_features: int | None = None

    def build(self, seed_offset: int = 1) -> Transform:
        """A fresh instance from the same factory and parameters, with another seed."""
        return _build(self.factory, self.kwargs, self.seed + seed_offset, self.name, self.shape)


def _build(factory: Factory, kwargs: Mapping[str, Any], seed: int, name: str, shape: Shape) -> Transform:
    kwargs = dict(kwargs)
    if "seed" in kwargs:
        kwargs["seed"] = seed
    with _local_rng(seed):
        try:
            module = factory(**kwargs)
        except Exception as exc:
            raise AssertionError(
                f"[{name}] build failed for event_shape {shape} with {kwargs}: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(module, Transform):
        raise AssertionError(
            f"[{name}] the factory returned {type(module).__name__}, not a flowkit.Transform"
        )
    if tuple(module.event_shape) != tuple(shape):
        raise AssertionError(
            f"[{name}] built for event_shape {shape} but reports event_shape {module.event_shape}"
        )
    return module


def _parameter_names(factory: Factory) -> frozenset[str]:
    try:
        target = factory.__init__ if inspect.isclass(factory) else factory
        return frozenset(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return frozenset()


def supports_conditional(factory: Factory) -> bool:
    """Whether the plugin can be conditioned on class labels.

    True when its signature takes both ``conditional`` (the switch) and ``num_classes`` (the
    injected number of classes); it is then checked with ``conditional=True`` and labels.
    """
    return {"conditional", "num_classes"} <= _parameter_names(factory)


def supports_context(factory: Factory) -> bool:
    """Whether the plugin takes a real-valued context: its signature has ``context_features``.

    flowkit injects ``context_features = k`` (the width of the ``(B, k)`` float context) into
    such a plugin, like ``num_classes``; the conformance checks then run with a context too.
    """
    return "context_features" in _parameter_names(factory)


def _context_params(factory: Factory, params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``params`` for the real-valued-context variant: ``conditional=True`` where it exists."""
    if not supports_context(factory):
        raise ValueError(
            f"{name} does not take a real-valued context: its signature has no context_features parameter"
        )
    params = dict(params)
    if "conditional" in _parameter_names(factory):
        if "conditional" in params and not params["conditional"]:
            raise ValueError(
                f"{name}: the context_features checks need conditional=True (or "
                f"conditional left unset), got conditional={params['conditional']!r}"
            )
        params["conditional"] = True
    return params


def _vector_context(context: Tensor | None, batch_size: int, features: int, gen: torch.Generator) -> Tensor:
    """The given real-valued context, validated, or a standard normal one from ``gen``."""
    if context is None:
        return torch.randn(batch_size, features, generator=gen)
    if not context.is_floating_point() or tuple(context.shape) != (batch_size, features):
        raise ValueError(
            f"context must be a float tensor of shape ({batch_size}, {features}) "
            f"(batch_size, context_features), got {context.dtype} "
            f"{tuple(context.shape)}"
        )
    if not torch.isfinite(context).all():
        raise ValueError("context must be finite")
    return context


def _prepare(
    factory: Factory,
    event_shape: Sequence[int],
    params: Mapping[str, Any] | None,
    *,
    name: str | None,
    num_classes: int | None,
    batch_size: int,
    seed: int,
    input_scale: float,
    context: Tensor | None,
    perturbation: float,
    context_features: int | None = None,
) -> _Case:
    shape: Shape = tuple(int(s) for s in event_shape)
    params = dict(params or {})
    name = name or _plugin_name(factory)
    if context_features is not None:
        if int(context_features) < 1:
            raise ValueError(f"context_features must be at least 1, got {context_features}")
        context_features = int(context_features)
        params = _context_params(factory, params, name)
    conditional = bool(params.get("conditional", False))
    if context is not None and context_features is None:
        if tuple(context.shape) != (batch_size,) or context.dtype != torch.long:
            raise ValueError(
                f"context must be a LongTensor of shape ({batch_size},), got "
                f"{context.dtype} {tuple(context.shape)}"
            )
        if num_classes is None:
            num_classes = int(context.max()) + 1
    if conditional and context_features is None and (num_classes is None or num_classes < 2):
        raise ValueError(
            f"{name} is built with conditional=True: pass num_classes >= 2 (class "
            f"labels) or context_features >= 1 (a real-valued context)"
        )
    injected = {
        "event_shape": shape,
        "num_classes": num_classes,
        "seed": seed,
        "context_features": context_features,
    }
    kwargs = validate_parameters(factory, params, f"[transform] {name}", injected)
    module = _build(factory, kwargs, seed, name, shape)

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *shape, generator=gen) * input_scale
    x_warm = torch.randn(batch_size, *shape, generator=gen) * input_scale
    x_other = torch.randn(batch_size, *shape, generator=gen) * (1.5 * input_scale) + 0.5 * input_scale
    y = torch.randn(batch_size, *module.output_shape, generator=gen) * input_scale
    if context_features is not None:
        context = _vector_context(context, batch_size, context_features, gen)
    elif context is None and num_classes is not None:
        context = torch.randint(num_classes, (batch_size,), generator=gen)

    # the first batch runs data-dependent initialisation, as at the start of training
    module.train()
    with torch.no_grad():
        _call(module, x_warm, context, "forward", name, "output-contract")
    perturb_parameters(module, perturbation, generator=gen)
    module.eval()
    return _Case(
        name,
        shape,
        factory,
        kwargs,
        seed,
        module,
        x,
        y,
        x_other,
        context,
        num_classes,
        conditional,
        context_features,
    )


def _plan(
    case: _Case, atol: float, rtol: float, jacobian_atol: float, jacobian_rtol: float
) -> Iterator[tuple[str, Callable[[], None]]]:
    m, x, y, ctx, name = case.module, case.x, case.y, case.context, case.name
    yield "output-contract", partial(check_output_contract, m, x, y, ctx, name=name)
    yield "round-trip", partial(check_round_trip, m, x, y, ctx, name=name, atol=atol, rtol=rtol)
    yield "log-det", partial(check_logdet, m, x, y, ctx, name=name, atol=jacobian_atol, rtol=jacobian_rtol)
    yield "state-dict", partial(check_state_dict, m, case.build, x, y, ctx, name=name, x_other=case.x_other)
    yield (
        "dtype-device",
        partial(check_dtype_device, m, x, ctx, name=name, atol=jacobian_atol, rtol=jacobian_rtol),
    )
    yield "gradients", partial(check_gradients, m, x, ctx, name=name)
    yield "pickle", partial(check_pickle, m, x, ctx, name=name)
    yield "prior-inverse", partial(check_prior_inverse, m, ctx, name=name, seed=case.seed)
    if case.context_features is not None:
        assert ctx is not None
        yield "context", partial(check_context, m, x, ctx, name=name, y=y)
        yield "context-shape", partial(check_context_shape, m, x, ctx, name=name, y=y)
    elif case.conditional:
        assert ctx is not None and case.num_classes is not None
        yield "context", partial(check_context, m, x, ctx, case.num_classes, name=name, y=y)


def _run_one(check: str, run: Callable[[], None], name: str) -> None:
    try:
        run()
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"[{name}] {check} check raised {type(exc).__name__}: {exc}") from exc


def check_transform(
    factory: Factory,
    event_shape: Sequence[int],
    params: Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    context_features: int | None = None,
    batch_size: int = 3,
    seed: int = 0,
    input_scale: float = 1.0,
    context: Tensor | None = None,
    atol: float = ROUND_TRIP_ATOL,
    rtol: float = ROUND_TRIP_RTOL,
    jacobian_atol: float = JACOBIAN_ATOL,
    jacobian_rtol: float = JACOBIAN_RTOL,
    perturbation: float = PERTURBATION,
    name: str | None = None,
) -> None:
    """Run every conformance check on ``factory(event_shape=..., num_classes=..., **params)``.

    ``params`` are validated against the factory's signature (:func:`flowkit.params.
    validate_parameters`); ``event_shape``, ``num_classes``, ``context_features`` and ``seed``
    are injected when the signature names them. The transform sees one warm-up batch in train
    mode (data-dependent initialisation), gets :func:`perturb_parameters` noise of std
    ``perturbation``, and is then checked in eval mode on ``batch_size`` Gaussian inputs of std
    ``input_scale``, with a context:

    * class labels when ``num_classes`` is given (``context``, default random in
      ``[0, num_classes)``; pass ``{"conditional": True}`` to condition on them);
    * a real-valued context when ``context_features = k`` is given (the factory must take
      ``context_features``; ``conditional=True`` is set when it takes ``conditional``):
      ``context`` is a float ``(batch_size, k)`` tensor, default standard normal.

    The checks, in order: :data:`CHECKS` (``context`` only with a context; ``context-shape``,
    which wants a :class:`~flowkit.errors.ShapeError` for a malformed context, only with a
    real-valued one). ``atol``/``rtol`` apply to the float32 round trip,
    ``jacobian_atol``/``jacobian_rtol`` to the float64 log-det comparison. Everything is seeded by
    ``seed``; the global RNG is left untouched. Raises :class:`AssertionError` at the first
    failing check.
    """
    with _local_rng(seed):
        case = _prepare(
            factory,
            event_shape,
            params,
            name=name,
            num_classes=num_classes,
            batch_size=batch_size,
            seed=seed,
            input_scale=input_scale,
            context=context,
            perturbation=perturbation,
            context_features=context_features,
        )
        for check, run in _plan(case, atol, rtol, jacobian_atol, jacobian_rtol):
            _run_one(check, run, case.name)


def check_plugin(
    name: str,
    event_shape: Sequence[int],
    params: Mapping[str, Any] | None = None,
    **kw: Any,
) -> None:
    """Run :func:`check_transform` on the transform registered as ``name``."""
    from flowkit.registry import transforms

    check_transform(transforms.get(name), event_shape, params, name=name, **kw)


def run_checks(
    name: str,
    shapes: Sequence[Sequence[int]] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    conditional: bool | None = None,
    num_classes: int | None = None,
    context_features: int | None = None,
    batch_size: int = 3,
    seed: int = 0,
    input_scale: float = 1.0,
    atol: float = ROUND_TRIP_ATOL,
    rtol: float = ROUND_TRIP_RTOL,
    jacobian_atol: float = JACOBIAN_ATOL,
    jacobian_rtol: float = JACOBIAN_RTOL,
) -> list[CheckResult]:
    """Run every check on the registered transform ``name`` and report each one (no raising).

    ``shapes`` defaults to :func:`example_shapes` of the plugin, ``params`` to
    :func:`example_params`. Up to three variants run on every shape:

    * unconditional;
    * class labels — ``conditional=True`` with ``num_classes`` labels (default 3), when the
      plugin's signature takes ``conditional`` and ``num_classes`` (:func:`supports_conditional`);
    * a real-valued context of width ``context_features`` (default
      :data:`~flowkit.testing.checks.CONTEXT_FEATURES`), when the signature takes
      ``context_features`` (:func:`supports_context`), including the context-dependence and
      context-shape checks.

    ``conditional=None`` runs every variant the plugin supports, ``True`` only the conditional
    ones, ``False`` only the unconditional one. A transform that cannot be built gets one failed
    ``build`` result for that shape and variant. Unknown or broken plugins raise the registry's
    :class:`flowkit.errors.PluginError`.
    """
    from flowkit.registry import transforms

    factory = transforms.get(name)
    shapes = example_shapes(factory) if shapes is None else shapes
    base = dict(example_params(factory) if params is None else params)
    common = dict(
        batch_size=batch_size, seed=seed, input_scale=input_scale, context=None, perturbation=PERTURBATION
    )
    # (params, conditional, options) per variant
    variants: list[tuple[dict[str, Any], bool, dict[str, Any]]] = []
    if conditional is not True:
        variants.append((base, False, {"num_classes": num_classes}))
    takes_labels = supports_conditional(factory)
    if conditional is True and not takes_labels and not supports_context(factory):
        takes_labels = True  # asked for: its build failure is the report
    if conditional is not False and takes_labels:
        variants.append(({**base, "conditional": True}, True, {"num_classes": num_classes or 3}))
    if conditional is not False and supports_context(factory):
        variants.append(
            (base, True, {"num_classes": None, "context_features": context_features or CONTEXT_FEATURES})
        )
    results: list[CheckResult] = []
    for shape in shapes:
        shape_t: Shape = tuple(int(s) for s in shape)
        for variant, cond, options in variants:
            results.extend(
                _run_variant(
                    factory,
                    name,
                    shape_t,
                    variant,
                    cond,
                    {**common, **options},
                    (atol, rtol, jacobian_atol, jacobian_rtol),
                )
            )
    return results


def _run_variant(
    factory: Factory,
    name: str,
    shape: Shape,
    params: Mapping[str, Any],
    conditional: bool,
    options: dict[str, Any],
    tolerances: tuple[float, float, float, float],
) -> list[CheckResult]:
    results: list[CheckResult] = []
    result = partial(
        CheckResult, shape=shape, conditional=conditional, context_features=options.get("context_features")
    )
    with _local_rng(options["seed"]):
        try:
            case = _prepare(factory, shape, params, name=name, **options)
        except Exception as exc:  # a build failure, a bad parameter: report, do not raise
            message = (
                str(exc)
                if isinstance(exc, AssertionError)
                else f"[{name}] build failed: {type(exc).__name__}: {exc}"
            )
            return [result("build", passed=False, message=message)]
        for check, run in _plan(case, *tolerances):
            try:
                _run_one(check, run, name)
            except AssertionError as exc:
                results.append(result(check, passed=False, message=str(exc)))
            else:
                results.append(result(check, passed=True, message="ok"))
    return results
