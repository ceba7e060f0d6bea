"""The training optimiser: every implementation gives the same update; ``auto`` is measured and
cached per machine; an explicit choice always wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowkit import optim
from flowkit.errors import ConfigError
from flowkit.optim import build_optimizer, implementation_of

TRAIN = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 1e-3}


def _params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))
        for shape in [(7, 5), (5,), (3, 4, 2)]
    ]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder and an empty in-process memo."""
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(optim, "_memo", {})
    return tmp_path / optim.CACHE_FILE


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop", "auto"])
@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_implementation_gives_the_default_update(
    impl: str,
    kind: str,
    dtype: torch.dtype,
    cache: Path,
) -> None:
    built_params, plain_params = _params(dtype), _params(dtype)
    built = build_optimizer(built_params, {**TRAIN, "optimizer": kind}, implementation=impl)
    if impl != "auto":
        assert implementation_of(built) == impl  # the fused CPU kernels exist in the pinned torch
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
    options = {"momentum": 0.9} if kind == "sgd" else {"betas": TRAIN["betas"]}
    plain = cls(plain_params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"], **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(built_params, plain_params, strict=True):
            a.grad = torch.randn(a.shape, generator=gen, dtype=dtype)
            b.grad = a.grad.clone()
        built.step()
        plain.step()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(built_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_auto_takes_the_fastest_measured_and_caches_it(
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def fake(params, kind, options, **kw):  # foreach "measured" fastest
        calls.append(kind)
        return {"fused": 2.0, "foreach": 1.0, "for-loop": 3.0}

    monkeypatch.setattr(optim, "measure_implementations", fake)
    opt = build_optimizer(_params(), {**TRAIN, "optimizer": "adam"})
    assert implementation_of(opt) == "foreach" and calls == ["adam"]
    assert cache.is_file()
    build_optimizer(_params(), {**TRAIN, "optimizer": "adam"})
    assert calls == ["adam"], "the memo answers the second time"
    monkeypatch.setattr(optim, "_memo", {})  # a new process: the cache file answers
    assert implementation_of(build_optimizer(_params(), {**TRAIN, "optimizer": "adam"})) == "foreach"
    assert calls == ["adam"]
    build_optimizer(_params(), {**TRAIN, "optimizer": "adamw"})  # another kind: measured afresh
    assert calls == ["adam", "adamw"]


def test_an_explicit_choice_wins_over_the_measured_one(
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        optim, "measure_implementations", lambda *a, **k: {"fused": 1.0, "foreach": 2.0, "for-loop": 3.0}
    )
    train = {**TRAIN, "optimizer": "adam"}
    assert implementation_of(build_optimizer(_params(), train)) == "fused"
    for impl in ("foreach", "for-loop", "fused"):
        assert implementation_of(build_optimizer(_params(), {**train, "optimizer_impl": impl})) == impl
        assert implementation_of(build_optimizer(_params(), train, implementation=impl)) == impl
    with pytest.raises(ConfigError, match="for-loop"):
        build_optimizer(_params(), train, implementation="fastest")


def test_the_measurement_leaves_the_parameters_alone(cache: Path) -> None:
    params = _params()
    before = [p.detach().clone() for p in params]
    step_ms = optim.measure_implementations(params, "adam", {"lr": 1.0}, rounds=3)
    assert set(step_ms) == {"fused", "foreach", "for-loop"}
    assert all(v > 0 for v in step_ms.values())
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b) and p.grad is None


def test_the_size_class_is_part_of_the_key() -> None:
    small = optim.choice_key(_params(), "adam")
    assert small == optim.choice_key(_params(), "adam")
    assert small != optim.choice_key([torch.zeros(1000, 1000)], "adam")
    assert small != optim.choice_key(_params(torch.float64), "adam")
    assert small != optim.choice_key(_params(), "sgd")


def test_falls_back_where_fused_kernels_do_not_apply(cache: Path) -> None:
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    for impl in ("auto", "fused"):
        opt = build_optimizer(meta, {**TRAIN, "optimizer": "adam"}, implementation=impl)
        assert not opt.defaults.get("fused")
    assert optim.candidates([torch.zeros(2, dtype=torch.int64)]) == ("foreach", "for-loop")


def test_an_optimiser_state_of_another_layout_restarts_the_moments(cache: Path) -> None:
    from flowkit.optim import load_state_or_restart

    train = {**TRAIN, "optimizer": "adam"}
    old_params = [*_params(), torch.nn.Parameter(torch.zeros(5, 2))]  # one tensor more
    old = build_optimizer(old_params, train)
    for p in old_params:
        p.grad = torch.ones_like(p)
    old.step()
    new = build_optimizer(_params(), train)
    assert load_state_or_restart(new, old.state_dict()) is False and not new.state
    same = build_optimizer(_params(), train)
    donor_params = _params()
    donor = build_optimizer(donor_params, train)
    for p in donor_params:
        p.grad = torch.ones_like(p)
    donor.step()
    assert load_state_or_restart(same, donor.state_dict()) is True and len(same.state) == 3
