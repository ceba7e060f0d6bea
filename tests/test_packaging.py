"""A non-editable wheel install works: plugins/ and cli/ land under the flowkit namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys, pathlib
site = pathlib.Path(sys.argv[1]).resolve()
import flowkit, flowkit.plugins, flowkit.cli
from flowkit import registry
from flowkit.config import available_presets
for mod in (flowkit, flowkit.plugins, flowkit.cli):
    assert pathlib.Path(mod.__file__).resolve().is_relative_to(site), mod.__file__
cls = registry.transforms.get("realnvp")
assert pathlib.Path(sys.modules[cls.__module__].__file__).resolve().is_relative_to(site)
for kind in ("transform", "prior", "objective", "dataset"):
    for name in registry.registry(kind).names():
        registry.registry(kind).get(name)
assert "realnvp-digits" in available_presets()
import importlib.util
spec = importlib.util.find_spec("plugins")
assert spec is None or "flowkit" in str(spec.origin)
print("wheel-ok")
"""


@pytest.mark.slow
def test_wheel_install_works(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True,
                   cwd=tmp_path)
    (wheel,) = wheels.glob("flowkit-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    # top-level `plugins` / `cli` packages must not be installed
    assert not (site / "plugins").exists() and not (site / "cli").exists()
    assert (site / "flowkit" / "plugins" / "transforms" / "realnvp.py").is_file()
    assert (site / "flowkit" / "presets" / "realnvp-digits.toml").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", CHECK, str(site)], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "wheel-ok" in out.stdout
    run = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "--data", "moons",
                          "--set", "train.steps=2", "--set", "data.n_train=128",
                          "--set", "data.n_test=64", "--quiet", "--out", str(tmp_path / "runs")],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
