"""The individual conformance checks and the helpers they share (see :mod:`flowkit.testing`)."""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from flowkit.errors import ShapeError
from flowkit.transform import Shape, Transform

if TYPE_CHECKING:
    pass


#: Largest number of scalars per example the strategies draw (keeps the Jacobian cheap).
MAX_EVENT_SIZE = 64
#: Default tolerances: float32 round trip, and float64 log-det against the autograd Jacobian.
ROUND_TRIP_ATOL = 1e-4
ROUND_TRIP_RTOL = 1e-4
JACOBIAN_ATOL = 1e-6
JACOBIAN_RTOL = 1e-6
#: Default standard deviation of the noise :func:`check_transform` adds to every parameter.
PERTURBATION = 0.1
#: Default width ``k`` of the real-valued context for transforms that take ``context_features``.
CONTEXT_FEATURES = 2
#: Smallest change of the outputs (relative to ``max(1, max|out|)``) that counts as "depends on
#: the context" in :func:`check_context`.
CONTEXT_DEPENDENCE_RTOL = 1e-6
#: :func:`check_prior_inverse`: latents inverted per dtype, and the extra parameter noise (std).
PRIOR_SAMPLES = 32
PRIOR_PERTURBATION = 0.3

#: The checks, in the order :func:`check_transform` runs them (``context`` only with a context,
#: labels or real-valued; ``context-shape`` only with a real-valued context).
CHECKS: tuple[str, ...] = (
    "output-contract",
    "round-trip",
    "log-det",
    "state-dict",
    "dtype-device",
    "gradients",
    "pickle",
    "prior-inverse",
    "context",
    "context-shape",
)

Factory = Callable[..., Any]


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def perturb_parameters(
    module: nn.Module, scale: float = PERTURBATION, generator: torch.Generator | None = None
) -> None:
    """Add Gaussian noise ``N(0, scale²)`` to every floating-point parameter of ``module``, in place.

    Coupling layers zero-initialise their last layer so that a fresh flow is the identity
    (Kingma & Dhariwal 2018, "Glow", §3.3); every check would then pass trivially (a log-det sign
    error is invisible when the log-det is zero). Buffers (permutations, init flags) are left
    alone. ``generator`` (a CPU or same-device generator) makes the noise reproducible.
    """
    with torch.no_grad():
        for param in module.parameters():
            if not param.is_floating_point():
                continue
            if generator is None:
                noise = torch.randn(param.shape, dtype=param.dtype, device=param.device)
            else:
                noise = torch.randn(
                    param.shape, generator=generator, dtype=param.dtype, device=generator.device
                ).to(param.device)
            param.add_(noise, alpha=scale)


