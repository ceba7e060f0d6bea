"""Reference posterior samples ``θ ~ p(θ | x*)`` for each task, seeded and cached.

* ``gaussian-linear`` — conjugate Gaussian: with prior ``N(μ0, Σ0)`` and likelihood
  ``N(x; θ, Σ)``, the posterior is ``N(μ, Λ)`` with ``Λ = (Σ0⁻¹ + Σ⁻¹)⁻¹`` and
  ``μ = Λ (Σ0⁻¹ μ0 + Σ⁻¹ x)``; here ``N(x/2, 0.05 I)``. Sampled exactly.
* ``two-moons`` — exact: ``x = p + g(θ)`` with ``p`` the simulator's noise and
  ``g(θ) = (-|θ1 + θ2|/√2, (θ2 - θ1)/√2)``, a 2-to-1 map whose branches (the sign of
  ``θ1 + θ2``) are linear with ``|det| = 1``. With a uniform prior the posterior is
  ``∝ p_noise(x - g(θ)) 1_box(θ)``, so drawing ``p ~ p_noise``, solving ``g(θ) = x - p`` on a
  fair-coin branch and rejecting ``θ`` outside ``[-1, 1]²`` (and ``x1 - p1 > 0``, which no θ
  reaches) gives exact posterior samples. :func:`grid_posterior` (likelihood on a fine grid,
  cells resampled, jittered uniformly within a cell) is the independent check used in the tests.
* ``slcp`` — MCMC. The likelihood depends on ``θ3, θ4`` only through ``θ3², θ4²`` and the prior
  is symmetric, so the posterior is four reflected copies of its restriction to ``θ3, θ4 ≥ 0``.
  :func:`slcp_mcmc` samples that restriction by differential-evolution Metropolis (ter Braak
  2006, "A Markov chain Monte Carlo version of the genetic algorithm Differential Evolution")
  with up to 100 chains vectorised in torch, initialised by importance resampling of 20 000
  prior draws, 2 000 warm-up steps (stuck outlier chains restarted), thinning 100, and flips
  the signs of ``θ3`` and ``θ4`` of every kept draw by independent fair coins. Acceptance rate
  and split R-hat (Gelman et al. 2013, BDA3 §11.4) are returned with the samples (thinning 100
  gives R-hat ≈ 1.01–1.1 on the default observations; thinning 10 gave 1.1–1.5).
* ``inverse-kinematics`` — the observation is noise-free, so the posterior lives on the 2-d
  manifold ``f(θ) = y*``. For ``u = (h, α1, α2)`` let ``P2(u)`` be the second joint and
  ``w = y* − P2 = ρ (cos β, sin β)``. Integrating ``δ²(f(θ) − y*)`` over ``α3`` gives the exact
  marginal ``p(u | y*) ∝ p(u) p_α3(β − α1 − α2) δ(ρ − l3) / ρ`` (polar coordinates). The sampler
  draws ``u ~ p(u)``, keeps ``|ρ − l3| < ε`` (a box kernel of width ``2ε`` for the 1-d delta; ε =
  1e-3), accepts with probability ``exp(−α3² / 2σ3²) (l3 − ε)/ρ`` with ``α3 = β − α1 − α2`` wrapped
  to ``(−π, π]`` (other ``2πk`` branches have prior weight below 1e-8), and returns
  ``(h, α1, α2, α3)``: every sample re-simulates within ε of ``y*``. Plain 2-d ABC with a small
  ball is the independent check used in the tests.

Samples are cached under ``$FLOWKIT_CACHE/conditional-reference`` (default
``~/.cache/flowkit``), keyed by task, observation, count, seed and the task's :data:`VERSIONS` entry.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit.bench.conditional.tasks import (
    DTYPE,
    SLCP,
    GaussianLinear,
    InverseKinematics,
    Task,
    TwoMoons,
    generator,
)

#: Per task, bumped when its reference method changes: cached samples and benchmark cells of
#: older versions are not reused (slcp 2: outlier chains restarted during warm-up).
VERSIONS = {"gaussian-linear": 1, "two-moons": 1, "slcp": 2, "inverse-kinematics": 1}
IK_EPSILON = 1e-3


def cache_dir() -> Path:
    """``$FLOWKIT_CACHE``, else ``~/.cache/flowkit`` (as :func:`flowkit.data.base.cache_dir`)."""
    env = os.environ.get("FLOWKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowkit"


# -- gaussian-linear -------------------------------------------------------------------------------
def gaussian_posterior(
    prior_mean: Tensor, prior_cov: Tensor, noise_cov: Tensor, x: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and covariance of ``p(θ | x)`` for ``θ ~ N(μ0, Σ0)``, ``x | θ ~ N(θ, Σ)``."""
    p0, p = torch.linalg.inv(prior_cov), torch.linalg.inv(noise_cov)
    cov = torch.linalg.inv(p0 + p)
    cov = 0.5 * (cov + cov.T)
    return cov @ (p0 @ prior_mean + p @ x), cov


