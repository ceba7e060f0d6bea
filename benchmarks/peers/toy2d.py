"""flowkit against nflows and zuko on the 2-D toys: spline couplings, spline MAFs and CNFs.

A Python cell of ``flowkit bench peers`` (``toy2d``) and a command line::

    .venv/bin/python -m benchmarks.peers.toy2d --data moons checkerboard --steps 600 --threads 1

The budget of the ``toy2d`` suite: flowkit's ``moons`` and ``checkerboard`` (20,000 training and
5,000 test points, no preprocessing), 600 steps of batch 256, Adam at a constant 2e-3 (flowkit's
models, the nflows bridge included, get the fused Adam of flowkit's trainer, zuko's models
``torch.optim.Adam``, as each library's users get them). Every model of a data set trains on the
same batches, the models taking turns within each step in an order that rotates every step, so a
change of machine load hits every row alike. ``train_step_ms`` is the median step time (from step
5 on), ``train_s`` the sum of all step times, ``test_nll`` the mean negative log-likelihood (nats)
of the 5,000 test points in evaluation mode.

The families, each with the same sizes in both libraries, and the peer each is compared with:

* ``spline-coupling`` — flowkit's native ``nsf`` (4 rational-quadratic couplings on alternating
  halves, 8 bins on [−5, 5], MLP conditioners of 5 hidden layers of 64 units: 73,052 parameters)
  against the ``nflows-rq-coupling`` bridge at its defaults (nflows' spline couplings of 8 bins on
  [−3, 3] with ``ResidualNet`` conditioners of 2 blocks of 64 units, LU linear layers between
  couplings that can rescale the data into the splines' range: 73,070 parameters) — the ``toy2d``
  suite's ``nsf`` and ``nflows-rq-coupling`` cells.
* ``spline-ar`` — flowkit's ``rq-autoregressive`` (5 MADE layers of 2 × 64 ReLU units, splines of
  8 bins on [−5, 5] with identity tails, order reversed between layers, conditioners
  zero-initialised) against ``zuko.flows.NSF(2, transforms=5, hidden_features=(64, 64))`` (the
  same, orders alternating, zuko's default initialisation): 36,710 parameters each (Durkan et al.
  2019, "Neural Spline Flows", RQ-NSF (AR)).
* ``cnf`` — flowkit's ``cnf`` (an MLP of 2 × 64 tanh units reading ``t`` at every layer,
  torchdiffeq's dopri5 at ``atol = rtol = 1e-5``, Hutchinson's trace in training and the exact
  trace in evaluation; also with ``trace = "exact"`` in training) against ``zuko.flows.CNF(2,
  hidden_features=(64, 64), atol=1e-5, rtol=1e-5)`` (an ELU MLP of the state and a 3-frequency
  time embedding, zuko's own Dormand–Prince with adaptive-checkpoint-adjoint gradients, exact
  trace), both by maximum likelihood (FFJORD; Grathwohl et al. 2019). A fourth row trains
  flowkit's ``cnf`` by flow matching with minibatch-OT pairs (Tong et al. 2024), which solves no
  ODE in training; zuko has no flow-matching objective.

``nll_vs_peer`` is a row's test NLL minus its family's peer's (negative: better than the peer) and
``step_ratio_vs_peer`` its step time over the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from benchmarks.peers import INSTALL_HINT, Adapter, MissingLibrary

__all__ = ["PEER", "ROWS", "build_row", "flowkit_flow", "measure", "train_toy", "zuko_cnf", "zuko_nsf"]

#: The flowkit ``[transform]`` sections of the rows (the ``toy2d`` suite's sizes).
FLOWKIT_TRANSFORMS: dict[str, dict[str, Any]] = {
    "nsf": {"name": "nsf", "num_layers": 4, "num_bins": 8, "tail_bound": 5.0, "hidden": 64, "num_hidden": 5},
    "nflows-rq-coupling": {"name": "nflows-rq-coupling"},
    "spline": {"name": "rq-autoregressive", "num_layers": 5, "num_bins": 8, "tail_bound": 5.0},
    "cnf": {"name": "cnf", "hidden": 64, "num_hidden": 2, "atol": 1e-5, "rtol": 1e-5},
}
ROWS: tuple[str, ...] = (
    "flowkit-nsf",
    "nflows-rq-coupling",
    "flowkit-nsf-ar",
    "zuko-nsf",
    "flowkit-cnf",
    "flowkit-cnf-exact",
    "zuko-cnf",
    "flowkit-cnf-fm-ot",
)
FAMILY = {
    "flowkit-nsf": "spline-coupling",
    "nflows-rq-coupling": "spline-coupling",
    "flowkit-nsf-ar": "spline-ar",
    "zuko-nsf": "spline-ar",
    "flowkit-cnf": "cnf",
    "flowkit-cnf-exact": "cnf",
    "zuko-cnf": "cnf",
    "flowkit-cnf-fm-ot": "cnf",
}
#: The row every row of a family is compared with.
PEER = {"spline-coupling": "nflows-rq-coupling", "spline-ar": "zuko-nsf", "cnf": "zuko-cnf"}


# -- the adapters ----------------------------------------------------------------------------------
def zuko_nsf(features: int = 2, transforms: int = 5, hidden: int = 64, bins: int = 8) -> Adapter:
    """``zuko.flows.NSF``: masked autoregressive rational-quadratic splines (bound 5)."""
    zuko = _zuko()
    flow = zuko.flows.NSF(features, bins=bins, transforms=transforms, hidden_features=(hidden, hidden))
    return Adapter(
        "zuko",
        "nsf-toy2d",
        flow,
        lambda x: flow().log_prob(x),
        lambda n: flow().sample((n,)),
        f"{bins} bins on [-5, 5], identity tails, default init",
    )


def zuko_cnf(features: int = 2, hidden: int = 64, atol: float = 1e-5, rtol: float = 1e-5) -> Adapter:
    """``zuko.flows.CNF``: free-form Jacobian flow, exact trace, adaptive checkpoint adjoint."""
    zuko = _zuko()
    flow = zuko.flows.CNF(features, hidden_features=(hidden, hidden), atol=atol, rtol=rtol)
    return Adapter(
        "zuko",
        "cnf-toy2d",
        flow,
        lambda x: flow().log_prob(x),
        lambda n: flow().sample((n,)),
        f"ELU MLP, 3-frequency time embedding, Dormand-Prince atol={atol:g} rtol={rtol:g}, exact trace",
    )


def flowkit_flow(transform: dict[str, Any], features: int = 2, library: str = "flowkit") -> Adapter:
    """flowkit's model of ``transform`` with a standard-normal prior and no preprocessing
    (``library``: whose code the transform runs, e.g. ``nflows`` for the bridge)."""
    from benchmarks.peers.flowkit_models import _trainer_adam
    from flowkit.builder import build_model
    from flowkit.data import DataMeta

    config = {
        "transform": dict(transform),
        "prior": {"name": "gaussian"},
        "data": {"name": "bench", "preprocess": "none"},
    }
    model = build_model(config, DataMeta((features,)))
    return Adapter(
        library,
        f"{transform['name']}-toy2d",
        model,
        model.log_prob,
        model.sample,
        make_optimizer=_trainer_adam,
    )


def _zuko() -> Any:
    try:
        import zuko
    except ImportError as exc:
        raise MissingLibrary(f"zuko not installed ({INSTALL_HINT})") from exc
    return zuko


@dataclass
class _Row:
    """A model under training: its adapter, optimiser, loss and step times."""

    name: str
    adapter: Adapter
    loss: Callable[[Tensor, int], Tensor]
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)
    status: str = "ok"


def build_row(name: str, lr: float) -> _Row:
    """The row ``name`` of :data:`ROWS`, freshly initialised."""
    if name == "zuko-nsf":
        adapter = zuko_nsf()
    elif name == "zuko-cnf":
        adapter = zuko_cnf()
    elif name == "flowkit-nsf":
        adapter = flowkit_flow(FLOWKIT_TRANSFORMS["nsf"])
    elif name == "nflows-rq-coupling":
        try:
            import nflows  # noqa: F401
        except ImportError as exc:
            raise MissingLibrary(f"nflows not installed ({INSTALL_HINT})") from exc
        adapter = flowkit_flow(FLOWKIT_TRANSFORMS["nflows-rq-coupling"], library="nflows")
        adapter.note = (
            "flowkit's nflows bridge: nflows' spline couplings, ResidualNet conditioners, LU layers"
        )
    elif name == "flowkit-nsf-ar":
        adapter = flowkit_flow(FLOWKIT_TRANSFORMS["spline"])
    elif name == "flowkit-cnf-exact":
        adapter = flowkit_flow({**FLOWKIT_TRANSFORMS["cnf"], "trace": "exact"})
    elif name in ("flowkit-cnf", "flowkit-cnf-fm-ot"):
        adapter = flowkit_flow(FLOWKIT_TRANSFORMS["cnf"])
    else:
        raise KeyError(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
    if name == "flowkit-cnf-fm-ot":
        from flowkit.builder import build_objective
        from flowkit.objective import Batch

        objective = build_objective({"name": "flow-matching", "coupling": "ot"})
        objective.setup(adapter.module)
        adapter.note = "trained by flow matching with minibatch-OT pairs (no ODE solve in training)"

        def loss(x: Tensor, step: int) -> Tensor:
            out = objective.loss(adapter.module, Batch(x), step).total
            assert out is not None
            return out

    else:

        def loss(x: Tensor, step: int) -> Tensor:
            return -adapter.log_prob(x).mean()

    return _Row(name, adapter, loss, adapter.optimizer(lr))


# -- the measurement -------------------------------------------------------------------------------
def _test_nll(adapter: Adapter, test: Tensor) -> float:
    adapter.train(False)
    with torch.no_grad():
        log_p = torch.cat([adapter.log_prob(chunk) for chunk in test.split(1000)])
    return float(-log_p.mean())


def train_toy(
    data: str,
    rows: Sequence[str] = ROWS,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train every row on ``data`` for ``steps`` shared batches; one result row each."""
    import flowkit
    from flowkit.runs import load_dataset

    splits = load_dataset(flowkit.load_config(None, [f"train.seed={seed}"], transform="cnf", data=data))
    built: list[_Row] = []
    out: dict[str, dict[str, Any]] = {}
    for name in rows:
        out[name] = {"data": data, "row": name, "family": FAMILY[name], "status": "ok"}
        torch.manual_seed(seed)
        try:
            row = build_row(name, lr)
        except MissingLibrary as exc:
            out[name]["status"] = f"skipped: {exc}"
            continue
        out[name]["library"] = row.adapter.library
        out[name]["num_parameters"] = row.adapter.num_parameters
        if row.adapter.note:
            out[name]["note"] = row.adapter.note
        row.adapter.train(True)
        built.append(row)
    gen = torch.Generator().manual_seed(seed)
    n = splits.train.shape[0]
    for step in range(steps):
        x = splits.train[torch.randint(0, n, (batch_size,), generator=gen)]
        k = step % max(len(built), 1)
        for row in built[k:] + built[:k]:
            if row.status != "ok":
                continue
            t0 = time.perf_counter()
            try:
                row.optimizer.zero_grad(set_to_none=True)
                loss = row.loss(x, step)
                loss.backward()
                row.optimizer.step()
            except Exception as exc:  # one failing row must not lose the others
                row.status = f"failed: training step {step}: {type(exc).__name__}: {exc}"
                continue
            row.times.append(time.perf_counter() - t0)
    for row in built:
        res = out[row.name]
        res["status"] = row.status
        if row.status != "ok":
            continue
        res["train_step_ms"] = round(1000 * statistics.median(row.times[5:] or row.times), 2)
        res["train_s"] = round(sum(row.times), 2)
        t0 = time.perf_counter()
        try:
            res["test_nll"] = round(_test_nll(row.adapter, splits.test), 4)
        except Exception as exc:
            res["status"] = f"failed: evaluation: {type(exc).__name__}: {exc}"
            continue
        res["test_eval_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        with torch.no_grad():
            row.adapter.sample(1000)
        res["sample_1000_s"] = round(time.perf_counter() - t0, 2)
    for family in {FAMILY[name] for name in rows}:
        peer = out.get(PEER[family])
        if not peer or "test_nll" not in peer:
            continue
        for r in out.values():
            if r["family"] == family and "test_nll" in r:
                r["nll_vs_peer"] = round(r["test_nll"] - peer["test_nll"], 4)
                r["step_ratio_vs_peer"] = round(r["train_step_ms"] / peer["train_step_ms"], 3)
    return list(out.values())


def measure(
    data: Sequence[str] = ("moons", "checkerboard"),
    rows: Sequence[str] = ROWS,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 2e-3,
    threads: int | None = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`train_toy` on every data set (a ``flowkit bench`` Python cell)."""
    if threads:
        torch.set_num_threads(int(threads))
    result = []
    for name in data:
        result += train_toy(name, rows, steps, batch_size, lr, seed)
    setup = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
    }
    return [{**r, **setup} for r in result]


COLUMNS = (
    "data",
    "row",
    "status",
    "num_parameters",
    "test_nll",
    "nll_vs_peer",
    "train_step_ms",
    "step_ratio_vs_peer",
    "train_s",
    "test_eval_s",
    "sample_1000_s",
)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table of :data:`COLUMNS`."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "–")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.peers.toy2d``: train the rows and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["moons", "checkerboard"])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.data, args.rows, args.steps, args.batch_size, args.lr, args.threads, args.seed)
    print(markdown(rows))
    for row in rows:
        if row.get("note") and row["data"] == args.data[0]:
            print(f"{row['row']}: {row['note']}")
    print(json.dumps({k: rows[0][k] for k in ("threads", "torch", "load_avg_1min_end")}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
