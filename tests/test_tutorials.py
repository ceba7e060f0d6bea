"""The tutorials (docs/tutorials/*.md) run from top to bottom, as a reader runs them.

Each tutorial runs in a fresh process and an empty folder, with its shell blocks in bash and its
Python blocks in one session (``docs/tools/mdcode.py``), with the step counts that the page's
``<!-- test-replace -->`` comments cut down. The run must produce every figure the page shows.

The full-length runs, exactly as written, take a few minutes each. They are opt-in
(``FLOWKIT_FULL_TUTORIALS=1``) and also refresh the committed figures::

    FLOWKIT_FULL_TUTORIALS=1 .venv/bin/python -m pytest tests/test_tutorials.py -k full
    .venv/bin/python docs/tools/mdcode.py run docs/tutorials/NAME.md --full --write-figures
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
sys.path.insert(0, str(ROOT / "docs" / "tools"))

import mdcode  # noqa: E402

NAMES = sorted(p.stem for p in TUTORIALS.glob("*.md") if p.stem != "index")
#: The longest a cut-down run may take (seconds; a busy 2-core machine needs about a fifth of it).
TIMEOUT = 600


def test_the_five_tutorials_are_there() -> None:
    assert set(NAMES) >= {"quickstart", "your-own-data", "conditional", "plugin", "bench"}
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"({name}.md)" in index, f"docs/tutorials/index.md does not list {name}.md"


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_shows_figures_that_exist_and_are_small(name: str) -> None:
    page = mdcode.parse(TUTORIALS / f"{name}.md")
    assert page.figures, f"{name}.md shows no figure"
    for figure in page.figures:
        path = TUTORIALS / figure
        assert path.is_file(), (
            f"{figure} is missing: run .venv/bin/python docs/tools/mdcode.py "
            f"run docs/tutorials/{name}.md --full --write-figures"
        )
        assert path.stat().st_size < 200_000, f"{figure} is {path.stat().st_size:,} bytes"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tutorial_runs(name: str, tmp_path: Path) -> None:
    outcome = mdcode.run(TUTORIALS / f"{name}.md", tmp_path / "work", timeout=TIMEOUT)
    assert outcome.ok, f"{name}.md failed after {outcome.seconds:.0f} s:\n{outcome.output[-6000:]}"
    assert not outcome.missing_figures, f"{name}.md did not produce {outcome.missing_figures}"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FLOWKIT_FULL_TUTORIALS") != "1",
    reason="full-length tutorial runs are opt-in: FLOWKIT_FULL_TUTORIALS=1",
)
@pytest.mark.parametrize("name", NAMES)
def test_tutorial_full(name: str, tmp_path: Path) -> None:
    outcome = mdcode.run(
        TUTORIALS / f"{name}.md", tmp_path / "work", full=True, timeout=3600, write_figures=True
    )
    assert outcome.ok, f"{name}.md failed after {outcome.seconds:.0f} s:\n{outcome.output[-6000:]}"
    assert not outcome.missing_figures
