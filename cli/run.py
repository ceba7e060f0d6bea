"""``flowkit run``: train a model from a preset, a TOML file and command-line overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "-c",
    "config_source",
    metavar="PRESET|FILE",
    help="A preset shipped with flowkit (e.g. realnvp-mnist) or a TOML file.",
)
@click.option("--transform", "-t", metavar="NAME", help="Transform plugin (e.g. realnvp).")
@click.option(
    "--objective", "-o", metavar="NAME", help="Objective plugin, or a weighted sum such as 'mle+0.1*ot'."
)
@click.option("--prior", "-p", metavar="NAME", help="Prior plugin (e.g. gaussian).")
@click.option("--data", "-d", metavar="NAME", help="Dataset plugin (default: digits).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with downloaded datasets (default: $FLOWKIT_DATA).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.steps=200 (repeatable; applied last).",
)
@click.option(
    "--out",
    "out_dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Parent folder of run folders.",
)
@click.option("--name", help="Run folder name (default: <transform>-<objective>-<data>-<time>).")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path),
    help="Continue the run in this folder from its newest good checkpoint; --set may "
    "change train.steps, the schedule (train.lr, scheduler, warmup_steps, "
    "grad_clip), logging and [eval] settings (recorded in config-history.jsonl).",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate, build the model and print the resolved config; do not train."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def run(
    config_source: str | None,
    transform: str | None,
    objective: str | None,
    prior: str | None,
    data: str | None,
    data_dir: Path | None,
    overrides: tuple[str, ...],
    out_dir: Path,
    name: str | None,
    resume_dir: Path | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Train a flow and write a run folder (config, metrics, checkpoints, figure, summary).

    \b
    Examples:
      flowkit run                                   # Real NVP on the bundled digits
      flowkit run --transform realnvp --objective mle --data moons
      flowkit run --config realnvp-mnist --data-dir ../data --set train.steps=200
      flowkit run --resume runs/realnvp-mle-moons-20261122-101500
      flowkit run --resume runs/realnvp-mle-moons-20261122-101500 --set train.lr=1e-4
      torchrun --nproc_per_node=4 -m flowkit.cli run --config realnvp-mnist   # 4 processes
    """
    from flowkit import distributed
    from flowkit.config import load_config
    from flowkit.runs import require_run_dataset
    from flowkit.trainer import resume, train

    def train_or_resume() -> dict | None:
        shortcuts = {
            "transform": transform,
            "objective": objective,
            "prior": prior,
            "data": data,
            "data_dir": data_dir,
        }
        if resume_dir is not None:
            require_run_dataset(resume_dir)
            changed = config_source or overrides or any(v is not None for v in shortcuts.values())
            requested = None
            if changed:  # start from the run's own config unless a preset or file is given
                requested = distributed.on_main(
                    _requested_config, config_source, overrides, resume_dir, shortcuts
                )
            return resume(resume_dir, requested, progress=not quiet, log=click.echo)
        # rank 0 resolves the config and sends it, so every process trains the same one
        config = distributed.on_main(load_config, config_source, overrides, **shortcuts)
        if dry_run:
            if distributed.is_main():
                _dry_run(config)
            return None
        run_dir = out_dir / name if name else None
        return train(config, run_dir, out_dir=out_dir, progress=not quiet, log=click.echo)

    with distributed.session():  # under torchrun: one process group for the whole command
        main = distributed.is_main()
        summary = _reported_once(train_or_resume)
    if summary is not None and main:
        _report(summary)


def _reported_once(work: Callable[[], dict | None]) -> dict | None:
    """``work()``, with a :class:`FlowkitError` reported once per torchrun job.

    Rank 0 raises it (click prints it); another rank exits quietly with status 1 when every rank
    raised, and otherwise reports its own error, naming the process.
    """
    from flowkit import distributed
    from flowkit.errors import FlowkitError

    try:
        return work()
    except FlowkitError as exc:
        if distributed.is_main():
            raise
        if distributed.raised_on_every_rank(exc):  # rank 0 reports it
            raise SystemExit(1) from None
        raise click.ClickException(
            f"process {distributed.rank()} of {distributed.world_size()}: {exc}"
        ) from exc


def _requested_config(
    config_source: str | None, overrides: tuple[str, ...], resume_dir: Path, shortcuts: dict
) -> dict:
    from flowkit.config import load_config
    from flowkit.runs import read_run_config

    base = None if config_source else read_run_config(resume_dir)
    return load_config(config_source, overrides, base=base, **shortcuts)


def _dry_run(config: dict) -> None:
    from flowkit.builder import build_model, build_objective, record_effective_values
    from flowkit.config import dumps, train_config
    from flowkit.loggers import build_loggers
    from flowkit.runs import load_dataset

    data = load_dataset(config)
    model = build_model(config, data.meta)
    build_objective(config["objective"]).bind_data(data)  # its checks, before any training
    build_loggers(train_config(config).loggers)  # a logger whose package is missing fails here
    click.echo(dumps(record_effective_values(config, model)), nl=False)
    click.echo(
        f"# data {data.name}: shape {data.shape}, {data.train.shape[0]} train / "
        f"{data.test.shape[0]} test; model: "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )


def _report(summary: dict) -> None:
    """The run folder, the lines that judge the model (:func:`summary_headline`: samples first for
    a GRN trained by OT, bits/dim first for a likelihood-trained flow), then the raw numbers."""
    from flowkit.metrics.headline import summary_headline

    click.echo(f"run folder: {summary['run_dir']}")
    for line in summary_headline(summary):
        click.echo(line)
    keys = [k for k in ("test_bpd", "test_nll", "train_time_s", "train_examples_per_s") if k in summary]
    click.echo(json.dumps({k: summary[k] for k in keys}))
