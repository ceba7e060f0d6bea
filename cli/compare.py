"""``flowkit compare``: training curves of several runs in one PNG, their final metrics as a table."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN [RUN ...]")
@click.option(
    "--out",
    default="compare.png",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG to write (in the current folder unless a path is given).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Plot runs of different data on one axis (their NLLs are not comparable).",
)
def compare(runs: tuple[Path, ...], out: Path, force: bool) -> None:
    """Compare runs: one PNG with their training curves side by side, a table of final metrics.

    Each row of the figure is the runs of one dataset: the training curve (bits/dim or NLL per
    dimension when every run logs it, else each run's own loss) and the evaluations (validation
    split if the data has one, the final test evaluation as a star). Runs of different data get
    separate rows, since their NLLs are not comparable; --force puts them on one axis. The table
    (from each run's summary.json) goes to stdout.

    \b
    Examples:
      flowkit compare runs/realnvp-mle-moons-* --out compare.png
      flowkit compare runs/a runs/b --force
    """
    from flowkit.compare import compare_runs, format_table

    comparison = compare_runs(list(runs), out, force=force)
    for note in comparison.notes:
        click.echo(note, err=note.startswith("warning"))
    click.echo(format_table(comparison.columns, comparison.rows))
    click.echo(f"figure: {comparison.figure}")
