"""Running one benchmark cell: train (or resume) a run, then measure it; or call a Python cell.

Each cell runs in its own process (``python -m flowkit.bench.cell SPEC.json``) so its peak
memory is its own, a crash cannot take the suite down, and ``--jobs`` can run several at once.
The result is written atomically to ``<cell dir>/result.json``; a cell whose result exists is
finished, and a cell cut off mid-training resumes from its run's newest checkpoint.
"""

from __future__ import annotations

import importlib
import json
import math
import resource
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import tomli_w

from flowkit.atomic import atomic_write_text
from flowkit.bench.suite import Budget, Cell
from flowkit.errors import FlowkitError, TrainingDiverged

RESULT = "result.json"


def _toml_value(value: Any) -> str:
    """``value`` as one-line TOML (arrays inline, so a ``--set`` stays on one line)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def cell_overrides(base_train: dict[str, Any], cell: Cell) -> list[str]:
    """The ``--set`` overrides of a training cell: the suite's settings, budget and seed."""
    budget = Budget.parse(cell.axes["budget"]).overrides()
    sets = {f"train.{k}": v for k, v in budget.items()}
    sets["train.seed"] = cell.axes["seed"]
    sets.update(cell.settings)
    return [f"{k}={_toml_value(v)}" for k, v in sets.items()]


def plugin_name(cell: Cell, section: str) -> str:
    """The plugin a training cell uses for ``section`` (transform, objective, prior, data): the
    axis value, unless an ``[[override]]`` sets ``<section>.name`` — then a given axis value is a
    label, e.g. objective ``flow-matching-ot`` for ``flow-matching`` with ``coupling = "ot"``.
    An empty axis value (the recommended prior) stays empty: the override then sets the plugin
    like any other setting."""
    value = cell.axes[section]
    if value in ("", None):
        return ""
    return str(cell.settings.get(f"{section}.name", value))


def cell_config(base: dict[str, Any], cell: Cell, data_dir: str | None) -> dict[str, Any]:
    """The resolved run config of a training cell (raises FlowkitError if it makes no sense).

    The suite's ``[base]`` settings are given as ``--set`` overrides, exactly as
    :func:`cell_command` writes them, so they win over the settings a chosen plugin recommends
    (e.g. ``flow-matching``'s ``train.batch_size = 256``) and the cell trains what its reported
    command trains.
    """
    from flowkit.config import flatten, load_config

    return load_config(
        None,
        [f"{k}={_toml_value(v)}" for k, v in flatten(base).items()]
        + cell_overrides(base.get("train", {}), cell),
        transform=plugin_name(cell, "transform"),
        objective=plugin_name(cell, "objective"),
        prior=plugin_name(cell, "prior") or None,
        data=plugin_name(cell, "data"),
        data_dir=data_dir,
    )


def cell_command(base: dict[str, Any], cell: Cell) -> str:
    """A ``flowkit run`` command line that trains what the cell trains."""
    from flowkit.config import flatten

    parts = ["flowkit", "run", "--transform", plugin_name(cell, "transform")]
    parts += ["--objective", plugin_name(cell, "objective")]
    if plugin_name(cell, "prior"):
        parts += ["--prior", plugin_name(cell, "prior")]
    parts += ["--data", plugin_name(cell, "data")]
    flat = flatten(base)
    for text in [f"{k}={_toml_value(v)}" for k, v in flat.items()] + cell_overrides({}, cell):
        parts += ["--set", text]
    return shlex.join(parts)


def _peak_memory() -> dict[str, float]:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: NaN / inf become ``None``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


