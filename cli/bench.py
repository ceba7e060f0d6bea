"""``flowkit bench``: run a benchmark suite and write its report."""

from __future__ import annotations

import os
from pathlib import Path

import click


def _search_dirs(suites_dir: Path | None) -> tuple[Path, ...]:
    dirs = [suites_dir] if suites_dir else []
    env = os.environ.get("FLOWKIT_SUITES")
    if env:
        dirs.append(Path(env))
    dirs.append(Path("benchmarks") / "suites")
    return tuple(dirs)


@click.command()
@click.argument("suite", required=False, metavar="SUITE")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder (default: bench-results/<suite>).")
@click.option("--only", multiple=True, metavar="GLOB",
              help="Run only cells whose id matches (repeatable), e.g. 'realnvp__*'.")
@click.option("--filter", "filters", multiple=True, metavar="AXIS=V[,V]",
              help="Run only cells with these axis values (repeatable), e.g. transform=glow.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0,
              help="Cells run at once (default: the suite's `jobs`, else 1).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with downloaded datasets (default: $FLOWKIT_DATA).")
@click.option("--force", is_flag=True, help="Re-run cells that already have a result.")
@click.option("--dry-run", is_flag=True, help="List the cells and their state; run nothing.")
@click.option("--list", "list_suites", is_flag=True, help="List the suites found and exit.")
@click.option("--suites-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where suite names are looked up (also $FLOWKIT_SUITES; then "
                   "./benchmarks/suites).")
@click.option("--publish", type=click.Path(file_okay=False, path_type=Path),
              help="Also copy report.md and the images it embeds into this folder (e.g. "
                   "docs/bench/<suite>).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def bench(suite: str | None, out_dir: Path | None, only: tuple[str, ...],
          filters: tuple[str, ...], jobs: int, data_dir: Path | None, force: bool,
          dry_run: bool, list_suites: bool, suites_dir: Path | None, publish: Path | None,
          quiet: bool) -> None:
    """Run a benchmark SUITE (a name or a TOML file) and write results.json, results.csv,
    report.md and figures.

    \b
    A re-run skips finished cells and resumes a cut-off one. Examples:
      flowkit bench --list
      flowkit bench quick
      flowkit bench benchmarks/suites/mnist.toml --jobs 2 --data-dir ../data
      flowkit bench toy2d --filter transform=realnvp,glow --only '*moons*'
      flowkit bench peers --publish docs/bench/peers
    """
    from flowkit.bench.runner import run_suite, stored_result
    from flowkit.bench.suite import load_suite

    search = _search_dirs(suites_dir)
    if list_suites:
        found = [(p.stem, p) for d in search if d.is_dir() for p in sorted(d.glob("*.toml"))]
        if not found:
            click.echo(f"no suites in {', '.join(map(str, search))}")
        for name, path in found:
            try:
                loaded = load_suite(path)
                desc = loaded.meta.get("description", "").strip().splitlines()
                first = desc[0] if desc else ""
                first = first if len(first) <= 72 else first[:71] + "…"
                click.echo(f"  {name:<14} {len(loaded.cells):>3} cells  "
                           f"{first}  [{path}]")
            except Exception as exc:  # a broken suite file is listed, not fatal
                click.echo(f"  {name:<14} [cannot read: {exc}]  [{path}]")
        return
    if suite is None:
        raise click.UsageError("give a SUITE (a name or a .toml file), or --list")
    loaded = load_suite(suite, search)
    out_dir = out_dir or Path("bench-results") / loaded.name
    if dry_run:
        for cell in loaded.select(only, filters):
            state = "excluded" if cell.excluded else (
                "done" if stored_result(out_dir, cell) else "to run")
            click.echo(f"  {cell.id:<60} {cell.kind:<6} {state}")
        return
    run_suite(loaded, out_dir, only=only, filters=filters, jobs=jobs,
              data_dir=str(data_dir) if data_dir else None, force=force, progress=not quiet,
              log=click.echo)
    click.echo(f"report: {out_dir / 'report.md'}")
    if publish is not None:
        from flowkit.bench.publish import publish as publish_report

        written = publish_report(out_dir, publish)
        click.echo(f"published: {written[-1]} and {len(written) - 1} image(s)")
