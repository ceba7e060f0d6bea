"""``flowkit check``: run the conformance checks on a transform plugin (for plugin authors)."""

from __future__ import annotations

import click


@click.command()
@click.argument("name")
@click.option("--shape", "shapes", multiple=True, metavar="D | C,H,W",
              help="Per-example input shape to test (repeatable; default: the plugin's own).")
def check(name: str, shapes: tuple[str, ...]) -> None:
    """Check that transform NAME inverts, has the autograd log-det, survives save/load, ..."""
    from flowkit.errors import ConfigError
    from flowkit.testing import run_checks

    parsed = []
    for text in shapes:
        try:
            parsed.append(tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip()))
        except ValueError as exc:
            raise ConfigError(f"--shape must look like 4 or 3,8,8; got {text!r}") from exc
    results = run_checks(name, shapes=parsed or None)
    failed = 0
    for r in results:
        mark = click.style("ok  ", fg="green") if r.passed else click.style("FAIL", fg="red")
        click.echo(f"{mark} {r.check:<22} shape={r.shape}" + ("" if r.passed else f"  {r.message}"))
        failed += not r.passed
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} checks failed for '{name}'")
    click.echo(f"all {len(results)} checks passed for '{name}'")
