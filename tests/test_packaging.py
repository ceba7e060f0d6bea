"""Release packaging: one version, the distribution name, extras, the clash with the unrelated
``flowkit``, the metadata files, and a wheel built from the sdist that installs and runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import flowkit
from flowkit import _version, extras, registry
from flowkit.errors import FlowkitError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- one version, one name ------------------------------------------------------------------------
def test_version_is_written_once() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "flowkit._version.__version__"}
    assert flowkit.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", flowkit.__version__)
    # no other file of the package spells a version literal
    pattern = re.compile(r"""__version__\s*=\s*["']""")
    writers = sorted(
        {
            p.resolve().relative_to(REPO)
            for folder in ("flowkit", "plugins", "cli")
            for p in (REPO / folder).rglob("*.py")
            if pattern.search(p.read_text(encoding="utf-8"))
        }
    )
    assert writers == [Path("flowkit/_version.py")]


def test_installed_metadata_agrees() -> None:
    installed = metadata.version(_version.DISTRIBUTION)
    assert installed == flowkit.__version__, (
        f"installed {_version.DISTRIBUTION} {installed} != {flowkit.__version__}; reinstall: pip install -e ."
    )


def test_distribution_name_is_one_name() -> None:
    assert PYPROJECT["project"]["name"] == _version.DISTRIBUTION == "torch-flowkit"
    assert registry.BUILTIN_DISTRIBUTION == _version.DISTRIBUTION
    assert registry.transforms.entry("realnvp").distribution == _version.DISTRIBUTION


def test_release_files_agree_with_the_metadata() -> None:
    version = flowkit.__version__
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), (
        f"CHANGELOG.md has no '## [{version}] - YYYY-MM-DD' section"
    )
    assert "## [Unreleased]" in changelog
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "the flowkit authors" in license_text
    cff = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    fields = dict(re.findall(r"^([a-z-]+):\s*\"?([^\"\n]*)\"?\s*$", cff, re.M))
    assert fields["cff-version"] == "1.2.0"
    assert fields["version"] == version
    assert fields["license"] == "MIT"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    bibtex = re.search(r"```bibtex\n(.*?)```", readme, re.S)
    assert bibtex and f"version = {{{version}}}" in bibtex.group(1)
    assert "pip install torch-flowkit" in readme
    assert (REPO / "flowkit" / "py.typed").is_file()


def test_the_declared_torch_floor_is_the_tested_torch() -> None:
    """pyproject's lowest torch is the one constraints.txt pins (what make and CI install)."""
    pins = re.findall(
        r"^torch==(\d+)\.(\d+)\.\d+\s*$", (REPO / "constraints.txt").read_text(encoding="utf-8"), re.M
    )
    assert len(pins) == 1, "constraints.txt must pin exactly one torch"
    (declared,) = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\b", d)]
    floor = re.search(r">=(\d+)\.(\d+)(?:\.0)?(?=,|$)", declared)
    assert floor and floor.groups() == pins[0], (declared, pins)


# -- extras ---------------------------------------------------------------------------------------
def test_extras_are_declared_where_they_are_named() -> None:
    assert set(extras.EXTRAS) == set(PYPROJECT["project"]["optional-dependencies"])
    assert extras.install_hint("nflows") == "pip install 'torch-flowkit[nflows]'"
    with pytest.raises(ValueError, match="unknown extra"):
        extras.install_hint("plotting")


def test_a_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nflows", None)  # `import nflows` now raises ImportError
    with pytest.raises(extras.MissingExtraError) as info:
        extras.require("nflows", extra="nflows", feature="the nflows-maf transform")
    assert isinstance(info.value, FlowkitError)
    assert "the nflows-maf transform needs the optional package 'nflows'" in str(info.value)
    assert "pip install 'torch-flowkit[nflows]'" in str(info.value)


def test_testing_strategies_without_hypothesis_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowkit.testing import strategies

    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.setitem(sys.modules, "hypothesis.strategies", None)
    with pytest.raises(extras.MissingExtraError, match=r"pip install 'torch-flowkit\[testing\]'"):
        strategies.context_features_for()
    # the deterministic examples (what `flowkit check` uses) need no hypothesis
    assert strategies.example_shapes is not None


