"""The :class:`Objective` interface: how a flow is trained.

The trainer never special-cases an objective. Each step it

1. calls :meth:`Objective.auxiliary_update` — objectives with auxiliary networks (a latent critic)
   update them here, with optimisers and a schedule they own (e.g. one critic step per step, or
   critic on even steps only);
2. calls :meth:`Objective.loss`, which returns the loss terms for the model; if ``total`` is
   ``None`` the model is not updated on this step (a 1:1 alternating schedule);
3. back-propagates ``total`` into the model and steps the model's optimiser.

An objective's auxiliary modules and optimiser state are part of its ``state_dict`` (use
:meth:`get_extra_state` for optimiser state), so they are checkpointed and resumed with the run.
Objectives compose: :class:`WeightedSum` is ``Σ_k w_k · L_k``.

Four optional hooks let an objective reach beyond the model without special cases in the trainer:
:meth:`Objective.bind_data` (see the dataset, e.g. a variational target's unnormalised density),
:meth:`Objective.joint_parameters` (modules trained *with* the model by the model's optimiser, e.g.
the classifier head of a hybrid model), :meth:`Objective.evaluate` (extra test metrics, e.g. a
classification accuracy) and :meth:`Objective.figures` (extra figures at the end of a run).

The ``[objective]`` section of a config (one plugin, or a sum ``"mle + 0.1*ot"``) is parsed into
:class:`~flowkit.config.ObjectiveTerm` s and built by :func:`flowkit.builder.build_objective`; this
module is the interface only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from torch import Tensor, nn

from flowkit.params import CheckedParameters

if TYPE_CHECKING:
    from flowkit.data.base import DataSplits
    from flowkit.model import Flow


class Batch(NamedTuple):
    """One training batch: data ``x`` (already dequantized) and optional class labels."""

    x: Tensor
    context: Tensor | None = None


@dataclass
class LossOutput:
    """What :meth:`Objective.loss` returns.

    ``total`` is the scalar the trainer back-propagates into the model (``None``: no model update
    this step). ``terms`` are scalars to log (floats, already detached).
    """

    total: Tensor | None
    terms: dict[str, float] = field(default_factory=dict)


class Objective(CheckedParameters, nn.Module):
    """Base class of every training objective (plugins subclass it)."""

    def bind_data(self, data: DataSplits) -> None:
        """See the dataset before :meth:`setup` (default: ignore it).

        Called once by the trainer. Objectives that need more than batches use it, e.g.
        ``reverse-kl`` reads ``data.target``, the unnormalised log-density to approximate.
        """

    def setup(self, model: Flow) -> None:
        """Build auxiliary modules and their optimisers once the model exists (default: none)."""

    def joint_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the *model's* optimiser trains together with the model (default: none).

        Auxiliary networks with their own optimiser and schedule (a critic) do not belong here;
        heads trained jointly on the same loss (a hybrid model's classifier) do.
        """
        return iter(())

    def evaluate(self, model: Flow, data: DataSplits, max_examples: int) -> dict[str, float]:
        """Extra test metrics for the final evaluation, e.g. a classification accuracy."""
        return {}

    def figures(self, model: Flow, data: DataSplits, run_dir: Path) -> list[Path]:
        """Write extra figures into ``run_dir`` at the end of a run; return their paths."""
        return []

    def auxiliary_update(self, model: Flow, batch: Batch, step: int) -> dict[str, float]:
        """Update auxiliary modules (e.g. a critic) before the model's step; return logged terms."""
        return {}

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        """Loss terms for the model on ``batch`` at training step ``step``."""
        raise NotImplementedError

    def get_extra_state(self) -> Any:
        return {}

    def set_extra_state(self, state: Any) -> None:
        return None


class WeightedSum(Objective):
    """``L = Σ_k w_k · L_k``: a weighted sum of objectives (e.g. ``mle + 0.1 * ot``).

    Each term keeps its own auxiliary modules and schedule; logged terms are prefixed with the
    objective's name. Steps where every term returns ``total=None`` leave the model untouched.
    """

    def __init__(self, objectives: dict[str, Objective], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(objectives)
        self.weights = dict(weights)

    def _by_name(self) -> dict[str, Objective]:
        """The terms by name (``terms`` is an nn.ModuleDict, which types its values Module)."""
        return cast("dict[str, Objective]", dict(self.terms))

    def bind_data(self, data: DataSplits) -> None:
        for obj in self._by_name().values():
            obj.bind_data(data)

    def setup(self, model: Flow) -> None:
        for obj in self._by_name().values():
            obj.setup(model)

    def joint_parameters(self) -> Iterator[nn.Parameter]:
        for obj in self._by_name().values():
            yield from obj.joint_parameters()

    def evaluate(self, model: Flow, data: DataSplits, max_examples: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for obj in self._by_name().values():
            out.update(obj.evaluate(model, data, max_examples))
        return out

    def figures(self, model: Flow, data: DataSplits, run_dir: Path) -> list[Path]:
        return [p for obj in self._by_name().values() for p in obj.figures(model, data, run_dir)]

    def auxiliary_update(self, model: Flow, batch: Batch, step: int) -> dict[str, float]:
        logged: dict[str, float] = {}
        for name, obj in self._by_name().items():
            for key, value in obj.auxiliary_update(model, batch, step).items():
                logged[f"{name}/{key}"] = value
        return logged

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        total: Tensor | None = None
        logged: dict[str, float] = {}
        for name, obj in self._by_name().items():
            out = obj.loss(model, batch, step)
            for key, value in out.terms.items():
                logged[f"{name}/{key}"] = value
            if out.total is not None:
                weighted = self.weights[name] * out.total
                total = weighted if total is None else total + weighted
        if total is not None:
            logged["loss"] = float(total.detach())
        return LossOutput(total, logged)


def __getattr__(name: str) -> Any:
    """``flowkit.objective.build_objective``: moved to :mod:`flowkit.builder` (for one release)."""
    if name == "build_objective":
        import warnings

        warnings.warn(
            "flowkit.objective.build_objective moved to "
            "flowkit.builder.build_objective; the old import path goes in the next "
            "release",
            DeprecationWarning,
            stacklevel=2,
        )
        from flowkit.builder import build_objective

        return build_objective
    raise AttributeError(f"module 'flowkit.objective' has no attribute {name!r}")
