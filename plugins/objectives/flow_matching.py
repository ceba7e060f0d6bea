"""Conditional flow matching: regress a continuous flow's vector field onto straight paths.

Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling", ICLR) trains the
vector field ``v_θ`` of a continuous flow without solving the ODE: for a coupling ``π`` of the data
and the prior, and the straight (Gaussian, constant-width) conditional path between a pair,

    x_0 ~ data,  x_1 ~ p_Z,  (x_0, x_1) ~ π,  s ~ U[0, 1],  ε ~ N(0, I)
    x_s = (1 − s) x_0 + s x_1 + σ ε                    (σ = ``sigma``, default 0)
    u   = (x_1 − x_0) / T                               (the path's velocity in the flow's time)
    L(θ) = E ‖v_θ(x_s, t = sT, c) − u‖² / D

which has the same gradient as regressing the marginal field that transports the data to the
prior (Lipman et al. 2023, Thm. 2; Tong et al. 2024, "Improving and generalizing flow-based
generative models with minibatch optimal transport", TMLR, Prop. 3.3 for general couplings).
flowkit's direction is used throughout: the transform maps data (``t = 0``) to the latent
(``t = T``, the ``cnf``'s ``time_horizon``), so ``x_0`` is the (preprocessed) data batch and
``x_1 = model.prior.sample(...)`` — detached: the prior is not trained by this objective.

``coupling``:

* ``"independent"`` — ``π = p_data ⊗ p_Z`` (I-CFM of Tong et al.; Lipman et al.'s objective with
  ``σ = 0``);
* ``"ot"`` — minibatch optimal transport (OT-CFM, Tong et al. 2024, §3.2; Pooladian et al. 2023):
  within each batch the data and the prior samples are paired by the exact optimal assignment of
  the squared Euclidean cost (``scipy``'s linear sum assignment, through
  :mod:`flowkit.plugins.objectives.matching`), or for large batches by an entropic plan
  (``ot_solver = "sinkhorn"``, log-domain Sinkhorn with ``ε = sinkhorn_reg · mean cost``) from
  which every data point draws its partner. With a class-conditional prior (or a class-conditional
  flow) the pairing is per class, as the paths must stay within a class. Straighter paths need
  fewer solver steps at sampling time (``benchmarks/flow_matching_nfe.py``).

The model's likelihood is still exact: the ``cnf`` is an ordinary transform, so the trainer's
test NLL (exact trace in evaluation mode), sampling and ``flowkit eval`` work unchanged. The
objective needs a transform with a vector field (``velocity(x, t, context)``, see
:class:`~flowkit.plugins.transforms.vector_fields.VectorFieldTransform`), found through flowkit's
checkpoint-transparent wrappers. Logged: ``loss``, ``pair_sqdist`` (mean ``‖x_1 − x_0‖² / D`` of
the pairs used) and, for ``ot``, ``match_ms``.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor

from flowkit.errors import ConfigError, ShapeError
from flowkit.model import Flow
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.params import Range
from flowkit.plugins.objectives.matching import exact_plan, pairwise_cost, preload
from flowkit.plugins.transforms.vector_fields import VectorFieldTransform, find_vector_field


def sinkhorn_plan(cost: Tensor, reg: float = 0.05, iterations: int = 100) -> Tensor:
    """Entropic OT plan between two uniform clouds (log-domain Sinkhorn; Cuturi 2013).

    ``ε = reg · mean(cost)``; returns ``T`` with rows summing to ``1/n`` and columns to ``1/m``
    (after ``iterations`` alternating projections), on the cost's device.
    """
    n, m = cost.shape
    c = cost.detach().double()
    eps = reg * float(c.mean().clamp_min(1e-12))
    log_k = -c / eps
    f = c.new_zeros(n)
    g = c.new_zeros(m)
    log_a, log_b = -math.log(n), -math.log(m)
    for _ in range(iterations):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
    return torch.exp(log_k + f[:, None] + g[None, :]).to(cost.dtype)


class FlowMatching(Objective):
    """Conditional flow matching (Lipman et al. 2023) with independent or minibatch-OT couplings.

    ``L = E ‖v(x_s, sT, c) − (x_1 − x_0)/T‖² / D`` with ``x_s = (1 − s) x_0 + s x_1 + σ ε``,
    ``x_0`` the data, ``x_1`` prior samples, ``s ~ U[0, 1]``. ``coupling = "ot"`` pairs each batch
    by optimal transport (Tong et al. 2024, OT-CFM), per class for class-conditional models;
    ``ot_solver = "exact"`` (assignment) or ``"sinkhorn"`` (large batches). Needs a transform with
    a vector field such as ``cnf``; the trainer's NLL evaluation stays exact.

    References:

    * Lipman, Chen, Ben-Hamu, Nickel & Le 2023, "Flow Matching for Generative Modeling", ICLR 2023.
    * Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf & Bengio 2024, "Improving and generalizing
      flow-based generative models with minibatch optimal transport", Transactions on Machine Learning
      Research (TMLR) 2024.

    Arguments:

    * ``coupling`` ('independent' | 'ot', default 'independent'): how data and prior samples are paired:
      ``'independent'`` or ``'ot'`` (minibatch optimal transport).
    * ``sigma`` (float ≥ 0, default 0.0): std ``σ`` of the noise on ``x_s``.
    * ``ot_solver`` ('exact' | 'sinkhorn', default 'exact'): the pairing of ``'ot'``: ``'exact'`` (assignment)
      or ``'sinkhorn'``.
    * ``sinkhorn_reg`` (float > 0, default 0.05): entropic regularisation of ``'sinkhorn'``.
    * ``sinkhorn_iterations`` (int ≥ 1, default 100): Sinkhorn iterations.

    Example::

        >>> import torch
        >>> from flowkit import flows
        >>> from flowkit.objective import Batch
        >>> from flowkit.plugins.objectives.flow_matching import FlowMatching
        >>> _ = torch.manual_seed(0)
        >>> model = flows.build("cnf", 2, hidden=8)
        >>> objective = FlowMatching(coupling="ot")
        >>> objective.setup(model)
        >>> x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
        >>> paired = objective.pair(x0, x1)  # x1 reordered by the optimal assignment
        >>> (x0 - paired).pow(2).sum().item() <= (x0 - x1).pow(2).sum().item()
        True
        >>> out = objective.loss(model, Batch(x0), step=0)
        >>> out.total.shape, sorted(out.terms)
        (torch.Size([]), ['loss', 'match_ms', 'pair_sqdist'])
    """

    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "train": {"batch_size": 256},
    }

    def __init__(
        self,
        *,
        coupling: Literal["independent", "ot"] = "independent",
        sigma: Annotated[float, Range(0)] = 0.0,
        ot_solver: Literal["exact", "sinkhorn"] = "exact",
        sinkhorn_reg: Annotated[float, Range(0, min_inclusive=False)] = 0.05,
        sinkhorn_iterations: Annotated[int, Range(1)] = 100,
    ) -> None:
        super().__init__()
        if coupling not in ("independent", "ot"):
            raise ConfigError(f"flow-matching: coupling must be 'independent' or 'ot', got {coupling!r}")
        if ot_solver not in ("exact", "sinkhorn"):
            raise ConfigError(f"flow-matching: ot_solver must be 'exact' or 'sinkhorn', got {ot_solver!r}")
        self.coupling = coupling
        self.sigma = float(sigma)
        self.ot_solver = ot_solver
        self.sinkhorn_reg = float(sinkhorn_reg)
        self.sinkhorn_iterations = int(sinkhorn_iterations)

    # -- setup ---------------------------------------------------------------------------------
    @staticmethod
    def vector_field(model: Flow) -> VectorFieldTransform:
        """The model's transform as a vector field; a :class:`ConfigError` when it has none."""
        field = find_vector_field(model.transform)
        if field is None:
            name = _registered_name(model.transform)
            raise ConfigError(
                f"flow-matching needs a transform with a vector field, e.g. cnf; {name!r} has "
                f"none (it must define velocity(x, t, context) and time_horizon). Use "
                f"--transform cnf, or train {name!r} with --objective mle."
            )
        return field

    def setup(self, model: Flow) -> None:
        """Check the transform (and the context) now, before training starts."""
        self.vector_field(model)
        if self.coupling == "ot":
            if model.context_shape is not None:
                raise ConfigError(
                    "flow-matching: coupling='ot' pairs data and prior samples within a batch, "
                    "which is only valid without a context or per class (labels); with a "
                    "real-valued context use coupling='independent'"
                )
            if self.ot_solver == "exact":
                preload("lsa")

    # -- the coupling --------------------------------------------------------------------------
    def pair(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The prior samples ``x1`` reordered (``exact``: permuted; ``sinkhorn``: drawn from the
        entropic plan, one per data point) so that ``x1[i]`` is the partner of ``x0[i]``."""
        cost = pairwise_cost(x0.detach(), x1.detach(), "sqeuclidean")
        if self.ot_solver == "exact":
            plan = exact_plan(cost, "lsa")
            partner = plan.argmax(dim=1)
        else:
            plan = sinkhorn_plan(cost, self.sinkhorn_reg, self.sinkhorn_iterations)
            rows = plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-300)
            partner = torch.multinomial(rows.float().clamp_min(0), 1).flatten()
        return x1[partner]

    def _groups(
        self, model: Flow, field: VectorFieldTransform, context: Tensor | None, n: int, device: torch.device
    ) -> list[Tensor]:
        """Index sets that are paired separately: one per class when the prior or the flow reads
        class labels, else the whole batch."""
        by_class = model.prior.conditional or bool(getattr(field, "conditional", False))
        labels = context is not None and not context.is_floating_point()
        if not (by_class and labels):
            return [torch.arange(n, device=device)]
        assert context is not None
        return [torch.nonzero(context == c).flatten() for c in torch.unique(context)]

    # -- the objective -------------------------------------------------------------------------
    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        field = self.vector_field(model)
        x, n = batch.x, batch.x.shape[0]
        if model.prior.conditional and batch.context is None:
            raise ShapeError(
                f"flow-matching with the class-conditional prior "
                f"{type(model.prior).__name__} needs class labels in every batch"
            )
        h = model.embed_context(batch.context, n)
        x0, _ = model.preprocess(x, h)
        with torch.no_grad():
            x1 = model.prior.sample(n, h).to(x0.dtype)
        match_s = 0.0
        if self.coupling == "ot":
            t0 = time.perf_counter()
            paired = x1.clone()
            for idx in self._groups(model, field, h, n, x0.device):
                # x1[idx] are samples of the group's own class (the prior read the labels)
                paired[idx] = self.pair(x0[idx], x1[idx])
            x1 = paired
            match_s = time.perf_counter() - t0
        horizon = float(field.time_horizon)
        s = torch.rand(n, dtype=x0.dtype, device=x0.device)
        shape = (n,) + (1,) * (x0.dim() - 1)
        xs = (1.0 - s.reshape(shape)) * x0 + s.reshape(shape) * x1
        if self.sigma > 0:
            xs = xs + self.sigma * torch.randn_like(xs)
        target = (x1 - x0) / horizon
        v = field.velocity(xs, s * horizon, h)
        total = (v - target).pow(2).mean()
        terms = {
            "loss": float(total.detach()),
            "pair_sqdist": float((x1 - x0).detach().pow(2).flatten(1).mean()),
        }
        if self.coupling == "ot":
            terms["match_ms"] = 1000.0 * match_s
        return LossOutput(total, terms)

    def extra_repr(self) -> str:
        return f"coupling={self.coupling!r}, sigma={self.sigma}, ot_solver={self.ot_solver!r}"


def _registered_name(transform: Any) -> str:
    """The registry name of ``transform``'s class (its class name when it is not registered)."""
    from flowkit import registry
    from flowkit.errors import FlowkitError

    cls = type(transform)
    for name in registry.transforms.names():
        try:
            if registry.transforms.get(name) is cls:
                return name
        except FlowkitError:
            continue
    return cls.__name__
