"""The cost asymmetry of flow families: density evaluation and sampling time at one dimension.

NICE and Real NVP (couplings) and Glow are as fast in both directions; MAF evaluates densities
in one pass but samples in D sequential passes; IAF is the reverse. All models take the same
1×8×8 input (D = 64; NICE, MAF and IAF flatten it), batch 256, one thread, inference mode; the
median of repeated calls is reported, with ratios to NICE measured in the same run.

    .venv/bin/python benchmarks/cost_asymmetry.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowkit.data import DataMeta
from flowkit.model import build_model

MODELS = {
    "nice": {"num_couplings": 4, "hidden": 256, "num_hidden": 2},
    "realnvp": {"num_scales": 2, "hidden": 32, "num_blocks": 2},
    "glow": {"num_levels": 2, "num_steps": 4, "hidden": 64},
    "maf": {"num_layers": 5, "hidden": 256, "num_hidden": 2},
    "iaf": {"num_layers": 5, "hidden": 256, "num_hidden": 2},
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = DataMeta((1, 8, 8), levels=17, num_classes=10, default_preprocess="logit")
    x = torch.rand(args.batch_size, 1, 8, 8) * 0.9 + 0.05
    rows = {}
    for name, params in MODELS.items():
        config = {"transform": {"name": name, **params}, "prior": {"name": "gaussian"},
                  "data": {"name": "digits", "preprocess": "logit", "alpha": 0.05}}
        model = build_model(config, meta).eval()
        with torch.no_grad():  # data-dependent init (actnorm) and non-trivial weights
            model.log_prob(x)
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        with torch.inference_mode():
            density = timed(lambda m=model: m.log_prob(x), args.repeats)
            sampling = timed(lambda m=model: m.sample(args.batch_size), args.repeats)
        rows[name] = {"density_ms": round(density, 2), "sampling_ms": round(sampling, 2),
                      "parameters": sum(p.numel() for p in model.parameters())}
    base = rows["nice"]
    for row in rows.values():
        row["density_vs_nice"] = round(row["density_ms"] / base["density_ms"], 2)
        row["sampling_vs_nice"] = round(row["sampling_ms"] / base["sampling_ms"], 2)
    print(json.dumps(rows, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
