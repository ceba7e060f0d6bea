"""``flowkit list``: every registered plugin with its summary and provider, and the config keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flowkit.registry import PluginEntry

# the plural a user types (and the heading printed) for each plugin kind of flowkit.registry.KINDS
PLURALS = {
    "transform": "transforms",
    "prior": "priors",
    "objective": "objectives",
    "dataset": "datasets",
    "embedding": "embeddings",
    "elementwise": "elementwise",
    "logger": "loggers",
}
KIND_CHOICES = [*PLURALS.values(), "presets", "config"]


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(KIND_CHOICES))
@click.option(
    "--params",
    "show_params",
    is_flag=True,
    help="Also list each plugin's parameters: type, allowed range, default.",
)
def list_plugins(kind: str | None, show_params: bool) -> None:
    """List registered transforms, priors, objectives, datasets, context embeddings, the
    elementwise maps of couplings and autoregressive flows, and the experiment-tracking loggers
    of train.loggers (and the shipped presets). With
    --params, each parameter as `name: type range = default` (e.g. `hidden: int ≥ 1 = 64`), and
    plugins that read a real-valued context say so. `flowkit list config` lists the keys of
    [train], [eval] and [data] the same way (also shown by --params)."""
    from flowkit.config import available_presets
    from flowkit.params import describe_parameters
    from flowkit.registry import KINDS, PluginLoadError, registry

    plugin_kind = kind not in ("presets", "config")
    singular = {plural: k for k, plural in PLURALS.items()}
    kinds = [singular[kind]] if kind and plugin_kind else ([] if kind else list(KINDS))
    for k in kinds:
        reg = registry(k)
        entries = reg.entries()
        heading = "elementwise maps" if k == "elementwise" else PLURALS.get(k, f"{k}s")
        click.secho(f"{heading} ({reg.group})", bold=True)
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            click.echo(f"  {entry.name:<{width}}  {entry.summary()}  [{entry.provider}]")
            if show_params:
                try:
                    rows = describe_parameters(entry.load())
                except PluginLoadError:
                    rows = []
                for pname, ptype, default in rows:
                    click.echo(f"  {'':<{width}}    {pname}: {ptype} = {default}")
                if _takes_context(entry):
                    click.echo(f"  {'':<{width}}    (reads a real-valued context: injected context_features)")
        click.echo()
    if kind == "config" or (kind is None and show_params):
        _list_config_keys()
    if kind in (None, "presets"):
        click.secho("presets (flowkit run --config NAME)", bold=True)
        click.echo("  " + ", ".join(available_presets()))


def _list_config_keys() -> None:
    """The keys of ``[train]``, ``[eval]`` and ``[data]``: type, allowed range, default."""
    from flowkit.config import DataConfig, EvalConfig, TrainConfig
    from flowkit.params import describe_parameters

    for section, cls in (("train", TrainConfig), ("eval", EvalConfig), ("data", DataConfig)):
        suffix = " (and the dataset's parameters)" if section == "data" else ""
        click.secho(f"[{section}]{suffix}", bold=True)
        for name, type_s, default in describe_parameters(cls, reserved=frozenset()):
            click.echo(f"  {name}: {type_s} = {default}")
        click.echo()


def _takes_context(entry: PluginEntry) -> bool:
    """Whether a plugin's constructor takes ``context_features`` (a real-valued context)."""
    import inspect

    try:
        return "context_features" in inspect.signature(entry.load()).parameters
    except Exception:  # a plugin that fails to load is reported by its own row
        return False
