"""Adam's update on the parameters of a flowkit model: PyTorch's foreach, per-tensor and fused.

flowkit's trainer builds its optimiser with :func:`flowkit.optim.build_optimizer`, which by
default times the implementations once per machine and model size class and keeps the fastest
(:func:`flowkit.optim.choose_implementation`). This script times one ``optimizer.step()`` of each
implementation on the same parameters and gradients (those of the 784-d Real NVP of the peer
benchmarks by default: 6.9 M parameters; ``maf-conditional`` and ``nsf-conditional`` are the
5-layer, 2 × 64-unit conditional flows of ``flowkit bench conditional`` on a 10-d task, 35 and
114 thousand parameters in 30 tensors), interleaved round-robin so machine load hits every
variant alike, and reports medians and ratios against ``foreach`` (PyTorch's default on CPU),
and the choice ``build_optimizer`` makes here. It also checks that the three give the same
parameters after the timed steps.

    .venv/bin/python benchmarks/optimizer_step.py --threads 2
    .venv/bin/python benchmarks/optimizer_step.py --threads 1 --arch glow28
    .venv/bin/python benchmarks/optimizer_step.py --threads 1 --arch maf-conditional --steps 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers.flowkit_models import build_flow

VARIANTS = {"foreach": {"foreach": True}, "per-tensor": {"foreach": False}, "fused": {"fused": True}}
ARCHS = ("realnvp784", "glow28", "maf-conditional", "nsf-conditional")


def _parameters(arch: str) -> list[torch.Tensor]:
    """The trainable parameters of ``arch`` (see the module docstring), detached."""
    if arch.endswith("-conditional"):
        from flowkit import flows

        build = flows.MAF if arch == "maf-conditional" else flows.NSF
        model = build(features=10, context=10, transforms=5, hidden=64, num_hidden=2)
    else:
        model = build_flow(arch)
    return [p.detach() for p in model.parameters() if p.requires_grad]


def measure(
    arch: str = "realnvp784", steps: int = 30, warmup: int = 3, threads: int | None = None
) -> dict[str, object]:
    """Median ``step()`` time of each Adam implementation on ``arch``'s parameters."""
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    reference = _parameters(arch)
    grads = [torch.randn(p.shape, generator=gen) for p in reference]
    runs = {}
    for name, options in VARIANTS.items():
        params = [torch.nn.Parameter(p.clone()) for p in reference]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        runs[name] = (params, torch.optim.Adam(params, lr=1e-4, **options))
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(warmup + steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runs[name][1].step()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
    base = runs["foreach"][0]
    max_diff = max(
        float((a - b).detach().abs().max())
        for name, (params, _) in runs.items()
        for a, b in zip(params, base, strict=True)
    )
    from flowkit.optim import choose_implementation

    return {
        "arch": arch,
        "parameters": sum(p.numel() for p in reference),
        "tensors": len(reference),
        "build_optimizer_choice": choose_implementation(reference, "adam", {"lr": 1e-4}),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "step_ms": {k: round(v, 3) for k, v in medians.items()},
        "ratio_vs_foreach": {k: round(v / medians["foreach"], 3) for k, v in medians.items()},
        "max_param_difference": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="realnvp784", choices=list(ARCHS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(args.arch, args.steps, threads=args.threads), indent=2))


if __name__ == "__main__":
    main()
