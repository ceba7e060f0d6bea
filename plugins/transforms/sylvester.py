"""Sylvester flows (van den Berg et al. 2018, "Sylvester Normalizing Flows for Variational Inference")."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from flowkit.composition import Architecture, Sequential
from flowkit.errors import ConfigError
from flowkit.params import Range
from flowkit.plugins.transforms.root_finding import (
    TOL_ULPS,
    solve_tanh_equation,
    tanh_derivative,
    triangular_newton_step,
)
from flowkit.transform import Shape, Transform, require_rank

Variant = Literal["orthogonal", "householder", "triangular"]
VARIANTS: tuple[str, ...] = get_args(Variant)

#: ``diag(R), diag(R̃) = DIAG_BOUND·tanh(raw)``, so ``diag(R)ᵢ·diag(R̃)ᵢ ≥ −DIAG_BOUND² > −1``
#: strictly, also once ``tanh`` rounds to ±1 for extreme raw parameters (paper: ``tanh`` alone).
DIAG_BOUND = 1.0 - 1e-4
#: Newton steps on the whole triangular system before falling back to back-substitution.
NEWTON_STEPS = 12


def _triangular(raw: Tensor) -> Tensor:
    """Upper-triangular matrix with free off-diagonal entries and diagonal ``DIAG_BOUND·tanh``."""
    return torch.triu(raw, diagonal=1) + torch.diag(DIAG_BOUND * torch.tanh(torch.diagonal(raw)))


class SylvesterLayer(Transform):
    """One Sylvester layer; its generative map f(z) = z + Q·R·h(R̃·Qᵀz + b) is ``inverse``.

    van den Berg, Hasenclever, Tomczak & Welling 2018, "Sylvester Normalizing Flows for
    Variational Inference", §2–3 (eqs. 10–13). With ``Q`` a ``D × M`` matrix of orthonormal
    columns (``M ≤ D``) and ``R``, ``R̃`` upper triangular ``M × M``, the generative map
    (latent → data, flowkit's ``inverse``) and its log-det (Sylvester's determinant identity)::

        f(z) = z + Q·R·h(R̃·Qᵀz + b),   h = tanh
        log|det ∂f/∂z| = Σᵢ log|1 + Rᵢᵢ·R̃ᵢᵢ·h'((R̃·Qᵀz + b)ᵢ)|

    Invertibility (§3, Theorem 2): ``Rᵢᵢ·R̃ᵢᵢ > −1/sup h' = −1``, enforced by
    ``Rᵢᵢ, R̃ᵢᵢ = (1 − 1e-4)·tanh(raw)``. ``variant`` chooses ``Q``:

    * ``orthogonal``: the first ``M`` columns of ``exp(S − Sᵀ)`` (the matrix exponential of a
      skew-symmetric matrix is orthogonal; exact to rounding, unlike the paper's iterative
      orthogonalisation, so the log-det formula holds to rounding too);
    * ``householder``: the first ``M`` columns of ``H₁⋯H_K``, ``Hₖ = I − 2·vₖvₖᵀ/‖vₖ‖²``;
    * ``triangular``: a permutation, the identity or (``reverse=True``, used by this variant
      only) the reversal.

    ``forward`` (data → latent) inverts ``f``. With ``v = Qᵀz`` (the rest of ``z`` equals that of
    ``x``), ``v + R·h(R̃·v + b) = Qᵀx`` is an upper-triangular system: its last equation involves
    only ``v_M``, and each earlier one only ``vᵢ`` once the later ones are known. Up to
    :data:`NEWTON_STEPS` Newton steps on the whole system (each a batched triangular solve) run
    first; any example not converged to ``4·eps·(1 + |vᵢ|)`` then is solved exactly by
    back-substitution, ``M`` strictly increasing scalar equations ``vᵢ + Rᵢᵢ·h(R̃ᵢᵢ·vᵢ + sᵢ) = tᵢ``,
    each by the provably convergent bracketed solver
    (:func:`~flowkit.plugins.transforms.root_finding.solve_tanh_equation`). One differentiable
    Newton step of the whole system at the root gives exact first-order gradients; the log-det is
    minus the generative one at the found ``z``. ``R``, ``R̃`` start as ``N(0, init_scale²)``
    entries (near the identity), ``b = 0``.
    """

    input_ranks = (1,)
    test_params: ClassVar[dict[str, Any]] = {}
    permutation: Tensor  # the buffer of the permutation variant (nn.Module types it Tensor | Module)

    def __init__(
        self,
        event_shape: Shape,
        *,
        variant: Variant = "orthogonal",
        num_columns: Annotated[int, Range(1)] | None = None,
        num_householder: Annotated[int, Range(1)] = 8,
        reverse: bool = False,
        init_scale: Annotated[float, Range(0)] = 0.1,
    ) -> None:
        super().__init__(event_shape)
        require_rank(
            "SylvesterLayer",
            self.event_shape,
            self.input_ranks,
            "Sylvester flows act on flat vectors: flatten the data first.",
        )
        dim = self.event_shape[0]
        m = _check_options(dim, variant, num_columns)
        self.variant = variant
        self.num_columns = m
        self.r_raw = nn.Parameter(torch.randn(m, m) * init_scale)
        self.r_tilde_raw = nn.Parameter(torch.randn(m, m) * init_scale)
        self.bias = nn.Parameter(torch.zeros(m))
        if variant == "orthogonal":
            self.skew_raw = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        elif variant == "householder":
            self.reflections = nn.Parameter(torch.randn(num_householder, dim))
        else:
            order = torch.arange(dim - 1, -1, -1) if reverse else torch.arange(dim)
            self.register_buffer("permutation", torch.eye(dim)[:, order[:m]])

    def q(self) -> Tensor:
        """The ``D × M`` matrix ``Q`` of orthonormal columns for this layer's variant."""
        m = self.num_columns
        if self.variant == "orthogonal":
            return torch.linalg.matrix_exp(self.skew_raw - self.skew_raw.T)[:, :m]
        if self.variant == "householder":
            vectors = self.reflections
            q = torch.eye(vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
            norms = vectors.square().sum(dim=1).clamp_min(torch.finfo(vectors.dtype).tiny)
            for v, norm in zip(vectors, norms):
                q = q - (2.0 / norm) * torch.outer(q @ v, v)
            return q[:, :m]
        return self.permutation

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q, R, R̃)`` with the constrained diagonals."""
        return self.q(), _triangular(self.r_raw), _triangular(self.r_tilde_raw)

    @staticmethod
    def _logdet(r: Tensor, r_tilde: Tensor, pre: Tensor) -> Tensor:
        """``Σᵢ log(1 + Rᵢᵢ·R̃ᵢᵢ·h'(preᵢ))`` per example (positive argument by construction)."""
        diag = torch.diagonal(r) * torch.diagonal(r_tilde)
        return torch.log1p(diag * tanh_derivative(pre)).sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generative map ``x = z + Q·R·tanh(R̃·Qᵀz + b)`` and its log-det."""
        self.check_input(z, "inverse")
        q, r, r_tilde = self.factors()
        pre = (z @ q) @ r_tilde.T + self.bias
        x = z + (torch.tanh(pre) @ r.T) @ q.T
        return x, self._logdet(r, r_tilde, pre)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Invert the generative map: Newton, back-substitution fallback (see the class docstring)."""
        self.check_input(x)
        q, r, r_tilde = self.factors()
        target = x @ q
        root = _solve_system(target.detach(), r.detach(), r_tilde.detach(), self.bias.detach())
        pre_root = root @ r_tilde.T + self.bias
        residual = root + torch.tanh(pre_root) @ r.T - target
        v = triangular_newton_step(root, residual, _system_jacobian(r, r_tilde, pre_root))
        pre = v @ r_tilde.T + self.bias
        z = x - (torch.tanh(pre) @ r.T) @ q.T
        return z, -self._logdet(r, r_tilde, pre)


def _system_jacobian(r: Tensor, r_tilde: Tensor, pre: Tensor) -> Tensor:
    """``∂/∂v [v + R·tanh(R̃·v + b)] = I + R·diag(tanh'(pre))·R̃`` per example, upper triangular."""
    eye = torch.eye(r.shape[0], dtype=pre.dtype, device=pre.device)
    return eye + (r * tanh_derivative(pre).unsqueeze(1)) @ r_tilde


@torch.no_grad()
def _solve_system(target: Tensor, r: Tensor, r_tilde: Tensor, bias: Tensor) -> Tensor:
    """Solve ``v + R·tanh(R̃·v + b) = target`` (``(B, M)``): Newton, then back-substitution.

    Up to :data:`NEWTON_STEPS` Newton steps on the whole system (one batched triangular solve
    each, quadratic convergence); an example whose last step is below ``4·eps·(1 + |v|)`` in every
    component is done. Any example left over is solved by :func:`_back_substitute`, which always
    converges; so the answer never rests on Newton's luck, only its speed does.
    """
    eps = torch.finfo(target.dtype).eps
    v = target - torch.tanh(target @ r_tilde.T + bias) @ r.T  # one fixed-point step
    done = torch.zeros(target.shape[0], dtype=torch.bool, device=target.device)
    for _ in range(NEWTON_STEPS):
        active = ~done & torch.isfinite(v).all(dim=1)
        if not bool(active.any()):
            break
        pre = v @ r_tilde.T + bias
        residual = v + torch.tanh(pre) @ r.T - target
        step = torch.linalg.solve_triangular(
            _system_jacobian(r, r_tilde, pre), residual.unsqueeze(-1), upper=True
        ).squeeze(-1)
        small = (step.abs() <= TOL_ULPS * eps * (1.0 + v.abs())).all(dim=1)
        v = torch.where(active.unsqueeze(1), v - step, v)
        done = done | (active & small)
    if not bool(done.all()):
        left = ~done
        v[left] = _back_substitute(target[left], r, r_tilde, bias)
    return v


@torch.no_grad()
def _back_substitute(target: Tensor, r: Tensor, r_tilde: Tensor, bias: Tensor) -> Tensor:
    """Solve ``v + R·tanh(R̃·v + b) = target`` exactly, from the last component to the first.

    Row ``i`` of the system involves only ``vᵢ, …, v_M``; with the later ones known it is the
    strictly increasing scalar equation ``vᵢ + Rᵢᵢ·tanh(R̃ᵢᵢ·vᵢ + sᵢ) = tᵢ``, solved by
    :func:`~flowkit.plugins.transforms.root_finding.solve_tanh_equation` (provably convergent).
    """
    v = torch.zeros_like(target)
    activation = torch.zeros_like(target)  # tanh((R̃v + b)_j) for the components already solved
    for i in range(target.shape[1] - 1, -1, -1):
        shift = bias[i] + v[:, i + 1 :] @ r_tilde[i, i + 1 :]
        rhs = target[:, i] - activation[:, i + 1 :] @ r[i, i + 1 :]
        v[:, i] = solve_tanh_equation(rhs, r[i, i], r_tilde[i, i], shift)
        activation[:, i] = torch.tanh(r_tilde[i, i] * v[:, i] + shift)
    return v


def _check_options(dim: int, variant: str, num_columns: int | None) -> int:
    """Validate the layer options; return ``M``."""
    if variant not in VARIANTS:
        raise ConfigError(
            f"[transform] sylvester: variant must be one of "
            f"{', '.join(map(repr, VARIANTS))}, got {variant!r}."
        )
    m = dim if num_columns is None else num_columns
    if not 1 <= m <= dim:
        raise ConfigError(
            f"[transform] sylvester: num_columns (M) must be between 1 and the data "
            f"dimension D = {dim}, got {num_columns}; leave it unset for M = D."
        )
    return m


class SylvesterFlow(Architecture):
    """A stack of Sylvester layers f_K ∘ … ∘ f_1 (van den Berg et al. 2018, §2–3).

    Each layer is a :class:`SylvesterLayer`, ``f_k(z) = z + Q_k·R_k·tanh(R̃_k·Q_kᵀz + b_k)``, with
    ``R_k``, ``R̃_k`` upper triangular (diagonals constrained for invertibility) and ``Q_k`` from
    ``variant``: ``orthogonal`` (``M`` orthonormal columns, ``Q = exp(S − Sᵀ)[:, :M]``),
    ``householder`` (``num_householder`` reflections) or ``triangular`` (identity and reversal
    permutations, alternating). ``inverse`` (latent → data) is the generative map with its
    analytic log-det — the direction the ``reverse-kl`` objective samples and differentiates;
    ``forward`` (data → latent) inverts each layer by back-substitution through ``M`` bracketed
    scalar Newton solves. Vectors ``(D,)`` only; ``num_columns`` is ``M`` (default ``D``).

    References:

    * van den Berg, Hasenclever, Tomczak & Welling 2018, "Sylvester Normalizing Flows for Variational
      Inference", UAI 2018.

    Arguments:

    * ``event_shape`` (injected): the shape ``(D,)`` of one vector; flowkit sets it from the data.
    * ``num_layers`` (int ≥ 1, default 8): the number of layers ``K``.
    * ``variant`` ('orthogonal' | 'householder' | 'triangular', default 'orthogonal'): how ``Q_k`` is built:
      ``'orthogonal'``, ``'householder'`` or ``'triangular'``.
    * ``num_columns`` (int ≥ 1 | None, default None): ``M``, the columns of ``Q_k``, at most ``D``; ``None``:
      ``D``.
    * ``num_householder`` (int ≥ 1, default 8): Householder reflections per layer (``householder`` only).
    * ``init_scale`` (float ≥ 0, default 0.1): std of the initial ``R_k`` and ``R̃_k``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.transforms.sylvester import SylvesterFlow
        >>> _ = torch.manual_seed(0)
        >>> flow = SylvesterFlow((3,), num_layers=2, variant="householder", num_householder=2, init_scale=0.5)
        >>> z = torch.randn(8, 3)
        >>> x, logdet = flow.inverse(z)  # the generative map of the paper
        >>> z_back, fwd_logdet = flow(x)  # back-substitution and Newton solves
        >>> torch.allclose(z_back, z, atol=1e-4), torch.allclose(fwd_logdet, -logdet, atol=1e-4)
        (True, True)
    """

    input_ranks = (1,)
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": [2, 3],
        "variant": ["orthogonal", "householder", "triangular"],
        "num_householder": [2, 3],
    }

    def __init__(
        self,
        event_shape: Shape,
        *,
        num_layers: Annotated[int, Range(1)] = 8,
        variant: Variant = "orthogonal",
        num_columns: Annotated[int, Range(1)] | None = None,
        num_householder: Annotated[int, Range(1)] = 8,
        init_scale: Annotated[float, Range(0)] = 0.1,
    ) -> None:
        super().__init__(event_shape)
        require_rank(
            "sylvester",
            self.event_shape,
            self.input_ranks,
            "Sylvester flows act on flat vectors: flatten the data first.",
        )
        self._effective = {"num_columns": _check_options(self.event_shape[0], variant, num_columns)}
        self.flow = Sequential(
            SylvesterLayer(
                self.event_shape,
                variant=variant,
                num_columns=num_columns,
                num_householder=num_householder,
                reverse=k % 2 == 1,
                init_scale=init_scale,
            )
            for k in range(num_layers)
        )

    def effective_params(self) -> dict[str, Any]:
        """The values chosen at build time for unset keys: ``num_columns`` (``M = D``)."""
        return dict(self._effective)
