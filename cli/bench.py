"""``flowkit bench``: run a benchmark suite and write its report."""

from __future__ import annotations

import os
from pathlib import Path

import click

CONDITIONAL = "conditional"  # the built-in conditional-density benchmark (no TOML suite)


def _run_conditional(
    out_dir: Path | None,
    force: bool,
    dry_run: bool,
    publish: Path | None,
    quiet: bool,
    sims: str | None,
    steps: int | None,
    tasks: str | None,
    rows: str | None,
    threads: int | None,
) -> None:
    from flowkit.bench.conditional.run import dry_run as list_cells
    from flowkit.bench.conditional.run import run_conditional, settings_from_cli

    settings = settings_from_cli(sims, steps, tasks, rows, threads)
    out_dir = out_dir or Path("bench-results") / CONDITIONAL
    if dry_run:
        list_cells(settings, out_dir, log=click.echo)
        return
    run_conditional(settings, out_dir, force=force, log=(lambda _: None) if quiet else click.echo)
    click.echo(f"report: {out_dir / 'report.md'}")
    if publish is not None:
        from flowkit.bench.publish import publish as publish_report

        written = publish_report(out_dir, publish)
        click.echo(f"published: {written[-1]}")


def _search_dirs(suites_dir: Path | None) -> tuple[Path, ...]:
    """Where a suite name is looked up: --suites-dir, $FLOWKIT_SUITES, ./benchmarks/suites (a
    checkout's own suites, e.g. peers), then the suites shipped inside the package."""
    from flowkit.bench.suite import BUILTIN_SUITES

    dirs = [suites_dir] if suites_dir else []
    env = os.environ.get("FLOWKIT_SUITES")
    if env:
        dirs.append(Path(env))
    dirs += [Path("benchmarks") / "suites", BUILTIN_SUITES]
    return tuple(dirs)


