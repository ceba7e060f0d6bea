"""Same function, different cost: the ways flowkit can evaluate a model without changing it.

Every module here computes exactly what the plain PyTorch code computes (up to floating-point
round-off) at another cost in time or memory, and each is tested against that plain path:

* :mod:`~flowkit.execution.onednn_linear` — affine layers (ReLU fused) on PyTorch's oneDNN GEMM;
* :mod:`~flowkit.execution.onednn_conv` — convolutions with their ReLU and residual fused, where
  no gradient is needed;
* :mod:`~flowkit.execution.compiled` — the training forward pass through ``torch.compile``
  (``train.compile``);
* :mod:`~flowkit.execution.invertible_backprop` — memory-free backprop by inversion
  (``train.invertible_backprop``; its rules: :mod:`flowkit.reconstruction`);
* :mod:`~flowkit.execution.wrapper` — the checkpoint-transparent wrapper the last two share;
* :mod:`~flowkit.execution.autotune` — the measurement that picks, per machine and per shape,
  which of the equivalent paths is the default (cached on disk; explicit settings override).

Up to flowkit 0.2 these modules lived at ``flowkit.linear``, ``flowkit.conv``,
``flowkit.compiled``, ``flowkit.invertible_backprop`` and ``flowkit.wrapper``; those names still
import (the same module objects) for one release, with a :class:`DeprecationWarning`
(:func:`alias_moved_module`).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import FrameType

__all__ = ["alias_moved_module"]

#: The release that removes the old module paths.
REMOVED_IN = "0.4"


def _caller_stacklevel(old: str) -> int:
    """The ``stacklevel`` that points a warning at the code that wrote ``import old``.

    Skips this module, the deprecated module's body and :func:`importlib.import_module`
    (:func:`warnings.warn` itself skips the import machinery's ``<frozen importlib._bootstrap>``
    frames), so the default warning filters attribute the warning to the importing module.
    """
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        internal = "importlib" in name and "_bootstrap" in name
        caller = frame.f_globals.get("__name__")
        if not (internal or name == __file__ or caller in (old, "importlib")):
            break
        if not internal:  # warnings.warn skips the import machinery's frames itself
            level += 1
        frame = frame.f_back
    return level


def alias_moved_module(old: str, new: str) -> None:
    """Make the module ``old`` an alias of ``new`` and warn that it moved.

    Called from the body of the old module: ``sys.modules[old]`` becomes the new module object
    itself, so attributes read or set through either name (``flowkit.linear.MIN_MACS = 0``) are
    the same. The :class:`DeprecationWarning` is attributed to the importing code.
    """
    module = importlib.import_module(new)
    warnings.warn(
        f"{old} moved to {new}; the old name is removed in flowkit {REMOVED_IN}. Import {new} instead.",
        DeprecationWarning,
        stacklevel=_caller_stacklevel(old),
    )
    sys.modules[old] = module
