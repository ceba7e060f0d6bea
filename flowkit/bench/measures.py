"""The metrics a benchmark cell computes on its trained run, one function per ``[metrics]`` switch.

Each measure is ``fn(run, data, switches, cell_dir, data_dir) -> dict`` of flat metrics (and an
optional ``"_figures"`` list of paths relative to the cell folder). The metric code itself lives
in :mod:`flowkit.metrics` (usable outside bench); this module only decides what to call.
Test NLL / bits/dim come from the run's own final evaluation (``summary.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowkit.data.base import DataSplits
from flowkit.runs import Run

Measure = Callable[[Run, DataSplits, dict[str, Any], Path, "str | None"], dict[str, Any]]


def _n(switches: dict[str, Any]) -> int:
    return int(switches.get("n_samples", 1000))


def reconstruction(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Mean and max ``|decode(encode(x)) − x|`` on the test split."""
    from flowkit.metrics import reconstruction_error

    return reconstruction_error(run.model, data, max_examples=_n(switches))


def sample_quality(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Sliced-Wasserstein and Sinkhorn distances between samples and test data."""
    from flowkit.metrics import sample_quality as measure

    return measure(run.model, data, n=_n(switches), seed=int(run.config["train"]["seed"]))


def frechet(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Fréchet distance and, from the same samples and features, quality and variety apart:
    improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al.
    2020), per class too for class-conditional models — in the feature space of flowkit's own
    classifier for the dataset (the data space for 2-D sets); :func:`flowkit.metrics.sample_metrics`.
    """
    from flowkit.metrics import frechet_skip_reason, sample_metrics

    if frechet_skip_reason(data) is not None:
        return {}
    out = sample_metrics(run.model, data, n=_n(switches), seed=int(run.config["train"]["seed"]))
    out["fd_examples"] = out.pop("sample_examples")
    out.pop("sample_accuracy", None)  # the class_accuracy switch reports its own
    return out


def class_accuracy(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Class-conditional sample accuracy (class-conditional models on labelled images only: a
    class-conditional prior, or a transform that reads the labels, such as a conditional cnf)."""
    from flowkit.metrics import class_sample_accuracy, train_classifier

    conditional = getattr(run.model, "class_conditional", run.model.prior.conditional)
    if not (conditional and data.is_image and data.num_classes):
        return {}
    classifier, acc = train_classifier(data)
    per_class = max(1, _n(switches) // data.num_classes)
    return {
        "sample_accuracy": class_sample_accuracy(run.model, classifier, per_class),
        "classifier_test_accuracy": acc,
    }


def throughput(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Density-evaluation and sampling throughput (samples/s) and the parameter count."""
    from flowkit.metrics import throughput as measure

    return measure(run.model, data)


@torch.inference_mode()
def per_example_bpd(run: Run, data: DataSplits, max_examples: int, seed: int = 0) -> torch.Tensor:
    """Bits/dim of each test example (dequantized like the run's evaluation), shape ``(N,)``."""
    from flowkit.data.preprocess import dequantize

    model = run.model
    n = min(max_examples, data.test.shape[0]) if max_examples > 0 else data.test.shape[0]
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    out = []
    for start in range(0, n, 500):
        x = data.test[start : min(n, start + 500)]
        if run.config["data"]["dequantize"] and data.levels:
            x = dequantize(x, data.levels, gen)
        y = None
        if data.test_labels is not None and model.prior.conditional:
            y = data.test_labels[start : start + x.shape[0]].to(model.device)
        lp = model.log_prob(x.to(model.device, dtype), y).double().cpu()
        bpd = -lp / data.dim
        if data.levels:
            bpd = bpd + math.log(data.levels)
        out.append(bpd / math.log(2.0))
    return torch.cat(out)


def ood(
    run: Run, data: DataSplits, switches: dict[str, Any], cell_dir: Path, data_dir: str | None
) -> dict[str, Any]:
    """Test bits/dim on other datasets of the same shape, and a histogram of per-image values.

    The out-of-distribution experiment of Nalisnick et al. 2019, "Do Deep Generative Models Know
    What They Don't Know?" (§3): a flow trained on Fashion-MNIST gives MNIST *higher* likelihood.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowkit.errors import DataError
    from flowkit.runs import load_dataset

    others = switches.get("ood") or []
    limit = _n(switches) * 10
    ours = per_example_bpd(run, data, limit)
    metrics: dict[str, Any] = {"in_dist_bpd_median": float(ours.median())}
    series = [(f"{data.name} (trained on; test images)", ours)]
    for name in others:
        config = {
            **run.config,
            "data": {
                "name": name,
                **{
                    k: v
                    for k, v in run.config["data"].items()
                    if k in ("data_dir", "preprocess", "alpha", "dequantize")
                },
            },
        }
        if data_dir:
            config["data"]["data_dir"] = data_dir
        other = load_dataset(config)
        if other.shape != data.shape:
            raise DataError(f"ood: {name} has shape {other.shape}, the model takes {data.shape}")
        theirs = per_example_bpd(run, other, limit)
        key = name.replace("-", "_")
        metrics[f"ood_{key}_bpd"] = float(theirs.mean())
        metrics[f"ood_{key}_bpd_median"] = float(theirs.median())
        # fraction of OOD images the model finds *more* likely than the median in-distribution one
        metrics[f"ood_{key}_frac_more_likely"] = float((theirs < ours.median()).double().mean())
        series.append((name, theirs))
    metrics["in_dist_bpd"] = float(ours.mean())
    # common bins over the central 99% of all values, so a few outliers do not squash the plot
    values = torch.cat([v[torch.isfinite(v)] for _, v in series]).double()
    low, high = (float(q) for q in torch.quantile(values, torch.tensor([0.005, 0.995], dtype=values.dtype)))
    bins = torch.linspace(low, high if high > low else low + 1.0, 61).numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, v in series:
        ax.hist(v.clamp(bins[0], bins[-1]).numpy(), bins=bins.tolist(), alpha=0.6, density=True, label=label)
    ax.set_xlabel("bits/dim per test image (lower = more likely)")
    ax.set_ylabel("density")
    ax.set_title(f"{run.config['transform']['name']} trained on {data.name}")
    ax.legend()
    fig.tight_layout()
    path = cell_dir / "ood-histogram.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return metrics | {"_figures": [path.name]}


MEASURES: dict[str, Measure] = {
    "reconstruction": reconstruction,
    "sample_quality": sample_quality,
    "frechet": frechet,
    "class_accuracy": class_accuracy,
    "throughput": throughput,
    "ood": ood,
}