@contextmanager
def _local_rng(seed: int) -> Iterator[None]:
    """Seed the CPU RNG inside the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _plugin_name(obj: Any) -> str:
    if isinstance(obj, nn.Module):
        return type(obj).__name__
    return str(getattr(obj, "__name__", type(obj).__name__))


def _where(name: str, check: str, inp: Tensor) -> str:
    return (
        f"[{name}] {check} check failed for input shape {tuple(inp.shape)} "
        f"({str(inp.dtype).removeprefix('torch.')}, {inp.device})"
    )


def _fail(name: str, check: str, inp: Tensor, detail: str) -> AssertionError:
    return AssertionError(f"{_where(name, check, inp)}: {detail}")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__


def is_vector_context(context: Tensor | None) -> bool:
    """Whether ``context`` is a real-valued context ``(B, k)`` (not class labels, not ``None``)."""
    return context is not None and context.is_floating_point()


def _context_like(context: Tensor | None, inp: Tensor) -> Tensor | None:
    """``context`` on ``inp``'s device; a real-valued context also takes ``inp``'s dtype.

    The contract: a transform receives its real-valued context in the input's dtype and on its
    device (the model's embedding network runs in the model's dtype); labels stay integers.
    """
    if context is None:
        return None
    if context.is_floating_point():
        return context.to(device=inp.device, dtype=inp.dtype)
    return context.to(device=inp.device)


def _call(
    transform: nn.Module,
    inp: Tensor,
    context: Tensor | None,
    direction: str,
    name: str,
    check: str,
) -> tuple[Tensor, Tensor]:
    """Run one direction and verify the output contract: types, shapes, device and dtype."""
    context = _context_like(context, inp)
    try:
        # any nn.Module with a Transform's interface is checked, not only Transform subclasses
        result = (
            transform(inp, context)
            if direction == "forward"
            else cast(Transform, transform).inverse(inp, context)
        )
    except AssertionError:
        raise
    except Exception as exc:
        raise _fail(name, check, inp, f"{direction} raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, Tensor) for r in result)):
        raise _fail(
            name,
            check,
            inp,
            f"{direction} must return a tuple (out, logabsdet) of two "
            f"tensors, but returned {_describe(result)}",
        )
    out, logdet = result
    batch = inp.shape[0]
    side = "output_shape" if direction == "forward" else "event_shape"
    expected = (batch, *getattr(transform, side))
    if tuple(out.shape) != expected:
        raise _fail(
            name,
            check,
            inp,
            f"{direction} output has shape {tuple(out.shape)}, expected (batch, *{side}) = {expected}",
        )
    if tuple(logdet.shape) != (batch,):
        raise _fail(
            name,
            check,
            inp,
            f"{direction} logabsdet has shape {tuple(logdet.shape)}, expected (batch,) = ({batch},)",
        )
    for label, tensor in (("output", out), ("logabsdet", logdet)):
        if tensor.dtype != inp.dtype:
            raise _fail(
                name,
                check,
                inp,
                f"{direction} {label} has dtype {tensor.dtype} but the "
                f"input has dtype {inp.dtype}; create tensors with "
                f"x.new_zeros(...) or dtype=x.dtype (e.g. the logdet "
                f"accumulator: self.zero_logdet(x))",
            )
        if tensor.device != inp.device:
            raise _fail(
                name,
                check,
                inp,
                f"{direction} {label} is on {tensor.device} but the "
                f"input is on {inp.device}; create tensors with "
                f"device=x.device",
            )
    return out, logdet


def _assert_close(
    actual: Tensor,
    expected: Tensor,
    atol: float,
    rtol: float,
    what: str,
    name: str,
    check: str,
    inp: Tensor,
) -> None:
    """Elementwise ``|actual - expected| <= atol + rtol·|expected|`` with a precise message."""
    actual = actual.detach()
    expected = expected.detach().to(actual.dtype)
    if not torch.isfinite(actual).all():
        bad = int((~torch.isfinite(actual)).sum())
        raise _fail(name, check, inp, f"{what}: {bad} non-finite value(s) (NaN or inf)")
    err = (actual - expected).abs()
    tol = atol + rtol * expected.abs()
    if (err > tol).any():
        worst = int(torch.argmax(err - tol))
        raise _fail(
            name,
            check,
            inp,
            f"{what}: max |error| {err.max().item():.3e} exceeds the tolerance "
            f"(atol {atol:.1e} + rtol {rtol:.1e}·|expected|); worst element {worst}: "
            f"{actual.flatten()[worst].item():.6g} vs {expected.flatten()[worst].item():.6g} "
            f"(tolerance {tol.flatten()[worst].item():.3e})",
        )


def _max_abs(t: Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def _default_output_sample(transform: Transform, x: Tensor) -> Tensor:
    """A latent-side input: random values with the scale of ``x`` (the global RNG)."""
    scale = float(x.detach().std()) if x.numel() > 1 else 1.0
    noise = torch.randn((x.shape[0], *transform.output_shape), dtype=x.dtype)
    return noise.to(x.device) * scale


# ---------------------------------------------------------------------------------------------
# the individual checks
# ---------------------------------------------------------------------------------------------
def check_output_contract(
    transform: Transform,
    x: Tensor,
    y: Tensor | None = None,
    context: Tensor | None = None,
    *,
    name: str | None = None,
) -> None:
    """Check that both directions return ``(out, logabsdet)`` with the promised shapes and types.

    ``out`` is ``(B, *output_shape)`` forward and ``(B, *event_shape)`` inverse, ``logabsdet`` is
    ``(B,)``, both finite and on the input's device and dtype — for float32 *and* float64 inputs
    (the module is converted with ``.double()`` for the latter). The transform must also preserve
    the number of scalars, ``prod(output_shape) == prod(event_shape)`` (a bijection of
    ``R^D``).
    """
    name = name or _plugin_name(transform)
    check = "output-contract"
    for attr in ("event_shape", "output_shape"):
        if not isinstance(getattr(transform, attr, None), tuple):
            raise _fail(
                name,
                check,
                x,
                f"the module has no tuple attribute '{attr}'; subclass "
                f"flowkit.Transform and call its __init__",
            )
    if math.prod(transform.event_shape) != math.prod(transform.output_shape):
        raise _fail(
            name,
            check,
            x,
            f"event_shape {transform.event_shape} and output_shape "
            f"{transform.output_shape} hold different numbers of scalars; "
            f"an invertible transform must preserve the dimension",
        )
    y = _default_output_sample(transform, x) if y is None else y
    variants: list[tuple[nn.Module, Tensor, Tensor]] = [(transform, x, y)]
    if x.dtype != torch.float64:
        variants.append((copy.deepcopy(transform).double(), x.double(), y.double()))
    for module, xin, yin in variants:
        with torch.no_grad():
            for direction, inp in (("forward", xin), ("inverse", yin)):
                out, logdet = _call(module, inp, context, direction, name, check)
                for label, tensor in (("output", out), ("logabsdet", logdet)):
                    if not torch.isfinite(tensor).all():
                        bad = int((~torch.isfinite(tensor)).sum())
                        raise _fail(
                            name,
                            check,
                            inp,
                            f"{direction} {label} has {bad} non-finite value(s) (NaN or inf)",
                        )


def check_round_trip(
    transform: Transform,
    x: Tensor,
    y: Tensor | None = None,
    context: Tensor | None = None,
    *,
    name: str | None = None,
    atol: float = ROUND_TRIP_ATOL,
    rtol: float = ROUND_TRIP_RTOL,
) -> None:
    """Check ``f⁻¹(f(x)) ≈ x`` and ``f(f⁻¹(y)) ≈ y``, and that the two log-dets cancel.

    ``log|det J_f(x)| + log|det J_{f⁻¹}(f(x))| = 0`` by the inverse function theorem. The
    absolute tolerance is scaled by the data's magnitude, ``atol·max(1, max|x|)``, plus
    ``rtol·|x|`` elementwise; for the log-dets, ``atol·max(1, √D, max|log-det|)``. Cancelling
    log-dets do not prove either is right (a sign error in both cancels):
    :func:`check_logdet` compares with the Jacobian.
    """
    name = name or _plugin_name(transform)
    check = "round-trip"
    y = _default_output_sample(transform, x) if y is None else y
    root_dim = math.sqrt(math.prod(transform.event_shape))
    with torch.no_grad():
        for first, second, start in (("forward", "inverse", x), ("inverse", "forward", y)):
            mid, ld_first = _call(transform, start, context, first, name, check)
            back, ld_second = _call(transform, mid, context, second, name, check)
            label = "inverse(forward(x)) vs x" if first == "forward" else "forward(inverse(y)) vs y"
            scaled = atol * max(1.0, _max_abs(start))
            _assert_close(back, start, scaled, rtol, label, name, check, start)
            ld_tol = atol * max(1.0, root_dim, _max_abs(ld_first), _max_abs(ld_second))
            _assert_close(
                ld_first + ld_second,
                torch.zeros_like(ld_first),
                ld_tol,
                0.0,
                f"{first} logabsdet + {second} logabsdet (must cancel)",
                name,
                check,
                start,
            )


def _single_example(fn: Callable[..., Any], shape: Shape, context: Tensor | None, flat: Tensor) -> Tensor:
    """One example through ``fn``, flattened in and out (the map whose Jacobian we take)."""
    return fn(flat.reshape(1, *shape), context)[0].reshape(-1)


def _compare_with_jacobian(
    module: Transform,
    inp: Tensor,
    out: Tensor,
    logdet: Tensor,
    context: Tensor | None,
    direction: str,
    name: str,
    atol: float,
    rtol: float,
) -> None:
    check = "log-det"
    fn = module if direction == "forward" else module.inverse
    shape = tuple(inp.shape[1:])
    for i in range(inp.shape[0]):
        ctx_i = None if context is None else context[i : i + 1]
        single = partial(_single_example, fn, shape, ctx_i)
        flat = inp[i].detach().reshape(-1)
        with torch.no_grad():
            alone = single(flat)
        _assert_close(
            alone,
            out[i].reshape(-1),
            1e-9,
            1e-7,
            f"{direction} of example {i} computed alone vs in the batch (examples must not interact)",
            name,
            check,
            inp,
        )
        try:
            jac = torch.autograd.functional.jacobian(single, flat)
        except Exception as exc:
            raise _fail(
                name, check, inp, f"autograd Jacobian of {direction} failed: {type(exc).__name__}: {exc}"
            ) from exc
        sign, expected = torch.linalg.slogdet(jac)
        returned = float(logdet[i])
        if float(sign) == 0.0 or not math.isfinite(float(expected)):
            raise _fail(
                name,
                check,
                inp,
                f"the {direction} Jacobian of example {i} is singular "
                f"(slogdet sign {float(sign):g}); the map is not "
                f"invertible there",
            )
        error = abs(returned - float(expected))
        tol = atol + rtol * abs(float(expected))
        if not error <= tol:
            hint = ""
            if abs(returned + float(expected)) <= tol:
                hint = " — the sign is flipped"
            raise _fail(
                name,
                check,
                inp,
                f"{direction} logabsdet of example {i} is {returned:.10g} but "
                f"log|det J| from torch.autograd.functional.jacobian + slogdet is "
                f"{float(expected):.10g}{hint}; |error| {error:.3e} > tolerance {tol:.3e} "
                f"(atol {atol:.1e} + rtol {rtol:.1e}·|expected|)",
            )


def check_logdet(
    transform: Transform,
    x: Tensor,
    y: Tensor | None = None,
    context: Tensor | None = None,
    *,
    name: str | None = None,
    atol: float = JACOBIAN_ATOL,
    rtol: float = JACOBIAN_RTOL,
) -> None:
    """Check the returned log-dets against ``slogdet`` of the autograd Jacobian, in float64.

    For every example the single-example map is flattened to ``R^D → R^D`` and its Jacobian is
    taken with ``torch.autograd.functional.jacobian``; ``torch.linalg.slogdet`` gives
    ``log|det J|``, which must equal the returned ``logabsdet`` — forward at ``x`` and inverse at
    ``y`` (defaults to ``f(x)``). This catches sign errors that cancel between forward and
    inverse. A transform with ``volume_preserving = True`` must return exactly zero. A context
    (labels, or a real-valued ``(B, k)`` context, cast to float64) is held fixed: example ``i`` is
    mapped with ``context[i:i+1]`` and the Jacobian is taken with respect to ``x`` only, so a
    log-det that forgets the context's share of the scale fails here.
    """
    name = name or _plugin_name(transform)
    check = "log-det"
    module = copy.deepcopy(transform).double()
    x64 = x.detach().double()
    ctx64 = _context_like(context, x64)  # held fixed: the Jacobian is taken with respect to x
    with torch.no_grad():
        out, ld_fwd = _call(module, x64, ctx64, "forward", name, check)
    _compare_with_jacobian(module, x64, out, ld_fwd, ctx64, "forward", name, atol, rtol)
    y64 = out if y is None else y.detach().double()
    with torch.no_grad():
        back, ld_inv = _call(module, y64, ctx64, "inverse", name, check)
    _compare_with_jacobian(module, y64, back, ld_inv, ctx64, "inverse", name, atol, rtol)
    if getattr(transform, "volume_preserving", False):
        with torch.no_grad():
            ld32 = _call(transform, x, context, "forward", name, check)[1]
        for direction, inp, logdet in (
            ("forward", x64, ld_fwd),
            ("inverse", y64, ld_inv),
            ("forward", x, ld32),
        ):
            if bool((logdet != 0).any()):
                raise _fail(
                    name,
                    check,
                    inp,
                    f"volume_preserving = True but the {direction} "
                    f"logabsdet is not exactly zero (max |logabsdet| "
                    f"{_max_abs(logdet):.3e}); return "
                    f"self.zero_logdet(x)",
                )


def _outputs(
    module: nn.Module,
    inp: Tensor,
    context: Tensor | None,
    direction: str,
    name: str,
    check: str,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Outputs of one direction under no_grad, with the RNG fixed when ``seed`` is given."""
    with torch.no_grad():
        if seed is None:
            return _call(module, inp, context, direction, name, check)
        with _local_rng(seed):
            return _call(module, inp, context, direction, name, check)


