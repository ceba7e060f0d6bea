"""Real NVP on two moons: flowkit against nflows with the same architecture, data and steps.

Both models: 8 affine couplings on a half/half split with alternating sides, each conditioner an
MLP 1 → 128 → 128 → 2 (ReLU), standard-normal prior, Adam (lr 1e-3, cosine decay), batch 256, the
same train/test draws from flowkit's `moons` dataset, the same seed. What differs is each
library's own scale parameterisation: flowkit ``s = scale·tanh(raw)`` (Real NVP's), nflows
``σ = sigmoid(raw + 2) + 1e-3``. Both are measured in one process, interleaved per step, so the
times compare (a ratio, not absolute numbers).

    .venv/bin/pip install -c constraints.txt -e ".[bench]"
    .venv/bin/python benchmarks/realnvp_vs_nflows_moons.py --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import flowkit
from flowkit.builder import build_model
from flowkit.data import DataMeta
from flowkit.runs import load_dataset


class _IgnoreContext(torch.nn.Module):
    """nflows couplings call ``net(x, context)``; its MLP takes only ``x``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


def nflows_realnvp(features: int, hidden: int, layers: int):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform

    half = math.ceil(features / 2)
    steps = []
    for i in range(layers):
        mask = torch.zeros(features)
        if i % 2 == 0:
            mask[half:] = 1  # nflows: mask > 0 marks the features that are transformed
        else:
            mask[:half] = 1

        def net(n_in: int, n_out: int) -> torch.nn.Module:
            return _IgnoreContext(MLP((n_in,), (n_out,), hidden_sizes=[hidden, hidden]))

        steps.append(AffineCouplingTransform(mask, net))
    return Flow(CompositeTransform(steps), StandardNormal([features]))


def evaluate(log_prob, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(-torch.cat([log_prob(c) for c in x.split(1000)]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = flowkit.load_config("realnvp-moons", [f"train.seed={args.seed}"])
    data = load_dataset(config)
    torch.manual_seed(args.seed)
    ours = build_model(config, DataMeta((2,)))
    torch.manual_seed(args.seed)
    theirs = nflows_realnvp(2, config["transform"]["hidden"], config["transform"]["num_layers"])
    models = {"flowkit": (ours, ours.log_prob), "nflows": (theirs, theirs.log_prob)}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, (m, _) in models.items()}
    schedulers = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, args.steps) for k, o in optimizers.items()}
    times = {k: 0.0 for k in models}
    gen = torch.Generator().manual_seed(args.seed)
    n = data.train.shape[0]
    for _ in range(args.steps):
        batch = data.train[torch.randint(0, n, (args.batch_size,), generator=gen)]
        for name, (_, log_prob) in models.items():
            t0 = time.perf_counter()
            loss = -log_prob(batch).mean()
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            schedulers[name].step()
            times[name] += time.perf_counter() - t0
    results = {
        name: {
            "test_nll_nats": evaluate(log_prob, data.test),
            "ms_per_step": 1000 * times[name] / args.steps,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        for name, (model, log_prob) in models.items()
    }
    results["time_ratio_flowkit_over_nflows"] = (
        results["flowkit"]["ms_per_step"] / results["nflows"]["ms_per_step"]
    )
    results["setup"] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
