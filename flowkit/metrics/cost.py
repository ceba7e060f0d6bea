"""Computational cost: throughput, peak memory, parameter count and saved activation memory.

Timings are wall-clock and depend on the machine and its load: report them with the device and
repeat on a quiet machine before comparing. Nothing here asserts on time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.data.base import DataSplits
from flowkit.data.preprocess import dequantize
from flowkit.errors import ConfigError
from flowkit.metrics.likelihood import model_dtype
from flowkit.metrics.sampling import eval_mode, seeded
from flowkit.model import Flow

__all__ = [
    "SavedTensorMeter",
    "parameter_count",
    "peak_memory",
    "reset_peak_memory",
    "saved_activation_bytes",
    "throughput",
]

_MIB = 2.0**20


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def throughput(
    model: Flow,
    data: DataSplits,
    *,
    batch_size: int = 256,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Examples per second for density evaluation and for sampling, on the model's device.

    ``density_samples_per_s = B / median(t_log_prob)`` for ``log_prob`` of a batch of ``B``
    dequantized test examples (cycled when the split is smaller than ``B``; with the test labels as
    context when the data has them), and ``sampling_samples_per_s = B / median(t_sample)`` for
    ``sample(B)`` with the same labels. Each is timed ``repeats`` times after ``warmup`` untimed
    calls (lazy initialisation, allocator and kernel caches), under ``torch.inference_mode`` in
    eval mode, with ``torch.cuda.synchronize`` around each call on GPU (CUDA kernels run
    asynchronously); the median resists outliers from a busy machine. The caller's random state
    is left untouched.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(
            f"throughput needs batch_size >= 1, repeats >= 1 and warmup >= 0; got {batch_size}, "
            f"{repeats}, {warmup}"
        )
    device = model.device
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.arange(batch_size) % data.test.shape[0]
    x = dequantize(data.test[idx], data.levels, gen).to(device, model_dtype(model))
    labels = None
    if data.test_labels is not None and model.num_classes:
        labels = data.test_labels[idx].to(device)
    with eval_mode(model), seeded(seed, device):
        density_s = _median_seconds(lambda: model.log_prob(x, labels), device, repeats, warmup)
        sample_s = _median_seconds(lambda: model.sample(batch_size, labels), device, repeats, warmup)
    return {"density_samples_per_s": batch_size / density_s, "sampling_samples_per_s": batch_size / sample_s}


def peak_memory(device: torch.device | str | None = None) -> dict[str, float]:
    """Peak memory of this process in MiB: ``peak_rss_mib``, and ``peak_cuda_mib`` on CUDA.

    ``peak_rss_mib`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS): the
    high-water mark of the resident set over the *whole life of the process*, so measure each
    configuration in a fresh process to compare them. ``peak_cuda_mib`` is
    ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache or the CUDA
    context) since the start or the last :func:`reset_peak_memory`; it is reported when
    ``device`` is a CUDA device, or when ``device`` is ``None`` and CUDA has been initialised.
    """
    import resource  # Unix only: imported here so that the rest of the module works elsewhere

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mib": rss / (_MIB if sys.platform == "darwin" else 1024.0)}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / _MIB
    elif dev is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / _MIB
    return out


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Reset the CUDA peak counter of ``device`` (the process RSS peak cannot be reset)."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    elif dev is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalars in the model's parameters (shared parameters counted once).

    ``trainable_only`` counts only parameters with ``requires_grad``. Buffers (e.g. actnorm
    statistics, permutations) are not parameters and are not counted.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class SavedTensorMeter:
    """Context manager that adds up the bytes of tensors autograd saves for backward.

    Inside the block every tensor that an autograd node saves (through
    ``torch.autograd.graph.saved_tensors_hooks``: built-in ops and ``ctx.save_for_backward`` of
    custom Functions) is recorded by its storage; a storage is counted once however many tensors
    view it, and storages of ``ignore`` (pass ``model.parameters()`` to count activations only) are
    not counted. ``bytes`` is the total after the block. This is the activation memory that
    memory-saving reversible networks avoid (Gomez et al. 2017, "The Reversible Residual Network:
    Backpropagation Without Storing Activations", NeurIPS, §3). Tensors a custom Function keeps as
    plain ``ctx`` attributes bypass the hook and are not seen. Recorded storages are kept alive
    until the block ends, so no address is reused and counted twice.
    """

    def __init__(self, ignore: Iterable[Tensor] = ()) -> None:
        self._ignore = {self._key(t) for t in ignore}
        self._seen: dict[tuple[str, int], int] = {}
        self._alive: list[torch.UntypedStorage] = []
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self.bytes = 0

    @staticmethod
    def _key(t: Tensor) -> tuple[str, int]:
        return str(t.device), t.untyped_storage().data_ptr()

    def _pack(self, t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            return t
        key = (str(t.device), storage.data_ptr())
        if key not in self._ignore and key not in self._seen:
            self._seen[key] = storage.nbytes()
            self._alive.append(storage)
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._seen.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(exc_type, exc, tb)
        self._hooks = None
        self.bytes = sum(self._seen.values())
        self._alive.clear()


def saved_activation_bytes(fn: Callable[[], Any], ignore: Iterable[Tensor] = ()) -> int:
    """Bytes of tensors saved for backward while ``fn()`` runs (see :class:`SavedTensorMeter`).

    ``fn`` is typically one training step's forward pass and loss (backward may be included: it
    saves nothing new unless it builds a graph for higher derivatives). Pass
    ``ignore=model.parameters()`` to exclude the weights that layers save, leaving activations.
    """
    with SavedTensorMeter(ignore) as meter:
        fn()
    return meter.bytes
