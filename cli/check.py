"""``flowkit check``: run the conformance checks on a transform plugin (for plugin authors)."""

from __future__ import annotations

import click


@click.command()
@click.argument("name")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="D | C,H,W",
    help="Per-example input shape to test (repeatable; default: the plugin's own).",
)
@click.option(
    "--context-features",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Width of the real-valued context for plugins that take context_features (default: 2).",
)
def check(name: str, shapes: tuple[str, ...], context_features: int | None) -> None:
    """Check that transform NAME inverts, has the autograd log-det, survives save/load, ...

    Plugins that take `conditional` are also checked with class labels, and plugins that take
    `context_features` with a real-valued (batch, K) context, including that the outputs depend
    on the context and that a malformed context raises a ShapeError.
    """
    from flowkit.errors import ConfigError
    from flowkit.registry import transforms
    from flowkit.testing import CONTEXT_FEATURES, run_checks, supports_context

    parsed = []
    for text in shapes:
        try:
            parsed.append(tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip()))
        except ValueError as exc:
            raise ConfigError(f"--shape must look like 4 or 3,8,8; got {text!r}") from exc
    width = context_features or CONTEXT_FEATURES
    if supports_context(transforms.get(name)):
        click.echo(
            f"'{name}' takes a real-valued context (context_features): also checking the "
            f"conditional path with a (batch, {width}) float context, including context "
            f"dependence and ShapeError on a malformed context"
        )
    elif context_features is not None:
        raise ConfigError(
            f"--context-features: '{name}' does not take a real-valued context "
            f"(its signature has no context_features parameter)"
        )
    results = run_checks(name, shapes=parsed or None, context_features=width)
    failed = 0
    for r in results:
        mark = click.style("ok  ", fg="green") if r.passed else click.style("FAIL", fg="red")
        variant = "" if r.variant == "unconditional" else f"  [{r.variant}]"
        click.echo(f"{mark} {r.check:<22} shape={r.shape}{variant}" + ("" if r.passed else f"  {r.message}"))
        failed += not r.passed
    variants = ", ".join(dict.fromkeys(r.variant for r in results))
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} checks failed for '{name}' ({variants})")
    click.echo(f"all {len(results)} checks passed for '{name}' ({variants})")
