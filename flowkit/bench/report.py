"""The outputs of a suite: ``results.json``, ``results.csv``, ``report.md`` and figures.

``report.md`` names the machine (CPU model, instruction-set flags, the kernels PyTorch uses, each
cell's thread count and the execution path each operation took, :mod:`flowkit.execution`), so a
ratio is never read off a machine it was not measured on. It leads with the ranking table (groups
of cells that differ only by seed, as mean ± standard deviation over seeds), then one table per
question (likelihood, sample quality, reconstruction, cost, out-of-distribution, and every Python
cell's rows), the cells that did not run and why, the command that reproduces each cell, and the
execution paths in detail. Cost is given as ratios against the
suite's baseline measured in the same run, next to the absolute numbers of this machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from flowkit.atomic import atomic_write_text
from flowkit.bench.suite import AXES, Suite
from flowkit.metrics.aggregate import mean_spread

#: The question tables: title, metrics (in order; absent ones are dropped), and a note.
TABLES: list[tuple[str, list[str], str]] = [
    (
        "Likelihood",
        ["test_bpd", "test_nll", "test_nll_per_dim"],
        "test split, dequantized, preprocessing log-det included; lower is better",
    ),
    (
        "Sample quality",
        [
            "sw_distance",
            "sinkhorn_distance",
            "fd",
            "fd_classifier_accuracy",
            "sample_accuracy",
            "samples_nonfinite_share",
        ],
        "sliced-Wasserstein and debiased Sinkhorn distances between samples and test data, Fréchet "
        "distance `fd` in the feature space of flowkit's own classifier (data space for 2-D sets) — "
        "lower is better; class-conditional sample accuracy by that classifier — higher is better",
    ),
    (
        "Sample variety",
        [
            "precision",
            "recall",
            "density",
            "coverage",
            "class_precision",
            "class_recall",
            "class_recall_min",
            "class_coverage",
        ],
        "quality and variety apart, in the Fréchet distance's feature space: improved precision "
        "(samples on the data's k-NN manifold, k = 3) and recall (data on the samples' manifold; "
        "Kynkäänniemi et al. 2019), density and coverage (k = 5; Naeem et al. 2020); `class_*`: "
        "within each class, mean over classes (class-conditional models) — higher is better "
        "(density ≈ 1 for a perfect model)",
    ),
    ("Reconstruction", ["recon_mean_abs", "recon_max_abs"], "|decode(encode(x)) − x| on test data"),
    (
        "Cost",
        [
            "steps",
            "train_time_s",
            "train_examples_per_s",
            "density_samples_per_s",
            "sampling_samples_per_s",
            "num_parameters",
            "peak_rss_mib",
            "peak_cuda_mib",
        ],
        "absolute numbers on this machine; ratios (×) against the baseline from the same run",
    ),
    (
        "Out of distribution",
        ["in_dist_bpd", "ood_*"],
        "bits/dim of other datasets' test images under the model (Nalisnick et al. 2019)",
    ),
]
#: Cost metrics that get a ratio column against the baseline (higher or lower is better).
RATIO_METRICS = ("train_examples_per_s", "density_samples_per_s", "sampling_samples_per_s", "peak_rss_mib")


def machine_info() -> dict[str, Any]:
    """Where the suite ran: platform, CPU model and instruction-set flags (AVX2, AVX-512, AMX...),
    the kernels PyTorch dispatches to, CPU count, torch and flowkit versions, accelerator."""
    import os

    import torch

    from flowkit._version import __version__
    from flowkit.execution.autotune import cpu_info

    cpu = cpu_info()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "flowkit": __version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_model": cpu["model"],
        "isa_flags": cpu["flags"],
        "cpu_capability": cpu["capability"],
    }


def machine_line(machine: dict[str, Any]) -> str:
    """``AMD EPYC (2 CPUs; PyTorch kernels AVX512; flags avx2 avx512f ...)``."""
    flags = " ".join(machine.get("isa_flags") or []) or "not known"
    return (
        f"{machine.get('cpu_model')} ({machine.get('cpus')} CPUs; PyTorch CPU kernels "
        f"{machine.get('cpu_capability', '?')}; instruction-set flags: {flags})"
    )


def fmt(value: float, std: float | None = None, n: int = 1) -> str:
    """``1.234`` or ``1.234 ± 0.012`` with significant digits suited to the magnitude."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    mag = abs(value)
    if isinstance(value, int) or (float(value).is_integer() and mag < 1e15 and mag >= 1):
        text = f"{int(value):,}" if mag >= 1000 else str(int(value))
    elif mag >= 1000:
        text = f"{value:,.0f}"
    elif mag >= 100:
        text = f"{value:.1f}"
    elif mag >= 1 or mag == 0:
        text = f"{value:.3f}"
    else:
        text = f"{value:.3g}"
    if std is not None and n > 1 and std > 0:
        text += f" ± {std:.2g}"
    return text


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed training cells grouped over seeds: axes, per-metric (mean, std, n), commands."""
    groups: dict[str, dict[str, Any]] = {}
    for rec in results:
        if rec.get("kind") != "train" or rec.get("status") != "completed":
            continue
        g = groups.setdefault(
            rec["group"],
            {
                "group": rec["group"],
                "axes": dict(rec["axes"]),
                "seeds": [],
                "values": {},
                "command": rec.get("command", ""),
                "figures": rec.get("figures", []),
                "id": rec["id"],
            },
        )
        g["seeds"].append(rec["axes"]["seed"])
        for key, value in rec.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                g["values"].setdefault(key, []).append(value)
    out = []
    for g in groups.values():
        g["stats"] = {k: mean_spread(v) for k, v in g["values"].items()}
        del g["values"]
        out.append(g)
    return out


def _label(axes: dict[str, Any], varying: list[str]) -> str:
    return " · ".join(str(axes[a]) for a in varying if axes.get(a) not in ("", None)) or "cell"


def _varying(groups: list[dict[str, Any]]) -> list[str]:
    axes = [a for a in AXES if a != "seed"]
    vary = [a for a in axes if len({str(g["axes"].get(a)) for g in groups}) > 1]
    return vary or ["transform"]


def _matches(axes: dict[str, Any], match: dict[str, Any]) -> bool:
    return all(
        str(axes.get(k)) in [str(v) for v in (w if isinstance(w, list) else [w])] for k, w in match.items()
    )


def _baseline(suite: Suite, groups: list[dict[str, Any]], group: dict[str, Any]) -> dict | None:
    """The baseline group comparable with ``group``: same axes except those the baseline sets."""
    match = suite.meta.get("baseline") or {}
    if not match:
        return None
    for cand in groups:
        if not _matches(cand["axes"], match):
            continue
        if all(
            str(cand["axes"].get(a)) == str(group["axes"].get(a))
            for a in AXES
            if a not in match and a != "seed"
        ):
            return cand
    return None


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _expand(metrics: list[str], available: set[str]) -> list[str]:
    out = []
    for m in metrics:
        if m.endswith("*"):
            out += sorted(k for k in available if k.startswith(m[:-1]))
        elif m in available:
            out.append(m)
    return out


#: ``|Δ mean| / standard error of Δ`` above which two ranked cells count as apart (about a 95%
#: two-sided normal band; with 3 seeds a rough guide, which is what the column says it is)
SEPARATION_Z = 2.0


def separation(a: tuple[float, float, int], b: tuple[float, float, int]) -> str:
    """Whether two cells' means differ by more than their seed noise: ``"yes (z = 4.1)"``,
    ``"no (z = 0.8)"``, or ``"–"`` when either has one seed (no spread to compare with).

    ``z = |μ_a − μ_b| / sqrt(s_a²/n_a + s_b²/n_b)`` (Welch's statistic, the seeds' sample
    standard deviations ``s``); apart when ``z > SEPARATION_Z``.
    """
    (ma, sa, na), (mb, sb, nb) = a, b
    if na < 2 or nb < 2 or any(math.isnan(v) for v in (ma, mb)):
        return "–"
    se = math.sqrt((sa or 0.0) ** 2 / na + (sb or 0.0) ** 2 / nb)
    if se == 0.0:
        return "yes" if ma != mb else "no"
    z = abs(ma - mb) / se
    return f"{'yes' if z > SEPARATION_Z else 'no'} (z = {z:.1f})"


def ranking(suite: Suite, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups sorted by the suite's ``rank_by`` metric (those without it last)."""
    key = suite.meta["rank_by"]
    sign = -1.0 if key in suite.meta.get("higher_is_better", []) else 1.0

    def order(g: dict[str, Any]) -> tuple[int, float]:
        mean = g["stats"].get(key, (math.nan,))[0]
        return (1, 0.0) if math.isnan(mean) else (0, sign * mean)

    return sorted(groups, key=order)


