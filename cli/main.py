"""The ``flowkit`` command line: run, list, sample, eval, check, bench, inpaint, compare.

User mistakes (a :class:`flowkit.errors.FlowkitError`) print one clear message and exit with
status 1 — no traceback. Heavy imports (torch) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

from typing import Any

import click

from flowkit import __version__


class FlowkitGroup(click.Group):
    """A click group that turns flowkit's user errors into clean CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        from flowkit.errors import FlowkitError

        try:
            return super().invoke(ctx)
        except FlowkitError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=FlowkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowkit")
@click.option(
    "--block",
    "block",
    multiple=True,
    metavar="NAME",
    help="Disable a plugin by name (repeatable; also $FLOWKIT_BLOCK).",
)
def cli(block: tuple[str, ...]) -> None:
    """flowkit: normalizing flows and reversible networks as plugins.

    Every model is prior ∘ transform, trained by an objective, on a dataset; each is a plugin
    found by name (see `flowkit list`).
    """
    from flowkit.extras import clash_message, clashing_distribution

    clash = clashing_distribution()  # the unrelated `flowkit` shares our import name
    if clash is not None:
        click.echo(f"warning: {clash_message(clash)}", err=True)
    if block:
        from flowkit.registry import block as block_plugins

        block_plugins(block)


def _register_commands() -> None:
    from flowkit.cli.bench import bench
    from flowkit.cli.check import check
    from flowkit.cli.compare import compare
    from flowkit.cli.evaluate import evaluate
    from flowkit.cli.inpaint import inpaint
    from flowkit.cli.listing import list_plugins
    from flowkit.cli.run import run
    from flowkit.cli.sample import sample

    for command in (run, list_plugins, sample, evaluate, check, bench, inpaint, compare):
        cli.add_command(command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="flowkit")


if __name__ == "__main__":
    main()