# -- training cells -----------------------------------------------------------------------------
def _set_aside_other_run(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """Rename a run folder whose config differs from ``config`` beyond what resuming may change
    (so it cannot be resumed) to ``run.previous-<time>``; returns the new path, or ``None``."""
    from flowkit.config import resolve, resume_conflicts
    from flowkit.errors import FlowkitError
    from flowkit.runs import read_run_config

    if not run_dir.exists():
        return None
    try:
        conflicts = resume_conflicts(resolve(read_run_config(run_dir)), config)
    except FlowkitError:
        conflicts = ["config.toml"]  # unreadable or missing: not resumable either
    return set_aside(run_dir) if conflicts else None


def set_aside(run_dir: Path) -> Path:
    """Rename a run folder that must not be resumed to ``run.previous-<time>`` (never delete
    what a user trained); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"run.previous-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"run.previous-{stamp}-{n}")
    run_dir.rename(target)
    return target


def run_train_cell(spec: dict[str, Any], cell_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train (or resume) the cell's run and measure it; returns the result record."""
    from flowkit.builder import build_model, build_objective
    from flowkit.runs import list_checkpoints, load_dataset
    from flowkit.trainer import resume, train

    cell = Cell.from_dict(spec["cell"])
    result: dict[str, Any] = {"command": cell_command(spec["base"], cell)}
    try:
        config = cell_config(spec["base"], cell, spec.get("data_dir"))
        data = load_dataset(config)
        model = build_model(config, data.meta)
        objective = build_objective(config["objective"])
        objective.bind_data(data)
        objective.setup(model)  # e.g. flow-matching refuses a transform without a vector field
    except FlowkitError as exc:
        return result | {"status": "invalid", "reason": str(exc)}
    run_dir = cell_dir / "run"
    kept = _set_aside_other_run(run_dir, config)
    if kept is not None:
        log(f"{cell.id}: {run_dir} was trained with another config; kept as {kept.name}")
    t0 = time.perf_counter()
    try:
        if list_checkpoints(run_dir):
            summary = resume(run_dir, config, progress=False, log=log)
        else:
            summary = train(config, run_dir, progress=False, log=log)
    except TrainingDiverged as exc:
        return result | {"status": "diverged", "reason": str(exc)}
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["exact_density"] = bool(summary.get("exact_density", True))
    extra, errors, figures = measure_run(run_dir, data, spec["metrics"], cell_dir, spec.get("data_dir"))
    metrics.update(extra)
    metrics.update(_peak_memory())
    figures = [str(Path("run") / f) for f in summary.get("figures", [])] + figures
    return result | {
        "status": "completed",
        "metrics": _finite(metrics),
        "metric_errors": errors,
        "figures": figures,
    }


def measure_run(
    run_dir: Path, data: Any, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Every metric the suite switches on, for a finished run; errors are recorded, not raised."""
    from flowkit.bench import measures
    from flowkit.runs import load_run

    run = load_run(run_dir)
    metrics: dict[str, Any] = {}
    errors: dict[str, str] = {}
    figures: list[str] = []
    for name, fn in measures.MEASURES.items():
        if not switches.get(name):
            continue
        try:
            out = fn(run, data, switches, cell_dir, data_dir)
        except Exception as exc:  # one failing metric must not lose the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        figures += [str(p) for p in out.pop("_figures", [])]
        metrics.update(out)
    return metrics, errors, figures


# -- python cells --------------------------------------------------------------------------------
def run_python_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Import ``module:function`` (with the suite's ``python_path``) and call it with the params."""
    cell = Cell.from_dict(spec["cell"])
    for folder in reversed(spec.get("python_path", [])):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module_name, _, func_name = cell.callable.partition(":")
    try:
        module = importlib.import_module(module_name)
        fn = getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        return {
            "status": "invalid",
            "reason": f"cannot import {cell.callable!r}: {exc} (python_path: {spec.get('python_path', [])})",
        }
    t0 = time.perf_counter()
    out = fn(**cell.params)
    rows = out if isinstance(out, list) else [out]
    return {
        "status": "completed",
        "rows": [_finite(dict(r)) for r in rows],
        "metrics": {"wall_time_s": time.perf_counter() - t0, **_peak_memory()},
        "command": f"flowkit bench {spec.get('suite_ref', spec['suite_path'])} --only {cell.id}",
    }


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a cell spec and write its result atomically; returns the result."""
    cell = Cell.from_dict(spec["cell"])
    cell_dir = Path(spec["cell_dir"])
    cell_dir.mkdir(parents=True, exist_ok=True)
    log_path = cell_dir / "log.txt"

    def log(message: str) -> None:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")

    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    try:
        if cell.kind == "python":
            result = run_python_cell(spec)
        else:
            result = run_train_cell(spec, cell_dir, log)
    except Exception as exc:  # reported in the table; the traceback stays in the cell's log
        log(traceback.format_exc())
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    record = cell.record(result)
    record["execution"] = _execution()
    atomic_write_text(cell_dir / RESULT, json.dumps(record, indent=2, default=str) + "\n")
    return record


def _execution() -> dict[str, Any]:
    """The cell's thread count and the path each same-function-different-cost operation took
    (:func:`flowkit.execution.autotune.summary`), for the report."""
    try:
        from flowkit.execution import autotune

        return autotune.summary()
    except Exception as exc:  # never lose a result over its bookkeeping
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    """``python -m flowkit.bench.cell SPEC.json``: run one cell in this process."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    record = execute(spec)
    return 0 if record["status"] in ("completed", "invalid") else 1


if __name__ == "__main__":
    raise SystemExit(main())
