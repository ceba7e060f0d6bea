"""Hybrid generative/discriminative training: a flow plus a linear classifier on its latent.

Nalisnick, Matsukawa, Teh, Görür & Lakshminarayanan 2019, "Hybrid Models with Deep and Invertible
Features", §3: the flow ``z = f(x)`` gives both the density ``p(x)`` (change of variables) and the
features of a generalised linear model ``p(y | z) = softmax(W z + b)_y``; both are trained jointly
on the weighted joint log-likelihood ``log p(y | f(x)) + λ log p(x)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.data.preprocess import dequantize
from flowkit.errors import ConfigError
from flowkit.metrics import model_dtype
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.params import Range

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flowkit.data.base import DataSplits
    from flowkit.model import Flow

_NEEDS_LABELS = (
    "objective 'hybrid' trains a classifier and needs class labels, but dataset '{name}' has "
    "none; choose a labelled dataset such as --data digits, mnist or fashion-mnist"
)


class Hybrid(Objective):
    """Hybrid model: maximum likelihood plus a linear classifier on the flow's latent z.

    ``L = −λ · (1/D) log p(x) − log p(y | z)``, ``z = f(x)`` flattened,
    ``p(y | z) = softmax(W z + b)_y`` (Nalisnick et al. 2019, "Hybrid Models with Deep and
    Invertible Features", §3, eq. 4 ``J = Σ log p(y|x) + λ log p(x)``). ``lam`` is the paper's λ
    and scales the generative term; as in ``mle`` that term is per dimension here, so
    ``lam = λ_paper · D`` (``lam = 0``: a purely discriminative invertible classifier).
    The head's ``W, b`` are trained by the model's optimiser (:meth:`joint_parameters`) and saved
    in the checkpoint. Needs labels and an unconditional prior (``p(x)`` must not see ``y``).

    References:

    * Nalisnick, Matsukawa, Teh, Görür & Lakshminarayanan 2019, "Hybrid Models with Deep and Invertible
      Features", ICML 2019.

    Arguments:

    * ``lam`` (float ≥ 0, default 1.0): the weight ``λ`` of ``(1/D) log p(x)``; 0: a purely discriminative
      classifier.
    * ``eval_batch_size`` (int ≥ 1, default 500): batch size of the final test-accuracy evaluation.

    Example::

        >>> import torch
        >>> from flowkit.data.preprocess import Identity
        >>> from flowkit.model import Flow
        >>> from flowkit.objective import Batch
        >>> from flowkit.plugins.objectives.hybrid import Hybrid
        >>> from flowkit.plugins.priors.gaussian import StandardGaussian
        >>> from flowkit.plugins.transforms.realnvp import RealNVP
        >>> _ = torch.manual_seed(0)
        >>> flow = RealNVP((4,), num_layers=2, hidden=8)
        >>> model = Flow(flow, StandardGaussian((4,)), Identity((4,)), num_classes=3)
        >>> objective = Hybrid(lam=0.0)  # λ = 0: a purely discriminative invertible classifier
        >>> objective.setup(model)  # the linear head W z + b, 4 → 3
        >>> [tuple(p.shape) for p in objective.joint_parameters()]
        [(3, 4), (3,)]
        >>> batch = Batch(torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
        >>> out = objective.loss(model, batch, step=0)
        >>> out.total.item() == out.terms["class_nll"]
        True
    """

    #: chosen with --objective hybrid: the density p(x) needs an unconditional prior
    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {"prior": {"name": "gaussian"}}

    def __init__(
        self,
        *,
        lam: Annotated[float, Range(0, note="λ, the weight of log p(x)")] = 1.0,
        eval_batch_size: Annotated[int, Range(1)] = 500,
    ) -> None:
        super().__init__()
        self.lam = float(lam)
        self.eval_batch_size = int(eval_batch_size)
        self.head: nn.Linear | None = None

    # -- set-up --------------------------------------------------------------------------------
    def bind_data(self, data: DataSplits) -> None:
        """Check that the dataset has labels."""
        if data.train_labels is None or not data.num_classes:
            raise ConfigError(_NEEDS_LABELS.format(name=data.name))

    def setup(self, model: Flow) -> None:
        """Build the linear head ``latent dim → num_classes`` on the model's device and dtype."""
        if not model.num_classes:
            raise ConfigError(_NEEDS_LABELS.format(name="(this model's data)"))
        if model.prior.conditional:
            raise ConfigError(
                f"objective 'hybrid' models p(x) with an unconditional prior, but "
                f"'{type(model.prior).__name__}' is class-conditional; use --prior gaussian"
            )
        self.head = nn.Linear(model.prior.dim, int(model.num_classes)).to(
            device=model.device, dtype=model_dtype(model)
        )

    def joint_parameters(self) -> Iterator[nn.Parameter]:
        """The head's weight and bias, trained together with the flow."""
        return iter(self._require_head().parameters())

    def _require_head(self) -> nn.Linear:
        if self.head is None:
            raise RuntimeError("Hybrid.setup(model) must be called before training")
        return self.head

    # -- the model -----------------------------------------------------------------------------
    def logits(self, model: Flow, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(class logits W z + b, log p(x))`` for data ``x``, ``z = f(x)`` flattened."""
        z, logdet = model.encode(x, None)
        log_px = model.prior.log_prob(z) + logdet
        return self._require_head()(z.reshape(z.shape[0], -1)), log_px

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        """``λ · NLL/D + cross-entropy`` on the batch (labels from ``batch.context``)."""
        if batch.context is None:
            raise ConfigError(_NEEDS_LABELS.format(name="(this batch)"))
        logits, log_px = self.logits(model, batch.x)
        nll_per_dim = -log_px.mean() / model.dim
        class_nll = F.cross_entropy(logits, batch.context)
        total = self.lam * nll_per_dim + class_nll
        terms = {
            "loss": float(total.detach()),
            "nll_per_dim": float(nll_per_dim.detach()),
            "class_nll": float(class_nll.detach()),
            "accuracy": float((logits.argmax(1) == batch.context).double().mean()),
        }
        if model.levels:
            terms["bpd"] = (terms["nll_per_dim"] + math.log(model.levels)) / math.log(2.0)
        return LossOutput(total, terms)

    @torch.no_grad()
    def evaluate(self, model: Flow, data: DataSplits, max_examples: int) -> dict[str, float]:
        """``test_accuracy`` and ``test_class_nll`` (mean −log p(y|z)) on the test split.

        Quantized data are dequantized with noise from a fixed seed, as in training, so repeated
        evaluations agree; ``max_examples > 0`` evaluates a prefix of the split.
        """
        if data.test_labels is None:
            return {}
        n = data.test.shape[0] if max_examples <= 0 else min(max_examples, data.test.shape[0])
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(0)
        correct, nll = 0, 0.0
        for start in range(0, n, self.eval_batch_size):
            x = data.test[start : min(n, start + self.eval_batch_size)]
            x = dequantize(x, data.levels, gen).to(model.device, model_dtype(model))
            y = data.test_labels[start : start + x.shape[0]].to(model.device)
            logits, _ = self.logits(model, x)
            correct += int((logits.argmax(1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
        model.train(was_training)
        return {"test_accuracy": correct / n, "test_class_nll": nll / n}