def test_a_bridge_plugin_without_nflows_fails_clearly_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flowkit.cli.main import cli

    monkeypatch.setitem(sys.modules, "nflows", None)
    result = CliRunner().invoke(
        cli, ["run", "--transform", "nflows-maf", "--data", "moons", "--dry-run", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "pip install 'torch-flowkit[nflows]'" in result.output
    assert "Traceback" not in result.output


def test_an_extra_never_repeats_a_hard_dependency() -> None:
    """The headline (`flowkit run --transform revnet --objective ot`: POT, SciPy, scikit-learn for
    the digits) needs only hard dependencies; .ci/wheel-smoke runs it from a plain install."""
    hard = {
        re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower() for req in PYPROJECT["project"]["dependencies"]
    }
    assert {"pot", "scipy", "scikit-learn", "torch"} <= hard
    optional = {
        re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower()
        for reqs in PYPROJECT["project"]["optional-dependencies"].values()
        for req in reqs
    }
    assert not hard & (optional - {"setuptools"})  # an extra never repeats a hard dependency


# -- the unrelated `flowkit` distribution -----------------------------------------------------------
class _FakeDist:
    def __init__(self, name: str, version: str, summary: str, groups: tuple[str, ...]) -> None:
        self.metadata = {"Name": name, "Summary": summary}
        self.version = version
        self.entry_points = [metadata.EntryPoint("x", "m:x", g) for g in groups]


@pytest.mark.parametrize(
    ("dist", "says"),
    [
        (_FakeDist("FlowKit", "1.3.2", "Flow Cytometry Toolkit", ()), "unrelated project (Flow Cytometry"),
        (
            _FakeDist("flowkit", "0.1.0", "Invertible generative networks", ("flowkit.transforms",)),
            "an older flowkit",
        ),
    ],
)
def test_the_cli_warns_about_a_clashing_flowkit(
    monkeypatch: pytest.MonkeyPatch, dist: _FakeDist, says: str
) -> None:
    from flowkit.cli.main import cli

    real = metadata.distribution

    def fake(name: str) -> object:
        return dist if name == "flowkit" else real(name)

    monkeypatch.setattr(extras.metadata, "distribution", fake)
    result = CliRunner().invoke(cli, ["list", "priors"])
    assert result.exit_code == 0, result.output
    assert "warning: the distribution 'flowkit'" in result.stderr
    assert says in result.stderr
    assert "pip uninstall -y flowkit torch-flowkit && pip install torch-flowkit" in result.stderr


def test_no_warning_without_a_clash() -> None:
    from flowkit.cli.main import cli

    assert extras.clashing_distribution() is None
    result = CliRunner().invoke(cli, ["list", "priors"])
    assert result.exit_code == 0 and "warning" not in result.stderr


# -- the built distributions ------------------------------------------------------------------------
def _source_packages() -> set[str]:
    """Every package of the source tree, named as installed (plugins/ → flowkit.plugins ...)."""
    found = set()
    for top, prefix in (("flowkit", "flowkit"), ("plugins", "flowkit.plugins"), ("cli", "flowkit.cli")):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top)
            if top == "flowkit" and rel.parts[:1] in (("plugins",), ("cli",)):
                continue  # the links to plugins/ and cli/
            found.add(".".join((prefix, *rel.parts)))
    return found


def _copy_tree(dest: Path) -> Path:
    """The files a build reads, copied (links kept) so that no build output lands in the repo."""
    skip = shutil.ignore_patterns(
        ".venv",
        "build",
        "dist",
        "runs",
        "bench-results",
        "*.egg-info",
        ".git",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "docs",
        "tests",
        "benchmarks",
        "shared",
    )
    shutil.copytree(REPO, dest, symlinks=True, ignore=skip)
    return dest


def _build(fn: str, src: Path, out: Path) -> Path:
    """``setuptools.build_meta.<fn>`` in ``src`` (no network: the dev venv's setuptools)."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"from setuptools import build_meta as b; print(b.{fn}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


CHECK = r"""
import sys, pathlib
site = pathlib.Path(sys.argv[1]).resolve()
import flowkit, flowkit.plugins, flowkit.cli
from flowkit import registry
from flowkit.config import available_presets
from flowkit.bench.suite import BUILTIN_SUITES
for mod in (flowkit, flowkit.plugins, flowkit.cli):
    assert pathlib.Path(mod.__file__).resolve().is_relative_to(site), mod.__file__
cls = registry.transforms.get("realnvp")
assert pathlib.Path(sys.modules[cls.__module__].__file__).resolve().is_relative_to(site)
for kind in ("transform", "prior", "objective", "dataset"):
    for name in registry.registry(kind).names():
        registry.registry(kind).get(name)
assert "realnvp-digits" in available_presets()
assert BUILTIN_SUITES.is_relative_to(site) and (BUILTIN_SUITES / "quick.toml").is_file()
import importlib.util
spec = importlib.util.find_spec("plugins")
assert spec is None or "flowkit" in str(spec.origin)
print("wheel-ok")
"""


@pytest.mark.slow
def test_sdist_builds_a_complete_wheel(tmp_path: Path) -> None:
    src = _copy_tree(tmp_path / "src")
    sdist = _build("build_sdist", src, tmp_path / "dist")
    version = flowkit.__version__
    assert sdist.name == f"torch_flowkit-{version}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for wanted in (
        "LICENSE",
        "CHANGELOG.md",
        "CITATION.cff",
        "README.md",
        "pyproject.toml",
        "flowkit/py.typed",
        "flowkit/bench/suites/quick.toml",
        "plugins/__init__.py",
        "cli/main.py",
        "flowkit/presets/realnvp-digits.toml",
    ):
        assert wanted in names, wanted
    assert not any(n.startswith("tests/") for n in names)

    # the wheel is built from the unpacked sdist, as a user's pip would
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = _build("build_wheel", unpacked, tmp_path / "dist")
    assert wheel.name == f"torch_flowkit-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
        meta = zf.read(f"torch_flowkit-{version}.dist-info/METADATA").decode()
    assert len(files) == len(set(files)), "a file is in the wheel twice"
    top = {f.split("/", 1)[0] for f in files}
    assert top == {"flowkit", f"torch_flowkit-{version}.dist-info"}, top  # no plugins/ or cli/
    packages = {"/".join(f.split("/")[:-1]).replace("/", ".") for f in files if f.endswith("/__init__.py")}
    assert packages == _source_packages(), packages ^ _source_packages()
    # every module of the source tree, once, at its installed path
    want = set()
    for top_dir, dest in (("flowkit", "flowkit"), ("plugins", "flowkit/plugins"), ("cli", "flowkit/cli")):
        for p in (REPO / top_dir).rglob("*.py"):
            rel = p.relative_to(REPO / top_dir)
            if top_dir == "flowkit" and rel.parts[0] in ("plugins", "cli"):
                continue
            if "__pycache__" not in rel.parts:
                want.add(f"{dest}/{rel.as_posix()}")
    got_py = {f for f in files if f.endswith(".py")}
    assert got_py == want, sorted(got_py ^ want)
    for data in (
        "flowkit/py.typed",
        "flowkit/presets/realnvp-digits.toml",
        "flowkit/bench/suites/quick.toml",
        f"torch_flowkit-{version}.dist-info/licenses/LICENSE",
    ):
        assert data in files, data
    presets = {p.name for p in (REPO / "flowkit" / "presets").glob("*.toml")}
    assert {
        f.rsplit("/", 1)[1] for f in files if f.startswith("flowkit/presets/") and f.endswith(".toml")
    } == presets
    suites = {p.name for p in (REPO / "flowkit" / "bench" / "suites").glob("*.toml")}
    assert {
        f.rsplit("/", 1)[1] for f in files if f.startswith("flowkit/bench/suites/") and f.endswith(".toml")
    } == suites
    assert "Name: torch-flowkit" in meta and f"Version: {version}" in meta
    assert "License-Expression: MIT" in meta and "Provides-Extra: nflows" in meta

    # installed (no dependencies: this environment has them) and run outside the checkout
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "wheel-ok" in out.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowkit.cli",
            "run",
            "--data",
            "moons",
            "--set",
            "train.steps=2",
            "--set",
            "data.n_train=128",
            "--set",
            "data.n_test=64",
            "--quiet",
            "--out",
            str(tmp_path / "runs"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    bench = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "bench", "quick", "--dry-run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 0, bench.stderr
    assert "cost-asymmetry__s0" in bench.stdout and "realnvp__mle__moons" in bench.stdout
