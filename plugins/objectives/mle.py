"""Maximum-likelihood training."""

from __future__ import annotations

import math

from flowkit.model import Flow
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.plugins.transforms.vector_fields import solver_terms


class MaximumLikelihood(Objective):
    """Maximum likelihood: minimise the negative log-likelihood per dimension.

    ``L(θ) = −(1/(B·D)) Σ_b log p_θ(x_b)`` with ``log p_θ(x) = log p_Z(f(x)) + log|det J_f(x)|``
    (change of variables; Dinh et al. 2015, "NICE", eq. 1). Dividing by the dimension ``D`` keeps
    the learning rate comparable across datasets; logged as nats/dim and, for quantized data,
    bits/dim including the dequantization offset ``log₂ L``. Transforms solved by an ODE solver
    (``cnf``) add ``nfe``, the function evaluations of the step's forward solve.
    """

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        log_prob = model.log_prob(batch.x, batch.context)
        nll_per_dim = -log_prob.mean() / model.dim
        terms = {"nll_per_dim": float(nll_per_dim.detach())}
        if model.levels:
            terms["bpd"] = (terms["nll_per_dim"] + math.log(model.levels)) / math.log(2.0)
        terms.update(solver_terms(model.transform))
        return LossOutput(nll_per_dim, terms)
