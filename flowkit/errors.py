"""Exceptions flowkit raises for user mistakes.

Every error a user can cause (a bad config, an unknown plugin, a missing data file, a corrupt
checkpoint, a tensor of the wrong shape) is a :class:`FlowkitError`. The command line prints its
message and exits with a non-zero status, without a traceback; the Python API lets it propagate.
Messages name the problem *and* the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlowkitError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class ConfigError(FlowkitError, ValueError):
    """A configuration key, value or type is wrong."""


class PluginError(FlowkitError):
    """A plugin could not be found, loaded, or built."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that name is registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class PluginLoadError(PluginError, ImportError):
    """A registered plugin failed to import."""


class BlockedPluginError(PluginError):
    """The plugin is disabled by the blocklist."""


class ShapeError(FlowkitError, ValueError):
    """A tensor has a shape the transform, prior or model cannot take."""


class DataError(FlowkitError, OSError):
    """A dataset file is missing, unreadable, or fails its checksum."""


class CheckpointError(FlowkitError, OSError):
    """A checkpoint or run folder is missing, corrupt, truncated or inconsistent."""


class TrainingDiverged(FlowkitError, RuntimeError):
    """The loss or the parameters became NaN or infinite."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` hint (or an empty string) for a misspelt ``name``."""
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not matches:
        return ""
    quoted = " or ".join(f"'{m}'" for m in matches)
    return f" Did you mean {quoted}?"