def gaussian_linear_posterior(task: GaussianLinear, x: Tensor) -> tuple[Tensor, Tensor]:
    d = task.theta_dim
    eye = torch.eye(d, dtype=DTYPE)
    return gaussian_posterior(
        torch.zeros(d, dtype=DTYPE), task.prior_var * eye, task.noise_var * eye, x.to(DTYPE)
    )


def gaussian_linear_log_posterior(task: GaussianLinear, theta: Tensor, x: Tensor) -> Tensor:
    """``log p(θ | x)`` for batches ``theta (B, d)``, ``x (B, d)`` (isotropic closed form)."""
    prior_prec, noise_prec = 1 / task.prior_var, 1 / task.noise_var
    var = 1 / (prior_prec + noise_prec)
    mean = var * noise_prec * x
    d = theta.shape[-1]
    return -0.5 * ((theta - mean) ** 2).sum(-1) / var - 0.5 * d * math.log(2 * math.pi * var)


def sample_gaussian_linear(
    task: GaussianLinear, x: Tensor, n: int, gen: torch.Generator
) -> tuple[Tensor, dict[str, Any]]:
    mean, cov = gaussian_linear_posterior(task, x)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(n, task.theta_dim, generator=gen, dtype=DTYPE)
    return mean + z @ chol.T, {"method": "exact"}


# -- two-moons -------------------------------------------------------------------------------------
def sample_two_moons(
    task: TwoMoons, x: Tensor, n: int, gen: torch.Generator
) -> tuple[Tensor, dict[str, Any]]:
    """Exact posterior samples by inverting the simulator's noise (see the module docstring)."""
    out: list[Tensor] = []
    have, drawn = 0, 0
    root2 = math.sqrt(2.0)
    while have < n:
        m = max(4 * (n - have), 1024)
        p = task.sample_noise(m, gen)
        d = x.to(DTYPE) - p  # = g(θ)
        s_abs = -root2 * d[:, 0]  # |θ1 + θ2|
        diff = root2 * d[:, 1]  # θ2 - θ1
        sign = torch.where(torch.rand(m, generator=gen, dtype=DTYPE) < 0.5, -1.0, 1.0)
        s = sign * s_abs
        theta = torch.stack([(s - diff) / 2, (s + diff) / 2], -1)
        ok = (s_abs >= 0) & (theta.abs() <= 1).all(-1)
        out.append(theta[ok])
        have += int(ok.sum())
        drawn += m
        if drawn > 10**8:
            raise RuntimeError("two-moons reference: the observation is (nearly) impossible")
    return torch.cat(out)[:n], {"method": "exact", "acceptance": have / drawn}


