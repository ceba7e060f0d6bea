"""flowkit.execution.autotune: measured choices between equivalent paths, and their cache.

The timing tests use a fake clock that only the candidates advance, so which path is faster is
decided by the test, never by the machine: the autotune must pick the faster one, drop one that
raises, keep the portable default unless another is clearly faster, never time a choice twice
(in the process or through the cache file), and obey explicit settings. The oneDNN paths must
give the ordinary ops' values and gradients whichever way the choice goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowkit.execution import autotune
from flowkit.execution import onednn_conv as fc
from flowkit.execution import onednn_linear as fl

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock that advances only when a fake candidate runs (``cost``), by its set duration."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def cost(self, name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            self.now += seconds

        return run

    def fails(self, name: str, after: int = 0) -> Callable[[], None]:
        """A candidate that raises on its ``after``-th call (0: the first, the warm-up)."""
        count = [0]

        def run() -> None:
            self.calls.append(name)
            count[0] += 1
            if count[0] > after:
                raise RuntimeError(f"{name} is broken")
            self.now += 0.001

        return run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tuner(tmp_path: Path, clock: FakeClock) -> autotune.Autotuner:
    return autotune.Autotuner(tmp_path / "autotune.json", timer=clock)


def test_picks_the_faster_path(tuner, clock):
    choice = tuner.choose(
        "op",
        (256, 512),
        {"slow": clock.cost("slow", 0.002), "fast": clock.cost("fast", 0.001)},
        default="slow",
    )
    assert choice == "fast"
    decision = tuner.decisions[-1]
    assert decision.source == "measured"
    assert decision.ms == pytest.approx({"slow": 2.0, "fast": 1.0})
    # one warm-up call each, then interleaved rounds (at most ROUNDS)
    assert clock.calls.count("fast") == clock.calls.count("slow") <= 1 + autotune.ROUNDS


def test_keeps_the_default_unless_another_is_clearly_faster(tuner, clock):
    """Within the margin (noise) the portable default stays."""
    choice = tuner.choose(
        "op",
        "near",
        {"portable": clock.cost("portable", 0.00100), "fused": clock.cost("fused", 0.00098)},
        default="portable",
    )
    assert choice == "portable"
    assert (
        tuner.choose(
            "op",
            "default-slower",
            {"portable": clock.cost("portable", 0.001), "fused": clock.cost("fused", 0.0009)},
            default="portable",
        )
        == "fused"
    )


@pytest.mark.parametrize("after", [0, 2], ids=["in-warm-up", "in-a-timed-round"])
def test_falls_back_when_a_path_errors(tuner, clock, after):
    choice = tuner.choose(
        "op",
        ("s", after),
        {"fused": clock.fails("fused", after), "portable": clock.cost("portable", 0.005)},
        default="portable",
    )
    assert choice == "portable"
    assert "fused is broken" in tuner.decisions[-1].failed["fused"]
    stored = json.loads(tuner.path.read_text())["machines"][autotune.machine_key()]["choices"]
    assert stored[f"op|s|{after}|threads={torch.get_num_threads()}"]["choice"] == "portable"


def test_every_path_failing_gives_the_default(tuner, clock):
    choice = tuner.choose("op", "x", {"a": clock.fails("a"), "b": clock.fails("b")}, default="b")
    assert choice == "b" and set(tuner.decisions[-1].failed) == {"a", "b"}


def test_building_the_inputs_failing_gives_the_default(tuner):
    def broken() -> dict[str, Callable[[], None]]:
        raise MemoryError("no room for the inputs")

    assert tuner.choose("op", "x", broken, default="portable") == "portable"


def test_never_re_times_a_cached_choice(tmp_path, clock):
    path = tmp_path / "autotune.json"
    first = autotune.Autotuner(path, timer=clock)
    candidates = {"a": clock.cost("a", 0.003), "b": clock.cost("b", 0.001)}
    assert first.choose("op", (1, 2), candidates, default="a") == "b"
    measured = len(clock.calls)
    assert first.choose("op", (1, 2), candidates, default="a") == "b"  # this process's memo
    second = autotune.Autotuner(path, timer=clock)  # a later run, or another process
    assert second.choose("op", (1, 2), candidates, default="a") == "b"
    assert second.decisions[-1].source == "cache"
    assert second.lookup("op", (1, 2)) == "b"
    assert len(clock.calls) == measured  # nothing timed again
    # a lazily built candidate mapping is not even built for a cached choice
    third = autotune.Autotuner(path, timer=clock)
    assert third.choose("op", (1, 2), lambda: pytest.fail("built"), default="a") == "b"


def test_a_new_signature_thread_count_or_machine_is_measured_again(tmp_path, clock, monkeypatch):
    path = tmp_path / "autotune.json"
    candidates = {"a": clock.cost("a", 0.003), "b": clock.cost("b", 0.001)}
    autotune.Autotuner(path, timer=clock).choose("op", (1, 2), candidates, default="a")
    here = autotune.machine_key()
    counts = []
    for change in ("signature", "threads", "machine"):
        before = len(clock.calls)
        signature = (1, 3) if change == "signature" else (1, 2)
        if change == "threads":
            monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
        if change == "machine":
            monkeypatch.setattr(autotune, "machine_key", lambda: "another CPU | torch 9")
        autotune.Autotuner(path, timer=clock).choose("op", signature, candidates, default="a")
        counts.append(len(clock.calls) - before)
    assert all(c > 0 for c in counts)
    data = json.loads(path.read_text())
    assert set(data["machines"]) == {here, "another CPU | torch 9"}


def test_respects_the_override_and_the_off_switch(tuner, clock, monkeypatch):
    candidates = {"a": clock.cost("a", 0.003), "b": clock.cost("b", 0.001)}
    tuner.set_override("op", "a")
    assert tuner.choose("op", "x", candidates, default="b") == "a"
    assert tuner.decisions[-1].source == "override"
    tuner.set_override("op", None)
    monkeypatch.setenv("FLOWKIT_AUTOTUNE", "0")
    assert tuner.choose("op", "y", candidates, default="a") == "a"
    assert tuner.decisions[-1].source == "default"
    assert clock.calls == []  # neither was timed
    assert not tuner.path.exists()


def test_the_measurement_is_bounded(tuner, clock):
    """Slow candidates: the budget stops measuring after MIN_ROUNDS timed rounds."""
    tuner.choose("op", "slow", {"a": clock.cost("a", 0.1), "b": clock.cost("b", 0.1)}, default="a")
    assert clock.calls.count("a") == 1 + autotune.MIN_ROUNDS
    clock.calls.clear()
    tuner.choose("op", "very slow", {"a": clock.cost("a", 1.0), "b": clock.cost("b", 1.0)}, default="a")
    assert clock.calls.count("a") == 2  # warm-up and one round: past HARD_LIMIT_S


def test_a_recorded_choice_is_reused(tuner, clock):
    """What another component measured itself (e.g. an optimiser's implementation)."""
    tuner.record("optimizer.adam", ("cpu", "float32", 2**22), "fused", {"fused": 4.5, "foreach": 21.8})
    again = autotune.Autotuner(tuner.path, timer=clock)
    assert again.lookup("optimizer.adam", ("cpu", "float32", 2**22)) == "fused"
    assert (
        again.choose(
            "optimizer.adam", ("cpu", "float32", 2**22), lambda: pytest.fail("timed"), default="foreach"
        )
        == "fused"
    )


def test_an_unreadable_cache_is_ignored_and_rewritten(tuner, clock):
    tuner.path.write_text("{ not json")
    assert (
        tuner.choose("op", "x", {"a": clock.cost("a", 0.003), "b": clock.cost("b", 0.001)}, default="a")
        == "b"
    )
    assert json.loads(tuner.path.read_text())["format"] == autotune.FORMAT


def test_cache_folder_settings(monkeypatch, tmp_path):
    for name in ("FLOWKIT_CACHE_DIR", "FLOWKIT_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autotune.cache_path() == tmp_path / "home" / ".cache" / "flowkit" / "autotune.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_dir() == tmp_path / "xdg" / "flowkit"
    monkeypatch.setenv("FLOWKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert autotune.cache_dir() == tmp_path / "mine"


def test_the_machine_key_names_cpu_flags_and_versions():
    from flowkit._version import __version__

    info = autotune.cpu_info()
    assert info["model"] and isinstance(info["flags"], list)
    assert set(info["flags"]) <= set(autotune.ISA_FLAGS)
    key = autotune.machine_key()
    assert info["model"] in key and f"torch {torch.__version__}" in key
    assert f"flowkit {__version__}" in key and info["capability"] in key


@pytest.mark.slow
def test_processes_sharing_the_cache_measure_once(tmp_path):
    """Two processes (as in a distributed run on one node) start at once: one measures, the
    other waits on the lock and reuses the choice."""
    log = tmp_path / "measured.txt"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from flowkit.execution import autotune

        def slow():
            with open({str(log)!r}, "a") as fh:
                fh.write("x")
            time.sleep(0.05)

        def fast():
            time.sleep(0.01)

        tuner = autotune.Autotuner({str(tmp_path / "autotune.json")!r})
        print(tuner.choose("op", "shared", {{"slow": slow, "fast": fast}}, default="slow"),
              tuner.decisions[-1].source)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert [o[0] for o in outs] == ["fast", "fast"]
    assert sorted(o[1] for o in outs) == ["cache", "measured"]
    assert 1 + autotune.MIN_ROUNDS <= len(log.read_text()) <= 1 + autotune.ROUNDS


# -- the oneDNN paths ----------------------------------------------------------------------------
@pytest.fixture
def fresh_tuner(monkeypatch, tmp_path, clock) -> autotune.Autotuner:
    """The process-wide tuner replaced by one with a fake clock and its own cache file; the
    oneDNN switch on auto, every layer size eligible."""
    tuner = autotune.Autotuner(tmp_path / "autotune.json", timer=clock)
    monkeypatch.setattr(autotune, "_default", tuner)
    monkeypatch.setattr(fl, "_mode", "auto")
    monkeypatch.setattr(fl, "MIN_MACS", 0)
    monkeypatch.setattr(fc, "MIN_MACS_MEASURED", 0)
    return tuner


needs_onednn = pytest.mark.skipif(
    not fl.onednn_linear_active(), reason="PyTorch build without the oneDNN linear kernel"
)


@needs_onednn
@pytest.mark.parametrize("faster", [fl.ONEDNN, fl.ATEN])
def test_linear_takes_the_path_measured_faster(fresh_tuner, clock, monkeypatch, faster):
    """The fake timings decide; the layer then runs that path (training and inference)."""
    cost = {
        fl.ONEDNN: 0.001 if faster == fl.ONEDNN else 0.003,
        fl.ATEN: 0.001 if faster == fl.ATEN else 0.003,
    }
    monkeypatch.setattr(fl, "_candidates", lambda *a: {n: clock.cost(n, c) for n, c in cost.items()})
    x, w = torch.randn(16, 8), torch.randn(4, 8, requires_grad=True)
    y = fl.linear(x, w, None, relu=True)
    fused = type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
    assert fused == (faster == fl.ONEDNN)
    with torch.profiler.profile() as prof, torch.no_grad():
        fl.linear(x, w, None, relu=True)
    ran = {e.name for e in prof.events()}
    assert ("mkldnn::_linear_pointwise" in ran) == (faster == fl.ONEDNN)
    ops = {d.op for d in fresh_tuner.decisions}
    assert ops == {fl.OP_TRAIN, fl.OP_INFER}
    calls = len(clock.calls)
    fl.linear(x, w, None, relu=True)  # the same shapes: no second measurement
    assert len(clock.calls) == calls


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("path", [fl.ONEDNN, fl.ATEN])
def test_linear_values_and_gradients_agree_whichever_path(fresh_tuner, path, relu):
    fresh_tuner.set_override(fl.OP_TRAIN, path)
    fresh_tuner.set_override(fl.OP_INFER, path)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, generator=gen)
    w = (torch.randn(32, 48, generator=gen) / 7).requires_grad_()
    b = torch.randn(32, generator=gen).requires_grad_()
    y = fl.linear(x, w, b, relu=relu)
    assert (type(y.grad_fn).__name__ == "_OneDNNLinearBackward") == (path == fl.ONEDNN)
    w_ref, b_ref = (t.detach().clone().requires_grad_() for t in (w, b))
    ref = F.linear(x, w_ref, b_ref)
    ref = F.relu(ref) if relu else ref
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(ref.shape, generator=gen)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(fl.linear(x, w, b, relu=relu), ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_measured_for_real_matches_the_ordinary_ops(monkeypatch, tmp_path):
    """A real measurement on this machine: whatever it picks, the values are F.linear's, the
    layer's parameters get no gradient from the timing, and both paths were timed."""
    tuner = autotune.Autotuner(tmp_path / "autotune.json")
    monkeypatch.setattr(autotune, "_default", tuner)
    monkeypatch.setattr(fl, "_mode", "auto")
    monkeypatch.setattr(fl, "MIN_MACS", 0)
    layer = nn.Linear(96, 80)
    x = torch.randn(128, 96)
    y = fl.linear(x, layer.weight, layer.bias, relu=True)
    assert layer.weight.grad is None
    torch.testing.assert_close(y, F.relu(layer(x)), rtol=1e-5, atol=1e-5)
    decision = tuner.decisions[-1]
    assert decision.source == "measured" and set(decision.ms) == {fl.ONEDNN, fl.ATEN}
    assert decision.seconds < 30  # bounded (HARD_LIMIT_S, plus the warm-up calls)


@pytest.mark.parametrize("path", [fl.ONEDNN, fl.ATEN])
@pytest.mark.parametrize("residual", ["none", "add", "add-into"])
def test_conv_values_agree_whichever_path(fresh_tuner, path, residual):
    if not fc._active():
        pytest.skip("PyTorch build without the oneDNN convolution kernels")
    fresh_tuner.set_override(fc.OP, path)
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding="same")
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = F.relu(conv(x) + (0 if residual == "none" else r))
        with torch.profiler.profile() as prof:
            got = fc.conv2d(
                x,
                conv,
                relu=True,
                residual=None if residual == "none" else r.clone(),
                overwrite_residual=residual == "add-into",
            )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fused = any(e.name.startswith("mkldnn::_convolution_pointwise") for e in prof.events())
    assert fused == (path == fl.ONEDNN)


def test_conv_measurement_leaves_inputs_and_hooks_alone(fresh_tuner, clock, monkeypatch):
    """The timed calls write into a scratch residual and do not run the layer's hooks."""
    if not fc._active():
        pytest.skip("PyTorch build without the oneDNN convolution kernels")
    tuner = autotune.Autotuner(False)  # real clock, no file
    monkeypatch.setattr(autotune, "_default", tuner)
    conv = nn.Conv2d(4, 4, 3, padding="same")
    seen = []
    conv.register_forward_hook(lambda *args: seen.append(1))
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    kept = r.clone()
    with torch.no_grad():
        want = F.relu(conv._conv_forward(x, conv.weight, conv.bias) + r)
        got = fc.conv2d(x, conv, relu=True, residual=r, overwrite_residual=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(r, kept)
    assert tuner.decisions[-1].source == "measured"
    assert len(seen) == (0 if tuner.decisions[-1].choice == fl.ONEDNN else 1)


def test_the_environment_switch_is_never_timed(fresh_tuner, clock, monkeypatch):
    monkeypatch.setattr(fl, "_candidates", lambda *a: pytest.fail("timed"))
    monkeypatch.setattr(fc, "_candidates", lambda *a: pytest.fail("timed"))
    x, w = torch.randn(16, 8), torch.randn(4, 8, requires_grad=True)
    conv = nn.Conv2d(3, 3, 3, padding="same")
    img = torch.randn(2, 3, 6, 6)
    for mode in ("on", "off"):
        fl.set_onednn_linear(mode)
        y = fl.linear(x, w, None, relu=True)
        fused = type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
        assert fused == (mode == "on" and fl.onednn_linear_active())
        with torch.no_grad():
            fc.conv2d(img, conv, relu=True)
    assert fresh_tuner.decisions == []


def test_summary_names_each_operation_and_its_path(tuner, clock):
    tuner.choose(
        "linear.train",
        (256, 392, 512),
        {"onednn": clock.cost("o", 0.001), "aten": clock.cost("a", 0.002)},
        default="aten",
    )
    tuner.set_override("conv2d.infer", "aten")
    info = autotune.summary(tuner)
    assert info["threads"] == torch.get_num_threads()
    row = info["ops"]["linear.train"][0]
    assert row["signature"] == "256, 392, 512" and row["choice"] == "onednn"
    assert autotune.paths_text(info) == "linear.train: onednn ×1; conv2d.infer: aten (set)"


def test_summary_names_the_environment_switch(monkeypatch):
    monkeypatch.setattr(fl, "_mode", "off")
    info = autotune.summary(autotune.Autotuner(False))
    assert info["overrides"][fl.OP_TRAIN] == "aten (FLOWKIT_ONEDNN=0)"
    assert "conv2d.infer: aten (FLOWKIT_ONEDNN=0)" in autotune.paths_text(info)
    monkeypatch.setattr(fl, "_mode", "auto")
    assert autotune.summary(autotune.Autotuner(False))["overrides"] == {}


# -- the old module paths ------------------------------------------------------------------------
OLD_PATHS = {
    "flowkit.linear": "flowkit.execution.onednn_linear",
    "flowkit.conv": "flowkit.execution.onednn_conv",
    "flowkit.compiled": "flowkit.execution.compiled",
    "flowkit.invertible_backprop": "flowkit.execution.invertible_backprop",
    "flowkit.wrapper": "flowkit.execution.wrapper",
}


@pytest.mark.parametrize(("old", "new"), OLD_PATHS.items())
def test_old_module_paths_still_import_with_a_deprecation_warning(old, new, monkeypatch):
    """The old name is the new module object itself, and the warning names the importing code."""
    import importlib

    import flowkit

    monkeypatch.delitem(sys.modules, old, raising=False)  # a first import, in this process
    monkeypatch.delattr(flowkit, old.split(".")[1], raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}") as caught:
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert caught[0].filename == __file__  # attributed to the importing code


def test_nothing_in_the_repository_imports_the_old_paths():
    """The warning reaches outside users only: flowkit, its plugins, CLI, tests and benchmarks
    import the new paths."""
    import re

    pattern = re.compile(
        r"^\s*(from|import)\s+("
        + "|".join(map(re.escape, OLD_PATHS))
        + r")\b|^\s*from\s+flowkit\s+import\s+.*\b("
        + "|".join(p.split(".")[1] for p in OLD_PATHS)
        + r")\b",
        re.M,
    )
    offenders = []
    for folder in ("flowkit", "plugins", "cli", "tests", "benchmarks", "docs/examples"):
        for path in (REPO / folder).rglob("*.py"):
            if path.parent == REPO / "flowkit" and f"flowkit.{path.stem}" in OLD_PATHS:
                continue  # the deprecated modules themselves
            if pattern.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
