"""Benchmark suites: a TOML matrix of training cells and Python measurement cells.

The built-in suites (``quick``, ``toy2d``, ``mnist``, ``ood``, ``parallelism``) ship inside the
package, in ``flowkit/bench/suites/`` (:data:`BUILTIN_SUITES`), so ``flowkit bench quick`` works
from an installed wheel; a name is looked up in the folders the command line is given first (see
``flowkit bench --help``). A suite file (see ``docs/benchmarks.md``)::

    [suite]
    description = "Real NVP vs Glow on moons"
    rank_by = "test_nll"                  # the ranking metric (lower is better unless listed
    higher_is_better = ["sample_accuracy"]  # here)
    baseline = { transform = "realnvp" }  # cost ratios are taken against this cell's group

    [base]                                # a flowkit run config every training cell starts from
    train = { steps = 200, threads = 1 }

    [matrix]                              # the cartesian product of these axes
    transform = ["realnvp", "glow"]
    objective = ["mle"]
    prior = []                            # empty or missing: the plugins' recommended prior
    data = ["moons"]
    budget = ["200 steps", "1 min"]       # steps, or training wall-clock minutes
    seed = [0, 1]

    [[override]]                          # per-cell settings where `match` matches
    match = { transform = "glow" }
    set = { "transform.steps_per_level" = 4 }

    [[exclude]]                           # cells skipped on purpose, with the reason reported
    match = { transform = "glow", data = "moons" }
    reason = "Glow is an image architecture"

    [metrics]                             # which metrics every training cell computes
    sample_quality = true

    [[python]]                            # measurement functions in benchmark code (peers)
    name = "realnvp784"
    callable = "benchmarks.peers.measure:realnvp784"
    params = { steps = 20 }

Cells that do not make sense together (e.g. a 2-D dataset with an image architecture) are
detected when their config is resolved and the model built, and reported as ``invalid`` with
the reason — never crashed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowkit.errors import ConfigError, did_you_mean

AXES = ("transform", "objective", "prior", "data", "budget", "seed")
SUITE_KEYS = ("suite", "base", "matrix", "override", "exclude", "metrics", "python", "report")
METRICS = {
    "likelihood": True,  # test NLL / bits/dim (always on for training cells)
    "reconstruction": True,  # mean / max |decode(encode(x)) - x|
    "sample_quality": True,  # sliced-Wasserstein and Sinkhorn distances to test data
    "frechet": False,  # Fréchet distance in flowkit's own classifier's feature space
    "class_accuracy": False,  # class-conditional sample accuracy (conditional priors)
    "throughput": True,  # density and sampling samples/s
    "n_samples": 1000,  # samples drawn for the sample metrics
    "ood": [],  # other datasets whose test bits/dim are reported (same shape)
    "figures": True,  # per-cell figures (samples / 2-D density)
}
#: The folder of the suites shipped with flowkit (package data of ``flowkit.bench``).
BUILTIN_SUITES = Path(__file__).resolve().parent / "suites"
SUITE_META = {
    "description": "",
    "rank_by": "test_nll",
    "higher_is_better": [],
    "baseline": {},
    "python_path": [],
    "jobs": 1,
}


@dataclass(frozen=True)
class Budget:
    """A training budget: a number of steps or training wall-clock minutes."""

    steps: int | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Budget:
        """``200`` / ``"200 steps"`` → steps; ``"1.5 min"`` / ``"90 s"`` → wall-clock."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(steps=value)
        m = re.fullmatch(r"\s*([0-9.]+)\s*(steps?|min|minutes?|s|sec|seconds?)\s*", str(value))
        if not m:
            raise ConfigError(
                f"budget {value!r}: write a number of steps (200 or '200 steps') or a wall-clock "
                f"budget ('5 min', '90 s')"
            )
        number, unit = float(m.group(1)), m.group(2)
        if unit.startswith("step"):
            return cls(steps=int(number))
        return cls(minutes=number if unit.startswith("min") else number / 60.0)

    @property
    def label(self) -> str:
        if self.steps is not None:
            return f"{self.steps} steps"
        return f"{self.minutes:g} min"

    def overrides(self) -> dict[str, Any]:
        """The ``[train]`` settings that implement this budget."""
        if self.steps is not None:
            return {"steps": self.steps, "max_minutes": 0.0}
        return {"steps": 10_000_000, "max_minutes": float(self.minutes or 0.0)}


