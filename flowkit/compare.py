"""Several runs side by side: training curves in one PNG, final metrics in a table (``flowkit compare``).

:func:`read_run_history` reads what a run folder holds without loading a model (``config.toml``,
``metrics.jsonl``, ``summary.json``); :func:`compare_runs` draws the figure and returns the table.

NLLs are comparable only on the same data, so runs are grouped by their data: the ``[data]``
section of their ``config.toml`` (the dataset and its parameters) less ``data_dir``,
``preprocess`` and ``alpha`` (the reported NLL and bits/dim count the preprocessing, so runs that
differ only there are comparable). Each group of runs gets its own row of panels; ``force=True``
(``flowkit compare --force``) puts every run on one axis anyway, with a warning.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowkit.errors import CheckpointError, ConfigError

__all__ = ["Comparison", "RunHistory", "compare_runs", "format_table", "read_run_history"]

#: ``[data]`` keys that do not change what an NLL measures (see the module docstring).
NOT_DATA_IDENTITY = ("data_dir", "preprocess", "alpha")
#: Training-curve keys, most comparable first (a key every run of a panel logs is plotted).
TRAIN_KEYS = ("bpd", "nll_per_dim", "loss")
#: Final metrics in the table: summary key → column heading.
TABLE_METRICS = {
    "test_nll": "test_nll",
    "test_bpd": "test_bpd",
    "best_val_nll": "best_val_nll",
    "train_time_s": "time_s",
}


@dataclass
class RunHistory:
    """What a run folder says about its training: config, metrics records and summary."""

    path: Path
    config: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.path.name or str(self.path)

    @property
    def data(self) -> dict[str, Any]:
        """The ``[data]`` keys that say which data the NLLs are of."""
        section = self.config.get("data", {})
        return {k: section[k] for k in sorted(section) if k not in NOT_DATA_IDENTITY}

    @property
    def data_label(self) -> str:
        return str(self.data.get("name", "?"))

    @property
    def status(self) -> str:
        if self.summary is None:
            return "incomplete" if self.train or self.evals else "no metrics"
        return str(self.summary.get("status", "?"))

    @property
    def steps(self) -> int | None:
        if self.summary is not None and "steps" in self.summary:
            return int(self.summary["steps"])
        if self.summary is not None and "step" in self.summary:
            return int(self.summary["step"])
        records = [*self.train, *self.evals]
        return max((int(r["step"]) for r in records), default=None)

    def section_name(self, section: str) -> str:
        return str(self.config.get(section, {}).get("name", "?"))


def read_run_history(path: str | Path) -> RunHistory:
    """The history of the run in ``path``; :class:`CheckpointError` when it is not a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is not a run folder ({'a file' if path.exists() else 'it does not exist'}); "
            f"give the folders that `flowkit run` writes (runs/<name>/)"
        )
    config_path = path / "config.toml"
    if not config_path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a flowkit run folder (no config.toml); give the folders that "
            f"`flowkit run` writes (runs/<name>/)"
        )
    try:
        config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid TOML: {exc}") from exc
    history = RunHistory(path=path, config=config)
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash
            kind = record.get("kind")
            if kind == "eval":
                history.evals.append(record)
            elif kind == "final":
                history.final = record
            elif kind is None:
                history.train.append(record)
    summary = path / "summary.json"
    if summary.is_file():
        try:
            loaded = json.loads(summary.read_text(encoding="utf-8"))
            history.summary = loaded if isinstance(loaded, dict) else None
        except ValueError:
            history.summary = None
    return history


# -- grouping by data --------------------------------------------------------------------------
def _data_groups(runs: Sequence[RunHistory]) -> list[list[RunHistory]]:
    groups: dict[str, list[RunHistory]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.data, sort_keys=True, default=str), []).append(run)
    return list(groups.values())


def _group_title(group: Sequence[RunHistory], groups: Sequence[Sequence[RunHistory]]) -> str:
    """``moons``, or ``moons (n_train=256)`` when another group uses the same dataset otherwise."""
    data = group[0].data
    others = [g[0].data for g in groups if g is not group and g[0].data.get("name") == data.get("name")]
    differing = sorted({k for other in others for k in set(data) | set(other) if data.get(k) != other.get(k)})
    detail = ", ".join(f"{k}={data.get(k)}" for k in differing)
    return f"{data.get('name', '?')}" + (f" ({detail})" if detail else "")


def _differences(groups: Sequence[Sequence[RunHistory]]) -> str:
    """In words: which run uses which data."""
    return "; ".join(f"{', '.join(r.label for r in g)}: {_group_title(g, groups)}" for g in groups)


# -- curves ------------------------------------------------------------------------------------
def _train_key(group: Sequence[RunHistory]) -> str | None:
    """The training-curve key every run of ``group`` logs (most comparable first), else None."""
    for key in TRAIN_KEYS:
        if all(any(key in r for r in run.train) for run in group if run.train):
            return key
    return None


def _own_train_key(run: RunHistory) -> str | None:
    for key in ("loss", "bpd", "nll_per_dim"):
        if any(key in r for r in run.train):
            return key
    return None


def _eval_value(record: Mapping[str, Any], unit: str) -> float | None:
    """A record's validation (else test) NLL or bits/dim."""
    for split in ("val", "test"):
        value = record.get(f"{split}_{unit}")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _eval_unit(group: Sequence[RunHistory]) -> str:
    """``bpd`` when every run with evaluations reports bits/dim, else ``nll`` (nats)."""
    evaluated = [run for run in group if run.evals or run.final]
    records = lambda run: [*run.evals, *([run.final] if run.final else [])]  # noqa: E731
    if evaluated and all(any(_eval_value(r, "bpd") is not None for r in records(run)) for run in evaluated):
        return "bpd"
    return "nll"


