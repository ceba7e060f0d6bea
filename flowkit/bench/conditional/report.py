"""``results.json``, ``results.csv`` and ``report.md`` of the conditional benchmark.

The report has one table per task: a row per flow, per simulation budget its C2ST accuracy
(0.5 is perfect, 1.0 means the flow's samples are told apart from the reference every time)
and test NLL (nats, lower is better; for ``gaussian-linear`` the true posterior's NLL on the
same test set is the floor), for ``inverse-kinematics`` the re-simulation error; then the
median training-step time on this machine and its ratio to the fastest peer of the row's family
(measured in the same run; compare ratios, not milliseconds across machines). The command that
produced it, the machine (CPU model, threads, torch) and the date head the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from flowkit.atomic import atomic_write_text
from flowkit.bench.conditional.models import FAMILIES, ROWS

#: Short family names for the targets table.
FAMILY_LABELS = {"maf": "MAF", "coupling": "Real NVP", "spline": "NSF"}
CSV_COLUMNS = (
    "task",
    "row",
    "library",
    "family",
    "sims",
    "status",
    "c2st",
    "nll",
    "nll_median",
    "nll_max",
    "resim_error",
    "step_ms",
    "step_ratio",
    "train_s",
    "best_step",
    "params",
    "optimizer",
    "nonfinite_samples",
    "note",
    "reason",
)


def machine() -> dict[str, Any]:
    from flowkit.bench.report import machine_info

    info = machine_info()
    info["threads"] = torch.get_num_threads()
    return info


def step_ratios(step_ms: dict[str, float]) -> dict[str, float | None]:
    """Each row's step time over the fastest peer (not flowkit) of its family, if any."""
    out: dict[str, float | None] = {}
    for row, ms in step_ms.items():
        family = ROWS[row].family
        peers = [v for r, v in step_ms.items() if ROWS[r].family == family and ROWS[r].library != "flowkit"]
        out[row] = ms / min(peers) if peers else None
    return out


OUTLIER_NATS = 3.0
#: The issue's targets: flowkit's best flow within this C2ST of the best peer's (or better) at the
#: target budgets, and each flowkit family's step time at most this multiple of the fastest peer's.
C2ST_MARGIN = 0.02
STEP_RATIO_TARGET = 0.9
TARGET_BUDGETS = (10000, 100000)


def _outlier_dominated(cell: dict[str, Any]) -> bool:
    """Whether the cell's mean test NLL exceeds its median by more than :data:`OUTLIER_NATS`."""
    mean, median = cell.get("nll"), cell.get("nll_median")
    return mean is not None and median is not None and mean - median > OUTLIER_NATS


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _cells_by_key(cells: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(c["task"], c["row"], c["sims"]): c for c in cells}