@click.command()
@click.argument("suite", required=False, metavar="SUITE")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results folder (default: bench-results/<suite>).",
)
@click.option(
    "--only",
    multiple=True,
    metavar="GLOB",
    help="Run only cells whose id matches (repeatable), e.g. 'realnvp__*'.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="AXIS=V[,V]",
    help="Run only cells with these axis values (repeatable), e.g. transform=glow.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=0),
    default=0,
    help="Cells run at once (default: the suite's `jobs`, else 1).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with downloaded datasets (default: $FLOWKIT_DATA).",
)
@click.option("--force", is_flag=True, help="Re-run cells that already have a result.")
@click.option("--dry-run", is_flag=True, help="List the cells and their state; run nothing.")
@click.option("--list", "list_suites", is_flag=True, help="List the suites found and exit.")
@click.option(
    "--suites-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where suite names are looked up first (also $FLOWKIT_SUITES; then "
    "./benchmarks/suites, then the suites built into flowkit).",
)
@click.option(
    "--publish",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also copy report.md and the images it embeds into this folder (e.g. docs/bench/<suite>).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--sims", metavar="N[,N]", help="conditional only: simulation budgets (default 1000,10000; 1k/1e4 work)."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="conditional only: training steps of every flow (default 2000).",
)
@click.option(
    "--tasks",
    metavar="NAME[,NAME]",
    help="conditional only: gaussian-linear, two-moons, slcp, inverse-kinematics.",
)
@click.option(
    "--rows",
    metavar="ROW[,ROW]",
    help="conditional only: flows to compare, e.g. flowkit-maf,zuko-maf (default all).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    help="conditional only: torch threads (default 1; 0 = every core).",
)
def bench(
    suite: str | None,
    out_dir: Path | None,
    only: tuple[str, ...],
    filters: tuple[str, ...],
    jobs: int,
    data_dir: Path | None,
    force: bool,
    dry_run: bool,
    list_suites: bool,
    suites_dir: Path | None,
    publish: Path | None,
    quiet: bool,
    sims: str | None = None,
    steps: int | None = None,
    tasks: str | None = None,
    rows: str | None = None,
    threads: int | None = None,
) -> None:
    """Run a benchmark SUITE (a name or a TOML file) and write results.json, results.csv,
    report.md and figures.

    \b
    A re-run skips finished cells and resumes a cut-off one. Examples:
      flowkit bench --list
      flowkit bench quick
      flowkit bench mnist --jobs 2 --data-dir ../data
      flowkit bench my-suite.toml
      flowkit bench toy2d --filter transform=realnvp,glow --only '*moons*'
      flowkit bench peers --publish docs/bench/peers
      flowkit bench conditional --sims 1000,10000 --steps 2000   # built in, see below

    \b
    `conditional` is built in (no TOML): conditional flows p(θ | x) of flowkit, zuko and
    nflows on simulation-based-inference tasks, scored by C2ST, test NLL and step time;
    options marked "conditional only" apply to it.
    """
    from flowkit.bench.runner import run_suite, stored_result
    from flowkit.bench.suite import load_suite

    conditional_only = {
        "--sims": sims,
        "--steps": steps,
        "--tasks": tasks,
        "--rows": rows,
        "--threads": threads,
    }
    if suite == CONDITIONAL and not list_suites:
        if only or filters:
            raise click.UsageError("--only/--filter do not apply to `conditional`; use --tasks and --rows")
        _run_conditional(out_dir, force, dry_run, publish, quiet, sims, steps, tasks, rows, threads)
        return
    given = [k for k, v in conditional_only.items() if v is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} only apply to `flowkit bench conditional`")
    search = _search_dirs(suites_dir)
    if list_suites:
        click.echo(
            f"  {CONDITIONAL:<14} built-in  Conditional flows p(θ | x) on SBI tasks: "
            f"flowkit vs zuko and nflows  [flowkit.bench.conditional]"
        )
        found = [(p.stem, p) for d in search if d.is_dir() for p in sorted(d.glob("*.toml"))]
        if not found:
            click.echo(f"no suites in {', '.join(map(str, search))}")
        for name, path in found:
            try:
                loaded = load_suite(path)
                desc = loaded.meta.get("description", "").strip().splitlines()
                first = desc[0] if desc else ""
                first = first if len(first) <= 72 else first[:71] + "…"
                click.echo(f"  {name:<14} {len(loaded.cells):>3} cells  {first}  [{path}]")
            except Exception as exc:  # a broken suite file is listed, not fatal
                click.echo(f"  {name:<14} [cannot read: {exc}]  [{path}]")
        return
    if suite is None:
        raise click.UsageError("give a SUITE (a name or a .toml file), or --list")
    loaded = load_suite(suite, search)
    out_dir = out_dir or Path("bench-results") / loaded.name
    if dry_run:
        for cell in loaded.select(only, filters):
            state = "excluded" if cell.excluded else ("done" if stored_result(out_dir, cell) else "to run")
            click.echo(f"  {cell.id:<60} {cell.kind:<6} {state}")
        return
    results = run_suite(
        loaded,
        out_dir,
        only=only,
        filters=filters,
        jobs=jobs,
        data_dir=str(data_dir) if data_dir else None,
        force=force,
        progress=not quiet,
        log=click.echo,
    )
    click.echo(f"report: {out_dir / 'report.md'}")
    if publish is not None:
        from flowkit.bench.publish import publish as publish_report

        written = publish_report(out_dir, publish)
        click.echo(f"published: {written[-1]} and {len(written) - 1} image(s)")
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:  # a benchmark with broken cells must not look like a finished one
        listed = "; ".join(f"{r['id']}: {str(r.get('reason', ''))[:120]}" for r in failed[:3])
        raise click.ClickException(
            f"{len(failed)} of {len(results)} cell(s) failed ({listed}{' …' if len(failed) > 3 else ''}). "
            f"The report marks them; see each cell's stderr.txt/log.txt, fix the cause and re-run "
            f"(finished cells are kept)."
        )
