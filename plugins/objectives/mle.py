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

    References:

    * Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop
      track (arXiv:1410.8516).
    * Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan 2021, "Normalizing Flows for Probabilistic
      Modeling and Inference", Journal of Machine Learning Research 22(57).

    Arguments:

    None: ``mle`` takes no parameters.

    Example::

        >>> import torch
        >>> from flowkit import flows
        >>> from flowkit.objective import Batch
        >>> from flowkit.plugins.objectives.mle import MaximumLikelihood
        >>> _ = torch.manual_seed(0)
        >>> model = flows.build("realnvp", 2, num_layers=2, hidden=8)
        >>> x = torch.randn(16, 2)
        >>> out = MaximumLikelihood().loss(model, Batch(x), step=0)
        >>> torch.allclose(out.total, -model.log_prob(x).mean() / 2), sorted(out.terms)
        (True, ['nll_per_dim'])
    """

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        log_prob = model.log_prob(batch.x, batch.context)
        nll_per_dim = -log_prob.mean() / model.dim
        terms = {"nll_per_dim": float(nll_per_dim.detach())}
        if model.levels:
            terms["bpd"] = (terms["nll_per_dim"] + math.log(model.levels)) / math.log(2.0)
        terms.update(solver_terms(model.transform))
        return LossOutput(nll_per_dim, terms)
