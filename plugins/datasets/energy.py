"""The four 2-D unnormalised target densities of Rezende & Mohamed (2015), Table 1.

``p(z) ∝ exp(−U(z))`` with ``z = (z₁, z₂)`` and

    U₁(z) = ½ ((‖z‖ − 2) / 0.4)² − log( e^{−½((z₁ − 2)/0.6)²} + e^{−½((z₁ + 2)/0.6)²} )
    U₂(z) = ½ ((z₂ − w₁(z)) / 0.4)²
    U₃(z) = −log( e^{−½((z₂ − w₁(z))/0.35)²} + e^{−½((z₂ − w₁(z) + w₂(z))/0.35)²} )
    U₄(z) = −log( e^{−½((z₂ − w₁(z))/0.4)²} + e^{−½((z₂ − w₁(z) + w₃(z))/0.35)²} )

    w₁(z) = sin(2π z₁ / 4),  w₂(z) = 3 e^{−½((z₁ − 1)/0.6)²},  w₃(z) = 3 σ((z₁ − 1)/0.3)

(Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", §6.1, Table 1 and
Fig. 3). They are *variational targets*: the ``reverse-kl`` objective fits a flow ``q`` to the
unnormalised density ``exp(−U)`` without any samples.

**U₂–U₄ are made proper.** Their ``z₁``-dependence is bounded (a sine and a bump or a step), so
``∫ exp(−U) dz`` is infinite; the paper only shows them on ``[−4, 4]²``. Here they get a smooth
wall ``½ ((|z₁| − b)₊ / 0.2)²`` added to ``U`` outside ``|z₁| ≤ b`` (``bound = b = 4`` by default),
which leaves the density inside the paper's window unchanged and gives a finite normaliser.
U₁ is proper as published and has no wall.

**Reference samples and the normaliser.** ``log Z = log ∫ exp(−U)`` is computed by midpoint
quadrature on a fine grid (cells of 0.01 on a box that holds all but a negligible part of the
mass). The ``train``/``test`` splits are reference samples drawn exactly from the grid
approximation: a cell by inverse CDF of the cell masses, then a uniform position inside it
(deterministic from the seed). They let the trainer run unchanged and give sample-based metrics
(test NLL of the reference samples, figures); the ``reverse-kl`` loss never uses them — only the
trainer's data-dependent initialisation (e.g. actnorm) and evaluation see them.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from torch import Tensor

from flowkit.data.base import DataSplits
from flowkit.errors import ConfigError
from flowkit.params import Range, Seed, checked
from flowkit.plugins.datasets.toy2d import Size, toy_splits

_REFERENCE = "Rezende & Mohamed 2015, Variational Inference with Normalizing Flows, §6.1, Table 1"
#: width of the Gaussian wall that makes U₂–U₄ proper densities outside |z₁| ≤ bound
WALL_WIDTH = 0.2
#: quadrature / reference-sampling cell size
CELL = 0.01
#: half-width of the quadrature box in z₂ (and the minimum in z₁): U₃/U₄ reach z₂ ≈ −5
_HALF_WIDTH = 7.0
#: ``|z₁|`` beyond which the wall of ``U₂``–``U₄`` makes the density proper.
Bound = Annotated[float, Range(0, min_inclusive=False)]


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(0.5 * math.pi * z1)


def _w2(z1: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def _two_bumps(a: Tensor, b: Tensor, sa: float, sb: float) -> Tensor:
    """``log(e^{−½(a/sa)²} + e^{−½(b/sb)²})``, computed stably."""
    return torch.logaddexp(-0.5 * (a / sa) ** 2, -0.5 * (b / sb) ** 2)


@checked
class EnergyTarget:
    """Unnormalised log-density ``log p̃(z) = −U_k(z)`` of Rezende & Mohamed (2015), Table 1.

    ``target(x)`` takes ``(B, 2)`` and returns ``(B,)`` on ``x``'s device and dtype; it is
    differentiable (reparameterised reverse-KL gradients go through it). ``index`` ∈ {1, 2, 3, 4}
    picks ``U₁``…``U₄``; for ``U₂``–``U₄`` a wall ``½((|z₁| − bound)₊/0.2)²`` is added to ``U`` so
    the density is proper (see the module docstring). :meth:`log_normalizer` is ``log ∫ e^{−U}``
    by grid quadrature; ``extent`` is a square window holding the mass, for plots.
    """

    def __init__(self, index: int, bound: Bound = 4.0) -> None:
        if index not in (1, 2, 3, 4):
            raise ConfigError(f"energy target index must be 1, 2, 3 or 4, got {index}")
        self.index = int(index)
        self.bound = float(bound)
        self._log_z: float | None = None

    @property
    def extent(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``((x_lo, x_hi), (y_lo, y_hi))``, a plotting window that holds nearly all the mass."""
        half = 4.0 if self.index == 1 else self.bound + 1.0
        return (-half, half), (-half, half)

    def __call__(self, x: Tensor) -> Tensor:
        """``−U(x)`` for ``x`` of shape ``(B, 2)``: shape ``(B,)``, ``x``'s device and dtype."""
        if x.dim() != 2 or x.shape[1] != 2:
            raise ConfigError(
                f"energy{self.index} is a density on 2-D points: expected (batch, 2), got {tuple(x.shape)}"
            )
        z1, z2 = x[:, 0], x[:, 1]
        if self.index == 1:
            radius = torch.linalg.vector_norm(x, dim=1)
            return -0.5 * ((radius - 2.0) / 0.4) ** 2 + _two_bumps(z1 - 2.0, z1 + 2.0, 0.6, 0.6)
        d = z2 - _w1(z1)
        if self.index == 2:
            log_p = -0.5 * (d / 0.4) ** 2
        elif self.index == 3:
            log_p = _two_bumps(d, d + _w2(z1), 0.35, 0.35)
        else:
            log_p = _two_bumps(d, d + _w3(z1), 0.4, 0.35)
        wall = torch.relu(z1.abs() - self.bound) / WALL_WIDTH
        return log_p - 0.5 * wall**2

    def log_normalizer(self) -> float:
        """``log Z = log ∫ exp(−U(z)) dz`` by midpoint quadrature on a grid of 0.01 cells."""
        if self._log_z is None:
            _, log_p, area = grid_log_density(self)
            self._log_z = _grid_log_z(log_p, area)
        return self._log_z

    def __repr__(self) -> str:
        return f"EnergyTarget(index={self.index}, bound={self.bound})"


