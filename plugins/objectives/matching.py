"""Minibatch optimal-transport kernels: pairwise costs, exact plans and the Sinkhorn divergence.

Pure functions, kept apart from the :class:`~flowkit.plugins.objectives.ot.OptimalTransport`
module. For two point clouds ``a = (a_i)`` and ``b = (b_j)`` of ``n`` points each, with uniform
weights ``1/n``, the optimal-transport cost is

    W(a, b) = min_{T ∈ Π} Σ_ij T_ij D_ij,   Π = {T ≥ 0, T 1 = 1/n, Tᵀ 1 = 1/n}

(Peyré & Cuturi 2019, "Computational Optimal Transport", §2.3, eq. 2.11). With equal sizes and
uniform weights an optimal ``T`` is a permutation matrix divided by ``n`` (Birkhoff–von Neumann;
ibid. §2.2, Prop. 2.1), so the exact plan is also the solution of a linear assignment problem.

The exact solvers run on CPU NumPy copies of the *detached* cost matrix; the plan is a constant
and the differentiable loss is ``Σ_ij T_ij D_ij`` on the original (autograd-tracked) cost.
POT and geomloss are imported on first use so that listing plugins stays fast.
"""

from __future__ import annotations

import importlib
from typing import Literal

import numpy as np
import torch
from torch import Tensor

CostKind = Literal["euclidean", "sqeuclidean"]
ExactSolver = Literal["auto", "emd", "lsa"]

#: The squared distance is clamped at this value before the square root (as the GRN reference
#: code does), so the Euclidean cost and its gradient stay finite for coinciding points.
MIN_SQUARED_DISTANCE = 1e-6


def pairwise_cost(a: Tensor, b: Tensor, cost: CostKind = "euclidean") -> Tensor:
    """Cost matrix ``D_ij = ‖a_i − b_j‖`` (``euclidean``) or ``‖a_i − b_j‖²`` (``sqeuclidean``).

    ``a`` is ``(n, ...)`` and ``b`` is ``(m, ...)``; every example is flattened. The squared
    distance is computed as ``‖a_i‖² + ‖b_j‖² − 2 a_i·b_j`` (memory ``O(n·m)`` rather than
    ``O(n·m·d)``). The Euclidean cost is ``sqrt(max(D², 1e-6))`` (the clamp of the GRN reference
    code); the squared cost is clamped at 0 against round-off.
    """
    a2 = a.flatten(1)
    b2 = b.flatten(1)
    sq = a2.pow(2).sum(1, keepdim=True) + b2.pow(2).sum(1).unsqueeze(0) - 2.0 * a2 @ b2.T
    if cost == "euclidean":
        return sq.clamp_min(MIN_SQUARED_DISTANCE).sqrt()
    return sq.clamp_min(0.0)


#: The library each solver imports on first use (``auto`` is ``lsa`` for the objective's square
#: problems; POT is imported on demand if a non-square problem ever needs ``emd``).
SOLVER_MODULES = {"auto": "scipy.optimize", "emd": "ot", "lsa": "scipy.optimize", "sinkhorn": "geomloss"}


def preload(solver: str) -> None:
    """Import ``solver``'s library now (POT takes seconds to import), not inside the first step."""
    importlib.import_module(SOLVER_MODULES[solver])


def _as_numpy(cost: Tensor) -> np.ndarray:
    return np.ascontiguousarray(cost.detach().to("cpu", torch.float64).numpy())