def _points(records: Iterable[Mapping[str, Any]], value: Callable[..., Any]) -> tuple[list[int], list[float]]:
    # value(record): a number or None (Callable[..., Any]: mypy cannot infer a lambda with a
    # default argument, `lambda r, k=own: r.get(k)`, against a one-argument Callable)
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        v = value(record)
        if v is not None:
            steps.append(int(record["step"]))
            values.append(float(v) if math.isfinite(float(v)) else math.nan)
    return steps, values


def _plot_row(axes: Any, group: Sequence[RunHistory], colors: dict[str, Any], title: str) -> None:
    ax_train, ax_eval = axes
    key = _train_key(group)
    for run in group:
        own = key or _own_train_key(run)
        if own is None:
            continue
        steps, values = _points(run.train, lambda r, k=own: r.get(k))
        label = run.label if key else f"{run.label} ({own})"
        ax_train.plot(steps, values, color=colors[run.label], label=label, linewidth=1.2)
    ax_train.set_title(f"{title}: training curve")
    ax_train.set_xlabel("step")
    ax_train.set_ylabel(
        {"bpd": "train bits/dim", "nll_per_dim": "train NLL per dim (nats)"}.get(
            key or "", "training loss (each run's objective)"
        )
    )
    unit = _eval_unit(group)
    anything = False
    for run in group:
        steps, values = _points(run.evals, lambda r: _eval_value(r, unit))
        if steps:
            ax_eval.plot(steps, values, "o-", color=colors[run.label], label=run.label, markersize=3)
            anything = True
        if run.final is not None:
            final = _eval_value(run.final, unit)
            if final is not None:
                ax_eval.plot(
                    [int(run.final["step"])],
                    [final],
                    "*",
                    color=colors[run.label],
                    markersize=12,
                    label=None if steps else run.label,
                )
                anything = True
    ax_eval.set_title(f"{title}: evaluation (o periodic, * final test)")
    ax_eval.set_xlabel("step")
    ax_eval.set_ylabel("bits/dim" if unit == "bpd" else "NLL (nats per example)")
    if not anything:
        ax_eval.text(0.5, 0.5, "no evaluations", ha="center", va="center", transform=ax_eval.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")


# -- the comparison ----------------------------------------------------------------------------
@dataclass
class Comparison:
    """What :func:`compare_runs` made: the runs, their data groups, the table and notes."""

    runs: list[RunHistory]
    groups: list[list[RunHistory]]
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]
    figure: Path


def _cell(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        return format(value, spec) if math.isfinite(value) and abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _table(runs: Sequence[RunHistory]) -> tuple[list[str], list[list[str]]]:
    metrics = [k for k in TABLE_METRICS if any(r.summary and r.summary.get(k) is not None for r in runs)]
    columns = [
        "run",
        "data",
        "transform",
        "objective",
        "steps",
        "status",
        *(TABLE_METRICS[k] for k in metrics),
    ]
    rows = []
    for run in runs:
        summary = run.summary or {}
        rows.append(
            [
                run.label,
                run.data_label,
                run.section_name("transform"),
                run.section_name("objective"),
                "-" if run.steps is None else str(run.steps),
                run.status,
                *(_cell(summary.get(k), ".1f" if k == "train_time_s" else ".4f") for k in metrics),
            ]
        )
    return columns, rows


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with spaces (numbers right-aligned), a rule under the heading."""
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    numeric = [i >= 4 and all(_is_number(r[i]) for r in rows) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            (c.rjust(w) if num else c.ljust(w)) for c, w, num in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def compare_runs(
    paths: Sequence[str | Path], out: str | Path = "compare.png", *, force: bool = False
) -> Comparison:
    """Read the runs in ``paths``, draw their curves into the PNG ``out`` and tabulate them.

    Runs of different data go in separate rows of panels (one per data group); ``force`` puts
    them all on one axis. Raises :class:`CheckpointError` for a folder that is not a run.
    """
    if not paths:
        raise ConfigError("flowkit compare needs at least one run folder")
    runs = [read_run_history(p) for p in paths]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # two runs of the same name in different folders
        for run in runs:
            run.label = str(run.path)
    if len({r.label for r in runs}) != len(runs):
        raise ConfigError("flowkit compare: a run folder is given twice")
    groups = _data_groups(runs)
    notes = []
    if len(groups) > 1:
        if force:
            notes.append(
                f"warning: the runs use different data ({_differences(groups)}); --force plots them "
                f"on one axis, but their NLLs are not comparable"
            )
        else:
            notes.append(
                f"note: the runs use different data ({_differences(groups)}); NLLs of different data are "
                f"not comparable, so each data gets its own row of panels (--force: one axis)"
            )
    rows_to_plot = [runs] if force else groups
    if force:
        titles = ["all runs (different data)" if len(groups) > 1 else _group_title(groups[0], groups)]
    else:
        titles = [_group_title(g, groups) for g in groups]

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from flowkit.atomic import atomic_write

    cmap = plt.get_cmap("tab10")
    colors = {run.label: cmap(i % 10) for i, run in enumerate(runs)}
    fig, axes = plt.subplots(len(rows_to_plot), 2, figsize=(12, 4 * len(rows_to_plot)), squeeze=False)
    for row_axes, group, title in zip(axes, rows_to_plot, titles):
        _plot_row(row_axes, group, colors, title)
    fig.suptitle(f"flowkit compare: {len(runs)} run{'s' if len(runs) != 1 else ''}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    columns, rows = _table(runs)
    return Comparison(runs=runs, groups=groups, columns=columns, rows=rows, notes=notes, figure=out)
