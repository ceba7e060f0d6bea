"""A run trained on a dataset registered at runtime is reused from its run folder alone.

The dataset exists only in the process that trained (``flowkit.registry.datasets.register``), so
every check below runs in a *new* process, as a user's next session or shell would: loading the
run and sampling need nothing but the folder; ``flowkit eval`` names the dataset it needs and how
to make it available, in one line, without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit import registry
from flowkit.errors import UnknownPluginError
from flowkit.runs import missing_dataset_message

NAME = "runtime-blob-test"  # a name no plugin installs
#: log-densities of these points are compared across processes
POINTS = [[3.0, 5.0, 2.0], [4.0, 9.0, 1.5], [2.5, 4.0, 2.2]]

#: the dataset, as source: the same function the training process registered, for a process that
#: registers it again
DATASET_SOURCE = f'''
import torch
from flowkit.data import DataSplits

def blob(n: int = 400, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 4.0, 0.25]) + torch.tensor([3.0, 5.0, 2.0])
    mean, std = x[:300].mean(0), x[:300].std(0)
    return DataSplits(
        "{NAME}", x[:300], x[300:],
        standardization={{"x_mean": mean.tolist(), "x_std": std.tolist()}},
        default_preprocess="standardize",
    )
'''


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def _flowkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "flowkit"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flowkit"]
    return subprocess.run([*command, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short MAF run on a dataset registered in this process only (standardised, 3-D)."""
    namespace: dict[str, object] = {}
    exec(DATASET_SOURCE, namespace)  # the same source the subprocess tests use
    registry.datasets.register(NAME, namespace["blob"])
    try:
        config = flowkit.load_config(
            None,
            [
                "train.steps=15",
                "train.eval_every=0",
                "train.sample_every=0",
                "train.device=cpu",
                "transform.hidden=8",
                "transform.num_layers=2",
            ],
            transform="maf",
            data=NAME,
        )
        path = tmp_path_factory.mktemp("runtime-dataset") / "run"
        flowkit.train(config, path, progress=False, log=lambda _: None)
        run = flowkit.load_run(path, device="cpu")
        expected = run.model.log_prob(torch.tensor(POINTS)).tolist()
        (path.parent / "expected.json").write_text(json.dumps(expected))
    finally:
        registry.datasets.unregister(NAME)
    return path


def test_checkpoint_records_where_the_dataset_came_from(run_dir: Path):
    run = flowkit.load_run(run_dir, device="cpu")  # here, too, the dataset is no longer registered
    assert run.state["dataset"]["name"] == NAME
    assert run.state["dataset"]["distribution"] == "<runtime>"
    assert run.meta.standardization is not None and run.meta.shape == (3,)


def test_load_run_and_sample_in_a_new_process(run_dir: Path):
    code = f"""
import json, torch, flowkit
# the documented route, flowkit.registry.datasets, works on first access in a fresh process
assert {NAME!r} not in flowkit.registry.datasets.names()
run = flowkit.load_run({str(run_dir)!r}, device="cpu")
x = run.model.sample(5)
print(json.dumps({{"shape": list(x.shape), "log_p": run.model.log_prob(torch.tensor({POINTS})).tolist()}}))
"""
    done = _python(code, run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [5, 3]
    expected = json.loads((run_dir.parent / "expected.json").read_text())
    # the same density, standardisation included, as the model in the training process
    np.testing.assert_allclose(out["log_p"], expected, rtol=1e-5, atol=1e-5)


def test_flowkit_sample_in_a_new_process(run_dir: Path, tmp_path: Path):
    out = tmp_path / "s.npy"
    done = _flowkit("sample", str(run_dir), "-n", "7", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.load(out).shape == (7, 3)


def test_flowkit_eval_names_the_dataset_and_how_to_provide_it(run_dir: Path, tmp_path: Path):
    done = _flowkit("eval", str(run_dir), cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    message = lines[0]
    assert message.startswith("Error:") and f"needs dataset '{NAME}'" in message
    assert "registered it at runtime" in message
    assert "flowkit.registry.datasets.register" in message and "entry point" in message
    assert "--data-dir" in message
    assert not (run_dir / "eval.json").exists()


def test_flowkit_resume_names_the_dataset_and_how_to_resume(run_dir: Path, tmp_path: Path):
    """--resume in a new process: the same one-line message, ending with the Python route that
    resumes (not an unknown-plugin error); the run folder is left as it was."""
    before = sorted(p.name for p in run_dir.rglob("*"))
    for extra in ([], ["--set", "train.steps=30"]):
        done = _flowkit("run", "--resume", str(run_dir), *extra, cwd=tmp_path)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"needs dataset '{NAME}'" in lines[0] and "registered it at runtime" in lines[0]
        assert f"flowkit.trainer.resume({str(run_dir)!r})" in lines[0]
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_registering_the_dataset_again_makes_the_run_evaluable(run_dir: Path):
    code = (
        DATASET_SOURCE
        + f"""
import flowkit
from flowkit.metrics import evaluate_nll
flowkit.registry.datasets.register({NAME!r}, blob)
run = flowkit.load_run({str(run_dir)!r}, device="cpu")
data = run.load_data()
print(evaluate_nll(run.model, data)["test_nll"])
"""
    )
    done = _python(code, run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.isfinite(float(done.stdout.strip().splitlines()[-1]))


def test_load_data_raises_the_same_message_in_python(run_dir: Path):
    run = flowkit.load_run(run_dir, device="cpu")
    with pytest.raises(UnknownPluginError, match=f"needs dataset '{NAME}'"):
        run.load_data()


def test_message_for_a_plugin_that_is_not_installed():
    source = {"name": "blobs", "target": "blobpkg.data:blobs", "distribution": "blobpkg", "version": "1.2"}
    message = missing_dataset_message("blobs", source, "runs/x")
    assert "came from the package blobpkg 1.2 (blobpkg.data:blobs)" in message
    assert "pip install blobpkg" in message and "\n" not in message
    # a checkpoint from before the dataset's origin was recorded
    assert "not installed here" in missing_dataset_message("blobs", {}, "runs/x")
