"""``train.compile``: the training forward pass through ``torch.compile``, everything else eager.

Most tests use a counting Dynamo backend that runs the captured graphs eagerly, so they check the
wiring (which calls are compiled, state-dict keys, the trainer key) in a second; one test compiles
for real with Inductor (it needs a C++ compiler on CPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import flowkit
from flowkit import registry
from flowkit.errors import ConfigError
from flowkit.execution.compiled import CompiledTraining, enable_compile, require_cpu_compiler
from flowkit.transform import Transform

pytestmark = [  # raised inside torch by Dynamo's and Inductor's own imports, not by flowkit
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch._prims_common.check` is deprecated:FutureWarning"),
]


def _glow(shape: tuple[int, ...] = (4, 4, 4)) -> Transform:
    """Two Glow steps: actnorm (lazy data-dependent init), 1×1 conv, affine coupling."""
    torch.manual_seed(0)
    return registry.transforms.build(
        "glow", {"num_levels": 1, "num_steps": 2, "hidden": 8}, injected={"event_shape": shape}
    )


class _Counting:
    """A Dynamo backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return gm.forward


def _step_grads(t: Transform, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in t.parameters():
        p.grad = None
    z, logdet = t(x)
    (0.5 * z.square().sum() - logdet.sum()).backward()
    return z.detach(), [p.grad.clone() for p in t.parameters()]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_training_forward_is_compiled_and_the_rest_is_eager() -> None:
    base = _glow().train()
    backend = _Counting()
    wrapped = CompiledTraining(base, backend=backend)
    x = torch.randn(6, 4, 4, 4)
    with torch.no_grad():
        wrapped(x)  # actnorm's data-dependent initialisation: eager
    assert backend.graphs == 0
    assert all(bool(m.initialized) for m in base.modules() if hasattr(m, "initialized"))
    want_z, want_grads = _step_grads(base, x)
    got_z, got_grads = _step_grads(wrapped, x)
    assert backend.graphs > 0  # the training call went through Dynamo
    torch.testing.assert_close(got_z, want_z)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    seen = backend.graphs
    with torch.no_grad():
        wrapped(x[:3])
    wrapped.eval()
    wrapped(x[:5])
    wrapped.inverse(got_z)
    assert backend.graphs == seen  # evaluation, no-grad calls and the inverse stay eager


def test_pending_data_dependent_init_runs_eagerly() -> None:
    """Model.initialize runs its forward in training mode with gradients: never compiled."""
    backend = _Counting()
    wrapped = CompiledTraining(_glow().train(), backend=backend)
    wrapped(torch.randn(6, 4, 4, 4))
    assert backend.graphs == 0
    wrapped(torch.randn(6, 4, 4, 4))
    assert backend.graphs > 0


def test_state_dict_keys_are_the_wrapped_transforms() -> None:
    base = _glow()
    with torch.no_grad():
        base(torch.randn(6, 4, 4, 4))
    wrapped = CompiledTraining(base, backend=_Counting())
    assert list(wrapped.state_dict()) == list(base.state_dict())
    fresh = CompiledTraining(_glow(), backend=_Counting())
    fresh.load_state_dict(base.state_dict())
    for key, value in base.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    again = CompiledTraining(wrapped, backend=_Counting())
    assert again.base is base  # wrapping twice does not nest


def test_copies_and_pickles_compile_their_own_transform() -> None:
    """A deep copy (or an unpickled model) trains its own parameters, not the original's."""
    import copy
    import io

    base = _glow().train()
    x = torch.randn(6, 4, 4, 4)
    with torch.no_grad():
        base(x)
    wrapped = CompiledTraining(base, backend="eager")
    _step_grads(wrapped, x)  # compiled once
    buffer = io.BytesIO()
    torch.save(wrapped, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(wrapped), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.1)
        want_z, want_grads = _step_grads(other.base, x)
        got_z, got_grads = _step_grads(other, x)
        torch.testing.assert_close(got_z, want_z)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w)


def test_wrong_shape_is_reported_before_compilation() -> None:
    wrapped = CompiledTraining(_glow(), backend=_Counting())
    with pytest.raises(Exception, match=r"4, 4, 4"):
        wrapped(torch.randn(2, 3, 4, 4))


