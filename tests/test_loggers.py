"""Experiment-tracking loggers (train.loggers): TensorBoard read back, MLflow and W&B through fake
modules, a third-party logger registered at runtime, a failing sink contained, missing packages."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import flowkit
from flowkit import registry
from flowkit.config import load_config, resume_conflicts
from flowkit.errors import ConfigError
from flowkit.extras import MissingExtraError
from flowkit.loggers import Logger, RunInfo, Tracking, build_loggers
from flowkit.trainer import resume

TINY = [
    "data.n_train=256",
    "data.n_test=64",
    "transform.num_layers=2",
    "transform.hidden=8",
    "train.batch_size=32",
    "train.steps=6",
    "train.log_every=2",
    "train.eval_every=3",
    "train.sample_every=0",
    "train.checkpoint_every=3",
    "eval.max_examples=64",
]


def tiny(*overrides: str, loggers: list[str]) -> dict[str, Any]:
    return load_config("realnvp-moons", [*TINY, *overrides, f"train.loggers={json.dumps(loggers)}"])


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Recorder(Logger):
    """Test logger: remembers every call."""

    instances: ClassVar[list[Recorder]] = []

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        Recorder.instances.append(self)

    def start(self, run: RunInfo) -> None:
        self.calls.append(("start", run))

    def log_metrics(self, step: int, metrics: dict[str, float], kind: str) -> None:
        self.calls.append(("metrics", (step, kind, dict(metrics))))

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.calls.append(("image", (tag, path.name, step)))

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.calls.append(("summary", dict(summary)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def of(self, what: str) -> list[Any]:
        return [arg for name, arg in self.calls if name == what]


class Exploding(Logger):
    """Test logger: fails on its second metrics record."""

    def __init__(self) -> None:
        self.seen = 0

    def log_metrics(self, step: int, metrics: dict[str, float], kind: str) -> None:
        self.seen += 1
        if self.seen == 2:
            raise RuntimeError("tracking server unreachable")


@pytest.fixture
def runtime_loggers() -> Iterator[None]:
    Recorder.instances.clear()
    registry.loggers.register("recorder", Recorder)
    registry.loggers.register("exploding", Exploding)
    yield
    registry.loggers.unregister("recorder")
    registry.loggers.unregister("exploding")


# -- TensorBoard -------------------------------------------------------------------------------
def test_tensorboard_event_file_holds_the_logged_scalars_and_figures(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny("train.sample_every=3", loggers=["tensorboard"])
    summary = flowkit.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["status"] == "completed"
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for record in records(tmp_path / "run"):
        kind = record.get("kind", "train")
        for key, value in record.items():
            if key in ("step", "kind"):
                continue
            logged = {e.step: e.value for e in events.Scalars(f"{kind}/{key}")}
            assert logged[record["step"]] == pytest.approx(value, rel=1e-6), (kind, key)
            scalars.discard(f"{kind}/{key}")
    assert not scalars  # nothing that metrics.jsonl does not hold
    images = events.Images("samples")
    assert [i.step for i in images] == [3, 6]  # the sample figure of step 3, then the final one
    assert images[0].width > 100 and images[0].height > 100
    assert "summary/text_summary" in events.Tags()["tensors"]


def test_tensorboard_without_its_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'torch-flowkit\[tensorboard\]'"):
        build_loggers(["tensorboard"])
    config = tiny(loggers=["tensorboard"])  # the name is known: the config resolves
    with pytest.raises(MissingExtraError, match=r"tensorboard logger"):
        flowkit.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training
    from flowkit.cli.main import cli

    result = CliRunner().invoke(
        cli, ["run", "--data", "moons", "--set", 'train.loggers=["tensorboard"]', "--dry-run"]
    )
    assert result.exit_code == 1
    assert "pip install 'torch-flowkit[tensorboard]'" in result.output
    assert "Traceback" not in result.output


# -- names -------------------------------------------------------------------------------------
def test_unknown_logger_names_get_a_did_you_mean_at_dry_run() -> None:
    with pytest.raises(ConfigError, match=r"unknown logger 'tensorbord'\. Did you mean 'tensorboard'\?"):
        load_config("realnvp-moons", ['train.loggers=["tensorbord"]'])
    with pytest.raises(ConfigError, match="twice"):
        load_config("realnvp-moons", ['train.loggers=["tensorboard", "tensorboard"]'])
    from flowkit.cli.main import cli

    result = CliRunner().invoke(
        cli, ["run", "--data", "moons", "--set", 'train.loggers=["wandbb"]', "--dry-run"]
    )
    assert result.exit_code == 1 and "Did you mean 'wandb'?" in result.output
    listed = CliRunner().invoke(cli, ["list", "loggers"])
    assert listed.exit_code == 0 and listed.output.startswith("loggers (flowkit.loggers)")
    assert all(name in listed.output for name in ("tensorboard", "mlflow", "wandb"))


def test_loggers_may_change_when_a_run_is_resumed() -> None:
    saved = load_config("realnvp-moons")
    assert resume_conflicts(saved, load_config("realnvp-moons", ['train.loggers=["tensorboard"]'])) == []


# -- a third-party logger, a failing one -------------------------------------------------------
def test_a_logger_registered_at_runtime_receives_every_record(tmp_path: Path, runtime_loggers: None) -> None:
    config = tiny(loggers=["recorder"])
    summary = flowkit.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    (recorder,) = Recorder.instances
    (start,) = recorder.of("start")
    assert start.run_dir == tmp_path / "run" and start.step == 0 and not start.resumed
    assert start.config["train"]["loggers"] == ["recorder"]
    expected = []
    for record in records(tmp_path / "run"):
        values = {k: v for k, v in record.items() if k not in ("step", "kind")}
        expected.append((record["step"], record.get("kind", "train"), values))
    assert recorder.of("metrics") == expected
    assert [kind for _, kind, _ in expected] == ["train", "eval", "train", "train", "final"]
    assert recorder.of("image") == [("samples", "samples.png", 6)]  # the final 2-D figure
    assert recorder.of("summary")[0]["test_nll"] == summary["test_nll"]
    assert [name for name, _ in recorder.calls][-2:] == ["summary", "close"]
    registry.loggers.unregister("recorder")  # e.g. another process, or the tracker uninstalled:
    assert flowkit.load_run(tmp_path / "run").step == 6  # the run still loads for eval and sample
    with pytest.raises(ConfigError, match=r"unknown logger 'recorder'.*train\.loggers=\[\]"):
        resume(tmp_path / "run", progress=False, log=lambda _: None)  # training again needs it


def test_a_failing_logger_warns_once_and_the_run_completes(tmp_path: Path, runtime_loggers: None) -> None:
    messages: list[str] = []
    config = tiny(loggers=["exploding", "recorder"])
    summary = flowkit.train(config, tmp_path / "run", progress=False, log=messages.append)
    assert summary["status"] == "completed" and summary["steps"] == 6
    warnings = [m for m in messages if "logger" in m]
    assert len(warnings) == 1
    assert "logger 'exploding' failed" in warnings[0] and "tracking server unreachable" in warnings[0]
    assert "disabled" in warnings[0]
    assert len(records(tmp_path / "run")) == 5  # metrics.jsonl is complete: steps 2, 3 (eval), 4, 6, final
    assert len(Recorder.instances[0].of("metrics")) == 5  # the other logger went on


def test_tracking_takes_logger_objects_as_a_user_callback(tmp_path: Path) -> None:
    mine = Recorder()
    config = load_config("realnvp-moons", TINY)
    flowkit.train(
        config, tmp_path / "run", progress=False, log=lambda _: None, callbacks=[Tracking([("mine", mine)])]
    )
    assert len(mine.of("metrics")) == len(records(tmp_path / "run"))


# -- MLflow and W&B through fake modules -------------------------------------------------------
def fake_mlflow(calls: list[tuple[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("mlflow")

    def start_run(run_id=None, run_name=None):
        calls.append(("start_run", {"run_id": run_id, "run_name": run_name}))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlflow-run-1"))

    for name in ("log_params", "set_tags", "end_run"):
        setattr(module, name, lambda *a, _n=name, **k: calls.append((_n, a[0] if a else None)))
    module.start_run = start_run
    module.log_metrics = lambda metrics, step=None: calls.append(("log_metrics", (step, dict(metrics))))
    module.log_artifact = lambda path, artifact_path=None: calls.append(
        ("log_artifact", (Path(path).name, artifact_path))
    )
    return module


def fake_wandb(calls: list[tuple[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("wandb")

    class Run:
        id = "wandb-run-1"

        def __init__(self) -> None:
            self.summary: dict[str, Any] = {}

        def log(self, data, step=None):
            calls.append(("log", (step, dict(data))))

        def finish(self):
            calls.append(("finish", dict(self.summary)))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    module.Image = lambda path: ("image", Path(path).name)
    return module


def test_mlflow_and_wandb_adapters_log_and_resume_into_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ml: list[tuple[str, Any]] = []
    wb: list[tuple[str, Any]] = []
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(ml))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(wb))
    run_dir = tmp_path / "run"
    flowkit.train(tiny(loggers=["mlflow", "wandb"]), run_dir, progress=False, log=lambda _: None)
    n = len(records(run_dir))

    assert ml[0] == ("start_run", {"run_id": None, "run_name": "run"})
    assert ml[1][0] == "log_params" and ml[1][1]["train.steps"] == "6" and ml[1][1]["data.name"] == "moons"
    logged = [arg for name, arg in ml if name == "log_metrics" and "summary/test_nll" not in arg[1]]
    assert len(logged) == n and logged[0][0] == 2 and "train/nll_per_dim" in logged[0][1]
    assert "final/test_nll" in logged[-1][1]
    assert ("log_artifact", ("samples.png", None)) in ml
    assert (
        "set_tags",
        {
            "status": "completed",
            "transform": "realnvp",
            "prior": "gaussian",
            "objective": "mle",
            "data": "moons",
            "device": "cpu",
            "flowkit_version": flowkit.__version__,
        },
    ) in ml
    assert ml[-1] == ("end_run", None)

    init = wb[0][1]
    assert init["name"] == "run" and init["dir"] == str(run_dir) and "id" not in init
    assert init["config"]["transform"]["name"] == "realnvp"
    steps = [arg[0] for name, arg in wb if name == "log"]
    assert steps == sorted(steps)  # W&B needs steps that never go back
    assert (6, {"samples": ("image", "samples.png")}) in [arg for name, arg in wb if name == "log"]
    assert wb[-1][0] == "finish" and wb[-1][1]["status"] == "completed" and "test_nll" in wb[-1][1]

    ml.clear()
    wb.clear()
    resume(
        run_dir, load_config(run_dir / "config.toml", ["train.steps=8"]), progress=False, log=lambda _: None
    )
    assert ml[0] == ("start_run", {"run_id": "mlflow-run-1", "run_name": None})
    assert not [name for name, _ in ml if name == "log_params"]  # the params are the run's already
    assert wb[0][1]["id"] == "wandb-run-1" and wb[0][1]["resume"] == "allow"


def test_mlflow_and_wandb_without_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtraError, match="pip install mlflow"):
        build_loggers(["mlflow"])
    with pytest.raises(MissingExtraError, match="pip install wandb"):
        build_loggers(["wandb"])
