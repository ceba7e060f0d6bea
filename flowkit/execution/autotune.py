"""Choose between implementations of the same function by measuring them, once per machine.

Several of flowkit's operations can be computed more than one way with the same result up to
floating-point round-off — an affine layer on PyTorch's oneDNN kernel or on ``F.linear``
(:mod:`flowkit.execution.onednn_linear`), a convolution with its ReLU and residual fused or not
(:mod:`flowkit.execution.onednn_conv`), an optimiser as one fused kernel or many
(:mod:`flowkit.optim`). Which is faster depends on the processor: oneDNN's GEMM reaches twice
MKL's FLOP/s on an AVX-512 AMD EPYC and 15% less on an AVX2 one (issue 21). So the choice is made
by measurement on the machine in use, as cuDNN's benchmark mode chooses convolution algorithms
(``torch.backends.cudnn.benchmark``; Chetlur et al. 2014, "cuDNN: Efficient Primitives for Deep
Learning") and TorchInductor's ``max-autotune`` chooses GEMM templates:

1. The first time an operation meets a *signature* — its shapes, dtype, device and whatever else
   changes the cost — :meth:`Autotuner.choose` runs every candidate a few times, interleaved
   round-robin (the order rotating each round, so a load change hits all alike), and keeps the
   one with the smallest time per call — the minimum over the rounds, the least disturbed
   call, which on a shared machine estimates a kernel's own cost far better than the median
   (preemption only ever adds time; the ``timeit`` documentation recommends the minimum for
   the same reason). A candidate that raises is dropped; if all raise, the default (the
   portable path) is used. The measurement is bounded: at most :data:`ROUNDS`
   timed rounds after one warm-up call each, and no more rounds once :data:`BUDGET_S` seconds
   have passed (at least :data:`MIN_ROUNDS`, unless :data:`HARD_LIMIT_S` has passed). A
   candidate other than the default is chosen only when it is faster by more than
   :data:`MARGIN`, so noise never makes the default slower than the portable path.
2. The choice is kept in this process (a dictionary lookup on every later call) and in a cache
   file shared by every process on the machine, ``autotune.json`` in :func:`cache_dir`, under a
   section keyed by the machine (:func:`machine_key`: CPU model, instruction-set flags, torch
   and flowkit versions) and an entry keyed by operation, signature and thread count. The file is
   written atomically (:func:`flowkit.atomic.atomic_write_text`) under a lock file; a process
   measures while holding the lock, so the other processes of a distributed run on the node wait
   for that choice and reuse it instead of measuring again (each node measures for itself).
3. An explicit setting always wins and is never timed: :func:`set_override` (what
   ``FLOWKIT_ONEDNN=0/1`` sets for the oneDNN paths), or ``FLOWKIT_AUTOTUNE=0``, which turns
   measuring off everywhere (each operation then uses its default, the portable path).

The interface is generic: an operation passes a name, a hashable signature, its default and a
mapping ``{candidate name: zero-argument callable}`` that runs one call of each candidate on
representative inputs; anything that computes one function in several ways can use it (see
:meth:`Autotuner.choose`, :meth:`Autotuner.lookup` and :meth:`Autotuner.record` for a choice
measured elsewhere). :func:`summary` lists the choices this process made, for benchmark reports.

Settings: ``FLOWKIT_CACHE_DIR`` (the folder of this cache), else ``FLOWKIT_CACHE`` (flowkit's
cache folder for datasets and the optimiser choice, :func:`flowkit.data.base.cache_dir`), else
``$XDG_CACHE_HOME/flowkit``, else ``~/.cache/flowkit``; ``FLOWKIT_AUTOTUNE=0`` (no measuring).

A measured choice makes results depend on the machine at the level of floating-point round-off
(as cuDNN's benchmark mode does); the candidates' inputs never touch the global random state, so
a seeded run draws the same numbers whether or not it measured.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "Autotuner",
    "Choice",
    "cache_dir",
    "cache_path",
    "cpu_info",
    "default_tuner",
    "machine_key",
    "register_setting",
    "set_override",
    "summary",
]

CACHE_FILE = "autotune.json"
#: The cache file's layout version (a different one is ignored and rewritten).
FORMAT = 1
#: Timed rounds at most, and at least (the budget stops measuring between the two).
ROUNDS = 15
MIN_ROUNDS = 3
#: Seconds of measuring per signature after which no further round starts.
BUDGET_S = 0.25
#: Seconds after which measuring stops even before :data:`MIN_ROUNDS` (very slow calls, or a
#: machine so loaded that each call takes long): at least one timed round is always run.
HARD_LIMIT_S = 2.0
#: A candidate other than the default must be faster by more than this fraction.
MARGIN = 0.05
#: How long a process waits for another one's measurement (the lock) before measuring itself.
LOCK_TIMEOUT_S = 60.0
#: The instruction-set flags of ``/proc/cpuinfo`` that decide which kernels are fast.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
)
_ENV_DIR = ("FLOWKIT_CACHE_DIR", "FLOWKIT_CACHE")
_ENV_AUTOTUNE = "FLOWKIT_AUTOTUNE"

Candidates = Mapping[str, Callable[[], Any]]


# -- the machine ---------------------------------------------------------------------------------
@functools.cache
def cpu_info() -> dict[str, Any]:
    """The processor: ``model``, instruction-set ``flags`` (:data:`ISA_FLAGS` it has),
    ``capability`` (the kernels PyTorch dispatches to: ``torch.backends.cpu.get_cpu_capability``,
    e.g. ``AVX2``, ``AVX512``) and ``logical_cpus``. Read from ``/proc/cpuinfo`` where there is one
    (Linux), else from :mod:`platform`."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "Model") and value.strip() and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an older torch or an unusual build
        capability = "unknown"
    return {
        "model": model,
        "flags": [f for f in ISA_FLAGS if f in flags],
        "capability": capability,
        "logical_cpus": os.cpu_count(),
    }


