"""Multi-process (data-parallel) training with ``torch.distributed``, as ``torchrun`` starts it.

``torchrun --nproc_per_node=N -m flowkit.cli run ...`` starts ``N`` copies of ``flowkit run``, each
with the environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init` joins them into one process group (``gloo`` for CPU tensors, ``NCCL``
for CUDA tensors, each process on ``cuda:LOCAL_RANK``); without those variables every function
here is a no-op (one process, world size 1), so single-process training is unchanged.

How a step is shared (data parallelism, Li et al. 2020, "PyTorch Distributed: Experiences on
Accelerating Data Parallel Training", §2): every process draws the same step-addressed *global*
batch and takes its own slice; after ``backward`` the gradients are averaged over the processes
(:func:`average_gradients`), so every process takes the same optimiser step on the gradient of
the global batch's mean loss, ``∇ (1/N) Σ_r L_r = (1/N) Σ_r ∇ L_r`` for equal slices, and the
parameters stay identical without ever being sent again. Rank 0 alone writes files
(checkpoints, metrics, figures, summary); the others wait for it in :func:`on_main`.

For plugin authors: an objective that steps an optimiser of its own (a critic in
``auxiliary_update``) must call :func:`average_gradients` on that optimiser's parameters between
``backward()`` and ``step()``, or its module drifts apart across processes (the trainer checks at
every checkpoint and warns). Gradients of the model and of ``joint_parameters()`` are averaged by
the trainer. See ``docs/distributed.md``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: the variables torchrun sets for every process it starts
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: elements per flattened bucket sent in one collective (bounds the extra memory)
BUCKET_ELEMENTS = 1 << 24
_EVERY_RANK = "flowkit_raised_on_every_rank"
_STATE = {"owned": False}  # whether flowkit created the process group (and so destroys it)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group exists in this process."""
    return torch.distributed.is_available() and _dist().is_initialized()