def render_report(suite: Suite, results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """The markdown report of a suite's results."""
    groups = aggregate(results)
    vary = _varying(groups) if groups else ["transform"]
    out = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.meta.get("description"):
        out += [suite.meta["description"], ""]
    done = sum(r["status"] == "completed" for r in results)
    out += [
        f"{done} of {len(suite.cells)} cells completed; machine: {machine_line(machine)}, "
        f"torch {machine.get('torch')}, flowkit {machine.get('flowkit', '?')}, "
        f"accelerator: {machine.get('cuda') or 'none'}. Generated "
        f"{time.strftime('%Y-%m-%d %H:%M')} by `flowkit bench {suite.ref}`.",
        "",
    ]
    out += _paths_summary(results)
    key = suite.meta["rank_by"]
    if groups:
        ranked = ranking(suite, groups)
        seeds = max(len(g["seeds"]) for g in groups)
        header = ["rank", *vary, key + (" (mean ± sd over seeds)" if seeds > 1 else ""), "seeds"]
        if seeds > 1:
            header.append("apart from the next?")
        rows = []
        for i, g in enumerate(ranked, 1):
            stat = g["stats"].get(key)
            row = [
                str(i),
                *[str(g["axes"].get(a, "")) for a in vary],
                fmt(*stat) if stat else "–",
                str(len(g["seeds"])),
            ]
            if seeds > 1:
                after = ranked[i]["stats"].get(key) if i < len(ranked) else None
                row.append(separation(stat, after) if stat and after else "–")
            rows.append(row)
        better = "higher" if key in suite.meta.get("higher_is_better", []) else "lower"
        note = f"By `{key}` ({better} is better)."
        if seeds > 1:
            note += (
                " *Apart from the next*: whether this cell's mean differs from the next one's by "
                f"more than the seeds' noise (Welch's z = |Δ mean| / standard error > {SEPARATION_Z:g}; "
                "with 3 seeds a rough guide; – where a cell has one seed)."
            )
        out += ["## Ranking", "", note, "", _md_table(header, rows), ""]
        out += ["![ranking](figures/ranking.png)", ""]
        available = {k for g in groups for k in g["stats"]}
        for title, metrics, note in TABLES:
            cols = _expand(metrics, available)
            if not cols:
                continue
            ratio_cols = [c for c in cols if c in RATIO_METRICS and suite.meta.get("baseline")]
            header = [*vary, *cols, *[f"{c} (× baseline)" for c in ratio_cols]]
            rows = []
            for g in ranked:
                base = _baseline(suite, groups, g)
                cells = [str(g["axes"].get(a, "")) for a in vary]
                cells += [fmt(*g["stats"][c]) if c in g["stats"] else "–" for c in cols]
                for c in ratio_cols:
                    if base and c in g["stats"] and c in base["stats"] and base["stats"][c][0]:
                        cells.append(f"{g['stats'][c][0] / base['stats'][c][0]:.2f}×")
                    else:
                        cells.append("–")
                rows.append(cells)
            out += [f"## {title}", "", note + ".", "", _md_table(header, rows), ""]
    out += _python_sections(results)
    out += _figure_sections(groups, vary)
    out += _not_run(results)
    out += _paths_detail(results)
    if groups:
        out += [
            "## Commands",
            "",
            "Each row trains the cell's model with `flowkit run` (seed "
            "from the suite; add `--set train.seed=N` for the others).",
            "",
        ]
        out += [f"- **{_label(g['axes'], vary)}**: `{g['command']}`" for g in groups]
        out.append("")
    return "\n".join(out)


def _paths_summary(results: list[dict[str, Any]]) -> list[str]:
    """Per cell: its thread count and the path each same-function-different-cost operation took
    (what :mod:`flowkit.execution.autotune` chose in the cell's process)."""
    from flowkit.execution.autotune import paths_text

    rows = [
        [r["id"], str(r["execution"].get("threads", "–")), paths_text(r["execution"])]
        for r in results
        if r.get("status") == "completed"
        and isinstance(r.get("execution"), dict)
        and "error" not in r["execution"]
    ]
    if not rows:
        return []
    return [
        "Threads and execution paths of each cell (fused oneDNN or ordinary ops, chosen by "
        "measurement on this machine unless set; details under *Execution paths*):",
        "",
        _md_table(["cell", "threads", "paths"], rows),
        "",
    ]


def _paths_detail(results: list[dict[str, Any]]) -> list[str]:
    """Every operation signature each cell decided, its path, why, and the times behind it."""
    rows = []
    for r in results:
        info = r.get("execution") if r.get("status") == "completed" else None
        if not isinstance(info, dict):
            continue
        for op, decisions in (info.get("ops") or {}).items():
            for d in decisions:
                times = ", ".join(f"{k} {v:.3g}" for k, v in (d.get("ms") or {}).items())
                signature = str(d["signature"]).replace("|", ", ")
                rows.append([r["id"], op, f"`{signature}`", d["choice"], d["source"], times or "–"])
        for op, choice in (info.get("overrides") or {}).items():
            rows.append([r["id"], op, "all", choice, "set", "–"])
    if not rows:
        return []
    return [
        "## Execution paths",
        "",
        "The path each operation took per shape signature: `measured` (timed on first use "
        "in this run; ms per call, the least disturbed of the timed calls), `cache` (an "
        "earlier measurement on this machine, "
        "reused), `set` (an explicit setting, e.g. `FLOWKIT_ONEDNN`), `default` (measuring "
        "off). Signatures: linear `batch, in, out, bias, relu, contiguous input`; conv2d "
        "`input shape, channels-last, weight shape, stride, padding, dilation, groups, bias, "
        "relu, residual`.",
        "",
        _md_table(["cell", "operation", "signature", "path", "source", "ms per call"], rows),
        "",
    ]


def _python_sections(results: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for rec in results:
        if rec.get("kind") != "python" or rec.get("status") != "completed":
            continue
        rows = rec.get("rows", [])
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))

        def cell(row: dict[str, Any], col: str) -> str:
            value = row.get(col, "–")
            return fmt(value) if isinstance(value, float) else str(value)

        # columns with one value in every row (threads, torch, batch size, ...) go below
        shared = [
            c
            for c in cols
            if len(rows) > 1
            and all(c in r for r in rows)
            and len({cell(r, c) for r in rows}) == 1
            and c not in ("status",)
        ]
        cols = [c for c in cols if c not in shared]
        body = [[cell(r, c) for c in cols] for r in rows]
        out += [f"## {rec['axes']['name']} (seed {rec['axes']['seed']})", "", _md_table(cols, body), ""]
        if shared:
            out += ["Same for every row: " + ", ".join(f"{c} {cell(rows[0], c)}" for c in shared) + ".", ""]
        out += [f"Command: `{rec.get('command', '')}`", ""]
    return out


