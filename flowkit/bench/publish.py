"""Publish a suite's report: ``report.md`` and every image it embeds, copied into a folder.

``flowkit bench SUITE --publish docs/bench/SUITE`` writes the report where documentation can link
to it (the figures keep their paths relative to the report, so its image links keep working). A
finished suite is not re-run, so the same command regenerates the published copy from the
results folder at any time.

Speed ratios hold only on the machine that measured them (issue 21), so the report is also kept
under a name of its machine, ``report-<cpu>-<kernels>.md`` (e.g. ``report-amd-epyc-avx512.md``,
from the ``machine`` of ``results.json``): publishing from another kind of CPU adds its report
beside the others instead of replacing them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from flowkit.atomic import atomic_write_text
from flowkit.errors import FlowkitError

_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def embedded_images(report: str) -> list[str]:
    """The relative paths of the images a Markdown report embeds (``![alt](path)``), in order."""
    return list(dict.fromkeys(m for m in _IMAGE_LINK.findall(report) if "://" not in m))


def machine_slug(machine: dict) -> str:
    """A file-name part for a machine: its CPU model and PyTorch's kernel level, lower case."""
    text = f"{machine.get('cpu_model') or 'unknown-cpu'} {machine.get('cpu_capability') or ''}"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-cpu"


def _machine(out_dir: Path) -> dict | None:
    try:
        machine = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))["machine"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return machine if isinstance(machine, dict) and machine.get("cpu_model") else None


def publish(out_dir: Path, dest: Path) -> list[Path]:
    """Copy ``out_dir/report.md`` and its embedded images into ``dest``, and the report once more
    under its machine's name (:func:`machine_slug`) when ``results.json`` names the machine;
    return what was written.

    Images missing from the results folder are skipped (the report says what did not run).
    Raises :class:`FlowkitError` when there is no report yet or a link leaves the folder.
    """
    out_dir, dest = Path(out_dir), Path(dest)
    source = out_dir / "report.md"
    if not source.is_file():
        raise FlowkitError(f"no report to publish: {source} does not exist; run the suite first")
    text = source.read_text(encoding="utf-8")
    written: list[Path] = []
    for link in embedded_images(text):
        if Path(link).is_absolute() or ".." in Path(link).parts:
            raise FlowkitError(f"report.md embeds {link!r}, outside the results folder")
        src = out_dir / link
        if src.is_file():
            target = dest / link
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            written.append(target)
    written.append(atomic_write_text(dest / "report.md", text))
    machine = _machine(out_dir)
    if machine is not None:
        written.append(atomic_write_text(dest / f"report-{machine_slug(machine)}.md", text))
    return written
