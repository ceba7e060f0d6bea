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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowkit.atomic import atomic_write_text
from flowkit.bench.cell import RESULT, set_aside
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


def cell_spec(suite: Suite, cell: Cell, out_dir: Path, data_dir: str | None, threads: int) -> dict[str, Any]:
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
        "suite_ref": suite.ref,
        "python_path": [str((folder / p).resolve()) for p in suite.meta["python_path"]],
    }


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


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
        raise ConfigError(
            f"no cell of suite '{suite.name}' matches --only {list(only)} "
            f"--filter {list(filters)}; see `flowkit bench {suite.ref} --dry-run`"
        )
    jobs = jobs or int(suite.meta.get("jobs", 1)) or 1
    threads = _threads_per_job(jobs)
    todo = []
    for cell in cells:
        if not force and stored_result(out_dir, cell) is not None:
            continue
        if cell.excluded:
            folder = cell_dir(out_dir, cell)
            record = cell.record({"status": "excluded", "reason": cell.excluded})
            atomic_write_text(folder / RESULT, json.dumps(record, indent=2) + "\n")
            continue
        todo.append(cell)
    log(
        f"suite {suite.name}: {len(cells)} cells selected, {len(cells) - len(todo)} already "
        f"done, {len(todo)} to run ({jobs} at a time, {threads} thread(s) each) -> {out_dir}"
    )
    bar = tqdm(
        total=len(todo), disable=not progress or not todo, desc=f"bench {suite.name}", dynamic_ncols=True
    )

    def one(cell: Cell) -> dict[str, Any]:
        folder = cell_dir(out_dir, cell)
        folder.mkdir(parents=True, exist_ok=True)
        if force and (folder / "run").exists():  # retrain; a changed cell is caught in cell.py
            log(f"  {cell.id}: --force: the previous run is kept in {set_aside(folder / 'run')}")
        spec_path = folder / "spec.json"
        atomic_write_text(spec_path, json.dumps(cell_spec(suite, cell, out_dir, data_dir, threads), indent=2))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=_parent_import_path())
        with open(folder / "stderr.txt", "w", encoding="utf-8") as err:
            # -P: the working folder is not put first on the child's import path (a `flowkit/`
            # checkout there would otherwise replace the flowkit this process runs)
            proc = subprocess.run(
                [sys.executable, "-P", "-m", "flowkit.bench.cell", str(spec_path)],
                stdout=err,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        path = folder / RESULT
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
        else:  # the child died before writing (killed, out of memory): report it, retry next time
            reason = (
                f"the cell's process exited with status {proc.returncode} without a result; "
                f"see {folder / 'stderr.txt'}"
            )
            record = cell.record({"status": "failed", "reason": reason})
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return record

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(one, cell): cell for cell in todo}
            for future in as_completed(futures):
                record = future.result()  # results arrive one at a time, in this thread
                bar.update(1)
                status = record["status"]
                bar.write(
                    f"  {record['id']}: {status}"
                    + (f" ({record.get('reason', '')[:160]})" if status != "completed" else "")
                )
                write_outputs(suite, collect(suite, out_dir), out_dir)
    finally:
        bar.close()
    results = collect(suite, out_dir)
    write_outputs(suite, results, out_dir)
    return results


def _parent_import_path() -> str:
    """This process's ``sys.path`` as ``PYTHONPATH``: a cell imports the same flowkit as its parent."""
    return os.pathsep.join(str(Path(p).resolve()) if p else os.getcwd() for p in sys.path)


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
