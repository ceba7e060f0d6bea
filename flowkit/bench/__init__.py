"""``flowkit bench``: comparative benchmark suites and their reports.

A suite (TOML) is a matrix of training cells — transforms × objectives × priors × datasets ×
budgets × seeds, with per-cell overrides and exclusions — plus Python measurement cells (peer
libraries, cost curves). :func:`run_suite` runs the cells (resuming and skipping finished ones) and
writes ``results.json``, ``results.csv``, ``report.md`` and figures.
"""

from flowkit.bench.runner import run_suite
from flowkit.bench.suite import Budget, Cell, Suite, load_suite

__all__ = ["Budget", "Cell", "Suite", "load_suite", "run_suite"]