def _assert_identical(
    first: tuple[Tensor, Tensor],
    second: tuple[Tensor, Tensor],
    what: str,
    hint: str,
    name: str,
    check: str,
    inp: Tensor,
) -> None:
    for label, a, b in (("output", first[0], second[0]), ("logabsdet", first[1], second[1])):
        if not torch.equal(a, b):
            diff = _max_abs(a.double() - b.double()) if a.shape == b.shape else float("nan")
            raise _fail(
                name,
                check,
                inp,
                f"{what}: {label} differs (max |difference| {diff:.3e}, tolerance 0); {hint}",
            )


def check_state_dict(
    transform: Transform,
    build: Callable[[], Transform],
    x: Tensor,
    y: Tensor | None = None,
    context: Tensor | None = None,
    *,
    name: str | None = None,
    x_other: Tensor | None = None,
) -> None:
    """Check that ``state_dict`` holds all the state: a reloaded fresh instance is identical.

    ``build()`` makes a second instance from the same factory and parameters (the suite uses a
    different seed, so randomness kept outside the state — a permutation in a plain attribute —
    shows up). The first instance's ``state_dict`` goes through ``torch.save`` and
    ``torch.load(weights_only=True)`` in memory into the second, and both must give bit-identical
    outputs, in eval and in train mode, on ``x_other`` (data with other statistics, so a
    data-dependent initialisation that re-runs after loading is caught — its flag must be a
    registered buffer), on ``x`` and, inverse, on ``y``.
    """
    name = name or _plugin_name(transform)
    check = "state-dict"
    hint = (
        "some state is not in the state_dict: keep data-dependent-init flags, permutations "
        "and masks in registered buffers (self.register_buffer), not in Python attributes"
    )
    buffer = io.BytesIO()
    try:
        torch.save(transform.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise _fail(
            name,
            check,
            x,
            f"the state_dict does not survive torch.save / "
            f"torch.load(weights_only=True): {type(exc).__name__}: {exc}; "
            f"store only tensors in it",
        ) from exc
    try:
        fresh = build()
    except Exception as exc:
        raise _fail(
            name, check, x, f"building a second instance failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        fresh.load_state_dict(state)
    except Exception as exc:
        raise _fail(
            name, check, x, f"load_state_dict into a fresh instance failed: {type(exc).__name__}: {exc}"
        ) from exc
    fresh = fresh.to(device=x.device, dtype=x.dtype)
    x_other = x * 1.7 + 0.5 if x_other is None else x_other
    y = _default_output_sample(transform, x) if y is None else y
    original = copy.deepcopy(transform)
    for training in (False, True):
        mode = "train" if training else "eval"
        fresh.train(training)
        original.train(training)
        for direction, inp in (("forward", x_other), ("forward", x), ("inverse", y)):
            got = _outputs(fresh, inp, context, direction, name, check, seed=0)
            want = _outputs(original, inp, context, direction, name, check, seed=0)
            _assert_identical(
                want,
                got,
                f"{direction} of a fresh instance after load_state_dict vs the original ({mode} mode)",
                hint,
                name,
                check,
                inp,
            )


def check_dtype_device(
    transform: Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    name: str | None = None,
    atol: float = JACOBIAN_ATOL,
    rtol: float = JACOBIAN_RTOL,
    devices: Sequence[str | torch.device] | None = None,
) -> None:
    """Check that outputs follow the input's dtype (float32, float64) and device (CPU, CUDA).

    The module is converted with ``.to(device, dtype)`` for every device of ``devices`` (default:
    the CPU, plus CUDA when ``torch.cuda.is_available()``); both directions must return tensors of
    the input's dtype on the input's device, and the float64 outputs on every device must match
    those on the first within ``atol + rtol·|expected|``. Without a GPU, ``devices=["cpu",
    "meta"]`` still catches tensors created on a fixed device (values are not compared on
    ``meta``; transforms that branch on data cannot run there). A context goes with the input: a
    real-valued one is moved to each device and dtype as well, labels to each device.
    """
    name = name or _plugin_name(transform)
    check = "dtype-device"
    if devices is None:
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    reference: tuple[Tensor, Tensor] | None = None
    for device in map(torch.device, devices):
        ctx = None if context is None else context.to(device)
        for dtype in (torch.float32, torch.float64):
            module = copy.deepcopy(transform).to(device=device, dtype=dtype)
            xin = x.detach().to(device=device, dtype=dtype)
            out, logdet = _outputs(module, xin, ctx, "forward", name, check)
            _outputs(module, out, ctx, "inverse", name, check)
            if dtype != torch.float64 or device.type == "meta":
                continue
            if reference is None:
                reference = (out.cpu(), logdet.cpu())
            else:
                for label, got, want in (("output", out, reference[0]), ("logabsdet", logdet, reference[1])):
                    what = f"forward {label} on {device} vs on {devices[0]}"
                    _assert_close(got.cpu(), want, atol, rtol, what, name, check, xin)


def check_gradients(
    transform: Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    name: str | None = None,
) -> None:
    """Check that every trainable parameter gets a finite gradient (in train mode).

    The scalar is the negative log-likelihood under a standard Gaussian up to constants,
    ``mean(½‖f(x)‖² − log|det J_f(x)|)``, so parameters used by the output or the log-det are
    both reached. A ``None`` gradient means the parameter is unused or its graph is cut
    (``.detach()``, ``.item()``, ``torch.no_grad`` inside ``forward``).
    """
    name = name or _plugin_name(transform)
    check = "gradients"
    module = copy.deepcopy(transform).train()
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        return
    for _, p in params:
        p.grad = None
    out, logdet = _call(module, x.detach(), context, "forward", name, check)
    loss = 0.5 * out.reshape(out.shape[0], -1).square().sum(dim=1) - logdet
    loss = loss.mean()
    if not loss.requires_grad:
        raise _fail(
            name,
            check,
            x,
            "neither the output nor the logabsdet depends on any "
            "parameter (is the graph cut by .detach() or no_grad?)",
        )
    loss.backward()
    missing = [n for n, p in params if p.grad is None]
    if missing:
        raise _fail(
            name,
            check,
            x,
            f"no gradient reached parameter(s) {', '.join(missing)}: "
            f"they are unused in forward or their graph is cut",
        )
    bad = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise _fail(name, check, x, f"non-finite gradient for parameter(s) {', '.join(bad)}")


def check_pickle(
    transform: Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    name: str | None = None,
) -> None:
    """Check that ``pickle`` round-trips the module and the copy gives identical outputs.

    Whole-model ``torch.save`` uses pickle; a lambda, closure, generator or open file stored as an
    attribute breaks it.
    """
    name = name or _plugin_name(transform)
    check = "pickle"
    try:
        blob = pickle.dumps(transform)
    except Exception as exc:
        raise _fail(
            name,
            check,
            x,
            f"pickle.dumps of the module failed ({type(exc).__name__}: "
            f"{exc}); store no lambdas, closures or local classes as "
            f"attributes — use module-level functions or nn.Modules "
            f"(e.g. nn.ReLU() instead of lambda t: t.relu())",
        ) from exc
    try:
        clone = pickle.loads(blob)
    except Exception as exc:
        raise _fail(
            name, check, x, f"pickle.loads of the pickled module failed: {type(exc).__name__}: {exc}"
        ) from exc
    want = _outputs(transform, x, context, "forward", name, check, seed=0)
    got = _outputs(clone, x, context, "forward", name, check, seed=0)
    _assert_identical(
        want,
        got,
        "forward of the unpickled copy vs the original",
        "some state does not survive pickling",
        name,
        check,
        x,
    )


def _other_contexts(context: Tensor, num_classes: int | None) -> tuple[list[Tensor], str]:
    """Contexts to compare ``context`` with, and how they were made (for the message).

    Labels: shifted by one, ``(c + 1) mod num_classes``. Real-valued contexts: ``c ± 1`` and
    ``c ± d`` with a fixed pattern ``d`` of entries of both signs (``|d| ≤ 3``) — several,
    because a small ReLU conditioner can be dead for some example at ``c`` and at ``c + 1``
    alike, and a uniform shift cannot move a unit whose context weights sum to zero.
    """
    if is_vector_context(context):
        k = context.shape[-1]
        pattern = torch.randn(k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        pattern = (3.0 * pattern / pattern.abs().max()).to(context)
        others = [context + 1.0, context - 1.0, context + pattern, context - pattern]
        return others, "every context entry is shifted by ±1, and by ±a fixed pattern"
    if num_classes is None or num_classes < 2:
        raise ValueError(f"check_context needs num_classes >= 2 for class labels, got {num_classes}")
    return [(context + 1) % num_classes], "every label is shifted by one"


def check_context(
    transform: Transform,
    x: Tensor,
    context: Tensor,
    num_classes: int | None = None,
    *,
    name: str | None = None,
    y: Tensor | None = None,
) -> None:
    """Check that a conditional transform's outputs depend on its context, both directions.

    Class labels are shifted, ``c' = (c + 1) mod num_classes`` (``num_classes`` is required
    for labels); a real-valued context ``(B, k)`` is compared with ``c ± 1`` and ``c ± d`` for a
    fixed pattern ``d`` (:func:`_other_contexts`). With ``x`` (and the inverse's ``y``) held fixed,
    the outputs or log-dets must change, for at least one of these contexts, by more than
    ``1e-6·max(1, max|out|)``. Run it on perturbed parameters (:func:`perturb_parameters`): a
    zero-initialised conditioner ignores any context.
    """
    name = name or _plugin_name(transform)
    check = "context"
    others, how = _other_contexts(context, num_classes)
    if is_vector_context(context):
        what = (
            f"context although the transform takes context_features={context.shape[-1]}: it "
            f"ignores its context; feed the context to the conditioner"
        )
    else:
        what = "labels although the transform was built with conditional=True"
    y = _default_output_sample(transform, x) if y is None else y
    for direction, inp in (("forward", x), ("inverse", y)):
        a_out, a_ld = _outputs(transform, inp, context, direction, name, check)
        tol = CONTEXT_DEPENDENCE_RTOL * max(1.0, _max_abs(a_out))
        change = 0.0
        for other in others:
            b_out, b_ld = _outputs(transform, inp, other, direction, name, check)
            change = max(change, _max_abs(a_out - b_out), _max_abs(a_ld - b_ld))
            if change > tol:
                break
        else:
            raise _fail(
                name,
                check,
                inp,
                f"the {direction} outputs do not depend on the {what} "
                f"(max change {change:.3e} <= {tol:.3e} when {how})",
            )


def _bad_contexts(context: Tensor) -> Iterator[tuple[str, Tensor | None]]:
    """Malformed variants of a real-valued ``(B, k)`` context, each with a description."""
    batch, k = context.shape
    yield "no context (None)", None
    yield f"a context of width {k + 1} instead of {k}", torch.cat([context, context[:, :1]], 1)
    yield f"a context for {batch + 1} examples instead of {batch}", torch.cat([context, context[:1]], 0)
    yield f"an integer context (int64, shape {(batch, k)}) instead of floats", context.round().long()


def check_context_shape(
    transform: Transform,
    x: Tensor,
    context: Tensor,
    *,
    name: str | None = None,
    y: Tensor | None = None,
) -> None:
    """Check that a transform taking a real-valued context refuses a malformed one clearly.

    ``context`` is a valid float ``(B, k)`` context. Both directions must raise
    :class:`flowkit.errors.ShapeError` when the context is missing, one column too wide, one row
    too long, or of an integer dtype — not compute something silently, nor fail deep inside
    ``torch.cat`` with a ``RuntimeError`` a user cannot act on.
    """
    name = name or _plugin_name(transform)
    check = "context-shape"
    if not is_vector_context(context) or context.dim() != 2:
        raise ValueError(
            f"check_context_shape needs a float context of shape (batch, k), got "
            f"{None if context is None else (context.dtype, tuple(context.shape))}"
        )
    y = _default_output_sample(transform, x) if y is None else y
    for direction, inp in (("forward", x), ("inverse", y)):
        run = transform if direction == "forward" else transform.inverse
        for label, bad in _bad_contexts(context.to(inp.device)):
            try:
                with torch.no_grad():
                    run(inp, bad)
            except ShapeError:
                continue
            except Exception as exc:
                raise _fail(
                    name,
                    check,
                    inp,
                    f"{direction} with {label} raised "
                    f"{type(exc).__name__}: {exc}; raise "
                    f"flowkit.errors.ShapeError naming the expected "
                    f"context shape (batch, {context.shape[1]})",
                ) from exc
            raise _fail(
                name,
                check,
                inp,
                f"{direction} with {label} returned normally; a "
                f"transform that takes context_features must raise "
                f"flowkit.errors.ShapeError for it",
            )


def _rows_of(context: Tensor | None, n: int) -> Tensor | None:
    """``n`` rows of a per-example context, cycling through its rows (``None`` stays ``None``)."""
    if context is None:
        return None
    return context[torch.arange(n, device=context.device) % context.shape[0]]


def check_prior_inverse(
    transform: Transform,
    context: Tensor | None = None,
    *,
    name: str | None = None,
    num_samples: int = PRIOR_SAMPLES,
    perturbation: float = PRIOR_PERTURBATION,
    seed: int = 0,
) -> None:
    """Check that inverting N(0, I) latents stays finite on trained-like (perturbed) parameters.

    Sampling a flow is ``x = f⁻¹(z)``, ``z ~ N(0, I)`` at temperature 1. A copy of ``transform``
    gets :func:`perturb_parameters` noise of std ``perturbation`` (seeded by ``seed``, on top of
    whatever noise it already has), and its inverse runs on ``num_samples`` standard normal
    latents of ``output_shape`` (rows of ``context`` cycled to match) in float32 and in float64;
    every output and log-determinant must be finite. The forward direction of such a model can
    be exact while its inverse overflows: an unbounded inverse scale such as Glow's
    ``1/sigmoid(r(y) + 2) ≈ e^{−r(y)}``, with ``r`` growing with the layer's input, grows
    exponentially layer after layer (``docs/glow.md``, "Samples that explode"). A smooth bound
    on such scales (:func:`flowkit.plugins.elementwise.soft_cap`) is the usual fix.
    """
    name = name or _plugin_name(transform)
    check = "prior-inverse"
    ctx = _rows_of(context, num_samples)
    # one perturbed model and one draw of latents, in float64 and rounded to float32
    perturbed = copy.deepcopy(transform).double().eval()
    device = next(iter(perturbed.parameters()), torch.empty(0)).device
    gen = torch.Generator().manual_seed(seed)
    if perturbation:
        perturb_parameters(perturbed, perturbation, generator=gen)
    latents = torch.randn((num_samples, *perturbed.output_shape), generator=gen, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        module = copy.deepcopy(perturbed).to(dtype=dtype) if dtype != torch.float64 else perturbed
        z = latents.to(device=device, dtype=dtype)
        with torch.no_grad():
            x, logdet = _call(module, z, ctx, "inverse", name, check)
        finite = torch.isfinite(x.reshape(num_samples, -1)).all(1) & torch.isfinite(logdet)
        bad = int((~finite).sum())
        if bad:
            good = x[torch.isfinite(x)]
            largest = f"{float(good.abs().max()):.3g}" if good.numel() else "none"
            raise _fail(
                name,
                check,
                z,
                f"inverse of {num_samples} N(0, I) latents gave {bad} ({100 * bad / num_samples:.0f}%) "
                f"sample(s) with a NaN or inf (output or logabsdet; largest finite |x| {largest}) "
                f"after perturbing the parameters by {perturbation}·N(0, 1); the inverse overflows "
                f"on trained-like weights: bound the scales it divides by (e.g. "
                f"flowkit.plugins.elementwise.soft_cap)",
            )