def _fmt_sims(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def render(state: dict[str, Any], info: dict[str, Any]) -> str:
    settings = state["settings"]
    cells = _cells_by_key(state["cells"])
    budgets = list(settings.sims)
    lines = [
        "# Conditional density benchmark: flowkit vs zuko and nflows",
        "",
        "Posterior estimation `q(θ | x)` on simulation-based-inference tasks (no download): "
        "each flow learns θ given the observation x as context from a budget of "
        "simulations, with the same steps, batch size and optimiser for every row. "
        "See [README.md](README.md) for the tasks, reference posteriors and metrics.",
        "",
        f"Command: `{settings.command()}`",
        "",
        f"Machine: {info['machine'].get('cpu_model')} ({info['machine'].get('cpus')} CPUs, "
        f"torch threads: {info['machine'].get('threads')}), torch "
        f"{info['machine'].get('torch')}, accelerator: "
        f"{info['machine'].get('cuda') or 'none'}. Date: {info['date']}.",
        "",
        f"Training: {settings.steps} Adam steps (lr {settings.lr:g}), batch "
        f"{settings.batch_size}, gradient norm clipped at {settings.clip:g}, "
        f"{settings.val_fraction:.0%} of the simulations held out for validation, best of "
        f"{settings.evals} validation checks kept. Flows: {settings.arch.transforms} layers, "
        f"conditioners {settings.arch.num_hidden} × {settings.arch.hidden} hidden units. "
        f"C2ST: {settings.c2st_samples} flow vs {settings.c2st_samples} reference samples at "
        f"each of {settings.observations} observations, {settings.c2st_folds}-fold CV. NLL: "
        f"mean over {settings.test_size} test simulations.",
        "",
        *_optimizer_lines(state),
        *_load_lines(state, info),
    ]
    # overview: mean C2ST over tasks
    tasks = [t for t in settings.tasks if t in state["tasks"]]
    if tasks:
        lines += ["## Overview: mean C2ST over tasks (0.5 is perfect)", ""]
        header = ["row"] + [f"{_fmt_sims(n)} sims" for n in budgets]
        rows = []
        for row in settings.rows:
            vals = []
            for n in budgets:
                got = [
                    cells[(t, row, n)]["c2st"]
                    for t in tasks
                    if (t, row, n) in cells and cells[(t, row, n)].get("c2st") is not None
                ]
                vals.append(
                    _num(statistics.fmean(got))
                    + (f" ({len(got)}/{len(tasks)} tasks)" if 0 < len(got) < len(tasks) else "")
                    if got
                    else "–"
                )
            rows.append([ROWS[row].label, *vals])
        lines += [*_md_table(header, rows), ""]
    if tasks:
        lines += _target_lines(state, tasks, cells)
    for task in tasks:
        t = state["tasks"][task]
        ratios = step_ratios(t.get("step_ms", {}))
        cpu = t.get("step_cpu_ms") or {}
        cpu_ratios = step_ratios(cpu)
        is_ik = task == "inverse-kinematics"
        lines += [
            f"## {task}",
            "",
            f"{t['description']} ({t['paper']}).",
            "",
            f"Reference posterior: {t['reference']}. " + _reference_note(t),
            "",
        ]
        header = (
            ["row"]
            + [f"C2ST {_fmt_sims(n)}" for n in budgets]
            + [f"NLL {_fmt_sims(n)}" for n in budgets]
            + ([f"resim {_fmt_sims(n)}" for n in budgets] if is_ik else [])
            + ["step ms", "× fastest peer"]
            + (["CPU ms", "CPU × peer"] if cpu else [])
        )
        rows = []
        flagged = False
        for row in settings.rows:
            c2s, nlls, resims = [], [], []
            status_note = ""
            for n in budgets:
                c = cells.get((task, row, n))
                if c is None:
                    c2s.append("…")
                    nlls.append("…")
                    resims.append("…")
                elif c.get("status") not in ("ok", "diverged"):
                    status_note = c.get("status", "")
                    c2s.append(status_note)
                    nlls.append("–")
                    resims.append("–")
                else:
                    mark = " (diverged)" if c["status"] == "diverged" else ""
                    c2s.append(_num(c.get("c2st")) + mark)
                    nlls.append(_num(c.get("nll")) + ("†" if _outlier_dominated(c) else ""))
                    flagged |= _outlier_dominated(c)
                    resims.append(_num(c.get("resim_error")))
            ms = t.get("step_ms", {}).get(row)
            rows.append(
                [ROWS[row].label]
                + c2s
                + nlls
                + (resims if is_ik else [])
                + [_num(ms, 2), _num(ratios.get(row), 2) if ms is not None else "–"]
                + (
                    [_num(cpu.get(row), 2), _num(cpu_ratios.get(row), 2) if row in cpu else "–"]
                    if cpu
                    else []
                )
            )
        if "nll_reference" in t:
            rows.append(
                ["*true posterior*"]
                + ["0.5"] * len(budgets)
                + [_num(t["nll_reference"])] * len(budgets)
                + ["", ""]
                + (["", ""] if cpu else [])
            )
        lines += [*_md_table(header, rows), ""]
        if flagged:
            lines += [
                f"† The mean is dominated by a few test simulations: it exceeds the median "
                f"by more than {OUTLIER_NATS:g} nats (median and worst example per cell in "
                f"`results.json` as `nll_median`, `nll_max`).",
                "",
            ]
    notes = {ROWS[c["row"]].label: c["note"] for c in state["cells"] if c.get("note")}  # latest
    if notes:
        lines += ["## Row notes", "", *[f"- {label}: {note}" for label, note in notes.items()], ""]
    problems = [c for c in state["cells"] if c.get("status") not in ("ok",)]
    if problems:
        lines += ["## Cells that did not complete normally", ""]
        seen = set()
        for c in problems:
            key = (c["row"], c.get("status"), c.get("reason"))
            if key in seen:
                continue
            seen.add(key)
            lines.append(
                f"- {ROWS[c['row']].label} ({c['task']}, {c['sims']} sims): "
                f"{c.get('status')}" + (f" — {c['reason']}" if c.get("reason") else "")
            )
        lines.append("")
    lines += [
        "Families for the step-time ratio: "
        + "; ".join(f"`{k}` = {v}" for k, v in FAMILIES.items())
        + ". The ratio is against the fastest peer (zuko, nflows) of the same family, "
        "measured interleaved in this run.",
        "",
    ]
    return "\n".join(lines)


def _optimizer_lines(state: dict[str, Any]) -> list[str]:
    """How each library's Adam was built, and the measurement behind flowkit's implementation."""
    impls: dict[str, set[str]] = {}
    for c in state["cells"]:
        if c.get("optimizer"):
            impls.setdefault(ROWS[c["row"]].library, set()).add(c["optimizer"])
    for t in state["tasks"].values():
        for row, impl in (t.get("optimizer") or {}).items():
            impls.setdefault(ROWS[row].library, set()).add(impl)
    if not impls:
        return []
    flowkit = ", ".join(sorted(impls.get("flowkit", ()))) or "–"
    peers = ", ".join(sorted(set().union(*(v for k, v in impls.items() if k != "flowkit"))))
    measured: dict[str, dict[str, float]] = {}
    for t in state["tasks"].values():
        measured.update(t.get("optimizer_choice") or {})
    detail = ""
    if measured:
        parts = []
        for key, ms in sorted(measured.items()):
            if not ms:
                continue
            times = ", ".join(f"{k} {v:.3f}" for k, v in sorted(ms.items(), key=lambda kv: kv[1]))
            parts.append(f"{_size_class(key)}: {times} ms")
        if parts:
            detail = (
                " The measurement behind it (median Adam step on stand-ins of the "
                "parameters, per model size class): " + "; ".join(parts) + "."
            )
    return [
        f"Optimiser: the same Adam update (lr {state['settings'].lr:g}, betas (0.9, 0.999)) for "
        "every row, each library's Adam built the way its users build it. flowkit rows: "
        "`flowkit.optim.build_optimizer`, as `flowkit run` does, which picks PyTorch's Adam "
        "implementation by a one-off timing on this machine (cached in "
        f"`$FLOWKIT_CACHE/optimizer-choice.json`): here **{flowkit}**. Peer rows: "
        "`torch.optim.Adam(params, lr=1e-3)` as zuko's and nflows' documentation show, i.e. "
        f"PyTorch's default implementation: **{peers}**. The implementations compute the same "
        "update up to float round-off; the step times below include it, so part of flowkit's "
        "step-time advantage is this measured choice." + detail,
        "",
    ]


def _size_class(key: str) -> str:
    """``"16–31 tensors, 32768–65535 elements"`` from a :func:`flowkit.optim.choice_key`."""
    out = []
    for part in key.rsplit("|", 2)[1:]:
        name, _, power = part.partition(" 2^")
        if not power.isdigit():
            return key
        low = 2 ** int(power)
        out.append(f"{low}–{2 * low - 1} {name}")
    return ", ".join(out)


def _load_lines(state: dict[str, Any], info: dict[str, Any]) -> list[str]:
    loads = [t["timing_load_average"] for t in state["tasks"].values() if t.get("timing_load_average")]
    values = [v for pair in loads for v in pair if v is not None]
    if not values:
        return []
    cpus = info["machine"].get("cpus")
    return [
        f"Machine load: 1-minute load average {min(values):.1f}–{max(values):.1f} during the "
        f"step-time measurements ({cpus} CPUs; other jobs shared the machine when it exceeds "
        "the thread count). The rows are timed interleaved, so load hits them alike; compare "
        "ratios, not milliseconds.",
        "",
    ]


def _best(
    cells: dict[tuple[str, str, int], dict[str, Any]], task: str, rows: list[str], n: int, flowkit: bool
) -> tuple[float, str] | None:
    got = [
        (c["c2st"], r)
        for r in rows
        if (ROWS[r].library == "flowkit") == flowkit
        and (c := cells.get((task, r, n))) is not None
        and c.get("status") == "ok"
        and c.get("c2st") is not None
    ]
    return min(got) if got else None


def target_verdicts(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: each budget's best flowkit and best peer C2ST, each family's step ratio, and
    whether the issue's targets (:data:`C2ST_MARGIN` at :data:`TARGET_BUDGETS`,
    :data:`STEP_RATIO_TARGET` per family) are met; ``None`` where a value is missing."""
    settings = state["settings"]
    cells = _cells_by_key(state["cells"])
    rows = list(settings.rows)
    out: dict[str, dict[str, Any]] = {}
    for task, t in state["tasks"].items():
        entry: dict[str, Any] = {"c2st": {}, "step_ratio": {}, "unmet": []}
        for n in settings.sims:
            fk, peer = _best(cells, task, rows, n, True), _best(cells, task, rows, n, False)
            ok = None if fk is None or peer is None else fk[0] <= peer[0] + C2ST_MARGIN + 1e-12
            entry["c2st"][n] = {"flowkit": fk, "peer": peer, "met": ok, "target": n in TARGET_BUDGETS}
            if n in TARGET_BUDGETS and ok is not True:
                entry["unmet"].append(f"C2ST {_fmt_sims(n)}")
        ratios = step_ratios(t.get("step_ms", {}))
        cpu_ratios = step_ratios(t.get("step_cpu_ms") or {})
        for family in FAMILIES:
            fk_ratios = {
                r: v
                for r, v in ratios.items()
                if ROWS[r].family == family and ROWS[r].library == "flowkit" and v is not None
            }
            if not fk_ratios:
                continue
            ratio = min(fk_ratios.values())
            met = ratio <= STEP_RATIO_TARGET
            cpu_ratio = min((v for r in fk_ratios if (v := cpu_ratios.get(r)) is not None), default=None)
            entry["step_ratio"][family] = {"ratio": ratio, "met": met, "cpu_ratio": cpu_ratio}
            if not met:
                entry["unmet"].append(f"{family} step")
        missing = [n for n in TARGET_BUDGETS if n not in settings.sims]
        entry["complete"] = not missing and all(
            v["met"] is not None for n, v in entry["c2st"].items() if n in TARGET_BUDGETS
        )
        out[task] = entry
    return out


def _target_lines(
    state: dict[str, Any], tasks: list[str], cells: dict[tuple[str, str, int], dict[str, Any]]
) -> list[str]:
    verdicts = target_verdicts(state)
    budgets = list(state["settings"].sims)
    families = [f for f in FAMILIES if any(f in verdicts[t]["step_ratio"] for t in tasks)]
    header = (
        ["task"]
        + [f"C2ST {_fmt_sims(n)}" + ("" if n in TARGET_BUDGETS else " (extra)") for n in budgets]
        + [f"step {FAMILY_LABELS.get(f, f)}" for f in families]
        + ["targets"]
    )
    rows = []
    for task in tasks:
        v = verdicts[task]
        row = [task]
        for n in budgets:
            c = v["c2st"][n]
            if c["met"] is None:
                row.append("–")
                continue
            mark = ("✓" if c["met"] else "✗") if c["target"] else ""
            row.append(f"{c['flowkit'][0]:.3f} vs {c['peer'][0]:.3f} {mark}".rstrip())
        for f in families:
            s = v["step_ratio"].get(f)
            if s is None:
                row.append("–")
                continue
            cpu_note = f" (CPU {s['cpu_ratio']:.2f})" if s.get("cpu_ratio") is not None else ""
            row.append(f"{s['ratio']:.2f} {'✓' if s['met'] else '✗'}{cpu_note}")
        if v["unmet"]:
            row.append("not met: " + ", ".join(v["unmet"]))
        else:
            row.append("met" if v["complete"] else "met so far (budgets missing)")
        rows.append(row)
    return [
        "## Targets",
        "",
        f"flowkit's best flow against the best peer flow (C2ST, lower is better; target: within "
        f"{C2ST_MARGIN:g} or better at {', '.join(_fmt_sims(n) for n in TARGET_BUDGETS)} "
        f"simulations), and flowkit's step time over the fastest peer of the same family "
        f"(target ≤ {STEP_RATIO_TARGET:g}×; the verdict is on the median wall time, the "
        f"CPU-time ratio in parentheses). ✓ met, ✗ not met.",
        "",
        *_md_table(header, rows),
        "",
    ]


def _reference_note(t: dict[str, Any]) -> str:
    infos = t.get("reference_info") or []
    if not infos:
        return ""
    method = infos[0].get("method")
    if method == "mcmc":
        acc = ", ".join(f"{i['acceptance']:.2f}" for i in infos)
        rhat = ", ".join(f"{i['rhat_max']:.3f}" for i in infos)
        i0 = infos[0]
        return (
            f"MCMC per observation: acceptance {acc}; split R-hat (worst dimension) {rhat}; "
            f"{i0['chains']} chains × {i0['draws_per_chain']} draws, thinning {i0['thin']}, "
            f"{i0['warmup']} warm-up steps."
        )
    if method == "rejection":
        err = ", ".join(f"{i['resim_error_mean']:.1e}" for i in infos)
        return f"Re-simulation error of the reference samples: {err} (ε = {infos[0]['epsilon']:g})."
    return ""


def results_csv(state: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for c in state["cells"]:
        t = state["tasks"].get(c["task"], {})
        ms = t.get("step_ms", {})
        writer.writerow(
            {
                **c,
                "step_ms": ms.get(c["row"]),
                "step_ratio": step_ratios(ms).get(c["row"]) if c["row"] in ms else None,
            }
        )
    return buf.getvalue()


def write_outputs(state: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``report.md`` into ``out_dir``."""
    settings = state["settings"]
    info = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    tasks = {}
    for name, t in state["tasks"].items():
        tasks[name] = {
            **t,
            "step_ratio": step_ratios(t.get("step_ms", {})),
            "step_cpu_ratio": step_ratios(t.get("step_cpu_ms") or {}),
        }
    payload = {
        "suite": "conditional",
        "command": settings.command(),
        "settings": asdict(settings),
        **info,
        "tasks": tasks,
        "cells": state["cells"],
    }
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "report": out_dir / "report.md",
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str))
    atomic_write_text(paths["csv"], results_csv(state))
    atomic_write_text(paths["report"], render(state, info))
    return paths