def machine_key() -> str:
    """What a cached choice is valid for: CPU model and flags, torch and flowkit versions."""
    from flowkit._version import __version__

    cpu = cpu_info()
    return (
        f"{cpu['model']} | {cpu['capability']} | {' '.join(cpu['flags']) or 'no-isa-flags'} "
        f"| torch {torch.__version__} | flowkit {__version__}"
    )


def cache_dir() -> Path:
    """The folder of flowkit's machine-specific caches (see the module docstring)."""
    for name in _ENV_DIR:
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "flowkit"


def cache_path() -> Path:
    """``autotune.json`` in :func:`cache_dir`."""
    return cache_dir() / CACHE_FILE


def measuring_enabled() -> bool:
    """``False`` when ``FLOWKIT_AUTOTUNE`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get(_ENV_AUTOTUNE, "1").strip().lower() not in ("0", "off", "false", "no")


# -- the file ------------------------------------------------------------------------------------
_held = threading.local()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[bool]:
    """An exclusive lock on ``path`` + ``.lock`` (yields whether it was acquired in time).

    ``filelock`` (a dependency of torch) where importable, else ``fcntl.flock``; on a folder that
    cannot be written, no lock (and no cache file either). Reentrant within a thread: a
    candidate that itself calls :meth:`Autotuner.choose` does not wait for its own lock.
    """
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield True
        finally:
            _held.depth -= 1
        return
    with _acquire(path, timeout) as acquired:
        _held.depth = 1 if acquired else 0
        try:
            yield acquired
        finally:
            _held.depth = 0


@contextlib.contextmanager
def _acquire(path: Path, timeout: float) -> Iterator[bool]:
    lock_file = path.with_name(path.name + ".lock")
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield False
        return
    filelock: ModuleType | None
    try:
        import filelock
    except ImportError:
        filelock = None
    if filelock is not None:
        lock = filelock.FileLock(str(lock_file), timeout=timeout)
        try:
            lock.acquire()
        except (filelock.Timeout, OSError):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
        return
    try:  # pragma: no cover - only without filelock
        import fcntl

        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield False
        return
    try:  # pragma: no cover
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.01)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:  # pragma: no cover
        os.close(fd)


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """The cache file's content (an empty cache when it is missing, unreadable or of another
    :data:`FORMAT`)."""
    try:
        data = json.loads((path or cache_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {"format": FORMAT, "machines": {}}
    data.setdefault("machines", {})
    return data


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from flowkit.atomic import atomic_write_text

    with contextlib.suppress(OSError):  # a read-only cache: the choice lives for this process
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _entry_name(op: str, signature: Hashable, threads: int) -> str:
    sig = signature if isinstance(signature, str) else "|".join(map(str, _flat(signature)))
    return f"{op}|{sig}|threads={threads}"


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, tuple):
        for v in value:
            yield from _flat(v)
    else:
        yield value


# -- choosing ------------------------------------------------------------------------------------
@dataclass
class Choice:
    """One decision: the ``choice`` for ``op`` on ``signature``, where it came from (``source``:
    ``measured``, ``cache``, ``override``, ``default``) and the times (ms per call, the minimum
    over the timed rounds) behind it."""

    op: str
    signature: Hashable
    choice: str
    source: str
    ms: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # the measurement's wall time (0 when not measured here)


class Autotuner:
    """Measured choices between candidates, memoised in the process and cached on disk.

    ``path``: the cache file (default :func:`cache_path`, read when first needed; ``False``: no
    file). ``timer``: the clock (``time.perf_counter``; tests pass a fake one). ``rounds``,
    ``min_rounds``, ``budget_s``, ``margin``: the bounds described in the module docstring.
    """

    def __init__(
        self,
        path: Path | str | bool | None = None,
        *,
        timer: Callable[[], float] = time.perf_counter,
        rounds: int = ROUNDS,
        min_rounds: int = MIN_ROUNDS,
        budget_s: float = BUDGET_S,
        margin: float = MARGIN,
    ) -> None:
        self._path = path
        self.timer = timer
        self.rounds = max(int(rounds), 1)
        self.min_rounds = max(min(int(min_rounds), self.rounds), 1)
        self.budget_s = float(budget_s)
        self.margin = float(margin)
        self._memo: dict[tuple[str, Hashable, int], str] = {}
        self._overrides: dict[str, str] = {}
        self._lock = threading.RLock()
        #: Every decision of this process, in order (what :func:`summary` reports).
        self.decisions: list[Choice] = []

    # -- settings --------------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The cache file, or ``None`` when this tuner keeps none."""
        if self._path is False:
            return None
        if self._path is None or self._path is True:
            return cache_path()
        return Path(self._path)

    def set_override(self, op: str, choice: str | None) -> None:
        """Always use ``choice`` for ``op`` (never measured); ``None`` removes the override."""
        with self._lock:
            if choice is None:
                self._overrides.pop(op, None)
            else:
                self._overrides[op] = choice

    def override(self, op: str) -> str | None:
        """The explicit choice for ``op``, if one is set."""
        return self._overrides.get(op)

    def forget(self) -> None:
        """Drop this process's memo and decisions (the cache file is kept)."""
        with self._lock:
            self._memo.clear()
            self.decisions.clear()

    # -- the decision ----------------------------------------------------------------------------
    def lookup(self, op: str, signature: Hashable) -> str | None:
        """The choice already made for ``(op, signature)`` at this thread count (override,
        memo or cache file), or ``None``; never measures."""
        forced = self._overrides.get(op)
        if forced is not None:
            return forced
        threads = torch.get_num_threads()
        key = (op, signature, threads)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        stored = self._stored(op, signature, threads)
        return None if stored is None else stored["choice"]

    def choose(
        self, op: str, signature: Hashable, candidates: Candidates | Callable[[], Candidates], *, default: str
    ) -> str:
        """The candidate to use for ``op`` on ``signature`` (hashable; shapes, dtype, device...).

        ``candidates`` maps names to zero-argument callables that each run one call of that
        implementation (or is a function returning that mapping, called only when a measurement
        is needed, so a cached choice builds no inputs); on an asynchronous device (CUDA) each
        callable must synchronise before it returns, since the time taken is wall time.
        ``default`` is the portable candidate: used when measuring is off or every candidate
        fails, and kept unless another is faster by more than :attr:`margin`. The thread count
        (``torch.get_num_threads()``) is part of the key. Cost on a hit: one dictionary lookup.
        """
        threads = torch.get_num_threads()
        key = (op, signature, threads)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            decision = self._decide(op, signature, threads, candidates, default)
            self._memo[key] = decision.choice
            self.decisions.append(decision)
            return decision.choice

    def record(
        self, op: str, signature: Hashable, choice: str, ms: Mapping[str, float] | None = None
    ) -> None:
        """Store a choice measured elsewhere (e.g. by an operation's own benchmark) in the memo
        and the cache file, under the current thread count."""
        threads = torch.get_num_threads()
        with self._lock:
            self._memo[(op, signature, threads)] = choice
            decision = Choice(op, signature, choice, "measured", dict(ms or {}))
            self.decisions.append(decision)
            path = self.path
            if path is not None:
                with _file_lock(path, LOCK_TIMEOUT_S):
                    self._store(path, op, signature, threads, decision)

    def _decide(
        self,
        op: str,
        signature: Hashable,
        threads: int,
        candidates: Candidates | Callable[[], Candidates],
        default: str,
    ) -> Choice:
        forced = self._overrides.get(op)
        if forced is not None:
            return Choice(op, signature, forced, "override")
        stored = self._stored(op, signature, threads)
        if stored is not None:
            return Choice(op, signature, stored["choice"], "cache", dict(stored.get("ms") or {}))
        if not measuring_enabled():
            return Choice(op, signature, default, "default")
        path = self.path
        if path is None:
            return self._measure(op, signature, candidates, default)
        with _file_lock(path, LOCK_TIMEOUT_S):
            stored = self._stored(op, signature, threads)  # another process may have measured
            if stored is not None:
                return Choice(op, signature, stored["choice"], "cache", dict(stored.get("ms") or {}))
            decision = self._measure(op, signature, candidates, default)
            self._store(path, op, signature, threads, decision)
            return decision

    def _stored(self, op: str, signature: Hashable, threads: int) -> dict[str, Any] | None:
        path = self.path
        if path is None:
            return None
        machine = read_cache(path)["machines"].get(machine_key(), {})
        entry = machine.get("choices", {}).get(_entry_name(op, signature, threads))
        return entry if isinstance(entry, dict) and isinstance(entry.get("choice"), str) else None

    def _store(self, path: Path, op: str, signature: Hashable, threads: int, decision: Choice) -> None:
        data = read_cache(path)
        machine = data["machines"].setdefault(machine_key(), {})
        cpu = cpu_info()
        machine["machine"] = {
            "cpu_model": cpu["model"],
            "isa_flags": cpu["flags"],
            "capability": cpu["capability"],
            "torch": torch.__version__,
        }
        machine.setdefault("choices", {})[_entry_name(op, signature, threads)] = {
            "choice": decision.choice,
            "ms": {k: round(v, 4) for k, v in decision.ms.items()},
            **({"failed": decision.failed} if decision.failed else {}),
            "measure_s": round(decision.seconds, 4),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        _write_cache(path, data)

    def _measure(
        self, op: str, signature: Hashable, candidates: Candidates | Callable[[], Candidates], default: str
    ) -> Choice:
        """Time the candidates (see the module docstring); the fastest, or ``default``."""
        start = self.timer()
        failed: dict[str, str] = {}
        try:
            runs = dict(candidates() if callable(candidates) else candidates)
        except Exception as exc:  # cannot even build the inputs: the portable path
            return Choice(op, signature, default, "default", failed={"*": _why(exc)})
        times: dict[str, list[float]] = {name: [] for name in runs}
        for name, fn in list(runs.items()):  # warm-up (first calls build kernels, caches)
            try:
                fn()
            except Exception as exc:
                failed[name] = _why(exc)
                del runs[name]
        names = list(runs)
        for r in range(self.rounds if names else 0):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if name not in runs:
                    continue
                t0 = self.timer()
                try:
                    runs[name]()
                except Exception as exc:
                    failed[name] = _why(exc)
                    del runs[name]
                    continue
                times[name].append(self.timer() - t0)
            spent = self.timer() - start
            if (r + 1 >= self.min_rounds and spent > self.budget_s) or spent > HARD_LIMIT_S:
                break
        ms = {name: 1000 * min(times[name]) for name in runs if times[name]}
        choice = default if default in ms or not ms else min(ms, key=ms.__getitem__)
        if ms and default in ms:
            fastest = min(ms, key=ms.__getitem__)
            if ms[fastest] < (1 - self.margin) * ms[default]:
                choice = fastest
        return Choice(op, signature, choice, "measured", ms, failed, self.timer() - start)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


_default: Autotuner | None = None
_default_lock = threading.Lock()


def default_tuner() -> Autotuner:
    """The process-wide tuner of flowkit's operations (cache file: :func:`cache_path`)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Autotuner()
    return _default


def set_override(op: str, choice: str | None) -> None:
    """Fix ``op``'s choice in the process-wide tuner (``None``: measure again)."""
    default_tuner().set_override(op, choice)


_settings: list[Callable[[], Mapping[str, str]]] = []


def register_setting(provider: Callable[[], Mapping[str, str]]) -> None:
    """Add a function that names the operations an explicit setting of its own forces (e.g.
    ``FLOWKIT_ONEDNN``), ``{op: "path (why)"}``; :func:`summary` reports them as overrides."""
    _settings.append(provider)


def summary(tuner: Autotuner | None = None) -> dict[str, Any]:
    """What this process chose, for reports: thread count, the overrides in force (the tuner's
    and those of :func:`register_setting`), and per operation the signatures decided with their
    choice, source and times."""
    tuner = tuner or default_tuner()
    overrides = dict(tuner._overrides)
    for provider in _settings:
        overrides.update(provider())
    ops: dict[str, list[dict[str, Any]]] = {}
    for d in tuner.decisions:
        ops.setdefault(d.op, []).append(
            {
                "signature": d.signature
                if isinstance(d.signature, str)
                else ", ".join(map(str, _flat(d.signature))),
                "choice": d.choice,
                "source": d.source,
                **({"ms": {k: round(v, 4) for k, v in d.ms.items()}} if d.ms else {}),
                **({"failed": d.failed} if d.failed else {}),
                **({"measure_s": round(d.seconds, 4)} if d.seconds else {}),
            }
        )
    return {"threads": torch.get_num_threads(), "overrides": overrides, "ops": ops}


def paths_text(info: Mapping[str, Any] | None = None) -> str:
    """One line naming the path each operation took, e.g. ``linear: onednn ×6; conv2d: aten ×3``
    (from :func:`summary`'s result, or this process's)."""
    info = info if info is not None else summary()
    parts = []
    for op, rows in (info.get("ops") or {}).items():
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["choice"]] = counts.get(row["choice"], 0) + 1
        parts.append(f"{op}: " + ", ".join(f"{c} ×{n}" for c, n in sorted(counts.items())))
    for op, choice in (info.get("overrides") or {}).items():
        if op not in (info.get("ops") or {}):
            parts.append(f"{op}: {choice}" + ("" if "(" in choice else " (set)"))
    return "; ".join(parts) or "–"
