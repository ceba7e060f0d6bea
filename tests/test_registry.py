"""The plugin registry: discovery, laziness, provenance, failures, collisions, blocklist.

Third-party packages are simulated by fake installed distributions written to a temporary
folder — a ``<name>-<version>.dist-info`` with ``METADATA`` and ``entry_points.txt`` next to the
plugin modules — and put on ``sys.path``; :mod:`importlib.metadata` then finds them exactly as it
finds a pip-installed package.
"""

from __future__ import annotations

import itertools
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

import flowkit
from flowkit import registry
from flowkit.cli.main import cli
from flowkit.config import read_toml
from flowkit.errors import BlockedPluginError, PluginLoadError, UnknownPluginError
from flowkit.registry import PluginCollisionWarning
from flowkit.transform import Shape, Transform

_COUNTER = itertools.count()

PLUGIN_SOURCE = '''
"""A fake third-party plugin module."""

from flowkit.transform import Transform


class Shift(Transform):
    """Fake plugin: adds one to every scalar.

    Written by the registry tests.
    """

    def forward(self, x, context=None):
        return x + 1.0, self.zero_logdet(x)

    def inverse(self, y, context=None):
        return y - 1.0, self.zero_logdet(y)


def dataset_factory():
    """Fake dataset plugin."""
'''

BROKEN_SOURCE = 'raise RuntimeError("the plugin author broke this module (error 42)")\n'


