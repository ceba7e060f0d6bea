"""The memory-free backprop benchmark's bookkeeping on a tiny stack.

``benchmarks/invertible_backprop.py`` measures peak memory with a tensor tracker and compares
flowkit's wrapper with autograd, checkpointing and MemCNN; here the tracker's accounting and the
variants' gradients are checked (timings are measured in the benchmark, never in unit tests).
"""

from __future__ import annotations

import argparse

import pytest
import torch


@pytest.fixture(scope="module")
def bench(benchmarks_importable):
    from benchmarks import invertible_backprop as module

    return module


def test_tracker_counts_new_storages_until_freed_or_emptied(bench) -> None:
    existing = torch.zeros(1000)
    tracker = bench.TensorPeak([existing])
    with tracker:
        a = torch.ones(256)  # 1 KiB
        alias = existing.view(10, 100)  # a view of an existing storage: never counted
        b = a * 2  # 1 KiB more
        assert tracker.live() == 2048
        b.untyped_storage().resize_(0)  # emptied in place (as MemCNN frees activations)
        assert tracker.live() == 1024
        del b
        c = a + 1
        del c
    assert tracker.peak == 2048
    assert alias.shape == (10, 100)


def test_fault_counter_sees_fresh_memory_being_touched(bench) -> None:
    """A freshly mapped 64 MiB buffer faults in page by page when first written."""
    import mmap

    size = 64 * 2**20
    before = bench._minor_faults()
    with mmap.mmap(-1, size) as region:  # anonymous memory: its pages are mapped on first touch
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            region.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per small page
        for offset in range(0, size, mmap.PAGESIZE):
            region[offset] = 1
    assert bench._minor_faults() - before >= size // mmap.PAGESIZE // 2


def _args(variant: str) -> argparse.Namespace:
    return argparse.Namespace(
        device="cpu", batch=4, blocks=3, hidden=8, num_blocks=1, repeats=1, threads=0, seed=0, variant=variant
    )


def _gradients(bench, variant: str) -> list[torch.Tensor]:
    state = bench.Bench(_args(variant))
    state.forward_backward(bench.build_variant(variant, state.stack))
    return [p.grad.clone() for p in state.stack.parameters()]


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # MemCNN's storage calls
@pytest.mark.parametrize("variant", ["checkpoint", "invertible", "invertible-c1", "memcnn"])
def test_every_variant_trains_the_same_model(bench, variant: str) -> None:
    if variant not in bench.available_variants():
        pytest.skip("memcnn is not installed (pip install --no-deps memcnn)")
    want = _gradients(bench, "autograd")
    got = _gradients(bench, variant)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_memory_free_variants_need_less_memory(bench) -> None:
    args = {v: _args(v) for v in ("autograd", "invertible", "invertible-c1")}
    for a in args.values():
        a.blocks, a.batch = 8, 16
    peaks = {v: bench.measure_memory(a)["tensor_peak"] for v, a in args.items()}
    assert peaks["invertible"] < peaks["invertible-c1"] < 0.5 * peaks["autograd"]


def test_convolution_flops_are_counted_with_the_fused_path_on(bench) -> None:
    from flowkit.execution.onednn_linear import onednn_mode

    was = onednn_mode()
    state = bench.Bench(_args("autograd"))  # 3 couplings, hidden 8, 1 residual block, batch 4
    flops, widest, (x_shape, w_shape) = bench.conv_flops(state.stack, state.x)
    per_pixel = 9 * (12 * 8 + 2 * 8 * 8 + 8 * 12)  # conv in, one residual block, conv out
    assert flops == 2 * per_pixel * 16 * 16 * 4 * 3
    assert widest == 2 * 9 * 12 * 8 * 16 * 16 * 4
    assert x_shape == (4, 12, 16, 16) and w_shape == (8, 12, 3, 3)  # conv in: 12 → 8 channels
    assert onednn_mode() == was  # the switch is restored