def _has_cpu_compiler() -> bool:
    try:
        require_cpu_compiler()
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(not _has_cpu_compiler(), reason="Inductor on CPU needs a C++ compiler")
def test_inductor_gives_the_eager_values() -> None:
    """A real compilation (Inductor, C++ on CPU): same latents and gradients up to round-off."""
    base = _glow().train()
    x = torch.randn(6, 4, 4, 4)
    with torch.no_grad():
        base(x)
    want_z, want_grads = _step_grads(base, x)
    got_z, got_grads = _step_grads(CompiledTraining(base), x)
    torch.testing.assert_close(got_z, want_z, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_train_compile_key(tmp_path, monkeypatch) -> None:
    """``train.compile = true`` wraps the transform, trains and checkpoints the unwrapped keys;
    combined with invertible backprop it is a config error naming both keys."""
    from flowkit.runs import load_run

    backend = _Counting()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": backend}))
    common = [
        "train.steps=3",
        "train.eval_every=0",
        "train.sample_every=0",
        "train.threads=1",
        "transform.num_scales=1",
        "transform.hidden=8",
        "transform.num_blocks=1",
        "eval.final_max_examples=50",
    ]
    logged: list[str] = []
    cfg = flowkit.load_config("realnvp-digits", [*common, "train.compile=true"])
    summary = flowkit.train(cfg, tmp_path / "on", progress=False, log=logged.append)
    assert backend.graphs > 0
    assert any("torch.compile" in line for line in logged)
    plain = flowkit.train(
        flowkit.load_config("realnvp-digits", common), tmp_path / "off", progress=False, log=lambda _: None
    )
    assert summary["test_nll"] == pytest.approx(plain["test_nll"], rel=1e-4)
    a = load_run(tmp_path / "on").model.state_dict()
    b = load_run(tmp_path / "off").model.state_dict()
    assert a.keys() == b.keys()
    with pytest.raises(ConfigError, match=r"train\.compile and train\.invertible_backprop"):
        flowkit.load_config(
            "realnvp-digits", [*common, "train.compile=true", "train.invertible_backprop=true"]
        )


def test_enable_compile_twice_does_not_nest() -> None:
    model = torch.nn.Module()
    model.transform = _glow()
    enable_compile(model, log=lambda _: None)
    first = model.transform
    enable_compile(model, log=lambda _: None)
    assert model.transform is first and isinstance(first, CompiledTraining)


def test_missing_cpu_compiler_is_a_config_error() -> None:
    from torch._inductor import config as inductor_config

    model = torch.nn.Module()
    model.transform = _glow()
    with inductor_config.patch({"cpp.cxx": ("flowkit-no-such-compiler",)}):
        with pytest.raises(
            ConfigError,
            match=r"needs a C\+\+ compiler.*flowkit-no-such-"
            r"compiler.*train\.compile=false",
        ):
            require_cpu_compiler()
        with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
            enable_compile(model, log=lambda _: None, device="cpu")
        enable_compile(model, log=lambda _: None, device="cuda")  # Triton: no C++ compiler
    assert isinstance(model.transform, CompiledTraining)


@pytest.mark.parametrize(
    ("preset", "transform"),
    [
        ("realnvp-digits", None),
        ("realnvp-digits", "glow"),
        ("grn-ot-digits", None),
        ("realnvp-moons", None),
        ("realnvp-moons", "maf"),
    ],
)
def test_training_forward_is_one_graph_without_breaks(tmp_path, preset, transform) -> None:
    """The shipped models' training forward passes are captured whole: a graph break (a tensor
    read as a Python value, as actnorm's flag once was) splits the compiled code and costs the
    gain."""
    from torch._dynamo.utils import counters

    from flowkit.trainer import Trainer

    cfg = flowkit.load_config(preset, ["train.batch_size=16", "train.threads=1"], transform=transform)
    trainer = Trainer(cfg, tmp_path, progress=False, log=lambda _: None)
    trainer.initialize()
    trainer.model.train()
    backend = _Counting()
    trainer.model.transform = CompiledTraining(trainer.model.transform, backend=backend)
    counters.clear()
    for step in range(2):
        batch = trainer._batch(step)
        out = trainer.objective.loss(trainer.model, batch, step)
        trainer.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        trainer.optimizer.step()
    assert dict(counters["graph_break"]) == {}
    assert backend.graphs == 1


def test_resume_with_compile_switched_on(tmp_path, monkeypatch) -> None:
    """A run checkpointed without compilation resumes with ``train.compile = true`` (the key is
    resumable) and ends where the uninterrupted eager run ends (a constant learning rate: the
    preset's cosine schedule depends on ``train.steps``, which the two runs set differently)."""
    from flowkit.trainer import resume

    backend = _Counting()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": backend}))
    common = [
        "train.eval_every=0",
        "train.sample_every=0",
        "train.threads=1",
        "train.scheduler=constant",
        "train.checkpoint_every=2",
        "transform.num_scales=1",
        "transform.hidden=8",
        "transform.num_blocks=1",
        "eval.final_max_examples=50",
    ]
    quiet = {"progress": False, "log": lambda _: None}
    whole = flowkit.train(
        flowkit.load_config("realnvp-digits", [*common, "train.steps=4"]), tmp_path / "whole", **quiet
    )
    flowkit.train(
        flowkit.load_config("realnvp-digits", [*common, "train.steps=2"]), tmp_path / "split", **quiet
    )
    resumed = resume(
        tmp_path / "split",
        flowkit.load_config("realnvp-digits", [*common, "train.steps=4", "train.compile=true"]),
        **quiet,
    )
    assert backend.graphs > 0
    assert resumed["test_nll"] == pytest.approx(whole["test_nll"], rel=1e-4)
