"""What this installation has: optional dependencies (extras) and the import-name clash.

flowkit is published as ``torch-flowkit``; the plain install brings everything the built-in
plugins, presets and suites need. A feature that needs more names its extra: :func:`require`
imports an optional package or raises :class:`MissingExtraError` with the ``pip install`` line
to run. :data:`EXTRAS` lists the extras and what each one enables (``pyproject.toml`` declares
their packages; a test checks the two agree).

The name ``flowkit`` on the package index belongs to an unrelated project (FlowKit, a
flow-cytometry toolkit) that installs an import package of the same name. Installed into one
environment, the two overwrite each other's files. :func:`clashing_distribution` finds such a
distribution so that the command line can say so (and how to fix it) instead of failing
obscurely.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

from flowkit._version import DISTRIBUTION
from flowkit.errors import FlowkitError

#: extra → what it enables. Its packages are declared in pyproject.toml's optional-dependencies.
EXTRAS = {
    "nflows": "the nflows bridge plugins (nflows-rq-coupling, nflows-maf, nflows-realnvp)",
    "bench": "peer libraries for `flowkit bench peers` and `flowkit bench conditional` "
    "(nflows, normflows, zuko, FrEIA)",
    "tensorboard": "the tensorboard logger of train.loggers (TensorBoard event files of a run)",
    "testing": "the hypothesis strategies of flowkit.testing (shapes_for, params_for, ...), for "
    "property tests of a plugin",
    "dev": "the test and lint tools",
    "docs": "the documentation site (make docs)",
}


class MissingExtraError(FlowkitError, ImportError):
    """An optional feature was used without the extra that installs its dependency."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: ``pip install 'torch-flowkit[extra]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming the fix.

    ``feature`` reads as the subject of "needs", e.g. ``"the nflows-maf transform"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the optional package {module!r}, which the plain install of flowkit "
            f"leaves out. Install it with: {install_hint(extra)} (or pip install {module}). "
            f"[{type(exc).__name__}: {exc}]"
        ) from exc


def clashing_distribution() -> metadata.Distribution | None:
    """An installed distribution named ``flowkit`` (not this one), or ``None``.

    That is either the unrelated FlowKit (flow cytometry) or flowkit itself from before the
    rename to ``torch-flowkit`` (0.1.x); both install files into the ``flowkit`` import package.
    """
    try:
        dist = metadata.distribution("flowkit")
    except metadata.PackageNotFoundError:
        return None
    name = (dist.metadata["Name"] or "").strip().lower().replace("_", "-")
    return None if name == DISTRIBUTION else dist


def clash_message(dist: metadata.Distribution) -> str:
    """What is wrong and what to do, for a distribution found by :func:`clashing_distribution`."""
    summary = (dist.metadata["Summary"] or "").strip()
    ours = any(ep.group.startswith("flowkit.") for ep in dist.entry_points)
    what = (
        "an older flowkit, installed before it was published as torch-flowkit"
        if ours
        else f"an unrelated project ({summary})"
        if summary
        else "an unrelated project"
    )
    return (
        f"the distribution 'flowkit' {dist.version} is installed in this environment: {what}. "
        f"It uses the same import name, flowkit, as {DISTRIBUTION}, so the two overwrite each "
        f"other's files. Remove both and reinstall: pip uninstall -y flowkit {DISTRIBUTION} && "
        f"pip install {DISTRIBUTION} (or use a fresh virtual environment)."
    )
