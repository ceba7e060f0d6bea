"""Plugin registry over Python entry points.

Seven groups — ``flowkit.transforms``, ``flowkit.objectives``, ``flowkit.priors``,
``flowkit.datasets``, ``flowkit.embeddings`` (context embedding networks),
``flowkit.elementwise`` (the maps of couplings and autoregressive layers) and
``flowkit.loggers`` (experiment-tracking sinks, :mod:`flowkit.loggers`) — hold every
plugin, flowkit's own included. A third-party package adds one
by declaring, in its ``pyproject.toml``::

    [project.entry-points."flowkit.transforms"]
    my-flow = "my_package.flows:MyFlow"

Behaviour:

* **Lazy.** Entry points are read on first use; a plugin module is imported only when its name
  is asked for (``flowkit list`` imports them to show summaries).
* **Provenance.** Each entry records the distribution (name and version) that provides it.
* **Contained failure.** A plugin that fails to import — any exception, ``sys.exit()`` or another
  ``BaseException``, a ``KeyboardInterrupt`` it raises itself included — raises
  :class:`PluginLoadError` naming the plugin, its distribution and the error, only when that
  plugin is used. A real Ctrl-C during the import still interrupts (:func:`_import_watching_sigint`
  tells the two apart).
* **Collisions** warn and say which distribution won (flowkit's own plugins win; otherwise the
  first distribution in alphabetical order).
* **Blocklist.** ``$FLOWKIT_BLOCK`` (comma-separated names, optionally ``group:name``) and the
  CLI flag ``--block`` disable plugins.
* **Unknown names** list the known ones with a "did you mean".
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from flowkit._version import DISTRIBUTION
from flowkit.errors import (
    BlockedPluginError,
    ConfigError,
    PluginLoadError,
    UnknownPluginError,
    did_you_mean,
)
from flowkit.params import validate_parameters

KINDS = ("transform", "prior", "objective", "dataset", "embedding", "elementwise", "logger")
# elementwise maps of couplings and autoregressive layers (flowkit.elementwise): no plural "s"
GROUPS = {kind: f"flowkit.{kind}" + ("" if kind == "elementwise" else "s") for kind in KINDS}
BUILTIN_DISTRIBUTION = DISTRIBUTION  # "torch-flowkit": the distribution of the built-in plugins


class PluginCollisionWarning(UserWarning):
    """Two distributions register the same plugin name."""


@dataclass
class PluginEntry:
    """One registered plugin: its name, where it comes from, and (once loaded) the object."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    _obj: Any = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}".strip()

    def load(self) -> Any:
        """Import and return the plugin object (cached), or raise :class:`PluginLoadError`."""
        if self._obj is not None:
            return self._obj
        if self._error is None:
            try:
                obj: Any = _import_watching_sigint(self.target)
                self._obj = obj
                return obj
            except _UserInterrupt:
                raise KeyboardInterrupt from None  # the user pressed Ctrl-C: stop, as always
            except BaseException as exc:  # any import-time failure, sys.exit() included
                self._error = exc
        exited = (
            " (the plugin called sys.exit() while being imported)"
            if isinstance(self._error, SystemExit)
            else ""
        )
        raise PluginLoadError(
            f"{self.kind} plugin '{self.name}' (from {self.provider}, {self.target}) failed to "
            f"load: {type(self._error).__name__}: {self._error}{exited}. Fix or reinstall "
            f"'{self.distribution}', or disable the plugin with FLOWKIT_BLOCK={self.name}."
        ) from self._error

    def summary(self) -> str:
        """First line of the plugin's docstring, or the load error."""
        try:
            doc = (self.load().__doc__ or "").strip()
        except PluginLoadError as exc:
            return f"[failed to load: {exc.__cause__!s}]"
        return doc.splitlines()[0] if doc else ""


class _UserInterrupt(Exception):
    """A Ctrl-C (SIGINT) that arrived while a plugin was being imported."""


def _import_watching_sigint(target: str) -> Any:
    """Import ``module:attr.path``; a ``KeyboardInterrupt`` caused by a real SIGINT becomes
    :class:`_UserInterrupt`, one the plugin's code raised by itself stays a failure to load.

    In the main thread a temporary SIGINT handler records the signal before raising
    ``KeyboardInterrupt`` as Python's default handler would; elsewhere (signals reach only the
    main thread) every ``KeyboardInterrupt`` is treated as the user's.
    """
    import signal
    import threading

    def resolve() -> Any:
        module_name, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj

    if threading.current_thread() is not threading.main_thread():
        try:
            return resolve()
        except KeyboardInterrupt:
            raise _UserInterrupt from None
    pressed = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except (ValueError, OSError):  # no signal handling here (embedded interpreter)
        previous = None
    try:
        return resolve()
    except KeyboardInterrupt:
        if pressed or previous is None:
            raise _UserInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _parse_blocklist(text: str) -> set[str]:
    return {part.strip() for part in text.replace(";", ",").split(",") if part.strip()}


_blocked: set[str] = set()


def block(names: Iterable[str]) -> None:
    """Disable plugins by name (``name`` or ``group:name``) for this process."""
    _blocked.update(_parse_blocklist(",".join(names)))


def unblock_all() -> None:
    """Clear blocks made with :func:`block` (``$FLOWKIT_BLOCK`` still applies)."""
    _blocked.clear()