def grid_posterior(task: TwoMoons, x: Tensor, n: int, gen: torch.Generator, cells: int = 2000) -> Tensor:
    """Posterior samples from the likelihood on a ``cells × cells`` grid over ``[-1, 1]²``:
    cells resampled in proportion to the density at their centres, then a uniform jitter within
    the cell. An independent check of :func:`sample_two_moons`."""
    h = 2.0 / cells
    centres = -1 + h * (torch.arange(cells, dtype=DTYPE) + 0.5)
    logp = torch.empty(cells, cells, dtype=DTYPE)
    for i in range(cells):  # one row at a time keeps memory small
        row = torch.stack([centres[i].expand(cells), centres], -1)
        logp[i] = task.log_likelihood(row, x.to(DTYPE))
    w = torch.softmax(logp.flatten(), 0)
    idx = torch.multinomial(w, n, replacement=True, generator=gen)
    theta = torch.stack([centres[idx // cells], centres[idx % cells]], -1)
    return theta + h * (torch.rand(n, 2, generator=gen, dtype=DTYPE) - 0.5)


# -- slcp ------------------------------------------------------------------------------------------
def split_rhat(draws: Tensor) -> Tensor:
    """Split R-hat per dimension of ``draws (L, C, d)`` (L draws of C chains)."""
    length = draws.shape[0] // 2
    if length < 2:
        return torch.full((draws.shape[-1],), float("nan"), dtype=draws.dtype)
    halves = torch.cat([draws[:length], draws[length : 2 * length]], 1)  # (length, 2C, d)
    within = halves.var(0, unbiased=True).mean(0)
    between = length * halves.mean(0).var(0, unbiased=True)
    var_plus = (length - 1) / length * within + between / length
    return torch.sqrt(var_plus / within)


def slcp_mcmc(
    task: SLCP,
    x: Tensor,
    n: int,
    gen: torch.Generator,
    *,
    chains: int = 100,
    warmup: int = 2000,
    thin: int = 100,
    init_draws: int = 20000,
) -> tuple[Tensor, dict[str, Any]]:
    """``n`` samples of the SLCP posterior at ``x`` (see the module docstring) and diagnostics:
    ``acceptance`` (after warm-up), ``rhat_max`` (split R-hat, worst dimension, on the folded
    draws), ``chains``, ``draws_per_chain``, ``thin``, ``warmup``.

    Differential-evolution Metropolis (ter Braak 2006) on the restriction to ``θ3, θ4 ≥ 0``:
    the chains form two halves; each half is updated in turn with proposals
    ``θ_i + γ (θ_a − θ_b) + e`` (``a ≠ b`` drawn from the other half, which is held fixed, so
    the proposal is symmetric and each update leaves the product target invariant;
    ``γ = 2.38/√(2d)``, ``γ = 1`` every 10th step to jump between distant regions,
    ``e ~ N(0, 10⁻⁸ I)``). Chains start from importance resampling of ``init_draws`` prior draws;
    during warm-up, every 100 steps, chains whose mean log-density over those steps lies below
    ``Q1 − 2·IQR`` of all chains' are moved to the state of a random other chain (ter Braak's
    outlier-chain rule; warm-up only, so the kept draws are a valid MCMC).
    """
    x = x.to(DTYPE)
    d = task.theta_dim
    chains = max(8, min(chains, n // 20))
    keep = math.ceil(n / chains)

    def log_target(theta: Tensor) -> Tensor:
        inside = (theta.abs() <= 3).all(-1) & (theta[:, 2:4] >= 0).all(-1)
        ll = task.log_likelihood(theta, x)
        return torch.where(inside & torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))

    cand = task.sample_prior(init_draws, gen)
    cand[:, 2:4] = cand[:, 2:4].abs()
    w = torch.softmax(log_target(cand), 0)
    state = cand[torch.multinomial(w, chains, replacement=True, generator=gen)].clone()
    logp = log_target(state)
    halves = (torch.arange(chains // 2), torch.arange(chains // 2, chains))
    gamma0 = 2.38 / math.sqrt(2 * d)
    kept: list[Tensor] = []
    accepted = proposed = 0
    window = torch.zeros(chains, dtype=DTYPE)
    for t in range(warmup + keep * thin):
        if t < warmup:
            window += logp
            if t % 100 == 99:  # outlier chains (ter Braak 2006, §3): restart from a good one
                q1, q3 = torch.quantile(window / 100, torch.tensor([0.25, 0.75], dtype=DTYPE))
                bad = window / 100 < q1 - 2 * (q3 - q1)
                if bad.any():
                    good = torch.nonzero(~bad).flatten()
                    pick = good[torch.randint(good.numel(), (int(bad.sum()),), generator=gen)]
                    state[bad] = state[pick]
                    logp[bad] = logp[pick]
                window.zero_()
        gamma = 1.0 if t % 10 == 9 else gamma0
        for me, other in (halves, halves[::-1]):
            m, k = me.numel(), other.numel()
            a = torch.randint(k, (m,), generator=gen)
            b = torch.randint(k - 1, (m,), generator=gen)
            b = torch.where(b >= a, b + 1, b)
            noise = 1e-4 * torch.randn(m, d, generator=gen, dtype=DTYPE)
            prop = state[me] + gamma * (state[other[a]] - state[other[b]]) + noise
            logp_prop = log_target(prop)
            u = torch.rand(m, generator=gen, dtype=DTYPE)
            accept = torch.log(u) < logp_prop - logp[me]
            state[me] = torch.where(accept[:, None], prop, state[me])
            logp[me] = torch.where(accept, logp_prop, logp[me])
            if t >= warmup:
                accepted += int(accept.sum())
                proposed += m
        if t >= warmup and (t - warmup) % thin == thin - 1:
            kept.append(state.clone())
    draws = torch.stack(kept)  # (keep, chains, d)
    rhat = split_rhat(draws)
    flat = draws.reshape(-1, d)
    flat = flat[torch.randperm(flat.shape[0], generator=gen)[:n]].clone()
    signs = torch.where(torch.rand(n, 2, generator=gen, dtype=DTYPE) < 0.5, -1.0, 1.0)
    flat[:, 2:4] = flat[:, 2:4] * signs
    info = {
        "method": "mcmc",
        "acceptance": accepted / max(proposed, 1),
        "rhat_max": float(rhat.max()),
        "chains": chains,
        "draws_per_chain": keep,
        "thin": thin,
        "warmup": warmup,
    }
    return flat, info


# -- inverse kinematics ----------------------------------------------------------------------------
def sample_inverse_kinematics(
    task: InverseKinematics,
    y: Tensor,
    n: int,
    gen: torch.Generator,
    eps: float = IK_EPSILON,
    chunk: int = 1_000_000,
) -> tuple[Tensor, dict[str, Any]]:
    """Posterior samples on the manifold ``f(θ) = y`` (see the module docstring)."""
    y = y.to(DTYPE)
    l1, l2, l3 = task.lengths
    sig3 = task.sigmas[3]
    out: list[Tensor] = []
    have, drawn = 0, 0
    while have < n:
        u = task.sample_prior(chunk, gen)
        h, a1, a2 = u[:, 0], u[:, 1], u[:, 2]
        p2x = l1 * torch.cos(a1) + l2 * torch.cos(a1 + a2)
        p2y = h + l1 * torch.sin(a1) + l2 * torch.sin(a1 + a2)
        wx, wy = y[0] - p2x, y[1] - p2y
        rho = torch.sqrt(wx**2 + wy**2)
        near = (rho - l3).abs() < eps
        a3 = torch.remainder(torch.atan2(wy, wx) - a1 - a2 + math.pi, 2 * math.pi) - math.pi
        prob = torch.exp(-0.5 * (a3 / sig3) ** 2) * (l3 - eps) / rho
        ok = near & (torch.rand(chunk, generator=gen, dtype=DTYPE) < prob)
        theta = torch.stack([h, a1, a2, a3], -1)[ok]
        out.append(theta)
        have += theta.shape[0]
        drawn += chunk
        if drawn > 5 * 10**8:
            raise RuntimeError("inverse-kinematics reference: y* is (nearly) out of reach")
    samples = torch.cat(out)[:n]
    err = (task.forward(samples) - y).norm(dim=-1)
    return samples, {
        "method": "rejection",
        "epsilon": eps,
        "acceptance": have / drawn,
        "resim_error_mean": float(err.mean()),
        "resim_error_max": float(err.max()),
    }


def abc_inverse_kinematics(
    task: InverseKinematics,
    y: Tensor,
    n: int,
    gen: torch.Generator,
    eps: float,
    chunk: int = 1_000_000,
    max_draws: int = 10**8,
) -> Tensor:
    """Plain rejection ABC: prior draws whose end effector is within ``eps`` of ``y`` (the
    reference of Kruse et al. 2021; an independent check of :func:`sample_inverse_kinematics`)."""
    out: list[Tensor] = []
    have, drawn = 0, 0
    while have < n and drawn < max_draws:
        theta = task.sample_prior(chunk, gen)
        ok = (task.forward(theta) - y.to(DTYPE)).norm(dim=-1) < eps
        out.append(theta[ok])
        have += int(ok.sum())
        drawn += chunk
    return torch.cat(out)[:n]


# -- dispatch and cache ----------------------------------------------------------------------------
def sample_reference(task: Task, x: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, dict]:
    """``n`` reference posterior samples ``(n, d)`` at one observation ``x`` and their info."""
    if isinstance(task, GaussianLinear):
        return sample_gaussian_linear(task, x, n, gen)
    if isinstance(task, TwoMoons):
        return sample_two_moons(task, x, n, gen)
    if isinstance(task, SLCP):
        return slcp_mcmc(task, x, n, gen)
    if isinstance(task, InverseKinematics):
        return sample_inverse_kinematics(task, x, n, gen)
    raise TypeError(f"no reference sampler for task {task.name!r}")


def reference_samples(
    task: Task, x_obs: Tensor, n: int, seed: int = 0, cache: bool = True
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Reference samples ``(k, n, d)`` for observations ``x_obs (k, m)``, cached on disk."""
    samples, infos = [], []
    for i, x in enumerate(x_obs):
        version = VERSIONS.get(task.name, 1)
        key = hashlib.sha256(
            f"{task.name}|{version}|{n}|{seed}|".encode() + x.to(DTYPE).numpy().tobytes()
        ).hexdigest()[:16]
        path = cache_dir() / "conditional-reference" / f"{task.name}-obs{i}-n{n}-{key}.pt"
        record = None
        if cache and path.is_file():
            try:
                record = torch.load(path, weights_only=True)
            except Exception:  # a corrupt cache file is rebuilt
                record = None
        if record is None:
            s, info = sample_reference(task, x, n, generator("reference", task.name, seed, i))
            record = {"samples": s, "info": info}
            if cache:
                from flowkit.atomic import atomic_write

                atomic_write(path, functools.partial(torch.save, record))
        samples.append(record["samples"])
        infos.append(dict(record["info"]))
    return torch.stack(samples), infos
