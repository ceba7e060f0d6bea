"""The cost asymmetry of flow families: density evaluation and sampling time against dimension.

NICE and Real NVP (couplings) and Glow are as fast in both directions; MAF evaluates densities
in one pass but samples in D sequential passes; IAF is the reverse. Every model takes a 1×s×s
input (D = s²; NICE, MAF and IAF flatten it), batch 256, inference mode; the median of repeated
calls is reported, with ratios to NICE at the same dimension measured in the same run.

    python -m flowkit.bench.cost_asymmetry --sides 8 16 --threads 1

The ``parallelism`` and ``quick`` suites (``flowkit bench parallelism``) call :func:`measure`; it
lives in the package so that the suites shipped in the wheel run outside a checkout.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from flowkit.builder import build_model
from flowkit.data import DataMeta

MODELS = {
    "nice": {"num_couplings": 4, "hidden": 256, "num_hidden": 2},
    "realnvp": {"num_scales": 2, "hidden": 32, "num_blocks": 2},
    "glow": {"num_levels": 2, "num_steps": 4, "hidden": 64},
    "maf": {"num_layers": 5, "hidden": 256, "num_hidden": 2},
    "iaf": {"num_layers": 5, "hidden": 256, "num_hidden": 2},
}


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(
    sides: list[int] | None = None,
    families: list[str] | None = None,
    batch_size: int = 256,
    repeats: int = 7,
    threads: int = 0,
    seed: int = 0,
) -> list[dict[str, object]]:
    """One row per (family, dimension): density and sampling ms, ratios to NICE at that D."""
    if threads:
        torch.set_num_threads(threads)
    rows: list[dict[str, object]] = []
    for side in sides or [8]:
        torch.manual_seed(seed)
        meta = DataMeta((1, side, side), levels=256, default_preprocess="logit")
        x = torch.rand(batch_size, 1, side, side) * 0.9 + 0.05
        block: list[dict[str, Any]] = []
        for name in families or list(MODELS):
            config = {
                "transform": {"name": name, **MODELS[name]},
                "prior": {"name": "gaussian"},
                "data": {"name": "digits", "preprocess": "logit", "alpha": 0.05},
            }
            model = build_model(config, meta).eval()
            with torch.no_grad():  # data-dependent init (actnorm) and non-trivial weights
                model.log_prob(x)
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            with torch.inference_mode():
                density = timed(functools.partial(model.log_prob, x), repeats)
                sampling = timed(functools.partial(model.sample, batch_size), repeats)
            block.append(
                {
                    "family": name,
                    "dim": side * side,
                    "density_ms": round(density, 2),
                    "sampling_ms": round(sampling, 2),
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            )
        base = next((r for r in block if r["family"] == "nice"), block[0])
        for row in block:
            row["density_vs_" + str(base["family"])] = round(
                float(row["density_ms"]) / float(base["density_ms"]), 2
            )
            row["sampling_vs_" + str(base["family"])] = round(
                float(row["sampling_ms"]) / float(base["sampling_ms"]), 2
            )
        rows += block
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[8], help="image sides s (D = s*s)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = measure(args.sides, None, args.batch_size, args.repeats, args.threads)
    print(json.dumps(rows, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