@dataclass
class Cell:
    """One unit of benchmark work: a training run (``kind = "train"``) or a Python call."""

    id: str
    kind: str
    axes: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # dotted config overrides
    excluded: str = ""  # reason, if excluded on purpose
    callable: str = ""  # python cells: "module:function"
    params: dict[str, Any] = field(default_factory=dict)  # python cells: keyword arguments

    @property
    def group(self) -> str:
        """The cell's id without its seed: cells of one group are aggregated over seeds."""
        return re.sub(r"__s\d+$", "", self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "axes": self.axes,
            "settings": self.settings,
            "excluded": self.excluded,
            "callable": self.callable,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(**d)

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        """The stored result of the cell: what identifies it (id, group, kind, axes, fingerprint),
        then ``result`` (``status``, ``reason``, the measures)."""
        return {
            "id": self.id,
            "group": self.group,
            "kind": self.kind,
            "axes": self.axes,
            "fingerprint": self.fingerprint(),
        } | result

    def fingerprint(self) -> str:
        """A hash of what the cell computes; a changed suite invalidates stored results."""
        blob = json.dumps(
            {k: v for k, v in self.to_dict().items() if k != "excluded"}, sort_keys=True, default=str
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Suite:
    """A parsed suite: its metadata, the base config, the metric switches and its cells."""

    name: str
    path: Path
    meta: dict[str, Any]
    base: dict[str, Any]
    metrics: dict[str, Any]
    cells: list[Cell]
    report: dict[str, Any]

    @property
    def ref(self) -> str:
        """How a command names this suite: its name when built in, else its file's path."""
        return self.name if self.path.resolve().parent == BUILTIN_SUITES else str(self.path)

    def select(self, only: tuple[str, ...] = (), filters: tuple[str, ...] = ()) -> list[Cell]:
        """Cells whose id matches one of the ``only`` globs and every ``key=value`` filter."""
        wanted = parse_filters(filters)
        out = []
        for cell in self.cells:
            if only and not any(fnmatch.fnmatch(cell.id, pat) for pat in only):
                continue
            if any(str(cell.axes.get(k)) not in values for k, values in wanted.items()):
                continue
            out.append(cell)
        return out


def parse_filters(filters: tuple[str, ...]) -> dict[str, set[str]]:
    """``("transform=glow,realnvp", "seed=0")`` → ``{"transform": {...}, "seed": {"0"}}``."""
    out: dict[str, set[str]] = {}
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or key not in (*AXES, "name"):
            raise ConfigError(
                f"--filter {text!r}: write AXIS=VALUE[,VALUE...] with AXIS one of "
                f"{', '.join((*AXES, 'name'))}.{did_you_mean(key, AXES)}"
            )
        out.setdefault(key, set()).update(v.strip() for v in value.split(","))
    return out


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-") or "x"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    return value


def _matches(match: dict[str, Any], axes: dict[str, Any]) -> bool:
    for key, want in match.items():
        wanted = want if isinstance(want, list) else [want]
        if str(axes.get(key)) not in [str(w) for w in wanted]:
            return False
    return True


def _check_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r}.{did_you_mean(key, list(allowed))} "
                f"Allowed: {', '.join(allowed)}."
            )


def load_suite(source: str | Path, search: tuple[Path, ...] = ()) -> Suite:
    """Read and expand a suite file (a path, or a name found in one of the ``search`` folders)."""
    path = find_suite(source, search)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"suite {path}: not valid TOML ({exc})") from exc
    return parse_suite(raw, path)


def find_suite(source: str | Path, search: tuple[Path, ...] = ()) -> Path:
    """Resolve a suite argument: an existing file, or ``NAME`` → ``<folder>/NAME.toml``."""
    path = Path(source)
    if path.is_file():
        return path
    for folder in search:
        candidate = folder / f"{source}.toml"
        if candidate.is_file():
            return candidate
    names = [p.stem for folder in search if folder.is_dir() for p in sorted(folder.glob("*.toml"))]
    hint = did_you_mean(str(source), names)
    listing = f" Suites found: {', '.join(names)}." if names else ""
    raise ConfigError(f"no suite {str(source)!r}: not a file and not a suite name.{hint}{listing}")


