"""Solver cost of a flow-matched cnf: independent vs minibatch-OT couplings (NFE per sample).

Minibatch optimal-transport pairs make the learned paths straighter, so an adaptive solver needs
fewer function evaluations (NFE) to integrate them (Tong et al. 2024, "Improving and generalizing
flow-based generative models with minibatch optimal transport", TMLR, Table 2; Pooladian et al.
2023). This script trains the ``cnf-fm-<data>`` preset twice per seed with flowkit's own trainer,
``objective.coupling = "independent"`` and ``"ot"``, equal steps and seeds, and then measures on
the trained model, in evaluation mode with ``dopri5`` at ``atol = rtol = --tol``:

* ``nfe_sample_1`` — NFE of sampling one example (``inverse`` from the prior, t = T → 0), the mean
  over ``--singles`` draws: the NFE per sample;
* ``nfe_sample_batch`` — NFE of sampling a batch of ``--batch`` examples at once (an adaptive
  solver steps the whole batch together, so the hardest example sets the pace);
* ``nfe_encode_batch`` — NFE of encoding ``--batch`` test examples (``forward``, exact trace);
* ``test_nll`` — the trainer's final test NLL (exact trace), and the training time.

Nothing here is timed in unit tests. Example (docs/continuous.md):

    .venv/bin/python benchmarks/flow_matching_nfe.py --data moons --steps 3000 --seeds 0 1 \
        --threads 1 --json /tmp/fm_nfe.json

``--runs RUN_DIR...`` measures already trained cnf runs instead (e.g. the ``toy2d`` suite's cells,
``bench-results/toy2d/cells/cnf__*/run``), whatever their objective; ``test_nll`` and ``train s``
then come from each run's ``summary.json``::

    .venv/bin/python benchmarks/flow_matching_nfe.py --runs bench-results/toy2d/cells/cnf__*/run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import flowkit
from flowkit.runs import load_run
from flowkit.trainer import train


def train_one(data: str, coupling: str, steps: int, seed: int, threads: int, out: Path) -> dict[str, Any]:
    """Train ``cnf-fm-<data>`` with ``coupling``; return the summary and the run folder."""
    overrides = [
        f"objective.coupling={coupling}",
        f"train.steps={steps}",
        f"train.seed={seed}",
        f"train.threads={threads}",
        "train.eval_every=0",
        "train.sample_every=0",
        f"train.checkpoint_every={steps}",
    ]
    config = flowkit.load_config(f"cnf-fm-{data}", overrides)
    run_dir = out / f"{data}-{coupling}-s{seed}"
    t0 = time.perf_counter()
    summary = train(config, run_dir=run_dir, progress=False, log=lambda _: None)
    return {"run_dir": run_dir, "test_nll": summary["test_nll"], "wall_s": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def measure_nfe(run_dir: Path, tol: float, batch: int, singles: int, seed: int) -> dict[str, float]:
    """NFE of sampling one example (mean over ``singles``), a batch, and encoding a batch."""
    run = load_run(run_dir, device="cpu")
    model = run.model.eval()
    cnf = model.transform
    cnf.solver, cnf.atol, cnf.rtol = "dopri5", tol, tol
    torch.manual_seed(seed)
    per_sample = []
    for _ in range(singles):
        model.sample(1)
        per_sample.append(cnf.last_nfe)
    model.sample(batch)
    sample_batch = cnf.last_nfe
    test = run.load_data().test[:batch]
    model.encode(test)
    return {
        "nfe_sample_1": statistics.mean(per_sample),
        "nfe_sample_1_max": max(per_sample),
        "nfe_sample_batch": sample_batch,
        "nfe_encode_batch": cnf.last_nfe,
    }


def measure_runs(run_dirs: list[Path], tol: float, batch: int, singles: int) -> list[dict[str, Any]]:
    """:func:`measure_nfe` on trained runs, with their objective, test NLL and training time."""
    rows = []
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = load_run(run_dir, device="cpu").config
        objective = config["objective"]
        label = objective["name"] + (f" ({objective['coupling']})" if "coupling" in objective else "")
        rows.append(
            {
                "run": str(run_dir),
                "data": config["data"]["name"],
                "objective": label,
                "steps": summary.get("steps"),
                "tol": tol,
                "test_nll": summary["test_nll"],
                "train_s": summary.get("train_time_s"),
                **measure_nfe(run_dir, tol, batch, singles, seed=0),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="moons", choices=["moons", "checkerboard"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--runs", type=Path, nargs="+", default=None, help="measure these trained runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.runs:
        measured = measure_runs(args.runs, args.tol, args.batch, args.singles)
        print(f"\ndopri5 atol = rtol = {args.tol:g}\n")
        print(
            "| data | objective | steps | NFE / sample (mean, max) | NFE, batch of "
            f"{args.batch} samples | NFE, encode {args.batch} | test NLL | train s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in measured:
            print(
                f"| {r['data']} | {r['objective']} | {r['steps']} | {r['nfe_sample_1']:.1f}, "
                f"{r['nfe_sample_1_max']} | {r['nfe_sample_batch']} | {r['nfe_encode_batch']} "
                f"| {r['test_nll']:.3f} | {r['train_s']} |"
            )
        if args.json is not None:
            args.json.write_text(json.dumps(measured, indent=2) + "\n")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for coupling in ("independent", "ot"):
                trained = train_one(args.data, coupling, args.steps, seed, args.threads, Path(tmp))
                nfe = measure_nfe(trained.pop("run_dir"), args.tol, args.batch, args.singles, seed)
                row = {
                    "data": args.data,
                    "coupling": coupling,
                    "seed": seed,
                    "steps": args.steps,
                    "tol": args.tol,
                    **trained,
                    **nfe,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{args.data}, {args.steps} steps, dopri5 atol = rtol = {args.tol:g}\n")
    print(
        "| coupling | seed | NFE / sample (mean, max) | NFE, batch of "
        f"{args.batch} samples | NFE, encode {args.batch} | test NLL | train s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['coupling']} | {r['seed']} | {r['nfe_sample_1']:.1f}, {r['nfe_sample_1_max']} "
            f"| {r['nfe_sample_batch']} | {r['nfe_encode_batch']} | {r['test_nll']:.3f} "
            f"| {r['wall_s']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
