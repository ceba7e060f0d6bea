"""MAF on the 2-D toys: flowkit's `maf` against nflows' MAF through the bridge (`nflows-maf`).

Both run through flowkit's own trainer with the same config apart from the transform name:
5 MADE affine layers, 64 hidden units × 2, order reversed between layers, standard-normal prior,
Adam 1e-3 with cosine decay, batch 256, the same data and seed. Reports test NLL (nats) per
dataset side by side.

    .venv/bin/python benchmarks/maf_vs_nflows_maf_toys.py --steps 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

import flowkit

DATASETS = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel", "spirals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for data in args.datasets:
        row = {"data": data}
        for transform in ("maf", "nflows-maf"):
            config = flowkit.load_config(
                None,
                [
                    f"train.steps={args.steps}",
                    "train.batch_size=256",
                    "train.scheduler=cosine",
                    "transform.num_layers=5",
                    "transform.hidden=64",
                    "train.eval_every=0",
                    "train.sample_every=0",
                    "train.checkpoint_every=0",
                ],
                transform=transform,
                data=data,
            )
            with tempfile.TemporaryDirectory() as tmp:
                summary = flowkit.train(config, f"{tmp}/run", progress=False, log=lambda _: None)
            row[f"{transform} test NLL"] = round(summary["test_nll"], 4)
            row[f"{transform} ms/step"] = round(1000 * summary["train_time_s"] / summary["steps"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
