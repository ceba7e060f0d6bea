"""The training optimiser: Adam, AdamW or SGD, in the implementation measured fastest here.

Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1) updates every
parameter ``θ`` with gradient ``g`` by::

    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,
    θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

(AdamW, Loshchilov & Hutter 2019, also decays ``θ ← θ − lr·λ·θ`` apart from the gradient). These
are a dozen element-wise passes over every parameter. PyTorch implements them three ways, with
the same update up to floating-point round-off:

* ``for-loop``: one parameter tensor at a time, each pass a separate kernel (``foreach=False``);
* ``foreach``: each pass one multi-tensor kernel over all parameters (PyTorch's CPU and CUDA
  default);
* ``fused``: a single kernel that reads and writes each tensor once (``fused=True``).

Which is fastest depends on the machine and the model: large models are memory-bound, where the
one-pass fused kernel wins several times over (the 6.9 M parameters of the 784-d Real NVP peer
benchmark: 21.8 ms foreach, 4.5 ms fused on 2 CPU threads, ``benchmarks/optimizer_step.py``);
small models (tens of thousands of parameters in tens of tensors, the conditioners of
simulation-based inference) are bound by per-kernel overhead, where the kernel count decides.
So with ``implementation = "auto"`` (the default) :func:`build_optimizer` *measures*: the first
time a machine builds an optimiser for a given kind, device, dtype and model size class, it times
a few interleaved steps of every available implementation on stand-in copies of the parameters
(:func:`measure_implementations`, a few tens of milliseconds for a small model), keeps the
fastest, and caches the choice in ``$FLOWKIT_CACHE/optimizer-choice.json`` (default
``~/.cache/flowkit``), so later runs on the machine reuse it without timing. An explicit
implementation (the ``implementation`` argument, or an ``optimizer_impl`` key of the ``[train]``
mapping) is always used as given; ``fused`` falls back to PyTorch's default where the kernels do
not exist for the parameters' device or dtype. In a distributed run every process uses rank 0's choice, so the
replicas apply bit-identical updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

#: The implementation names :func:`build_optimizer` accepts (``auto``: measured, see above).
IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
#: The constructor options of each concrete implementation.
_OPTIONS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for-loop": {"foreach": False},
}
CACHE_FILE = "optimizer-choice.json"
#: The measurement times stand-ins for at most this many parameter elements (a prefix of the
#: tensors, at least one): enough to tell the implementations apart, bounded memory for big models.
MEASURE_MAX_ELEMENTS = 1 << 23
#: Timed rounds (every implementation steps once per round, in rotating order) and a time budget.
MEASURE_ROUNDS = 15
MEASURE_BUDGET_S = 1.0

_memo: dict[str, str] = {}
_lock = threading.Lock()
#: The measurement behind each choice made in this process (key → step ms per implementation).
last_measurements: dict[str, dict[str, float]] = {}


def _fused_supported(params: Sequence[torch.Tensor]) -> bool:
    """Whether PyTorch has fused optimiser kernels for every parameter's device and dtype."""
    if not params:
        return False
    devices = {p.device.type for p in params}
    return devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def _classes(kind: str) -> Callable[..., torch.optim.Optimizer]:
    # a Callable, not type[Optimizer]: the base class's __init__(params, defaults) is not the
    # keyword signature of Adam, AdamW and SGD that every call here uses
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}.get(kind, torch.optim.Adam)


def _options(train: dict[str, Any]) -> dict[str, Any]:
    if train["optimizer"] == "sgd":
        return {"lr": train["lr"], "momentum": 0.9, "weight_decay": train.get("weight_decay", 0.0)}
    return {
        "lr": train["lr"],
        "betas": tuple(train.get("betas", (0.9, 0.999))),
        "weight_decay": train.get("weight_decay", 0.0),
    }


def candidates(params: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """The implementations that apply to ``params`` (``fused`` only where its kernels exist)."""
    return (("fused",) if _fused_supported(params) else ()) + ("foreach", "for-loop")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ×{os.cpu_count()}"


def choice_key(params: Sequence[torch.Tensor], kind: str) -> str:
    """What a measured choice is cached under: machine, torch, device, dtype, threads, size class.

    The size class is ``⌊log₂⌋`` of the tensor count and of the element count, so models of
    similar size share a measurement and a much larger or smaller one is measured afresh.
    """
    device = params[0].device
    where = device.type
    if device.type == "cuda":
        where += ":" + torch.cuda.get_device_name(device)
    else:
        where += f":{torch.get_num_threads()}threads"
    numel = sum(p.numel() for p in params)
    dtypes = ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in params}))
    return (
        f"{_machine()}|torch {torch.__version__}|{where}|{dtypes}|{kind}|"
        f"tensors 2^{int(math.log2(len(params)))}|elements 2^{int(math.log2(max(numel, 1)))}"
    )