def blocked_names() -> set[str]:
    return _blocked | _parse_blocklist(os.environ.get("FLOWKIT_BLOCK", ""))


class Registry:
    """Name → plugin for one kind (``transform``, ``prior``, ``objective`` or ``dataset``)."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}")
        self.kind = kind
        self.group = GROUPS[kind]
        self._entries: dict[str, PluginEntry] | None = None
        self._runtime: dict[str, PluginEntry] = {}

    # -- discovery ----------------------------------------------------------------------------
    def _discover(self) -> dict[str, PluginEntry]:
        if self._entries is not None:
            return self._entries
        found: dict[str, list[PluginEntry]] = {}
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            entry = PluginEntry(
                kind=self.kind,
                name=ep.name,
                target=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else "unknown",
                version=dist.version if dist is not None else "",
            )
            same = found.setdefault(ep.name, [])
            # the same distribution seen twice on sys.path (e.g. editable + wheel) is not a clash
            if not any(e.distribution == entry.distribution and e.target == entry.target for e in same):
                same.append(entry)
        entries: dict[str, PluginEntry] = {}
        for name, candidates in found.items():
            candidates.sort(key=lambda e: (e.distribution != BUILTIN_DISTRIBUTION, e.distribution.lower()))
            winner = candidates[0]
            if len(candidates) > 1:
                losers = ", ".join(c.provider for c in candidates[1:])
                warnings.warn(
                    f"{self.kind} plugin '{name}' is registered by several distributions; using "
                    f"the one from {winner.provider} (also provided by: {losers}).",
                    PluginCollisionWarning,
                    stacklevel=3,
                )
            entries[name] = winner
        self._entries = entries
        return entries

    def refresh(self) -> None:
        """Forget discovered entry points (e.g. after installing a package in this process)."""
        self._entries = None

    # -- programmatic registration -------------------------------------------------------------
    def register(self, name: str, obj: Any, distribution: str = "<runtime>") -> None:
        """Register ``obj`` as ``name`` in this process (notebooks, tests); shadows entry points."""
        entry = PluginEntry(
            self.kind,
            name,
            f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '?')}",
            distribution,
            "",
        )
        entry._obj = obj
        self._runtime[name] = entry

    def unregister(self, name: str) -> None:
        self._runtime.pop(name, None)

    # -- lookup --------------------------------------------------------------------------------
    def _all(self) -> dict[str, PluginEntry]:
        return {**self._discover(), **self._runtime}

    def _is_blocked(self, name: str) -> bool:
        blocked = blocked_names()
        return name in blocked or f"{self.kind}:{name}" in blocked or f"{self.group}:{name}" in blocked

    def names(self, include_blocked: bool = False) -> list[str]:
        """Sorted names of the registered plugins."""
        return sorted(n for n in self._all() if include_blocked or not self._is_blocked(n))

    def entries(self, include_blocked: bool = False) -> list[PluginEntry]:
        everything = self._all()
        return [everything[n] for n in self.names(include_blocked)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def entry(self, name: str) -> PluginEntry:
        """The entry for ``name``; raises with a "did you mean" when unknown or blocked."""
        everything = self._all()
        if name in everything and self._is_blocked(name):
            raise BlockedPluginError(
                f"{self.kind} plugin '{name}' is disabled by the blocklist "
                f"($FLOWKIT_BLOCK or --block); remove it from there to use it."
            )
        if name not in everything:
            known = self.names()
            raise UnknownPluginError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, known)} "
                f"Known {self.kind}s: {', '.join(known) or 'none'}. "
                f"Run `flowkit list` to see them with their summaries."
            )
        return everything[name]

    def get(self, name: str) -> Any:
        """The plugin object (class or factory) registered as ``name``."""
        return self.entry(name).load()

    def build(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        injected: Mapping[str, Any] | None = None,
        expect: type | None = None,
    ) -> Any:
        """Validate ``params`` against the plugin's signature and call it.

        With ``expect``, a plugin that builds something else is a :class:`ConfigError`.
        """
        factory: Callable[..., Any] = self.get(name)
        kwargs = validate_parameters(factory, params or {}, f"[{self.kind}] {name}", injected)
        built = factory(**kwargs)
        if expect is not None and not isinstance(built, expect):
            raise ConfigError(
                f"{self.kind} plugin '{name}' built a {type(built).__name__}, not a flowkit {expect.__name__}"
            )
        return built


transforms = Registry("transform")
priors = Registry("prior")
objectives = Registry("objective")
datasets = Registry("dataset")
embeddings = Registry("embedding")
elementwise = Registry("elementwise")
loggers = Registry("logger")

_REGISTRIES = {
    "transform": transforms,
    "prior": priors,
    "objective": objectives,
    "dataset": datasets,
    "embedding": embeddings,
    "elementwise": elementwise,
    "logger": loggers,
}


def registry(kind: str) -> Registry:
    """The registry for ``kind`` (singular or plural: ``"transform"`` or ``"transforms"``)."""
    key = kind[:-1] if kind.endswith("s") and kind[:-1] in _REGISTRIES else kind
    if key not in _REGISTRIES:
        raise UnknownPluginError(
            f"unknown plugin kind '{kind}'.{did_you_mean(key, KINDS)} Kinds: {', '.join(KINDS)}."
        )
    return _REGISTRIES[key]