def default_backend() -> str:
    """The process group's backend: ``"cpu:gloo,cuda:nccl"`` with CUDA, else ``"gloo"``.

    With both, each collective goes to the backend of its tensors' device (gradients on the GPU
    through NCCL, small CPU messages through gloo). ``$FLOWKIT_DIST_BACKEND`` overrides it.
    """
    env = os.environ.get("FLOWKIT_DIST_BACKEND")
    if env:
        return env
    if torch.cuda.is_available() and _dist().is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init() -> bool:
    """Join the process group torchrun describes; returns whether training is distributed.

    Idempotent. Without torchrun's variables it does nothing and returns ``False``. The group's
    timeout (how long a process waits for the others, e.g. while rank 0 evaluates) is
    ``$FLOWKIT_DIST_TIMEOUT_MIN`` minutes, 120 by default.
    """
    if is_initialized():
        return True
    if not launched():
        return False
    from flowkit.errors import ConfigError

    if not torch.distributed.is_available():
        raise ConfigError(
            "flowkit was started by torchrun, but this PyTorch build has no "
            "torch.distributed; install a PyTorch build with distributed support"
        )
    backend = default_backend()
    if "nccl" in backend and 0 <= local_rank_from_env() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank_from_env())
    minutes = float(os.environ.get("FLOWKIT_DIST_TIMEOUT_MIN", "120"))
    _dist().init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    _STATE["owned"] = True
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group if :func:`init` created it (idempotent)."""
    if _STATE["owned"] and is_initialized():
        _dist().destroy_process_group()
    _STATE["owned"] = False


@contextmanager
def session() -> Iterator[bool]:
    """Join torchrun's process group for a ``with`` block; yields whether training is distributed.

    :func:`init` on entry; on exit :func:`shutdown` if this session created the group (a nested
    session leaves the outer one's group alone).
    """
    created = launched() and not is_initialized()
    try:
        yield init()
    finally:
        if created:
            shutdown()


def rank() -> int:
    """This process's global rank (0 under one process)."""
    return _dist().get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes training together (1 under one process)."""
    return _dist().get_world_size() if is_initialized() else 1


def local_rank_from_env() -> int:
    """``$LOCAL_RANK`` (the process's index on its node), 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_rank() -> int:
    """This process's index on its node: its GPU is ``cuda:local_rank()`` (0 under one process)."""
    return local_rank_from_env() if is_initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and prints (always under one process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op under one process)."""
    if world_size() > 1:
        _dist().barrier()


@contextmanager
def local_main_first() -> Iterator[None]:
    """Run the block on each node's local rank 0 first, then on the node's other processes.

    For work that fills a shared cache (dataset downloads and decoding): one process per node
    does it, the others then read the cache instead of racing to write it.
    """
    if world_size() == 1:
        yield
        return
    if local_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if local_rank() == 0:
            barrier()


# -- objects and decisions ----------------------------------------------------------------------
def raised_on_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by every process at once (rank 0 reports it; others stay quiet)."""
    return bool(getattr(exc, _EVERY_RANK, False))


def mark_every_rank(exc: E) -> E:
    """Mark ``exc`` as raised by every process at the same point (see :func:`raised_on_every_rank`)."""
    setattr(exc, _EVERY_RANK, True)
    return exc


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return mark_every_rank(RuntimeError(f"on rank 0: {type(exc).__name__}: {exc}"))


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 only; every process returns its result (or raises its error).

    The other processes wait for rank 0 (this is also a barrier). The result is pickled and
    broadcast, so it must be picklable (paths, configs, state dicts on the CPU). An exception on
    rank 0 is raised on every process, marked :func:`raised_on_every_rank`. Under one process this
    is just ``fn(*args, **kwargs)``.
    """
    if world_size() == 1:
        return fn(*args, **kwargs)
    payload: list[Any] = [None]
    error: Exception | None = None
    if is_main():
        try:
            payload[0] = (True, fn(*args, **kwargs))
        except Exception as exc:
            error = mark_every_rank(exc)
            payload[0] = (False, _picklable(exc))
    _dist().broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if ok:
        return value
    raise error if error is not None else mark_every_rank(value)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one tiny collective; ``flag`` under one process)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([0 if flag else 1], dtype=torch.int32)
    _dist().all_reduce(t)
    return int(t.item()) == 0


def any_true(flag: bool) -> bool:
    """Whether ``flag`` holds on at least one process (``flag`` under one process)."""
    return not all_true(not flag)


def average_terms(terms: dict[str, float]) -> dict[str, float]:
    """Logged scalars averaged over the processes (each key over the processes that logged it).

    With equal slices, the mean of the per-process mean losses is the loss of the global batch.
    """
    if world_size() == 1:
        return terms
    gathered: list[dict[str, float] | None] = [None] * world_size()
    _dist().all_gather_object(gathered, dict(terms))
    keys = list(dict.fromkeys(k for d in gathered if d for k in d))
    out = {}
    for k in keys:
        values = [float(d[k]) for d in gathered if d and k in d]
        out[k] = sum(values) / len(values)
    return out


# -- tensors ------------------------------------------------------------------------------------
def _buckets(tensors: Iterable[Tensor]) -> Iterator[list[Tensor]]:
    """Tensors grouped by device and dtype, in buckets of at most :data:`BUCKET_ELEMENTS`."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        bucket: list[Tensor] = []
        size = 0
        for t in group:
            if bucket and size + t.numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            yield bucket


@torch.no_grad()
def _scatter_back(flat: Tensor, bucket: list[Tensor]) -> None:
    offset = 0
    for t in bucket:
        t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace every gradient by its mean over the processes (in place; no-op under one process).

    Call it between ``loss.backward()`` and ``optimizer.step()``; every process then steps on the
    same gradient and the parameters stay identical. A parameter without a gradient on some
    processes gets a zero gradient there if any process has one; one without a gradient anywhere
    keeps ``None`` (the optimiser skips it, as under one process). Gradients travel flattened, in
    a few large buckets (one collective per bucket).
    """
    if world_size() == 1:
        return
    dist = _dist()
    params = [p for p in params if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, has in zip(params, present.tolist()):
        if has:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    n = float(world_size())
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(n)
        _scatter_back(flat, bucket)


def _module_tensors(modules: Iterable[nn.Module]) -> list[Tensor]:
    tensors: list[Tensor] = []
    for module in modules:
        tensors += [p.data for p in module.parameters()]
        tensors += [b for b in module.buffers()]
    return tensors


def broadcast_modules(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every process's ``modules`` (no-op under one).

    Used after the data-dependent initialisation (actnorm, a prior fitted to the first latents),
    so every process starts from exactly rank 0's parameters, and at each checkpoint.
    """
    if world_size() == 1:
        return
    dist = _dist()
    for bucket in _buckets(_module_tensors(modules)):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        wire = flat.to(torch.uint8) if flat.dtype == torch.bool else flat
        dist.broadcast(wire, src=0)
        if not is_main():
            _scatter_back(wire, bucket)


def out_of_sync(**modules: nn.Module) -> list[str]:
    """Names (``"<key>.<parameter>"``) of parameters that differ between processes.

    Compares a fingerprint of every parameter (its sum and its sum of squares, in float64)
    across processes, so it is cheap and catches an auxiliary optimiser that steps on
    un-averaged gradients. Empty under one process.
    """
    if world_size() == 1:
        return []
    dist = _dist()
    names, prints = [], []
    for key, module in modules.items():
        for name, p in module.named_parameters():
            t = p.detach().double()
            names.append(f"{key}.{name}")
            prints.append(torch.stack([t.sum(), t.pow(2).sum()]).cpu())
    if not prints:
        return []
    low = torch.stack(prints)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    same = ((low == high) | (low.isnan() & high.isnan())).all(dim=1)
    return [n for n, ok in zip(names, same.tolist()) if not ok]


# -- random streams -----------------------------------------------------------------------------
def rank_seed(seed: int, process: int, step: int = 0) -> int:
    """The seed of process ``process``'s random stream (ranks > 0; rank 0 keeps ``seed``'s stream)."""
    digest = hashlib.sha256(f"flowkit/{seed}/{process}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank_stream(seed: int, step: int = 0) -> None:
    """Give every rank > 0 its own random stream (prior samples, noise inside objectives).

    Rank 0 keeps the stream a single-process run would have, so its draws are the single-process
    draws; other ranks draw independent numbers for their own examples instead of repeating rank
    0's. No-op under one process.
    """
    if world_size() > 1 and not is_main():
        torch.manual_seed(rank_seed(seed, rank(), step))


def gather_rng_states(device: torch.device) -> list[dict[str, Tensor]]:
    """Every process's random-generator states, indexed by rank (for checkpoints)."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world_size() == 1:
        return [mine]
    gathered: list[Any] = [None] * world_size()
    _dist().all_gather_object(gathered, mine)
    return gathered


def restore_rng_states(
    states: list[dict[str, Tensor]] | None, seed: int, step: int, device: torch.device
) -> str | None:
    """Restore this rank's random stream from :func:`gather_rng_states`'s list.

    If the checkpoint was written by a different number of processes, ranks > 0 start fresh
    streams derived from ``(seed, rank, step)`` and a note is returned (rank 0 keeps the stream
    the caller restored). No-op under one process.
    """
    if world_size() == 1:
        return None
    if states is not None and len(states) == world_size():
        mine = states[rank()]
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
        return None
    seed_rank_stream(seed, step)
    written = len(states) if states else 1
    return (
        f"note: the checkpoint was written by {written} process(es), this run has "
        f"{world_size()}: ranks > 0 start new random streams (data batches are unchanged)"
    )