def emd_plan(cost: Tensor) -> Tensor:
    """Exact OT plan with uniform weights from POT's network simplex (``ot.emd``).

    Entries ``T_ij ≤ 1/n²`` are set to 0, as the GRN reference does to remove solver round-off
    (an optimal vertex has entries ``1/n`` or 0). Flamary et al. 2021, "POT: Python Optimal
    Transport", JMLR 22(78); Bonneel et al. 2011 for the network simplex. Returned on the cost's
    device and dtype.
    """
    import ot as pot  # the POT package (this module is flowkit.plugins.objectives.matching)

    n, m = cost.shape
    weights_a = np.full(n, 1.0 / n)
    weights_b = np.full(m, 1.0 / m)
    plan = pot.emd(weights_a, weights_b, _as_numpy(cost), numItermax=max(100_000, 50 * n * m))
    if n * m > 1:
        plan[plan <= 1.0 / (n * m)] = 0.0
    return torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)


def assignment_plan(cost: Tensor) -> Tensor:
    """Exact OT plan for ``n`` vs ``n`` uniform points: the optimal permutation divided by ``n``.

    Solved by ``scipy.optimize.linear_sum_assignment`` (a shortest augmenting path method;
    Crouse 2016, "On implementing 2D rectangular assignment algorithms", IEEE TAES 52(4)); usually
    the fastest exact solver on CPU for equal-size problems.
    """
    from scipy.optimize import linear_sum_assignment

    n, m = cost.shape
    if n != m:
        raise ValueError(f"the assignment solver needs as many samples as encodings, got {n} vs {m}")
    rows, cols = linear_sum_assignment(_as_numpy(cost))
    plan = torch.zeros(n, m, dtype=cost.dtype, device=cost.device)
    plan[torch.as_tensor(rows, device=cost.device), torch.as_tensor(cols, device=cost.device)] = 1.0 / n
    return plan


def resolve_exact_solver(solver: str, n: int, m: int) -> str:
    """The exact solver to use for an ``n × m`` problem: ``auto`` means the fastest exact one.

    ``auto`` → ``lsa`` when ``n == m`` (the minibatch OT objective always matches ``n`` encodings
    with ``n`` prior samples; ``linear_sum_assignment`` is then the fastest exact CPU solver —
    ``benchmarks/ot_matching_share.py`` measures it), else ``emd`` (``lsa`` needs equal sizes).
    Named solvers are returned unchanged.
    """
    if solver != "auto":
        return solver
    return "lsa" if n == m else "emd"


def exact_plan(cost: Tensor, solver: ExactSolver = "auto") -> Tensor:
    """The optimal plan ``T`` of the detached ``cost`` with uniform weights.

    ``solver`` is ``emd``, ``lsa`` or ``auto`` (see :func:`resolve_exact_solver`); both exact
    solvers reach the same optimal cost.
    """
    chosen = resolve_exact_solver(solver, *cost.shape)
    return emd_plan(cost) if chosen == "emd" else assignment_plan(cost)


def sinkhorn_divergence(
    a: Tensor,
    b: Tensor,
    cost: CostKind = "euclidean",
    blur: float = 0.05,
    scaling: float = 0.5,
) -> Tensor:
    """Debiased entropic OT (Sinkhorn divergence) between two uniform point clouds, via geomloss.

    ``S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β)`` with ``ε = blur^p``, which tends to
    the exact OT cost as ``blur → 0`` (Feydy et al. 2019, "Interpolating between Optimal Transport
    and MMD using Sinkhorn Divergences", AISTATS, eq. 5; Genevay et al. 2018). ``euclidean`` uses
    geomloss' ``p=1`` cost ``‖x − y‖``; ``sqeuclidean`` uses ``p=2``, whose geomloss cost is
    ``½‖x − y‖²``, so the result is doubled to match ``‖x − y‖²``. ``scaling`` ∈ (0, 1) is the
    ε-annealing ratio (closer to 1: more iterations, more accurate). Differentiable in ``a``, ``b``.
    """
    from geomloss import SamplesLoss

    p = 1 if cost == "euclidean" else 2
    loss = SamplesLoss("sinkhorn", p=p, blur=blur, scaling=scaling, backend="tensorized")
    value = loss(a.flatten(1).contiguous(), b.flatten(1).contiguous())
    return value if p == 1 else 2.0 * value
