"""flowkit: invertible generative networks as plugins.

Every model is ``prior ∘ transform``, trained by an ``objective``, on a ``dataset``; each of the
four is a plugin found by name through Python entry points. The public API::

    import flowkit
    config = flowkit.load_config("realnvp-moons", overrides=["train.steps=500"])
    result = flowkit.train(config, run_dir="runs/moons")      # same as `flowkit run`
    run = flowkit.load_run("runs/moons")                        # a trained Flow and its data
    run.model.log_prob(x); run.model.sample(64); run.model.encode(x); run.model.decode(z)
    model = flowkit.build_model(config, meta)                 # a config becomes a Flow
    flowkit.train(config, callbacks=[MySink()])                # a flowkit.Callback per concern
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowkit._version import __version__  # the one place the version is written

# Heavy modules (torch) load on first attribute access, so `flowkit --help` stays fast.
_LAZY = {
    "Transform": "flowkit.transform",
    "Prior": "flowkit.prior",
    "Objective": "flowkit.objective",
    "LossOutput": "flowkit.objective",
    "Batch": "flowkit.objective",
    "Flow": "flowkit.model",
    "build_model": "flowkit.builder",
    "build_objective": "flowkit.builder",
    "Callback": "flowkit.callbacks",
    "load_config": "flowkit.config",
    "train": "flowkit.trainer",
    "load_run": "flowkit.runs",
    "registry": "flowkit.registry",
}

__all__ = [
    "Batch",
    "Callback",
    "Flow",
    "LossOutput",
    "Objective",
    "Prior",
    "Transform",
    "__version__",
    "build_model",
    "build_objective",
    "load_config",
    "load_run",
    "registry",
    "train",
]

if TYPE_CHECKING:
    from flowkit import registry
    from flowkit.builder import build_model, build_objective
    from flowkit.callbacks import Callback
    from flowkit.config import load_config
    from flowkit.model import Flow
    from flowkit.objective import Batch, LossOutput, Objective
    from flowkit.prior import Prior
    from flowkit.runs import load_run
    from flowkit.trainer import train
    from flowkit.transform import Transform


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        # a submodule of the same name (flowkit.registry) is the module itself, on first access
        # as on every later one (importing it sets the attribute to the module)
        return module if _LAZY[name] == f"flowkit.{name}" else getattr(module, name)
    raise AttributeError(f"module 'flowkit' has no attribute {name!r}")