def _figure_sections(groups: list[dict[str, Any]], vary: list[str]) -> list[str]:
    out: list[str] = []
    if any(Path(f).name == "samples.png" for g in groups for f in g["figures"]):
        out += ["## Samples", "", "![samples of every cell](figures/samples-grid.png)", ""]
    ood = [(g, f) for g in groups for f in g["figures"] if f.endswith("ood-histogram.png")]
    if ood:
        out += ["## Per-image likelihoods", ""]
        out += [f"![{_label(g['axes'], vary)}](cells/{g['id']}/{f})" for g, f in ood]
        out.append("")
    return out


def _metric_errors(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        [r["id"], name, str(err).replace("|", "\\|")[:300]]
        for r in results
        for name, err in (r.get("metric_errors") or {}).items()
    ]
    if not rows:
        return []
    return ["## Metrics that could not be computed", "", _md_table(["cell", "metric", "error"], rows), ""]


def _not_run(results: list[dict[str, Any]]) -> list[str]:
    skipped = [r for r in results if r["status"] != "completed"]
    if not skipped:
        return _metric_errors(results)
    rows = [[r["id"], r["status"], str(r.get("reason", "")).replace("|", "\\|")[:300]] for r in skipped]
    return [
        "## Cells that did not run",
        "",
        "`invalid`: the combination does not make sense (the reason is flowkit's own error); "
        "`excluded`: left out by the suite; `failed`/`diverged`: see the cell's log.",
        "",
        _md_table(["cell", "status", "reason"], rows),
        "",
        *_metric_errors(results),
    ]


