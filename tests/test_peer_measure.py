"""The peer benchmark's measuring code on a tiny run (flowkit and plain PyTorch only).

Only the bookkeeping is checked (columns, ratios, the optimiser each library gets); speed is
measured in benchmarks, never in unit tests.
"""

from __future__ import annotations

import pytest
import torch

import flowkit.execution.onednn_linear as flowkit_linear


@pytest.fixture(scope="module")
def measure(benchmarks_importable):
    from benchmarks.peers import measure as module

    return module


def test_speed_rows_have_every_column(measure):
    rows = measure.speed("realnvp-moons", ["flowkit", "plain"], steps=2, repeats=1, warmup=0, threads=1)
    by_lib = {r["library"]: r for r in rows}
    assert set(by_lib) == {"flowkit", "plain"}
    for row in rows:
        assert row["status"] == "ok"
        for key in (
            "train_step_ms",
            "forward_backward_ms",
            "density_ms",
            "sampling_ms",
            "flops_fraction_of_matmul",
            "model_flops_fraction_of_matmul",
            "saved_activation_mib",
        ):
            assert row[key] > 0, key
        if flowkit_linear.onednn_linear_active():
            assert row["flops_fraction_of_onednn_matmul"] > 0
            assert row["matmul_onednn_gflops"] > 0
    # flowkit's row names its execution paths (autotune choices) and its Adam implementation
    assert "adam: " in by_lib["flowkit"]["paths"] and "paths" not in by_lib["plain"]
    # no peer in this run, so no ratio to a fastest peer
    assert not any(k.endswith("_ratio_vs_fastest_peer") for r in rows for k in r)


def test_each_library_gets_its_users_optimiser(measure):
    from benchmarks.peers import build

    flowkit_adam = build("flowkit", "realnvp-moons").optimizer(1e-3)
    plain_adam = build("plain", "realnvp-moons").optimizer(1e-3)
    from flowkit.optim import choose_implementation, implementation_of

    # flowkit's trainer Adam: the implementation flowkit.optim measured fastest on this machine
    params = flowkit_adam.param_groups[0]["params"]
    assert isinstance(flowkit_adam, torch.optim.Adam)
    assert implementation_of(flowkit_adam) == choose_implementation(params, "adam")
    assert isinstance(plain_adam, torch.optim.Adam) and not plain_adam.defaults.get("fused")
