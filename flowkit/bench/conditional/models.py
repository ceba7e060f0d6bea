"""The rows of the conditional benchmark: one conditional flow per library and architecture.

Every row is a :class:`ConditionalModel`: ``log_prob(θ, x) → (B,)`` and ``sample(x, n) → (n, d)``
for one observation, plus the ``module`` whose parameters Adam trains. Rows share an
:class:`Arch` (``transforms`` flow layers, conditioners with ``num_hidden`` hidden layers of
``hidden`` units, the observation ``x`` as context) and belong to a *family* (``maf``,
``coupling``, ``spline``): step-time ratios compare a row with the fastest peer of its family.

flowkit's rows use :mod:`flowkit.flows`. The peer rows (zuko, nflows) live in
``benchmarks/peers/conditional_peers.py`` — peer code is never part of the library — and are
imported lazily from the repository (the current folder, or the checkout flowkit runs from): a
missing peer library or a missing peers module gives a row marked as such, never a crash.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn


@dataclass(frozen=True)
class Arch:
    """Shared architecture sizes of every row."""

    transforms: int = 5
    hidden: int = 64
    num_hidden: int = 2


@dataclass(frozen=True)
class RowSpec:
    """A row: its library, family and label in the tables."""

    name: str
    library: str
    family: str
    label: str


@dataclass
class ConditionalModel:
    """A conditional flow behind the benchmark's interface (``θ`` and ``x`` standardised)."""

    module: nn.Module
    log_prob: Callable[[Tensor, Tensor], Tensor]
    sample: Callable[[Tensor, int], Tensor]
    note: str = ""


class MissingLibrary(RuntimeError):
    """The row's library is not installed (the message says how to install it)."""


class Unavailable(RuntimeError):
    """The row cannot be built here (the message says why): a missing API or peers module."""


ROWS: dict[str, RowSpec] = {
    r.name: r
    for r in (
        RowSpec("flowkit-maf", "flowkit", "maf", "flowkit MAF"),
        RowSpec("flowkit-realnvp", "flowkit", "coupling", "flowkit Real NVP"),
        RowSpec("flowkit-nsf", "flowkit", "spline", "flowkit NSF"),
        RowSpec("zuko-maf", "zuko", "maf", "zuko MAF"),
        RowSpec("nflows-maf", "nflows", "maf", "nflows MAF"),
        RowSpec("zuko-realnvp", "zuko", "coupling", "zuko Real NVP"),
        RowSpec("nflows-realnvp", "nflows", "coupling", "nflows Real NVP"),
        RowSpec("zuko-nsf", "zuko", "spline", "zuko NSF"),
    )
}
FAMILIES = {
    "maf": "masked autoregressive (affine)",
    "coupling": "affine coupling (Real NVP)",
    "spline": "rational-quadratic spline (NSF)",
}
PEERS_MODULE = "benchmarks.peers.conditional_peers"


def _flowkit_row(spec: RowSpec, features: int, context: int, arch: Arch) -> ConditionalModel:
    try:
        from flowkit import flows
    except ImportError as exc:
        raise Unavailable(f"flowkit.flows is not importable here ({exc})") from exc
    cls_name = {"maf": "MAF", "coupling": "RealNVP", "spline": "NSF"}[spec.family]
    cls = getattr(flows, cls_name, None)
    if cls is None:
        raise Unavailable(f"flowkit.flows has no {cls_name} yet")
    flow = cls(
        features=features,
        context=context,
        transforms=arch.transforms,
        hidden=arch.hidden,
        num_hidden=arch.num_hidden,
    )
    note = {
        "maf": "order reversed between layers",
        "coupling": "alternating halves",
        "spline": "autoregressive, 8 bins on [-5, 5], identity tails",
    }[spec.family]

    def log_prob(theta: Tensor, x: Tensor) -> Tensor:
        return flow(x).log_prob(theta)

    def sample(x: Tensor, n: int) -> Tensor:
        return flow(x).sample((n,))

    return ConditionalModel(flow, log_prob, sample, note)


def peers_module():
    """``benchmarks.peers.conditional_peers``, from the current folder or flowkit's checkout."""
    try:
        return importlib.import_module(PEERS_MODULE)
    except ModuleNotFoundError as first:
        if first.name not in ("benchmarks", "benchmarks.peers", PEERS_MODULE):
            raise
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "benchmarks" / "peers" / "conditional_peers.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            try:
                return importlib.import_module(PEERS_MODULE)
            except ModuleNotFoundError:
                continue
    raise Unavailable(
        "the peer adapters (benchmarks/peers/conditional_peers.py) are not "
        "importable: run from the repository root"
    )


def build_row(name: str, features: int, context: int, arch: Arch) -> ConditionalModel:
    """Build row ``name``; raises :class:`MissingLibrary` or :class:`Unavailable`."""
    spec = ROWS[name]
    if spec.library == "flowkit":
        return _flowkit_row(spec, features, context, arch)
    return peers_module().build(spec, features, context, arch)
