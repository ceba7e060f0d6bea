"""Started by ``tests/test_distributed.py`` under ``torchrun``: small runs that dump every rank's state.

``torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT_DIR [RUN_DIR]`` trains,
in one process group:

* with ``RUN_DIR``: ``flowkit run --resume RUN_DIR --set train.steps=30`` (the command's code);

* ``adv``: the adversarial objective (a critic with its own optimiser) on moons; before every
  checkpoint each rank saves its model and objective state to ``OUT_DIR/adv-rank<r>-step<n>.pt``
  (before the trainer's re-synchronisation, so a drift would show);
* ``nan``: an objective whose loss turns NaN on the *last* rank only, at step 5;
* ``forgetful``: an objective whose critic steps on un-averaged gradients (the trainer must warn).

Each rank writes ``OUT_DIR/<tag>-rank<r>.json`` with the run's status, its step and rank 0's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

import flowkit
from flowkit import distributed as dist
from flowkit import registry
from flowkit.errors import TrainingDiverged
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.trainer import Trainer

TINY = [
    "data.n_train=512",
    "data.n_test=128",
    "transform.num_layers=2",
    "transform.hidden=8",
    "train.batch_size=64",
    "train.threads=1",
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "eval.final_max_examples=64",
]


class NaNOnLastRank(Objective):
    """Test objective: maximum likelihood whose loss becomes NaN on the last rank from step ``at``."""

    def __init__(self, at: int = 5) -> None:
        super().__init__()
        self.at = at

    def loss(self, model: Any, batch: Batch, step: int) -> LossOutput:
        nll = -model.log_prob(batch.x).mean()
        if step >= self.at and dist.rank() == dist.world_size() - 1:
            nll = nll * float("nan")
        return LossOutput(nll, {"loss": float(nll.detach())})


class Forgetful(Objective):
    """Test objective: a critic stepped on its own process's gradients only (never averaged)."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = torch.nn.Linear(2, 1)

    def setup(self, model: Any) -> None:
        self.opt = torch.optim.SGD(self.critic.parameters(), lr=0.1)

    def auxiliary_update(self, model: Any, batch: Batch, step: int) -> dict[str, float]:
        loss = self.critic(batch.x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"critic_loss": float(loss.detach())}

    def loss(self, model: Any, batch: Batch, step: int) -> LossOutput:
        nll = -model.log_prob(batch.x).mean()
        return LossOutput(nll, {"loss": float(nll.detach())})


class DumpingTrainer(Trainer):
    """A trainer that saves this rank's model and objective state before every checkpoint."""

    out: Path
    tag: str

    def save(self) -> Path:
        torch.save(
            {"model": self.model.state_dict(), "objective": self.objective.state_dict()},
            self.out / f"{self.tag}-rank{dist.rank()}-step{self.step}.pt",
        )
        return super().save()


def run(out: Path, tag: str, overrides: list[str], **shortcuts: str) -> None:
    config = flowkit.load_config("realnvp-moons", [*TINY, *overrides], **shortcuts)
    messages: list[str] = []
    trainer = DumpingTrainer(config, out / tag, progress=False, log=messages.append)
    trainer.out, trainer.tag = out, tag
    try:
        trainer.fit()
        status = "completed"
    except TrainingDiverged:
        status = "diverged"
    record = {"status": status, "step": trainer.step, "messages": messages, "world_size": dist.world_size()}
    (out / f"{tag}-rank{dist.rank()}.json").write_text(json.dumps(record))


def main() -> None:
    out = Path(sys.argv[1])
    registry.objectives.register("nan-on-last-rank", NaNOnLastRank)
    registry.objectives.register("forgetful", Forgetful)
    with dist.session():
        if len(sys.argv) > 2:  # continue a run with the command line's own code (--resume)
            from flowkit.cli.main import cli

            cli.main(
                args=["run", "--resume", sys.argv[2], "--set", "train.steps=30", "-q"],
                prog_name="flowkit",
                standalone_mode=False,
            )
        run(
            out,
            "adv",
            [
                "train.steps=12",
                "train.checkpoint_every=4",
                "prior.num_selected=1",
                "objective.adversary_start=2",
                "objective.critic_samples=32",
                "objective.critic_hidden=[8, 8]",
            ],
            objective="adversarial",
        )
        run(out, "nan", ["train.steps=10", "train.checkpoint_every=2"], objective="nan-on-last-rank")
        run(out, "forgetful", ["train.steps=3"], objective="forgetful")


if __name__ == "__main__":
    main()