def parse_suite(raw: dict[str, Any], path: Path) -> Suite:
    """Validate a suite's tables and expand its matrix into cells."""
    _check_keys(f"suite {path.name}", raw, SUITE_KEYS)
    meta = dict(SUITE_META)
    suite_table = raw.get("suite", {})
    _check_keys(f"suite {path.name} [suite]", suite_table, tuple(SUITE_META))
    meta.update(suite_table)
    metrics = dict(METRICS)
    _check_keys(f"suite {path.name} [metrics]", raw.get("metrics", {}), tuple(METRICS))
    metrics.update(raw.get("metrics", {}))
    base = raw.get("base", {})
    cells = _matrix_cells(raw, path)
    cells += _python_cells(raw, path)
    ids = [c.id for c in cells]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"suite {path.name}: duplicate cell ids {dupes}; give python cells distinct names")
    return Suite(path.stem, path, meta, base, metrics, cells, raw.get("report", {}))


def _matrix_cells(raw: dict[str, Any], path: Path) -> list[Cell]:
    matrix = raw.get("matrix")
    if not matrix:
        return []
    _check_keys(f"suite {path.name} [matrix]", matrix, AXES)
    axes_values = {axis: _as_list(matrix.get(axis)) for axis in AXES}
    for axis in ("transform", "data"):
        if not axes_values[axis]:
            raise ConfigError(f"suite {path.name} [matrix]: '{axis}' needs at least one value")
    axes_values["objective"] = axes_values["objective"] or ["mle"]
    axes_values["prior"] = axes_values["prior"] or [""]  # "": the recommended prior
    axes_values["budget"] = [Budget.parse(b).label for b in axes_values["budget"] or [200]]
    axes_values["seed"] = axes_values["seed"] or [0]
    overrides = raw.get("override", [])
    excludes = raw.get("exclude", [])
    for i, item in enumerate(overrides):
        _check_keys(f"suite {path.name} [[override]] #{i + 1}", item, ("match", "set"))
    for i, item in enumerate(excludes):
        _check_keys(f"suite {path.name} [[exclude]] #{i + 1}", item, ("match", "reason"))
    cells = []
    for combo in itertools.product(*(axes_values[a] for a in AXES)):
        axes = dict(zip(AXES, combo, strict=True))
        settings: dict[str, Any] = {}
        for item in overrides:
            if _matches(item.get("match", {}), axes):
                settings.update(item.get("set", {}))
        excluded = next(
            (
                item.get("reason", "excluded by the suite")
                for item in excludes
                if _matches(item.get("match", {}), axes)
            ),
            "",
        )
        cid = "__".join(_slug(axes[a]) for a in AXES[:-1] if axes[a] != "") + f"__s{axes['seed']}"
        cells.append(Cell(cid, "train", axes, settings, excluded))
    return cells


def _python_cells(raw: dict[str, Any], path: Path) -> list[Cell]:
    cells = []
    for i, item in enumerate(raw.get("python", [])):
        _check_keys(f"suite {path.name} [[python]] #{i + 1}", item, ("name", "callable", "params", "seeds"))
        if "name" not in item or "callable" not in item:
            raise ConfigError(
                f"suite {path.name} [[python]] #{i + 1}: needs 'name' and "
                f"'callable' ('package.module:function')"
            )
        if ":" not in item["callable"]:
            raise ConfigError(
                f"suite {path.name} [[python]] {item['name']!r}: callable "
                f"{item['callable']!r} must read 'package.module:function'"
            )
        for seed in _as_list(item.get("seeds")) or [0]:
            axes = {"name": item["name"], "seed": seed}
            params = dict(item.get("params", {})) | {"seed": seed}
            cells.append(
                Cell(
                    f"{_slug(item['name'])}__s{seed}",
                    "python",
                    axes,
                    callable=item["callable"],
                    params=params,
                )
            )
    return cells
