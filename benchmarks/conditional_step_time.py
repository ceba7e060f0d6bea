"""Step-time ratios of ``flowkit bench conditional``, measured several times over.

``flowkit bench conditional`` measures each task's step times once (interleaved rounds, medians).
On a shared machine one measurement can be swayed by other jobs, so this script repeats the same
measurement (:func:`flowkit.bench.conditional.run.measure_step_times`: every row on the same batch,
the rows' order rotating every round, wall and CPU time) ``--repeats`` times per task and reports,
per flowkit row, the median over repeats of its ratio to the fastest peer of its family, with the
range, for wall time and for the process's CPU time, and the 1-minute load average.

    .venv/bin/python benchmarks/conditional_step_time.py --repeats 3
    .venv/bin/python benchmarks/conditional_step_time.py --tasks two-moons --rounds 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.bench.conditional.report import step_ratios
from flowkit.bench.conditional.run import Settings, Standardizer, measure_step_times
from flowkit.bench.conditional.tasks import TASKS, generator, get_task


def measure(tasks: list[str], repeats: int, rounds: int, threads: int) -> dict[str, object]:
    """Per task and flowkit row: median (min, max) over repeats of the wall and CPU ratios."""
    torch.set_num_threads(threads)
    settings = replace(Settings(), timing_rounds=rounds, threads=threads)
    out: dict[str, object] = {"threads": threads, "repeats": repeats, "rounds": rounds, "tasks": {}}
    for name in tasks:
        task = get_task(name)
        theta, x = task.joint(settings.batch_size, generator("timing", task.name))
        std = Standardizer.fit(theta, x)
        batch = (std.theta(theta), std.x(x))
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        loads = []
        for _ in range(repeats):
            cpu_ms: dict[str, float] = {}
            loads.append(os.getloadavg()[0])
            wall_ms = measure_step_times(task, list(settings.rows), settings, batch, None, cpu_ms)
            for store, ms in ((wall, wall_ms), (cpu, cpu_ms)):
                for row, ratio in step_ratios(ms).items():
                    if row.startswith("flowkit") and ratio is not None:
                        store.setdefault(row, []).append(ratio)
        out["tasks"][name] = {
            row: {
                kind: {
                    "median": round(statistics.median(v), 3),
                    "range": [round(min(v), 3), round(max(v), 3)],
                }
                for kind, v in (("wall", wall[row]), ("cpu", cpu.get(row, [])))
                if v
            }
            for row in wall
        } | {"load_average": [round(v, 2) for v in loads]}
        print(name, json.dumps(out["tasks"][name]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = measure(args.tasks.split(","), args.repeats, args.rounds, args.threads)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
