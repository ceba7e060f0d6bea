"""flowkit's own models for the peer benchmarks, built from run configs as ``flowkit run`` would."""

from __future__ import annotations

from typing import Any

from benchmarks.peers import ARCHS, Adapter
from flowkit.builder import build_model
from flowkit.data import DataMeta
from flowkit.model import Flow
from flowkit.optim import build_optimizer

#: The ``[transform]`` section of each architecture (the prior is ``gaussian``, no preprocessing).
TRANSFORMS: dict[str, dict[str, Any]] = {
    "realnvp784": {"name": "realnvp", "num_layers": 8, "hidden": 512, "num_hidden": 2},
    "glow28": {"name": "glow", "num_levels": 2, "num_steps": 8, "hidden": 128, "lu": True},
}


def build_flow(arch: str) -> Flow:
    """The :class:`~flowkit.model.Flow` of ``arch`` (``realnvp-moons`` is the shipped preset)."""
    spec = ARCHS[arch]
    if arch == "realnvp-moons":
        import flowkit

        config = flowkit.load_config("realnvp-moons")
        config = {**config, "data": {**config["data"], "preprocess": "none"}}
    else:
        config = {
            "transform": TRANSFORMS[arch],
            "prior": {"name": "gaussian"},
            "data": {"name": "bench", "preprocess": "none"},
        }
    return build_model(config, DataMeta(spec.shape))


def build(arch: str, *, seed: int = 0) -> Adapter:
    """flowkit's ``arch`` (Real NVP: ``realnvp``; Glow: ``glow``, with its split priors)."""
    model = build_flow(arch)
    note = "Glow's learned split prior on the factored-out half is included" if arch == "glow28" else ""
    return Adapter("flowkit", arch, model, model.log_prob, model.sample, note, make_optimizer=_trainer_adam)


def _trainer_adam(params: list[Any], lr: float) -> Any:
    """The Adam that ``flowkit run`` builds (``[train] optimizer = "adam"``: fused kernels)."""
    return build_optimizer(
        params, {"optimizer": "adam", "lr": lr, "betas": (0.9, 0.999), "weight_decay": 0.0}
    )