@dataclass
class FakeSite:
    """A folder on ``sys.path`` holding fake installed distributions and their modules."""

    root: Path
    modules: list[str] = field(default_factory=list)

    def module(self, source: str = PLUGIN_SOURCE) -> str:
        """Write a uniquely named plugin module and return its import name."""
        name = f"fk_fake_plugin_{next(_COUNTER)}"
        (self.root / f"{name}.py").write_text(source)
        self.modules.append(name)
        return name

    def distribution(
        self,
        name: str,
        version: str,
        entry_points: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Write ``<name>-<version>.dist-info`` declaring ``entry_points`` (group → name → target)."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, entries in entry_points.items():
            lines.append(f"[{group}]")
            lines.extend(f"{ep} = {target}" for ep, target in entries.items())
            lines.append("")
        (info / "entry_points.txt").write_text("\n".join(lines))


def _refresh_all() -> None:
    for kind in registry.KINDS:
        registry.registry(kind).refresh()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    """Fake distributions visible to the registry during one test (write them, then activate)."""
    fake = FakeSite(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield fake
    for name in fake.modules:
        sys.modules.pop(name, None)
    _refresh_all()  # the next lookup rediscovers without the fake site (removed by monkeypatch)


def activate() -> None:
    """Make the registries rediscover entry points after fake distributions were written."""
    _refresh_all()


@pytest.fixture
def no_blocks() -> Iterator[None]:
    registry.unblock_all()
    yield
    registry.unblock_all()


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def test_plugins_load_lazily(site: FakeSite) -> None:
    module = site.module()
    site.distribution("fk-lazy", "1.0", {"flowkit.transforms": {"shift": f"{module}:Shift"}})
    activate()
    assert "shift" in registry.transforms.names()
    entry = registry.transforms.entry("shift")
    assert module not in sys.modules  # listing names and entries imports nothing
    cls = registry.transforms.get("shift")
    assert module in sys.modules
    assert cls.__name__ == "Shift" and issubclass(cls, Transform)
    assert entry.load() is cls  # cached


def test_provenance_names_the_distribution_and_version(site: FakeSite) -> None:
    module = site.module()
    site.distribution(
        "fk-provenance",
        "1.2.3",
        {
            "flowkit.transforms": {"shift": f"{module}:Shift"},
            "flowkit.datasets": {"fake-data": f"{module}:dataset_factory"},
        },
    )
    activate()
    entry = registry.transforms.entry("shift")
    assert (entry.distribution, entry.version) == ("fk-provenance", "1.2.3")
    assert entry.provider == "fk-provenance 1.2.3"
    assert entry.target == f"{module}:Shift"
    assert registry.datasets.entry("fake-data").distribution == "fk-provenance"
    assert "fake-data" not in registry.transforms.names()  # groups are separate
    assert registry.transforms.entry("realnvp").distribution == registry.BUILTIN_DISTRIBUTION
    result = CliRunner().invoke(cli, ["list", "transforms"])
    assert result.exit_code == 0, result.output
    assert "Fake plugin: adds one to every scalar.  [fk-provenance 1.2.3]" in result.output


def test_broken_plugin_is_contained(site: FakeSite) -> None:
    good, broken = site.module(), site.module(BROKEN_SOURCE)
    site.distribution(
        "fk-broken",
        "0.3",
        {
            "flowkit.transforms": {
                "shift": f"{good}:Shift",
                "broken-flow": f"{broken}:Flow",
            }
        },
    )
    activate()
    assert {"broken-flow", "shift", "realnvp"} <= set(registry.transforms.names())
    assert registry.transforms.get("shift").__name__ == "Shift"
    assert registry.transforms.get("realnvp").__name__ == "RealNVP"

    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "broken-flow" in ln)
    assert "failed to load" in line and "error 42" in line and "[fk-broken 0.3]" in line
    assert "Fake plugin: adds one" in result.output

    with pytest.raises(PluginLoadError) as info:
        registry.transforms.get("broken-flow")
    message = str(info.value)
    assert "'broken-flow'" in message and "fk-broken" in message
    assert "RuntimeError: the plugin author broke this module (error 42)" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(PluginLoadError):  # the failure is remembered, not retried silently
        registry.transforms.get("broken-flow")


def test_broken_plugin_is_a_clean_cli_error(site: FakeSite, tmp_path: Path) -> None:
    broken = site.module(BROKEN_SOURCE)
    site.distribution("fk-broken-cli", "0.1", {"flowkit.transforms": {"broken-flow": f"{broken}:X"}})
    activate()
    result = CliRunner().invoke(cli, ["run", "--transform", "broken-flow", "--dry-run"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "fk-broken-cli" in result.output and "FLOWKIT_BLOCK=broken-flow" in result.output
    assert "Traceback" not in result.output


EXITING_SOURCE = "import sys\nsys.exit(3)\n"
BASE_EXCEPTION_SOURCE = (
    'class GiveUp(BaseException):\n    pass\n\nraise GiveUp("the plugin gave up (error 7)")\n'
)


def test_plugin_that_exits_or_raises_a_base_exception_is_contained(site: FakeSite) -> None:
    """``sys.exit()`` or any ``BaseException`` at import is contained like an ``ImportError``:
    reported by name when the plugin is used, never ending the CLI or breaking the others."""
    good = site.module()
    exiting, giving_up = site.module(EXITING_SOURCE), site.module(BASE_EXCEPTION_SOURCE)
    site.distribution(
        "fk-exiting",
        "0.2",
        {
            "flowkit.transforms": {
                "exiting-flow": f"{exiting}:Flow",
                "give-up-flow": f"{giving_up}:Flow",
                "shift": f"{good}:Shift",
            }
        },
    )
    activate()
    with pytest.raises(
        PluginLoadError,
        match=r"SystemExit: 3 \(the plugin called sys.exit\(\) "
        r"while being imported\)",
    ) as info:
        registry.transforms.get("exiting-flow")
    assert "FLOWKIT_BLOCK=exiting-flow" in str(info.value)
    with pytest.raises(PluginLoadError, match=r"GiveUp: the plugin gave up \(error 7\)"):
        registry.transforms.get("give-up-flow")
    assert registry.transforms.get("shift").__name__ == "Shift"

    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0, result.output
    assert "failed to load" in next(ln for ln in result.output.splitlines() if "exiting-flow" in ln)
    result = CliRunner().invoke(cli, ["run", "--transform", "exiting-flow", "--dry-run"])
    assert result.exit_code == 1 and "fk-exiting" in result.output  # not the plugin's exit 3
    assert "Traceback" not in result.output


def test_ctrl_c_while_a_plugin_imports_is_not_swallowed(site: FakeSite) -> None:
    """A real SIGINT during a plugin's import interrupts, as Ctrl-C always does."""
    pressed = site.module(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)  # the signal arrives here\n"
    )
    site.distribution("fk-pressed", "0.1", {"flowkit.transforms": {"pressed-flow": f"{pressed}:Flow"}})
    activate()
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        registry.transforms.get("pressed-flow")
    assert signal.getsignal(signal.SIGINT) is handler  # the temporary handler is gone


def test_a_plugin_raising_keyboard_interrupt_itself_is_contained(site: FakeSite) -> None:
    """``raise KeyboardInterrupt`` in a plugin's module (no signal) is a failure to load, like
    any other BaseException: the plugin is reported, flowkit keeps going."""
    interrupted = site.module("raise KeyboardInterrupt\n")
    site.distribution(
        "fk-interrupted", "0.1", {"flowkit.transforms": {"interrupted-flow": f"{interrupted}:Flow"}}
    )
    activate()
    with pytest.raises(PluginLoadError, match=r"'interrupted-flow' .*failed to load: KeyboardInterrupt"):
        registry.transforms.get("interrupted-flow")
    assert registry.transforms.get("realnvp").__name__ == "RealNVP"
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0, result.output
    assert "failed to load" in next(ln for ln in result.output.splitlines() if "interrupted-flow" in ln)


def test_collision_between_third_parties_warns_and_names_the_winner(site: FakeSite) -> None:
    first, second = site.module(), site.module()
    site.distribution("fk-zeta", "2.0", {"flowkit.transforms": {"twin": f"{second}:Shift"}})
    site.distribution("fk-alpha", "1.0", {"flowkit.transforms": {"twin": f"{first}:Shift"}})
    activate()
    with pytest.warns(PluginCollisionWarning, match=r"'twin'.*using the one from fk-alpha 1\.0") as record:
        names = registry.transforms.names()
    assert "twin" in names
    assert "fk-zeta 2.0" in str(record[0].message)
    assert registry.transforms.entry("twin").distribution == "fk-alpha"
    assert registry.transforms.get("twin").__module__ == first


def test_third_party_cannot_shadow_a_builtin(site: FakeSite) -> None:
    module = site.module()
    site.distribution("fk-impostor", "9.9", {"flowkit.transforms": {"realnvp": f"{module}:Shift"}})
    activate()
    with pytest.warns(PluginCollisionWarning, match=r"'realnvp'.*using the one from torch-flowkit") as record:
        entry = registry.transforms.entry("realnvp")
    assert "fk-impostor 9.9" in str(record[0].message)
    assert entry.distribution == registry.BUILTIN_DISTRIBUTION
    assert registry.transforms.get("realnvp").__module__ == "flowkit.plugins.transforms.realnvp"
    assert module not in sys.modules


def test_same_distribution_twice_is_not_a_collision(
    site: FakeSite,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = site.module()
    site.distribution("fk-twice", "1.0", {"flowkit.transforms": {"shift": f"{module}:Shift"}})
    other = FakeSite(tmp_path_factory.mktemp("second-site"))  # e.g. an editable and a wheel copy
    other.distribution("fk-twice", "1.0", {"flowkit.transforms": {"shift": f"{module}:Shift"}})
    monkeypatch.syspath_prepend(str(other.root))
    activate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginCollisionWarning)
        assert registry.transforms.entry("shift").distribution == "fk-twice"
        registry.transforms.names()  # flowkit and the installed plugins do not collide either


# ---------------------------------------------------------------------------------------------
# lookup errors and the blocklist
# ---------------------------------------------------------------------------------------------
def test_unknown_name_suggests_and_lists() -> None:
    with pytest.raises(UnknownPluginError) as info:
        registry.transforms.get("realnpv")
    message = str(info.value)
    assert "unknown transform 'realnpv'" in message
    assert "Did you mean 'realnvp'?" in message
    assert f"Known transforms: {', '.join(registry.transforms.names())}." in message
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownPluginError, match=r"Known priors: .*gaussian"):
        registry.priors.build("no-such-prior", {})


def test_blocklist_from_environment(monkeypatch: pytest.MonkeyPatch, no_blocks: None) -> None:
    monkeypatch.setenv("FLOWKIT_BLOCK", "realnvp, transform:nice ;prior:logistic")
    names = registry.transforms.names()
    assert "realnvp" not in names and "nice" not in names and "squeeze" in names
    assert "realnvp" not in registry.transforms
    assert {"realnvp", "nice"} <= set(registry.transforms.names(include_blocked=True))
    assert "logistic" not in registry.priors.names()
    with pytest.raises(BlockedPluginError, match=r"'realnvp' is disabled by the blocklist"):
        registry.transforms.get("realnvp")
    with pytest.raises(BlockedPluginError):
        registry.priors.build("logistic", {}, injected={"shape": (2,)})
    monkeypatch.delenv("FLOWKIT_BLOCK")
    assert registry.transforms.get("realnvp").__name__ == "RealNVP"


def test_blocklist_from_python(no_blocks: None) -> None:
    registry.block(["squeeze", "flowkit.transforms:permute"])
    assert registry.blocked_names() >= {"squeeze", "flowkit.transforms:permute"}
    assert not {"squeeze", "permute"} & set(registry.transforms.names())
    for name in ("squeeze", "permute"):
        with pytest.raises(BlockedPluginError, match="FLOWKIT_BLOCK or --block"):
            registry.transforms.get(name)
    registry.unblock_all()
    assert {"squeeze", "permute"} <= set(registry.transforms.names())


def test_blocklist_from_the_cli(no_blocks: None) -> None:
    result = CliRunner().invoke(cli, ["--block", "realnvp", "run", "--transform", "realnvp", "--dry-run"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "blocklist" in result.output and "realnvp" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# programmatic use
# ---------------------------------------------------------------------------------------------
class Negate(Transform):
    """Runtime-registered toy: ``y = −x``, log-det 0."""

    volume_preserving = True

    def __init__(self, event_shape: Shape, *, flip: bool = True) -> None:
        super().__init__(event_shape)
        self.flip = flip

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y = −x``."""
        return -x, self.zero_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = −y``."""
        return -y, self.zero_logdet(y)


def test_register_at_runtime() -> None:
    registry.transforms.register("negate", Negate)
    try:
        assert "negate" in registry.transforms.names()
        assert registry.transforms.entry("negate").distribution == "<runtime>"
        built = registry.transforms.build("negate", {"flip": True}, injected={"event_shape": (3,), "seed": 0})
        assert isinstance(built, Negate) and built.event_shape == (3,)
        y, logdet = built(torch.ones(2, 3))
        assert torch.equal(y, -torch.ones(2, 3)) and torch.equal(logdet, torch.zeros(2))
        registry.transforms.register("realnvp", Negate)  # a runtime registration shadows
        assert registry.transforms.get("realnvp") is Negate
    finally:
        registry.transforms.unregister("negate")
        registry.transforms.unregister("realnvp")
    assert "negate" not in registry.transforms.names()
    assert registry.transforms.get("realnvp").__name__ == "RealNVP"


def test_registry_by_kind() -> None:
    assert registry.registry("transforms") is registry.transforms
    assert registry.registry("transform") is registry.transforms
    assert registry.registry("datasets") is registry.datasets
    assert registry.registry("prior") is registry.priors
    with pytest.raises(UnknownPluginError, match=r"Did you mean 'transform'\?") as info:
        registry.registry("transfrom")
    assert "transform, prior, objective, dataset" in str(info.value)


# ---------------------------------------------------------------------------------------------
# flowkit's own entry points
# ---------------------------------------------------------------------------------------------
def _builtin_entry_points() -> list[tuple[str, str, str]]:
    pyproject = Path(flowkit.__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():  # pragma: no cover - flowkit installed from a wheel
        return []
    groups = read_toml(pyproject)["project"]["entry-points"]
    return [(group, name, target) for group, entries in groups.items() for name, target in entries.items()]


BUILTINS = _builtin_entry_points()


def test_every_group_has_builtins() -> None:
    if not BUILTINS:
        pytest.skip("flowkit's pyproject.toml is not next to the package")
    assert {group for group, _, _ in BUILTINS} == set(registry.GROUPS.values())


@pytest.mark.parametrize(
    ("group", "name", "target"), BUILTINS, ids=[f"{g.split('.')[1]}:{n}" for g, n, _ in BUILTINS]
)
def test_builtin_entry_point_loads_with_a_summary(group: str, name: str, target: str) -> None:
    reg = registry.registry(group.split(".")[1])
    reg.refresh()
    assert name in reg.names(include_blocked=True), (
        f"pyproject.toml declares {group} '{name}' but the installed flowkit does not; "
        f"reinstall: pip install -e ."
    )
    entry = reg.entry(name)
    assert (entry.distribution, entry.target) == (registry.BUILTIN_DISTRIBUTION, target), (
        "the installed entry points differ from pyproject.toml; reinstall: pip install -e ."
    )
    obj = reg.get(name)
    lines = (obj.__doc__ or "").strip().splitlines()
    assert lines and lines[0].strip(), f"{target} has no docstring"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{target}: the docstring's first line must be a one-line summary followed by a blank line"
    )
    assert entry.summary() == lines[0]
