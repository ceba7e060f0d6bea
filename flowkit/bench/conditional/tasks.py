"""The conditional-density tasks: priors, simulators and fixed observations.

Every task defines a prior ``p(θ)`` and a simulator ``x ~ p(x | θ)``; a flow learns the posterior
``q(θ | x)`` from ``(θ, x)`` pairs drawn from the joint (simulation-based inference, amortised
neural posterior estimation). All computations run in float64; the runner casts to float32.

* ``gaussian-linear`` (sbibm ``gaussian_linear``; Lueckmann et al. 2021, "Benchmarking
  simulation-based inference", AISTATS): ``θ ∈ R^10``, ``θ ~ N(0, 0.1·I)``,
  ``x | θ ~ N(θ, 0.1·I)``. The posterior is Gaussian (see :mod:`.reference`).
* ``two-moons`` (Greenberg, Nonnenmacher & Macke 2019, "Automatic posterior transformation",
  ICML; sbibm ``two_moons``): ``θ ~ U[-1, 1]^2``, ``a ~ U(-π/2, π/2)``, ``r ~ N(0.1, 0.01²)``,
  ``p = (r cos a + 0.25, r sin a)``, ``x = p + (-|θ1 + θ2|/√2, (-θ1 + θ2)/√2)``. The posterior
  is two crescents (the ``|·|`` makes the map 2-to-1).
* ``slcp`` (simple likelihood, complex posterior; Papamakarios, Sterratt & Murray 2019,
  "Sequential neural likelihood", AISTATS; sbibm ``slcp``): ``θ ~ U[-3, 3]^5``,
  ``m = (θ1, θ2)``, ``s1 = θ3²``, ``s2 = θ4²``, ``ρ = tanh θ5``,
  ``Σ = [[s1², ρ s1 s2], [ρ s1 s2, s2²]]``, ``x`` = 4 i.i.d. draws of ``N(m, Σ)``, flattened to 8-d.
  The likelihood is symmetric under ``θ3 → -θ3`` and ``θ4 → -θ4``: four posterior modes.
* ``inverse-kinematics`` (Kruse, Ardizzone, Rother & Köthe 2021, "Benchmarking invertible
  architectures on inverse problems", arXiv:2101.10763): a planar arm on a vertical rail.
  ``θ = (h, α1, α2, α3) ~ N(0, diag(0.25, 0.5, 0.5, 0.5)²)``, segment lengths
  ``l = (0.5, 0.5, 1.0)``; with cumulative angles ``φ1 = α1, φ2 = α1 + α2, φ3 = α1 + α2 + α3`` the
  end effector is ``y = (Σ_i l_i cos φ_i, h + Σ_i l_i sin φ_i)``, observed without noise. The
  paper's observation ``y* = (1.5, 0)`` is this task's first observation.

Observations: observation 0 of ``inverse-kinematics`` is the paper's ``y*``; every other one is
``x* ~ p(x | θ*)`` with ``θ* ~ p(θ)`` drawn from a generator seeded by the task and the index, so
they are fixed across runs (they are not sbibm's stored observations).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

DTYPE = torch.float64


def generator(*keys: object) -> torch.Generator:
    """A CPU generator seeded by a stable hash of ``keys`` (strings and integers)."""
    text = "/".join(str(k) for k in keys)
    return torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))


@dataclass
class Task:
    """A prior, a simulator and a way to draw reference posterior samples (see :mod:`.reference`).

    Subclasses implement :meth:`sample_prior`, :meth:`simulate` and :meth:`log_prior`.
    ``reference`` names the reference method in one line (the report prints it).
    """

    name: str = ""
    theta_dim: int = 0
    x_dim: int = 0
    description: str = ""
    reference: str = ""
    paper: str = ""
    bounds: tuple[float, float] | None = field(default=None)  # uniform prior box, if any

    def sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def simulate(self, theta: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def log_prior(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def joint(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``θ ~ p(θ)``, ``x ~ p(x | θ)`` (float64)."""
        theta = self.sample_prior(n, gen)
        return theta, self.simulate(theta, gen)

    def observations(self, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``k`` fixed observations: ``(θ* (k, d), x* (k, m))``, the same in every run."""
        thetas, xs = [], []
        for i in range(k):
            gen = generator("observation", self.name, seed, i)
            theta = self.sample_prior(1, gen)
            thetas.append(theta)
            xs.append(self.simulate(theta, gen))
        return torch.cat(thetas), torch.cat(xs)


class GaussianLinear(Task):
    """sbibm ``gaussian_linear``: ``θ ~ N(0, 0.1 I)``, ``x | θ ~ N(θ, 0.1 I)`` in 10-d."""

    prior_var = 0.1
    noise_var = 0.1

    def __init__(self, dim: int = 10) -> None:
        super().__init__(
            name="gaussian-linear",
            theta_dim=dim,
            x_dim=dim,
            description=f"θ ∈ R^{dim}, θ ~ N(0, 0.1 I), x | θ ~ N(θ, 0.1 I)",
            reference="analytic Gaussian posterior N(x/2, 0.05 I), sampled exactly",
            paper="Lueckmann et al. 2021; sbibm gaussian_linear",
        )

    def sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        return math.sqrt(self.prior_var) * torch.randn(n, self.theta_dim, generator=gen, dtype=DTYPE)

    def simulate(self, theta: Tensor, gen: torch.Generator) -> Tensor:
        noise = torch.randn(theta.shape, generator=gen, dtype=DTYPE)
        return theta + math.sqrt(self.noise_var) * noise

    def log_prior(self, theta: Tensor) -> Tensor:
        v = self.prior_var
        return -0.5 * (theta**2).sum(-1) / v - 0.5 * self.theta_dim * math.log(2 * math.pi * v)


class TwoMoons(Task):
    """Greenberg et al. 2019 / sbibm ``two_moons`` (2-d θ, 2-d x)."""

    r_loc = 0.1
    r_scale = 0.01
    shift = 0.25

    def __init__(self) -> None:
        super().__init__(
            name="two-moons",
            theta_dim=2,
            x_dim=2,
            description="θ ~ U[-1,1]², x = (r cos a + 0.25, r sin a) + (-|θ1+θ2|/√2, (θ2-θ1)/√2), "
            "a ~ U(-π/2, π/2), r ~ N(0.1, 0.01²)",
            reference="exact: simulator noise inverted through both branches of |θ1+θ2|, "
            "rejected outside the prior box",
            paper="Greenberg et al. 2019; sbibm two_moons",
            bounds=(-1.0, 1.0),
        )

    def sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        return 2 * torch.rand(n, 2, generator=gen, dtype=DTYPE) - 1

    def log_prior(self, theta: Tensor) -> Tensor:
        inside = (theta.abs() <= 1).all(-1)
        return torch.where(
            inside, torch.full_like(theta[..., 0], -math.log(4.0)), torch.full_like(theta[..., 0], -math.inf)
        )

    @staticmethod
    def mean_shift(theta: Tensor) -> Tensor:
        """``g(θ) = (-|θ1 + θ2|/√2, (-θ1 + θ2)/√2)``."""
        s = math.sqrt(2.0)
        return torch.stack(
            [-(theta[..., 0] + theta[..., 1]).abs() / s, (-theta[..., 0] + theta[..., 1]) / s], -1
        )

    def sample_noise(self, n: int, gen: torch.Generator) -> Tensor:
        """``p = (r cos a + 0.25, r sin a)`` for ``a ~ U(-π/2, π/2)``, ``r ~ N(0.1, 0.01²)``."""
        a = math.pi * (torch.rand(n, generator=gen, dtype=DTYPE) - 0.5)
        r = self.r_loc + self.r_scale * torch.randn(n, generator=gen, dtype=DTYPE)
        return torch.stack([r * torch.cos(a) + self.shift, r * torch.sin(a)], -1)

    def simulate(self, theta: Tensor, gen: torch.Generator) -> Tensor:
        return self.sample_noise(theta.shape[0], gen) + self.mean_shift(theta)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log p(x | θ)``: with ``u = x - g(θ) - (0.25, 0)`` in polar ``(r, a)``, the density is
        ``N(r; 0.1, 0.01²) / (π r)`` for ``u1 > 0`` (``|a| < π/2``), else 0."""
        u = x - self.mean_shift(theta)
        u = torch.stack([u[..., 0] - self.shift, u[..., 1]], -1)
        r = u.norm(dim=-1)
        log_n = -0.5 * ((r - self.r_loc) / self.r_scale) ** 2 - math.log(
            self.r_scale * math.sqrt(2 * math.pi)
        )
        out = log_n - math.log(math.pi) - torch.log(r)
        return torch.where(u[..., 0] > 0, out, torch.full_like(out, -math.inf))


class SLCP(Task):
    """Papamakarios et al. 2019 / sbibm ``slcp`` (5-d θ, 8-d x = 4 draws of a 2-d Gaussian)."""

    draws = 4

    def __init__(self) -> None:
        super().__init__(
            name="slcp",
            theta_dim=5,
            x_dim=8,
            description="θ ~ U[-3,3]^5; x = 4 i.i.d. draws of N((θ1,θ2), Σ), Σ from s1=θ3², s2=θ4², "
            "ρ=tanh θ5",
            reference="differential-evolution Metropolis on the sign-folded posterior "
            "(θ3, θ4 ≥ 0), initialised by importance resampling, signs then "
            "randomised; acceptance rate and split R-hat recorded",
            paper="Papamakarios et al. 2019; sbibm slcp",
            bounds=(-3.0, 3.0),
        )

    def sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        return 6 * torch.rand(n, 5, generator=gen, dtype=DTYPE) - 3

    def log_prior(self, theta: Tensor) -> Tensor:
        inside = (theta.abs() <= 3).all(-1)
        return torch.where(
            inside,
            torch.full_like(theta[..., 0], -5 * math.log(6.0)),
            torch.full_like(theta[..., 0], -math.inf),
        )

    @staticmethod
    def gaussian(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mean ``(B, 2)``, standard deviations ``s1 = θ3²``, ``s2 = θ4²`` and correlation
        ``ρ = tanh θ5`` of the 2-d Gaussian."""
        return theta[..., :2], theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])

    def simulate(self, theta: Tensor, gen: torch.Generator) -> Tensor:
        m, s1, s2, rho = self.gaussian(theta)
        z = torch.randn(theta.shape[0], self.draws, 2, generator=gen, dtype=DTYPE)
        # Cholesky factor of Σ: [[s1, 0], [ρ s2, s2 √(1-ρ²)]]
        x0 = s1[:, None] * z[..., 0]
        x1 = s2[:, None] * (rho[:, None] * z[..., 0] + torch.sqrt(1 - rho**2)[:, None] * z[..., 1])
        return (torch.stack([x0, x1], -1) + m[:, None, :]).reshape(theta.shape[0], -1)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``Σ_j log N(x_j; m, Σ)`` over the 4 draws; ``theta (..., 5)``, ``x (..., 8)``."""
        m, s1, s2, rho = self.gaussian(theta)
        pts = x.reshape(*x.shape[:-1], self.draws, 2)
        tiny = torch.finfo(theta.dtype).tiny
        s1, s2 = s1.clamp_min(tiny)[..., None], s2.clamp_min(tiny)[..., None]
        rho = rho[..., None]
        z1 = (pts[..., 0] - m[..., None, 0]) / s1
        z2 = (pts[..., 1] - m[..., None, 1]) / s2
        one_m = (1 - rho**2).clamp_min(tiny)
        quad = (z1**2 - 2 * rho * z1 * z2 + z2**2) / one_m
        logn = -math.log(2 * math.pi) - torch.log(s1) - torch.log(s2) - 0.5 * torch.log(one_m) - 0.5 * quad
        return logn.sum(-1)


class InverseKinematics(Task):
    """Kruse et al. 2021: 4-parameter planar arm on a rail, noise-free 2-d end effector."""

    sigmas = (0.25, 0.5, 0.5, 0.5)
    lengths = (0.5, 0.5, 1.0)
    paper_target = (1.5, 0.0)

    def __init__(self) -> None:
        super().__init__(
            name="inverse-kinematics",
            theta_dim=4,
            x_dim=2,
            description="θ = (h, α1, α2, α3) ~ N(0, diag(0.25, 0.5, 0.5, 0.5)²), arm lengths "
            "(0.5, 0.5, 1.0), x = end effector (noise-free)",
            reference="rejection on the reach of the last segment (| |y* − P2| − l3 | < ε, "
            "ε = 1e-3), last angle solved exactly, its prior by rejection",
            paper="Kruse et al. 2021, arXiv:2101.10763",
        )

    def sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        sig = torch.tensor(self.sigmas, dtype=DTYPE)
        return torch.randn(n, 4, generator=gen, dtype=DTYPE) * sig

    def log_prior(self, theta: Tensor) -> Tensor:
        sig = torch.tensor(self.sigmas, dtype=theta.dtype)
        return (-0.5 * (theta / sig) ** 2 - torch.log(sig) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def joints(self, theta: Tensor) -> list[Tensor]:
        """The rail point and the three joint/end points, each ``(..., 2)``."""
        h = theta[..., 0]
        points = [torch.stack([torch.zeros_like(h), h], -1)]
        phi = torch.zeros_like(h)
        for i, length in enumerate(self.lengths):
            phi = phi + theta[..., i + 1]
            step = torch.stack([length * torch.cos(phi), length * torch.sin(phi)], -1)
            points.append(points[-1] + step)
        return points

    def forward(self, theta: Tensor) -> Tensor:
        """The end effector ``y (..., 2)``."""
        return self.joints(theta)[-1]

    def simulate(self, theta: Tensor, gen: torch.Generator) -> Tensor:
        return self.forward(theta)

    def observations(self, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        theta, x = super().observations(k, seed)
        if k:
            x[0] = torch.tensor(self.paper_target, dtype=DTYPE)
            theta[0] = float("nan")  # many θ reach y*; there is no single true parameter
        return theta, x


TASKS: dict[str, Task] = {t.name: t for t in (GaussianLinear(), TwoMoons(), SLCP(), InverseKinematics())}


def get_task(name: str) -> Task:
    """The task called ``name`` (a :class:`flowkit.errors.ConfigError` names the choices)."""
    from flowkit.errors import ConfigError

    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown conditional task {name!r}{hint}; choose from {', '.join(TASKS)}")
    return TASKS[name]
