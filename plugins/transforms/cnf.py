"""Continuous normalizing flow: the flow of a neural ODE, with its log-determinant (FFJORD).

The transform is the solution map of ``dx/dt = v_θ(x, t, c)`` from ``t = 0`` (data) to ``t = T``
(latent). By the instantaneous change of variables (Chen et al. 2018, "Neural Ordinary
Differential Equations", NeurIPS, Thm. 1) the log-determinant obeys

    d/dt log|det ∂x(t)/∂x(0)| = tr(∂v_θ/∂x (x(t), t, c)),

so the forward pass integrates the augmented state ``(x, ℓ)`` with ``ℓ(0) = 0``::

    z = x(T),   log|det ∂z/∂x| = ℓ(T) = ∫_0^T tr(∂v/∂x) dt

and the inverse integrates the same system from ``T`` back to ``0`` (its ``ℓ`` is the negated
integral, ``log|det ∂x/∂z|``). FFJORD (Grathwohl et al. 2019, "FFJORD: Free-form Continuous
Dynamics for Scalable Reversible Generative Models", ICLR) replaces the trace by Hutchinson's
unbiased estimate ``εᵀ (∂v/∂x) ε``, ``E[εεᵀ] = I``, with one probe ``ε`` per example held fixed
over the solve; the exact trace costs ``D`` Jacobian-vector products instead of one.

Which trace is used (read :attr:`CNF.last_trace` after a call):

* in training mode, ``trace`` — ``"hutchinson"`` (the default; ``probe`` = Rademacher or
  Gaussian) or ``"exact"``;
* in evaluation mode (``model.eval()``: test NLL, density figures, ``flowkit eval``), always the
  exact trace when ``D ≤ exact_trace_max_dim`` (default 64), so reported likelihoods are
  deterministic; above that bound the Hutchinson estimate (unbiased for the log-det, so the NLL is
  an unbiased estimate too).

The ODE is solved with torchdiffeq (Chen 2018): adaptive Runge–Kutta solvers (``dopri5``,
``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) with ``atol``/``rtol`` and at most
``max_steps`` steps per solve, or fixed-grid solvers (``euler``, ``midpoint``, ``heun2``,
``heun3``, ``rk4``, ``explicit_adams``, ``implicit_adams``) with ``step_size``. ``adjoint = true``
back-propagates with the adjoint method (memory constant in the number of steps, one more solve
backwards; ``odeint_adjoint``). :attr:`CNF.last_nfe` counts the function evaluations of the last
forward or inverse solve; the ``mle`` objective logs it as ``nfe``.

Note on batching: an adaptive solver chooses one step sequence for the whole batch, so an
example's result depends on the rest of the batch within the tolerances; fixed-grid solvers keep
examples exactly independent.

The vector field is :class:`~flowkit.plugins.transforms.vector_fields.MLPField` for vectors or
:class:`~flowkit.plugins.transforms.vector_fields.ConvField` for images, with the time (as
``t/T``) and the context read at every layer and a zero-initialised output layer: a fresh ``cnf``
is the identity. :meth:`CNF.velocity` exposes ``v`` for flow matching.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from flowkit.context import context_spec, context_width
from flowkit.errors import ConfigError, FlowkitError, ShapeError, did_you_mean
from flowkit.params import Range
from flowkit.plugins.transforms.vector_fields import (
    ACTIVATIONS,
    Activation,
    ConvField,
    FieldNet,
    MLPField,
)
from flowkit.transform import Shape, Transform, require_rank

AdaptiveSolver = Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"]
FixedSolver = Literal["euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams"]
Solver = Literal[AdaptiveSolver, FixedSolver]  # the twelve names, adaptive first
ADAPTIVE_SOLVERS: tuple[str, ...] = get_args(AdaptiveSolver)
FIXED_SOLVERS: tuple[str, ...] = get_args(FixedSolver)
TraceKind = Literal["hutchinson", "exact"]
NetKind = Literal["mlp", "conv"]
#: a width, depth or step count: at least 1
Count = Annotated[int, Range(1)]
#: a time, tolerance or step size: a finite number above 0
PositiveFloat = Annotated[float, Range(0, min_inclusive=False)]

INSTALL_HINT = "pip install torchdiffeq (flowkit declares it as a dependency; reinstall flowkit)"


class ODESolverError(FlowkitError, RuntimeError):
    """The ODE solver of a continuous flow could not finish (step limit, step-size underflow or a
    non-finite state); the message names the settings to change."""


def _odeint() -> tuple[Any, Any]:
    """``(odeint, odeint_adjoint)`` from torchdiffeq, with an install hint when it is missing."""
    try:
        from torchdiffeq import odeint, odeint_adjoint
    except ImportError as exc:
        raise FlowkitError(f"the cnf transform needs the torchdiffeq package: {INSTALL_HINT}") from exc
    return odeint, odeint_adjoint


class _Dynamics(nn.Module):
    """The augmented right-hand side ``(x, ℓ[, c]) ↦ (v, tr ∂v/∂x[, 0])`` for one solve.

    Made per call (never a submodule of the transform): it holds the probe of a Hutchinson solve
    and counts its function evaluations in ``nfe``.
    """

    def __init__(
        self, net: FieldNet, horizon: float, event_shape: Shape, mode: str, probe: Tensor | None
    ) -> None:
        super().__init__()
        self.net = net
        self.horizon = horizon
        self.event_shape = event_shape
        self.mode = mode
        self.probe = probe
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        x = state[0]
        features = state[2] if len(state) > 2 else None
        batch = x.shape[0]
        s = (torch.as_tensor(t, dtype=x.dtype, device=x.device) / self.horizon).expand(batch)
        if self.mode == "exact":
            d = math.prod(self.event_shape)
            eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(1, d, *self.event_shape)
            v, jv = self.net.jvp(x, s, features, eye.expand(batch, *eye.shape[1:]))
            trace = jv.reshape(batch, d, d).diagonal(dim1=1, dim2=2).sum(-1)
        else:
            assert self.probe is not None
            v, jv = self.net.jvp(x, s, features, self.probe.unsqueeze(1))
            trace = (jv[:, 0] * self.probe).reshape(batch, -1).sum(1)
        if features is None:
            return v, trace
        return v, trace, torch.zeros_like(features)


class CNF(Transform):
    """Continuous normalizing flow (FFJORD): integrate dx/dt = v(x, t, c) from data (t=0) to latent.

    ``log|det ∂z/∂x| = ∫_0^T tr(∂v/∂x) dt`` (Chen et al. 2018, "Neural ODEs", Thm. 1; Grathwohl
    et al. 2019, "FFJORD", ICLR), solved with torchdiffeq; the inverse integrates from ``T`` back
    to 0. Training uses ``trace`` (``hutchinson``: one ``probe`` per example, unbiased; or
    ``exact``: ``D`` Jacobian-vector products); evaluation mode always uses the exact trace when
    ``D ≤ exact_trace_max_dim`` (:attr:`last_trace` says which one the last call used).

    The context is read at every layer of the vector field. :attr:`last_nfe` is the number of
    function evaluations of the last solve; :meth:`velocity` is the vector field itself (for flow
    matching). Starts as the identity.

    References:

    * Chen, Rubanova, Bettencourt & Duvenaud 2018, "Neural Ordinary Differential Equations", NeurIPS 2018.
    * Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, "FFJORD: Free-form Continuous Dynamics for
      Scalable Reversible Generative Models", ICLR 2019.
    * Hutchinson 1989, "A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
      Splines", Communications in Statistics – Simulation and Computation 18(3).

    Arguments:

    * ``event_shape`` (injected): the shape of one example without the batch dimension, ``(D,)`` for vectors
      or ``(C, H, W)`` for images; flowkit sets it from the data.
    * ``net`` ('mlp' | 'conv' | None, default None): the vector field's network: ``'mlp'`` (vectors) or
      ``'conv'`` (images); ``None``: by the rank.
    * ``hidden`` (int ≥ 1, default 64): hidden units or channels of the vector field.
    * ``num_hidden`` (int ≥ 1, default 2): hidden layers of the vector field.
    * ``activation`` ('softplus' | 'tanh' | 'silu', default 'tanh'): its smooth nonlinearity.
    * ``time_horizon`` (float > 0, default 1.0): the end time ``T`` of the integration.
    * ``solver`` ('dopri5' | 'dopri8' | 'bosh3' | 'fehlberg2' | 'adaptive_heun' | 'euler' | 'midpoint' |
      'heun2' | 'heun3' | 'rk4' | 'explicit_adams' | 'implicit_adams', default 'dopri5'): the torchdiffeq
      solver: adaptive (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) or fixed-grid
      (the others).
    * ``atol`` (float > 0, default 1e-05): absolute tolerance of an adaptive solver.
    * ``rtol`` (float > 0, default 1e-05): relative tolerance of an adaptive solver.
    * ``step_size`` (float > 0, default 0.05): step of a fixed-grid solver, with
      ``T / step_size ≤ max_steps``.
    * ``max_steps`` (int ≥ 1, default 1000): the most steps per solve.
    * ``adjoint`` (bool, default False): gradients by the adjoint method (memory O(1) in the number of steps).
    * ``trace`` ('hutchinson' | 'exact', default 'hutchinson'): the trace in training: ``'hutchinson'`` (one
      ``probe`` per example, unbiased) or ``'exact'`` (``D`` Jacobian-vector products).
    * ``probe`` ('rademacher' | 'gaussian', default 'rademacher'): the distribution of Hutchinson's probe
      vectors.
    * ``exact_trace_max_dim`` (int ≥ 0, default 64): in evaluation mode the trace is exact when
      ``D ≤ exact_trace_max_dim``.
    * ``conditional`` (bool | None, default None): ``None``: conditional exactly when a real-valued context is
      given (``context_features``); ``True``: conditional on that context or, without one, on the class labels
      (one-hot); ``False``: ignore any context.
    * ``num_classes`` (injected): the number of classes of labelled data, else ``None``; flowkit sets it.
    * ``context_features`` (injected): the width ``k`` of the embedded real-valued context, else ``None``;
      flowkit sets it, and a layer given one conditions on the context.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.cnf import CNF
        >>> _ = torch.manual_seed(0)
        >>> flow = CNF((2,), hidden=16, solver="rk4", step_size=0.25, trace="exact").eval()
        >>> x = torch.randn(4, 2)
        >>> z, logdet = flow(x)
        >>> torch.allclose(z, x), logdet.abs().max().item()  # a fresh CNF is the identity
        (True, 0.0)
        >>> _ = [torch.nn.init.normal_(p, std=0.3) for p in flow.parameters()]  # as if trained
        >>> z, logdet = flow(x)
        >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-4)
        True
    """

    input_ranks: ClassVar[tuple[int, ...]] = (1, 3)
    #: the conformance checks: a tiny field and a fixed-grid solver (examples stay independent,
    #: float32 round trips are accurate, and the float64 log-det matches the autograd Jacobian
    #: of the discrete map to ~1e-9)
    test_params: ClassVar[dict[str, Any]] = {
        "hidden": [8],
        "num_hidden": [1],
        "solver": ["rk4"],
        "step_size": [0.125],
        "activation": ["tanh", "softplus"],
        "trace": ["hutchinson", "exact"],
    }
    #: :func:`~flowkit.plugins.transforms.vector_fields.solver_terms` reads :attr:`last_nfe`
    reports_nfe: ClassVar[bool] = True

    def __init__(
        self,
        event_shape: Shape,
        *,
        net: NetKind | None = None,
        hidden: Count = 64,
        num_hidden: Count = 2,
        activation: Activation = "tanh",
        time_horizon: PositiveFloat = 1.0,
        solver: Solver = "dopri5",
        atol: PositiveFloat = 1e-5,
        rtol: PositiveFloat = 1e-5,
        step_size: PositiveFloat = 0.05,
        max_steps: Count = 1000,
        adjoint: bool = False,
        trace: TraceKind = "hutchinson",
        probe: Literal["rademacher", "gaussian"] = "rademacher",
        exact_trace_max_dim: Annotated[int, Range(0)] = 64,
        conditional: bool | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__(event_shape)
        owner = "cnf"
        require_rank(
            owner,
            self.event_shape,
            self.input_ranks,
            "Flatten the data for vectors, or give images as (C, H, W).",
        )
        is_vector = len(self.event_shape) == 1
        net = net or ("mlp" if is_vector else "conv")
        if net == "mlp" and not is_vector:
            raise ShapeError(
                f"cnf: net='mlp' takes vectors (D,), but the input has image shape "
                f"{self.event_shape}; use net='conv' (the default for images)"
            )
        if net == "conv" and is_vector:
            raise ShapeError(
                f"cnf: net='conv' takes images (C, H, W), but the input has shape "
                f"{self.event_shape}; use net='mlp' (the default for vectors)"
            )
        _validate(
            solver=solver,
            step_size=step_size,
            max_steps=max_steps,
            time_horizon=time_horizon,
            activation=activation,
            trace=trace,
            probe=probe,
            net=net,
        )
        self.context_spec = context_spec(owner, conditional, num_classes, context_features)
        self.conditional = self.context_spec is not None
        self.num_classes = num_classes
        self.net_kind = net
        self.activation = activation
        self.time_horizon = float(time_horizon)
        self.solver = solver
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.step_size = float(step_size)
        self.max_steps = int(max_steps)
        self.adjoint = bool(adjoint)
        self.trace = trace
        self.probe = probe
        self.exact_trace_max_dim = int(exact_trace_max_dim)
        extra = context_width(self.context_spec)
        self.net: FieldNet
        if net == "mlp":
            self.net = MLPField(self.event_shape[0], hidden, num_hidden, extra, activation)
        else:
            self.net = ConvField(self.event_shape[0], hidden, num_hidden, extra, activation)
        self._last_nfe = 0
        self._last_trace: str | None = None

    # -- what the last call did ----------------------------------------------------------------
    @property
    def last_nfe(self) -> int:
        """Function evaluations of the vector field in the last forward or inverse solve."""
        return self._last_nfe

    @property
    def last_trace(self) -> str | None:
        """The trace the last call used: ``"exact"`` or ``"hutchinson"`` (``None`` before any)."""
        return self._last_trace

    @property
    def eval_trace(self) -> str:
        """The trace used in evaluation mode: exact up to ``exact_trace_max_dim`` dimensions."""
        if self.trace == "exact" or self.event_dim <= self.exact_trace_max_dim:
            return "exact"
        return "hutchinson"

    def trace_mode(self) -> str:
        """The trace a call makes now: ``trace`` in training mode, :attr:`eval_trace` otherwise."""
        return self.trace if self.training else self.eval_trace

    # -- the vector field ----------------------------------------------------------------------
    def _features(self, context: Tensor | None, like: Tensor) -> Tensor | None:
        if self.context_spec is None:
            return None
        return self.context_spec.features(context, like, "cnf")

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """``v(x, t, c)``: the vector field at times ``t ∈ [0, T]`` (a number or a ``(B,)`` tensor).

        ``context`` is what :meth:`forward` takes (class labels, or the embedded real-valued
        context); the result has ``x``'s shape.
        """
        self.check_input(x)
        features = self._features(context, x)
        times = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if times.dim() == 0:
            times = times.expand(x.shape[0])
        elif tuple(times.shape) != (x.shape[0],):
            raise ShapeError(
                f"cnf.velocity: t must be a number or a tensor of shape "
                f"({x.shape[0]},), got {tuple(times.shape)}"
            )
        return self.net(x, times / self.time_horizon, features)

    # -- the solve -----------------------------------------------------------------------------
    def _probe(self, x: Tensor) -> Tensor:
        if self.probe == "gaussian":
            return torch.randn_like(x)
        return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2.0 - 1.0

    def _integrate(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        features = self._features(context, x)  # a malformed context fails before any solve
        odeint, odeint_adjoint = _odeint()
        mode = self.trace_mode()
        dynamics = _Dynamics(
            self.net,
            self.time_horizon,
            self.event_shape,
            mode,
            self._probe(x) if mode == "hutchinson" else None,
        )
        state: tuple[Tensor, ...] = (x, self.zero_logdet(x))
        if features is not None:
            state = (*state, features)
        ends = [self.time_horizon, 0.0] if reverse else [0.0, self.time_horizon]
        times = torch.tensor(ends, dtype=x.dtype, device=x.device)
        if self.solver in ADAPTIVE_SOLVERS:
            options: dict[str, Any] = {"max_num_steps": self.max_steps}
        else:
            options = {"step_size": self.step_size}
        kwargs: dict[str, Any] = {
            "rtol": self.rtol,
            "atol": self.atol,
            "method": self.solver,
            "options": options,
        }
        self._last_trace = mode
        try:
            if self.adjoint and torch.is_grad_enabled():
                params = tuple(p for p in self.net.parameters() if p.requires_grad)
                solution = odeint_adjoint(dynamics, state, times, adjoint_params=params, **kwargs)
            else:
                solution = odeint(dynamics, state, times, **kwargs)
        except AssertionError as exc:
            raise self._solver_error(exc, dynamics.nfe, "inverse" if reverse else "forward") from exc
        finally:
            self._last_nfe = dynamics.nfe
        return solution[0][-1], solution[1][-1]

    def _solver_error(self, exc: AssertionError, nfe: int, direction: str) -> Exception:
        """The flowkit error for one of torchdiffeq's solver assertions (others pass through)."""
        message = str(exc)
        where = (
            f"cnf: the {self.solver} solver of the {direction} pass (t from "
            f"{'T' if direction == 'inverse' else '0'} to "
            f"{'0' if direction == 'inverse' else 'T'}, T = {self.time_horizon:g})"
        )
        advice = (
            f"raise transform.max_steps, loosen the tolerances transform.atol/transform.rtol "
            f"(now {self.atol:g}/{self.rtol:g}), or use a fixed-step solver "
            f"(transform.solver = 'rk4' with transform.step_size)"
        )
        if "max_num_steps" in message:
            return ODESolverError(
                f"{where} hit transform.max_steps = {self.max_steps} steps "
                f"({nfe} function evaluations) before reaching the end: the "
                f"dynamics are too stiff for these tolerances; {advice}"
            )
        if "underflow in dt" in message:
            return ODESolverError(
                f"{where} needed a step size below the resolution of the "
                f"time variable after {nfe} function evaluations (tolerances "
                f"tighter than the input's precision, or dynamics that blew "
                f"up); {advice}"
            )
        if "non-finite" in message:
            return ODESolverError(
                f"{where} reached a non-finite state after {nfe} function "
                f"evaluations: the vector field diverged; lower train.lr or set "
                f"train.grad_clip, or {advice}"
            )
        return exc

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z = x(T)`` from ``x(0) = x`` and ``log|det ∂z/∂x| = ∫_0^T tr(∂v/∂x) dt``."""
        self.check_input(x)
        return self._integrate(x, context, reverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = x(0)`` from ``x(T) = y``, integrating backwards; log-det ``log|det ∂x/∂y|``."""
        self.check_input(y, "inverse")
        return self._integrate(y, context, reverse=True)

    def extra_repr(self) -> str:
        step = (
            f"atol={self.atol:g}, rtol={self.rtol:g}, max_steps={self.max_steps}"
            if self.solver in ADAPTIVE_SOLVERS
            else f"step_size={self.step_size:g}"
        )
        return (
            f"{super().extra_repr()}, T={self.time_horizon:g}, solver={self.solver!r}, {step}, "
            f"trace={self.trace!r}, adjoint={self.adjoint}, conditional={self.conditional}"
        )