def _cache_path() -> Path:
    env = os.environ.get("FLOWKIT_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "flowkit") / CACHE_FILE


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: str, step_ms: dict[str, float]) -> None:
    from flowkit.atomic import atomic_write_text

    data = _read_cache()
    data[key] = {
        "choice": choice,
        "step_ms": step_ms,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with contextlib.suppress(OSError):  # a read-only cache: the choice lives for this process
        atomic_write_text(_cache_path(), json.dumps(data, indent=2, sort_keys=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_implementations(
    params: Sequence[torch.Tensor],
    kind: str = "adam",
    options: dict[str, Any] | None = None,
    *,
    rounds: int = MEASURE_ROUNDS,
    budget_s: float = MEASURE_BUDGET_S,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Median ``step()`` time (ms) of each implementation on stand-ins for ``params``.

    The stand-ins are fresh tensors of the parameters' shapes, dtype and device (up to
    :data:`MEASURE_MAX_ELEMENTS` elements, a prefix of the tensors) with fixed random gradients;
    the model's own parameters are never touched. Every implementation steps once per round, in
    an order that rotates every round so machine load hits them alike, after two warm-up steps
    (the first allocates the moments); at least 3 rounds, at most ``rounds``, and no more once
    ``budget_s`` seconds have passed.
    """
    params = list(params)
    names = list(names or candidates(params))
    subset: list[torch.Tensor] = []
    total = 0
    for p in params:
        if subset and total + p.numel() > MEASURE_MAX_ELEMENTS:
            break
        subset.append(p)
        total += p.numel()
    device = subset[0].device
    gen = torch.Generator(device="cpu").manual_seed(0)
    cls = _classes(kind)
    options = dict(options or {"lr": 1e-3})
    runs: dict[str, torch.optim.Optimizer] = {}
    for name in names:
        stand_ins = []
        for p in subset:
            q = torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype, device=device))
            q.grad = torch.randn(p.shape, generator=gen).to(dtype=p.dtype, device=device)
            stand_ins.append(q)
        runs[name] = cls(stand_ins, **options, **_OPTIONS[name])
        for _ in range(2):
            runs[name].step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(max(rounds, 3)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runs[name].step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _agree_across_processes(choice: str) -> str:
    """Rank 0's choice in a distributed run (every replica must apply the same update)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            box = [choice]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])
    except (RuntimeError, ValueError):  # a backend without object broadcast: keep our own
        pass
    return choice


def choose_implementation(
    params: Sequence[torch.Tensor], kind: str = "adam", options: dict[str, Any] | None = None
) -> str:
    """The fastest implementation for ``params`` on this machine: cached, else measured.

    Looks the :func:`choice_key` up in this process's memo, then in the cache file; measures
    (:func:`measure_implementations`) and stores the result only when neither has it.
    """
    params = list(params)
    names = candidates(params)
    key = choice_key(params, kind)
    with _lock:
        choice = _memo.get(key)
        if choice is None:
            stored = _read_cache().get(key)
            if isinstance(stored, dict) and stored.get("choice") in names:
                choice = stored["choice"]
                last_measurements[key] = dict(stored.get("step_ms") or {})
        if choice is None:
            step_ms = measure_implementations(params, kind, options, names=names)
            choice = min(step_ms, key=step_ms.__getitem__)
            last_measurements[key] = {k: round(v, 4) for k, v in step_ms.items()}
            _write_cache(key, choice, last_measurements[key])
        _memo[key] = choice
    return _agree_across_processes(choice)


def implementation_of(optimizer: torch.optim.Optimizer) -> str:
    """The implementation an optimiser was built with: ``fused``, ``foreach`` or ``for-loop``.

    ``foreach=None`` (PyTorch's own default) is reported as ``foreach`` on CPU and CUDA, where
    PyTorch picks it.
    """
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    return "for-loop" if defaults.get("foreach") is False else "foreach"


def build_optimizer(
    params: Sequence[torch.nn.Parameter],
    train: dict[str, Any],
    *,
    implementation: str | None = None,
) -> torch.optim.Optimizer:
    """The optimiser ``train["optimizer"]`` ("adam", "adamw" or "sgd") over ``params``.

    Reads ``lr``, ``betas`` and ``weight_decay`` from the ``[train]`` section (SGD uses momentum
    0.9). The implementation is ``implementation`` if given, else ``train["optimizer_impl"]``,
    else ``"auto"``: measured and cached (see the module docstring). An explicit ``fused`` on
    parameters without fused kernels falls back to PyTorch's default.
    """
    params = list(params)
    kind = train["optimizer"]
    impl = implementation or train.get("optimizer_impl") or "auto"
    if impl not in IMPLEMENTATIONS:
        from flowkit.errors import ConfigError

        raise ConfigError(
            f"optimizer implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}"
        )
    cls = _classes(kind)
    options = _options(train)
    if impl == "auto":
        if not params or not {p.device.type for p in params} <= {"cpu", "cuda"}:
            return cls(params, **options)  # nothing to time (or an unusual device): PyTorch's pick
        impl = choose_implementation(params, kind, options)
    if impl == "fused":
        if _fused_supported(params):
            try:
                return cls(params, **options, fused=True)
            except (RuntimeError, TypeError, ValueError):  # an older build without these kernels
                pass
        return cls(params, **options)
    return cls(params, **options, **_OPTIONS[impl])


def load_state_or_restart(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> bool:
    """Load a saved optimiser state; ``False`` (moments left fresh) when its layout differs.

    A checkpoint from an older flowkit may hold a model whose parameters were split into more
    tensors (e.g. a conditional MADE before its context weights were merged into its masked
    layers: 8 tensors per MADE, now 6). The model loads such a checkpoint (its
    ``load_state_dict`` merges the old tensors), but the optimiser's per-tensor moments cannot be
    mapped, and ``Optimizer.load_state_dict`` refuses groups of another size. Then the optimiser
    keeps its fresh state and this returns ``False``, so a caller can resume with restarted
    moments (and say so) instead of failing; any other error is raised.
    """
    saved = state.get("param_groups", [])
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if len(saved) != len(sizes) or any(len(g["params"]) != n for g, n in zip(saved, sizes, strict=True)):
        return False
    optimizer.load_state_dict(state)
    return True
