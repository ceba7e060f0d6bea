"""Running a suite: pick cells, skip finished ones, run the rest (in parallel with ``jobs``).

Every cell runs in a child process (:mod:`flowkit.bench.cell`) and leaves
``<out>/cells/<id>/result.json``. A re-run skips cells whose result exists and whose fingerprint
(what the cell computes) is unchanged; a cell cut off mid-training resumes from its checkpoint.
Results and the report are rewritten after every cell, so a cut-off suite still has a report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowkit.atomic import atomic_write_text
from flowkit.bench.cell import RESULT
from flowkit.bench.suite import Cell, Suite
from flowkit.errors import ConfigError

FINAL = ("completed", "invalid", "excluded")


def cell_dir(out_dir: Path, cell: Cell) -> Path:
    return out_dir / "cells" / cell.id


def stored_result(out_dir: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's stored result if it is final and was computed by the same cell definition."""
    path = cell_dir(out_dir, cell) / RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != cell.fingerprint() or record.get("status") not in FINAL:
        return None
    return record


def cell_spec(suite: Suite, cell: Cell, out_dir: Path, data_dir: str | None,
              threads: int) -> dict[str, Any]:
    """What the child process needs to run ``cell`` (JSON-serialisable)."""
    folder = suite.path.parent
    return {
        "cell": cell.to_dict(),
        "cell_dir": str(cell_dir(out_dir, cell).resolve()),
        "base": suite.base,
        "metrics": suite.metrics,
        "data_dir": data_dir,
        "threads": threads,
        "suite_path": str(suite.path),
        "python_path": [str((folder / p).resolve()) for p in suite.meta["python_path"]],
    }


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def set_aside_stale_run(folder: Path, cell: Cell, force: bool) -> Path | None:
    """Move a cell's ``run/`` aside when it was trained for another definition of the cell.

    A run folder left by the same cell definition (a cut-off run) is resumed, so it stays. One
    trained for a different definition (the suite was edited: its ``spec.json`` has another
    fingerprint), or any run under ``--force``, must not be resumed; it is renamed to
    ``run.previous-<time>`` rather than deleted. Returns the new name, or ``None``.
    """
    run = folder / "run"
    if not run.exists():
        return None
    same = False
    spec = folder / "spec.json"
    if spec.is_file():
        try:
            old = Cell.from_dict(json.loads(spec.read_text(encoding="utf-8"))["cell"])
            same = old.fingerprint() == cell.fingerprint()
        except (ValueError, KeyError, TypeError):
            same = False
    if same and not force:
        return None
    target = folder / f"run.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"run.previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    run.rename(target)
    return target


def run_suite(
    suite: Suite,
    out_dir: str | Path,
    *,
    only: tuple[str, ...] = (),
    filters: tuple[str, ...] = (),
    jobs: int = 0,
    data_dir: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the selected cells of ``suite`` into ``out_dir``; write results and the report.

    ``jobs`` cells run at once (0: the suite's ``jobs``); each child gets ``cpus // jobs``
    threads. Returns the result records of every cell of the suite that has one.
    """
    from flowkit.bench.report import write_outputs

    out_dir = Path(out_dir)
    cells = suite.select(only, filters)
    if not cells:
        raise ConfigError(f"no cell of suite '{suite.name}' matches --only {list(only)} "
                          f"--filter {list(filters)}; see `flowkit bench {suite.path} --dry-run`")
    jobs = jobs or int(suite.meta.get("jobs", 1)) or 1
    threads = _threads_per_job(jobs)
    todo = []
    for cell in cells:
        if not force and stored_result(out_dir, cell) is not None:
            continue
        if cell.excluded:
            folder = cell_dir(out_dir, cell)
            record = {"id": cell.id, "group": cell.group, "kind": cell.kind, "axes": cell.axes,
                      "fingerprint": cell.fingerprint(), "status": "excluded",
                      "reason": cell.excluded}
            atomic_write_text(folder / RESULT, json.dumps(record, indent=2) + "\n")
            continue
        todo.append(cell)
    log(f"suite {suite.name}: {len(cells)} cells selected, {len(cells) - len(todo)} already "
        f"done, {len(todo)} to run ({jobs} at a time, {threads} thread(s) each) -> {out_dir}")
    bar = tqdm(total=len(todo), disable=not progress or not todo, desc=f"bench {suite.name}",
               dynamic_ncols=True)

    def one(cell: Cell) -> dict[str, Any]:
        folder = cell_dir(out_dir, cell)
        folder.mkdir(parents=True, exist_ok=True)
        kept = set_aside_stale_run(folder, cell, force)
        if kept is not None:
            log(f"  {cell.id}: the cell changed (or --force) since its run was trained; the "
                f"previous run is kept in {kept}")
        spec_path = folder / "spec.json"
        atomic_write_text(spec_path, json.dumps(cell_spec(suite, cell, out_dir, data_dir,
                                                          threads), indent=2))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        with open(folder / "stderr.txt", "w", encoding="utf-8") as err:
            proc = subprocess.run([sys.executable, "-m", "flowkit.bench.cell", str(spec_path)],
                                  stdout=err, stderr=subprocess.STDOUT, env=env, check=False)
        path = folder / RESULT
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
        else:  # the child died before writing (killed, out of memory): report it, retry next time
            record = {"id": cell.id, "group": cell.group, "kind": cell.kind, "axes": cell.axes,
                      "fingerprint": cell.fingerprint(), "status": "failed",
                      "reason": f"the cell's process exited with status {proc.returncode} "
                                f"without a result; see {folder / 'stderr.txt'}"}
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return record

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(one, cell): cell for cell in todo}
            for future in as_completed(futures):
                record = future.result()  # results arrive one at a time, in this thread
                bar.update(1)
                status = record["status"]
                bar.write(f"  {record['id']}: {status}"
                          + (f" ({record.get('reason', '')[:160]})" if status != "completed"
                             else ""))
                write_outputs(suite, collect(suite, out_dir), out_dir)
    finally:
        bar.close()
    results = collect(suite, out_dir)
    write_outputs(suite, results, out_dir)
    return results


def collect(suite: Suite, out_dir: Path) -> list[dict[str, Any]]:
    """The stored results of every cell of the suite (current fingerprints only), in suite order."""
    out = []
    for cell in suite.cells:
        path = cell_dir(out_dir, cell) / RESULT
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("fingerprint") == cell.fingerprint():
            out.append(record)
    return out