def _grid_log_z(log_p: Tensor, area: float) -> float:
    """``log Z ≈ log Σ_cells exp(−U(c)) · area``: midpoint quadrature on the grid."""
    return float(torch.logsumexp(log_p, 0)) + math.log(area)


def grid_log_density(target: EnergyTarget) -> tuple[Tensor, Tensor, float]:
    """Cell centres ``(N, 2)``, ``log p̃`` at them ``(N,)`` (float64) and the cell area.

    The box is ``[−h₁, h₁] × [−7, 7]`` with ``h₁ = max(7, bound + 2)`` (the wall makes the mass
    beyond ``bound + 2`` smaller than ``e^{−50}``), cut into square cells of side 0.01.
    """
    half1 = max(_HALF_WIDTH, target.bound + 2.0)
    n1, n2 = round(2 * half1 / CELL), round(2 * _HALF_WIDTH / CELL)
    c1 = torch.linspace(-half1 + CELL / 2, half1 - CELL / 2, n1, dtype=torch.float64)
    c2 = torch.linspace(-_HALF_WIDTH + CELL / 2, _HALF_WIDTH - CELL / 2, n2, dtype=torch.float64)
    centres = torch.cartesian_prod(c1, c2)
    with torch.no_grad():
        log_p = torch.cat([target(chunk) for chunk in centres.split(1 << 20)])
    return centres, log_p, CELL * CELL


