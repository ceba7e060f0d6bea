"""Share of minibatch-OT matching in a grn-ot-mnist training step, per exact solver.

Trains the ``grn-ot-mnist`` preset (Schirrmeister et al. 2018: per-class exact OT between
encodings and prior samples, about 650 examples per class, 1024-d latents) for a few steps with
flowkit's own trainer, logging every step, once per solver. The objective reports ``match_ms``
(cost matrices and solver, summed over the classes of the step); the step time is the trainer's
(``batch_size / examples_per_s`` of a one-step window: batch, loss, backward, optimiser). The first
step (warm-up) is left out; medians over the rest. Target: matching ≤ 10 % of the step with the
default solver (``auto`` = ``scipy.optimize.linear_sum_assignment``).

Separate training runs see different machine load, so the script also times the exact solvers on
the *same* per-class cost matrices (the first run's trained model: encodings of 650 training
images per class against as many prior samples), interleaved: ``exact_solver_ms``.

    .venv/bin/python benchmarks/ot_matching_share.py --data-dir ../shared/data --threads 2
    .venv/bin/python benchmarks/ot_matching_share.py --data-dir ../shared/data --solvers auto emd \
        --steps 4 --json ot_share.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import flowkit
from flowkit.plugins.objectives import matching
from flowkit.runs import load_run
from flowkit.trainer import train


def compare_exact_solvers(
    run_dir: Path, data_dir: str | None, per_class: int, repeats: int = 3
) -> dict[str, float]:
    """Median time (ms) of each exact solver over the same per-class cost matrices, interleaved.

    The matrices are those the objective builds: Euclidean costs between the run's encodings of
    ``per_class`` training images of every class and as many samples of that class's prior.
    """
    run = load_run(run_dir, device="cpu")
    data = run.load_data(data_dir)
    assert data.train_labels is not None
    costs = []
    with torch.no_grad():
        for c in torch.unique(data.train_labels):
            idx = torch.nonzero(data.train_labels == c).flatten()[:per_class]
            labels = data.train_labels[idx]
            z, _ = run.model.encode(data.train[idx], labels)
            costs.append(matching.pairwise_cost(z, run.model.prior.sample(len(idx), labels)))
    times: dict[str, list[float]] = {"lsa": [], "emd": []}
    for r in range(repeats):
        for solver in ("lsa", "emd") if r % 2 else ("emd", "lsa"):
            t0 = time.perf_counter()
            for cost in costs:
                matching.exact_plan(cost, solver)
            times[solver].append(1000.0 * (time.perf_counter() - t0))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def measure(
    solver: str, steps: int, threads: int, data_dir: str | None, batch_size: int | None, compare: bool = False
) -> dict[str, Any]:
    """Train ``steps`` steps of grn-ot-mnist with ``solver``; medians after the first step.

    With ``compare``, also time both exact solvers on the trained model's cost matrices.
    """
    overrides = [
        f"objective.solver={solver}",
        f"train.steps={steps}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.sample_every=0",
        "train.checkpoint_every=0",
        f"train.threads={threads}",
        "eval.final_max_examples=100",
        "eval.n_samples=10",
    ]
    if batch_size:
        overrides.append(f"train.batch_size={batch_size}")
    config = flowkit.load_config("grn-ot-mnist", overrides, data_dir=data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train(config, run_dir, progress=False, log=lambda _msg: None)
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        batch = config["train"]["batch_size"]
        exact = compare_exact_solvers(run_dir, data_dir, max(batch // 10, 2)) if compare else {}
    steps_logged = [r for r in records if "match_ms" in r and r.get("kind") != "final"]
    timed = steps_logged[1:] or steps_logged
    step_ms = statistics.median(1000.0 * batch / r["examples_per_s"] for r in timed)
    match_ms = statistics.median(r["match_ms"] for r in timed)
    return {
        "solver": solver,
        "match_ms": round(match_ms, 1),
        "step_ms": round(step_ms, 1),
        "match_share": round(match_ms / step_ms, 4),
        "classes": timed[-1].get("classes"),
        "batch_size": batch,
        "steps_timed": len(timed),
        **({"exact_solver_ms": exact} if exact else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("FLOWKIT_DATA"),
        help="folder with mnist/ (default: $FLOWKIT_DATA)",
    )
    parser.add_argument(
        "--solvers", nargs="+", default=["auto", "emd"], choices=["auto", "lsa", "emd", "sinkhorn"]
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps per solver (≥ 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="override the preset's 6500 (for a quick check)"
    )
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = [
        measure(s, max(args.steps, 2), args.threads, args.data_dir, args.batch_size, compare=i == 0)
        for i, s in enumerate(args.solvers)
    ]
    setup = {
        "threads": args.threads,
        "torch": torch.__version__,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps({"rows": rows, "setup": setup}, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows, "setup": setup}, fh, indent=2)


if __name__ == "__main__":
    main()