def _validate(
    *,
    solver: str,
    step_size: float,
    max_steps: int,
    time_horizon: float,
    activation: str,
    trace: str,
    probe: str,
    net: str,
) -> None:
    """Raise :class:`ConfigError` for settings the solver or the network cannot use.

    The numbers' own ranges are declared in :class:`CNF`'s signature (and checked before this
    runs); here: the choices of a direct Python call (a config's are checked against the
    ``Literal`` types already) and the one check that involves several parameters.
    """
    known = ADAPTIVE_SOLVERS + FIXED_SOLVERS
    if solver not in known:
        raise ConfigError(
            f"cnf: unknown solver {solver!r}.{did_you_mean(solver, known)} Adaptive "
            f"solvers: {', '.join(ADAPTIVE_SOLVERS)}; fixed-grid solvers: "
            f"{', '.join(FIXED_SOLVERS)}"
        )
    if solver in FIXED_SOLVERS and math.ceil(time_horizon / step_size - 1e-9) > max_steps:
        raise ConfigError(
            f"cnf: the fixed-grid solver {solver!r} takes "
            f"time_horizon/step_size = {time_horizon:g}/{step_size:g} = "
            f"{math.ceil(time_horizon / step_size - 1e-9)} steps, more than "
            f"transform.max_steps = {max_steps}; raise step_size or max_steps"
        )
    for name, value, options in (
        ("activation", activation, ACTIVATIONS),
        ("trace", trace, ("hutchinson", "exact")),
        ("probe", probe, ("rademacher", "gaussian")),
        ("net", net, ("mlp", "conv")),
    ):
        if value not in options:
            raise ConfigError(
                f"cnf: transform.{name} must be one of {', '.join(options)}, got "
                f"{value!r}{did_you_mean(str(value), options)}"
            )