def grid_samples(centres: Tensor, log_p: Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` exact samples of the piecewise-constant density on the grid: a cell by inverse CDF
    of the cell masses, then a uniform position inside the cell (float64, shape ``(n, 2)``)."""
    mass = torch.exp(log_p - log_p.max()).numpy()
    cdf = np.cumsum(mass)
    cdf /= cdf[-1]
    cells = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), cdf.size - 1)
    jitter = (rng.random((n, 2)) - 0.5) * CELL
    return centres.numpy()[cells] + jitter


def _energy_splits(index: int, n_train: int, n_test: int, bound: float, seed: int) -> DataSplits:
    """Reference samples of ``energy{index}`` and its target, from independent streams of seed."""
    target = EnergyTarget(index, bound)
    centres, log_p, area = grid_log_density(target)
    target._log_z = _grid_log_z(log_p, area)

    def sampler(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
        return grid_samples(centres, log_p, n, rng)

    splits = toy_splits(f"energy{index}", sampler, n_train, n_test, 0.0, seed)
    splits.target = target
    splits.info = {
        "seed": seed,
        "bound": target.bound,
        "log_normalizer": target._log_z,
        "reference": _REFERENCE,
        "note": "train/test are reference samples; reverse-kl does not train on them",
    }
    return splits


@checked
def energy1(*, n_train: Size = 20000, n_test: Size = 5000, seed: Seed = 0) -> DataSplits:
    """U₁ of Rezende & Mohamed 2015 (Table 1): a ring of radius 2 cut into two arcs, 2-D.

    ``U₁(z) = ½((‖z‖ − 2)/0.4)² − log(e^{−½((z₁−2)/0.6)²} + e^{−½((z₁+2)/0.6)²})``;
    ``target`` is ``−U₁``; train/test hold reference samples (not used by ``reverse-kl``).

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): reference samples in the training split.
    * ``n_test`` (int ≥ 1, default 5000): reference samples in the test split.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.energy import energy1
        >>> data = energy1(n_train=100, n_test=10)
        >>> data.train.shape, data.test.shape
        (torch.Size([100, 2]), torch.Size([10, 2]))
        >>> data.target(torch.tensor([[2.0, 0.0]])).abs().item() < 1e-6  # at a mode, −U₁ ≈ 0
        True
    """
    return _energy_splits(1, n_train, n_test, 4.0, seed)


@checked
def energy2(*, n_train: Size = 20000, n_test: Size = 5000, bound: Bound = 4.0, seed: Seed = 0) -> DataSplits:
    """U₂ of Rezende & Mohamed 2015 (Table 1): a sine wave, 2-D.

    ``U₂(z) = ½((z₂ − sin(πz₁/2))/0.4)²`` plus a wall ``½((|z₁| − bound)₊/0.2)²`` that makes it
    proper; ``target`` is ``−U₂``; train/test hold reference samples (not used by ``reverse-kl``).

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): reference samples in the training split.
    * ``n_test`` (int ≥ 1, default 5000): reference samples in the test split.
    * ``bound`` (float > 0, default 4.0): half-width ``bound`` of the box ``|z₁| ≤ bound`` outside of which
      the wall term makes ``U`` grow.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.energy import energy2
        >>> data = energy2(n_train=100, n_test=10)
        >>> data.train.shape, data.test.shape
        (torch.Size([100, 2]), torch.Size([10, 2]))
        >>> data.target(torch.tensor([[1.0, 1.0]])).abs().item() < 1e-6  # on z₂ = sin(πz₁/2), −U₂ = 0
        True
    """
    return _energy_splits(2, n_train, n_test, bound, seed)


@checked
def energy3(*, n_train: Size = 20000, n_test: Size = 5000, bound: Bound = 4.0, seed: Seed = 0) -> DataSplits:
    """U₃ of Rezende & Mohamed 2015 (Table 1): a sine wave and a branch split off by a bump, 2-D.

    ``U₃(z) = −log(e^{−½((z₂−w₁)/0.35)²} + e^{−½((z₂−w₁+w₂)/0.35)²})``, ``w₁ = sin(πz₁/2)``,
    ``w₂ = 3e^{−½((z₁−1)/0.6)²}``, plus the wall ``½((|z₁| − bound)₊/0.2)²``; ``target = −U₃``.

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): reference samples in the training split.
    * ``n_test`` (int ≥ 1, default 5000): reference samples in the test split.
    * ``bound`` (float > 0, default 4.0): half-width ``bound`` of the box ``|z₁| ≤ bound`` outside of which
      the wall term makes ``U`` grow.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.energy import energy3
        >>> data = energy3(n_train=100, n_test=10)
        >>> data.train.shape, data.test.shape
        (torch.Size([100, 2]), torch.Size([10, 2]))
        >>> round(data.target(torch.tensor([[-2.0, 0.0]])).item(), 4)  # far from the bump both terms are 1
        0.6931
    """
    return _energy_splits(3, n_train, n_test, bound, seed)


@checked
def energy4(*, n_train: Size = 20000, n_test: Size = 5000, bound: Bound = 4.0, seed: Seed = 0) -> DataSplits:
    """U₄ of Rezende & Mohamed 2015 (Table 1): a sine wave and a branch shifted by a step, 2-D.

    ``U₄(z) = −log(e^{−½((z₂−w₁)/0.4)²} + e^{−½((z₂−w₁+w₃)/0.35)²})``, ``w₁ = sin(πz₁/2)``,
    ``w₃ = 3σ((z₁ − 1)/0.3)``, plus the wall ``½((|z₁| − bound)₊/0.2)²``; ``target = −U₄``.

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``n_train`` (int ≥ 1, default 20000): reference samples in the training split.
    * ``n_test`` (int ≥ 1, default 5000): reference samples in the test split.
    * ``bound`` (float > 0, default 4.0): half-width ``bound`` of the box ``|z₁| ≤ bound`` outside of which
      the wall term makes ``U`` grow.
    * ``seed`` (injected): the seed of the dataset's random draws; flowkit passes ``train.seed``.

    Example::

        >>> import torch
        >>> from flowkit.plugins.datasets.energy import energy4
        >>> data = energy4(n_train=100, n_test=10)
        >>> data.train.shape, data.test.shape
        (torch.Size([100, 2]), torch.Size([10, 2]))
        >>> round(data.target(torch.tensor([[-2.0, 0.0]])).item(), 4)  # before the step both terms are 1
        0.6931
    """
    return _energy_splits(4, n_train, n_test, bound, seed)