def results_csv(results: list[dict[str, Any]]) -> str:
    """One row per training cell and per Python-cell row, metrics as columns."""
    rows = []
    for rec in results:
        base = {
            "id": rec["id"],
            "kind": rec["kind"],
            "status": rec["status"],
            **{f"axis_{k}": v for k, v in rec["axes"].items()},
        }
        if rec.get("kind") == "python" and rec.get("rows"):
            rows += [base | r for r in rec["rows"]]
        else:
            rows.append(base | rec.get("metrics", {}) | {"reason": rec.get("reason", "")})
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_figures(suite: Suite, results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The ranking bar chart and a grid of every cell's samples figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageDraw

    groups = aggregate(results)
    paths: list[Path] = []
    if not groups:
        return paths
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    vary = _varying(groups)
    key = suite.meta["rank_by"]
    ranked = [g for g in ranking(suite, groups) if key in g["stats"]]
    if ranked:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(ranked) + 1.2))
        labels = [_label(g["axes"], vary) for g in ranked]
        means = [g["stats"][key][0] for g in ranked]
        stds = [g["stats"][key][1] for g in ranked]
        ax.barh(range(len(ranked)), means, xerr=stds, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(ranked)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(key)
        fig.tight_layout()
        path = folder / "ranking.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    tiles = []
    for g in groups:
        sample = next((f for f in g["figures"] if Path(f).name == "samples.png"), None)
        if sample and (out_dir / "cells" / g["id"] / sample).is_file():
            tiles.append((_label(g["axes"], vary), out_dir / "cells" / g["id"] / sample))
    if tiles:
        with Image.open(tiles[0][1]) as first:  # wide figures (2-D: data, density, samples)
            aspect = first.width / max(first.height, 1)  # get wider tiles, fewer columns
        wide = aspect > 1.5
        width, cols = (512, min(2, len(tiles))) if wide else (256, min(4, len(tiles)))
        height = round(width / aspect) if wide else width
        rows = math.ceil(len(tiles) / cols)
        grid = Image.new("RGB", (cols * width, rows * (height + 18)), "white")
        draw = ImageDraw.Draw(grid)
        for i, (label, path) in enumerate(tiles):
            with Image.open(path) as opened:
                img = opened.convert("RGB")
                img.thumbnail((width, height))
                x, y = (i % cols) * width, (i // cols) * (height + 18)
                grid.paste(img, (x + (width - img.width) // 2, y + 18))
                draw.text((x + 4, y + 3), label[:60], fill="black")
        path = folder / "samples-grid.png"
        grid.quantize(256).save(path, optimize=True)  # a palette: a quarter of the bytes
        paths.append(path)
    return paths


def write_outputs(suite: Suite, results: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``report.md`` and figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    groups = aggregate(results)
    payload = {
        "suite": suite.name,
        "suite_path": str(suite.path),
        "description": suite.meta.get("description", ""),
        "machine": machine,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rank_by": suite.meta["rank_by"],
        "cells": results,
        "groups": [
            {
                "group": g["group"],
                "axes": g["axes"],
                "seeds": g["seeds"],
                "command": g["command"],
                "metrics": {k: {"mean": s[0], "std": s[1], "n": s[2]} for k, s in g["stats"].items()},
            }
            for g in groups
        ],
    }
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "report": out_dir / "report.md",
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(paths["csv"], results_csv(results))
    write_figures(suite, results, out_dir)
    atomic_write_text(paths["report"], render_report(suite, results, machine))
    return paths
