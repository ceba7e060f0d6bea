"""The training optimiser: fused kernels where PyTorch has them, the same update as the default."""

from __future__ import annotations

import pytest
import torch

from flowkit.optim import build_optimizer

TRAIN = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 1e-3}


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))
            for shape in [(7, 5), (5,), (3, 4, 2)]]


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_update_equals_the_default_one(kind: str, dtype: torch.dtype) -> None:
    fused_params, plain_params = _params(dtype), _params(dtype)
    fused = build_optimizer(fused_params, {**TRAIN, "optimizer": kind})
    assert fused.defaults.get("fused") is True  # the CPU kernels exist in the pinned torch
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
    options = {"momentum": 0.9} if kind == "sgd" else {"betas": TRAIN["betas"]}
    plain = cls(plain_params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"], **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(fused_params, plain_params, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_falls_back_where_fused_kernels_do_not_apply() -> None:
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    opt = build_optimizer(meta, {**TRAIN, "optimizer": "adam"})
    assert not opt.defaults.get("fused")
