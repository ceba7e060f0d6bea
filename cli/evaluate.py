"""``flowkit eval``: test-set likelihood of a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from flowkit.cli.options import checkpoint_option, data_dir_option, run_dir_argument


@click.command("eval")
@run_dir_argument
@data_dir_option
@checkpoint_option
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train"]),
    default="test",
    show_default=True,
    help="val: the validation split (datasets that have one).",
)
@click.option(
    "--max-examples",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Evaluate only the first N examples (0 = all).",
)
@click.option(
    "--sample-accuracy",
    "per_class",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Also classify N samples per class with flowkit's own classifier for the "
    "dataset (class-conditional models): sample_accuracy. With --samples too, the class "
    "accuracy of those samples is kept as samples_class_accuracy.",
)
@click.option(
    "--samples",
    "num_samples",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Also score N samples against as many test examples: precision, recall, "
    "density, coverage, Fréchet distance (and class accuracy and per-class "
    "variety for class-conditional models on labelled data).",
)
def evaluate(
    run_dir: Path,
    data_dir: Path | None,
    checkpoint: Path | None,
    split: str,
    max_examples: int,
    per_class: int,
    num_samples: int,
) -> None:
    """Print test NLL (nats), NLL per dimension and bits/dim of RUN_DIR; write eval.json.

    With --samples N, also the sample metrics (precision/recall of Kynkäänniemi et al. 2019,
    density/coverage of Naeem et al. 2020, Fréchet distance), and the lines that judge the model
    first: its samples for a GRN trained without a likelihood, its bits/dim otherwise."""
    from flowkit.atomic import atomic_write_text
    from flowkit.errors import ConfigError
    from flowkit.metrics import (
        class_sample_accuracy,
        evaluate_nll,
        latent_scale_stats,
        train_classifier,
    )
    from flowkit.metrics.headline import summary_headline
    from flowkit.metrics.variety import sample_metrics
    from flowkit.runs import load_run

    run = load_run(run_dir, checkpoint)
    data = run.load_data(data_dir)
    if getattr(data, split) is None:
        raise ConfigError(
            f"--split {split}: dataset {data.name!r} of this run has no {split} split; use --split test"
        )
    metrics = evaluate_nll(
        run.model,
        data,
        split=split,
        batch_size=run.config["eval"]["batch_size"],
        max_examples=max_examples,
        dequantize_data=bool(run.config["data"]["dequantize"]),
        seed=run.config["train"]["seed"],
    )
    result = {
        "step": run.step,
        "checkpoint": run.checkpoint.name,
        "exact_density": run.model.exact_density,
        **metrics,
        **latent_scale_stats(run.model),
    }
    if num_samples:
        result.update(sample_metrics(run.model, data, n=num_samples, seed=run.config["train"]["seed"]))
    if per_class:
        classifier, accuracy = train_classifier(data)
        result["classifier_test_accuracy"] = accuracy
        if "sample_accuracy" in result:
            # --samples scored its N samples too; keep that figure under its own name
            result["samples_class_accuracy"] = result.pop("sample_accuracy")
        result["sample_accuracy"] = class_sample_accuracy(run.model, classifier, per_class)
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if num_samples:
        names = {k: run.config[k]["name"] for k in ("objective", "prior")}
        for line in summary_headline({**names, **result}):
            click.echo(line)
    if not run.model.exact_density:
        click.echo(
            "note: this model changes the dimension (e.g. it zero-pads the images), so its "
            "NLL and bits/dim are latent densities at the embedded data, not densities of "
            "the data; do not compare them with published numbers."
        )
