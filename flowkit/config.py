"""Run configuration: TOML presets and files, command-line overrides, validation, resolution.

A run config has seven sections::

    [transform]  name = "realnvp"  + the plugin's parameters
    [embedding]  name = "identity" + parameters: the network that maps a real-valued context
                 (vector, image, set) to the features every conditioner reads
    [prior]      name = "gaussian" + the plugin's parameters
    [objective]  name = "mle"      + parameters, or a weighted sum (see below)
    [data]       name = "digits", data_dir, preprocess, alpha, dequantize + the dataset's parameters
    [train]      steps, batch_size, lr, optimizer, ... (:class:`TrainConfig`)
    [eval]       batch_size, max_examples, n_samples, ... (:class:`EvalConfig`)

Layers apply in order: flowkit's defaults, then a preset (``realnvp-mnist``, shipped in
``flowkit/presets``) or any TOML file, then the command-line shortcuts (``--transform``, ``--data``,
…), then ``--set section.key=value`` overrides. :func:`resolve` validates every key and value —
plugin parameters against the plugin's typed signature — and fills in every default, so the
resolved config written into a run folder repeats the run exactly.

A weighted sum of objectives is written ``name = "mle + 0.1*ot"`` (or ``--objective "mle+0.1*ot"``)
with per-term parameters in sub-tables ``[objective.ot]``.
"""

from __future__ import annotations

import copy
import inspect
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w

from flowkit.errors import ConfigError, did_you_mean
from flowkit.params import Range, Seed, check_fields, user_parameters, validate_parameters

SECTIONS = ("transform", "embedding", "prior", "objective", "data", "train", "eval")
PLUGIN_SECTIONS = {
    "transform": "transform",
    "embedding": "embedding",
    "prior": "prior",
    "objective": "objective",
    "data": "dataset",
}
#: The embedding of configs written before the section existed (and of unconditional data).
DEFAULT_EMBEDDING = {"name": "identity"}
#: An Adam coefficient β₁ or β₂.
Beta = Annotated[float, Range(0, 1, max_inclusive=False)]
#: A sampling temperature: the scale of the prior's noise (Glow §5); ``Flow.sample`` checks it too.
Temperature = Annotated[float, Range(0, min_inclusive=False, note="the scale of the prior's noise")]


@dataclass
class TrainConfig:
    """``[train]``: optimisation and bookkeeping of a training run.

    ``max_minutes`` > 0 stops training after that much training time (a wall-clock budget; the
    run then finishes normally). ``threads`` > 0 sets ``torch.set_num_threads``.
    ``optimizer_impl`` chooses how the optimiser's update runs (:mod:`flowkit.optim`): ``auto``
    measures the fused, foreach and for-loop updates once per machine, parameter layout and
    device and keeps the fastest (cached); the others force one (same values up to round-off).
    ``sampler = "class-balanced"`` draws ``batch_size // num_classes`` examples of every class per
    step (labelled datasets only). ``invertible_backprop = true`` trains without storing the
    activations of blocks with an exact inverse: they are reconstructed from the outputs during
    the backward pass (:mod:`flowkit.invertible_backprop`; same gradients, much less memory);
    ``invertible_backprop_chunks`` (default 2) reconstructs each block on that many slices of the
    batch in turn (1: the whole batch; more: less memory again, smaller kernels).
    ``compile = true`` compiles the training forward pass with ``torch.compile``
    (:mod:`flowkit.compiled`; same values, a model-dependent speed-up after a compilation of tens
    of seconds); it cannot be combined with ``invertible_backprop``.
    ``patience`` > 0 stops training early when the validation NLL (evaluated every
    ``eval_every`` steps on the dataset's validation split) has not improved for that many
    evaluations in a row; the best model's checkpoint is kept and evaluated at the end.
    ``loggers`` names experiment-tracking sinks that mirror ``metrics.jsonl`` and the run's
    figures (:mod:`flowkit.loggers`: ``tensorboard``, ``mlflow``, ``wandb`` or a registered
    third-party logger; ``flowkit list loggers``).
    """

    steps: Annotated[int, Range(1)] = 2000
    batch_size: Annotated[int, Range(1)] = 128
    sampler: Literal["random", "class-balanced"] = "random"
    lr: Annotated[float, Range(0, min_inclusive=False)] = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    weight_decay: Annotated[float, Range(0)] = 0.0
    grad_clip: Annotated[float, Range(0, note="max gradient L2 norm; 0: off")] = 0.0
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: Annotated[int, Range(0)] = 0
    max_minutes: Annotated[float, Range(0, note="0: no time budget")] = 0.0
    seed: Seed = 0
    device: str = "auto"
    threads: Annotated[int, Range(0, note="0: torch's default")] = 0
    log_every: Annotated[int, Range(1)] = 25
    eval_every: Annotated[int, Range(0, note="0: off")] = 500
    sample_every: Annotated[int, Range(0, note="0: off")] = 500
    checkpoint_every: Annotated[int, Range(0, note="0: only at the end")] = 500
    keep_checkpoints: Annotated[int, Range(1)] = 2
    init_examples: Annotated[int, Range(1)] = 512
    invertible_backprop: bool = False
    invertible_backprop_chunks: Annotated[int, Range(1, note="1: the whole batch at once")] = 2
    compile: bool = False
    patience: Annotated[int, Range(0, note="0: no early stopping")] = 0
    loggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Each key's declared range, then the checks that involve more than one key."""
        check_fields(self, "[train]")
        if self.compile and self.invertible_backprop:
            raise ConfigError(
                "train.compile and train.invertible_backprop cannot be combined: torch.compile "
                "does not trace the reconstructing backward pass. Set train.compile=false to "
                "save memory, or train.invertible_backprop=false to compile."
            )


@dataclass
class EvalConfig:
    """``[eval]``: evaluation during and after training."""

    batch_size: Annotated[int, Range(1)] = 500
    max_examples: Annotated[int, Range(0, note="0: all")] = 2000
    final_max_examples: Annotated[int, Range(0, note="0: the whole test set")] = 0
    n_samples: Annotated[int, Range(1)] = 64
    temperature: Temperature = 1.0

    def __post_init__(self) -> None:
        check_fields(self, "[eval]")


@dataclass
class DataConfig:
    """The generic keys of ``[data]`` (the rest go to the dataset plugin)."""

    name: str = "digits"
    data_dir: str = ""
    preprocess: Literal["auto", "none", "logit", "center", "standardize"] = "auto"
    alpha: Annotated[float, Range(0, 0.5, max_inclusive=False, note="the logit's α")] = 0.05
    dequantize: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "[data]")


DATA_KEYS = tuple(f.name for f in fields(DataConfig))
#: Keys of the learning-rate schedule and the update: they may change when a run is resumed
#: (``flowkit run --resume RUN --set train.lr=1e-4`` after a divergence), because the trainer
#: applies them afresh at every step. (``betas``, ``weight_decay`` and ``optimizer`` are not among
#: them: the optimiser's saved state would silently keep the old values.)
SCHEDULE_KEYS = {
    "train.steps",
    "train.lr",
    "train.scheduler",
    "train.warmup_steps",
    "train.grad_clip",
    "train.max_minutes",
    "train.patience",
}
#: Keys that may differ when a run is resumed: the schedule, bookkeeping, execution strategy and
#: evaluation settings. Everything else defines the model, its data or the optimiser's state and
#: must match the run's ``config.toml``.
RESUMABLE_KEYS = SCHEDULE_KEYS | {
    "train.threads",
    "train.log_every",
    "train.eval_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.device",
    "train.invertible_backprop",
    "train.invertible_backprop_chunks",
    "train.compile",
    "train.optimizer_impl",
    "train.loggers",
    "eval.batch_size",
    "eval.max_examples",
    "eval.final_max_examples",
    "eval.n_samples",
    "eval.temperature",
    "data.data_dir",
}
#: The sections whose plugin may record effective values (see :func:`with_recorded_values`).
MODEL_SECTIONS = ("transform", "embedding", "prior")


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """The ``[train]`` section of a config as a checked :class:`TrainConfig`."""
    return typed_section(TrainConfig, config.get("train", {}), "train")


def eval_config(config: Mapping[str, Any]) -> EvalConfig:
    """The ``[eval]`` section of a config as a checked :class:`EvalConfig`."""
    return typed_section(EvalConfig, config.get("eval", {}), "eval")


def data_config(config: Mapping[str, Any]) -> DataConfig:
    """The generic keys of ``[data]`` as a checked :class:`DataConfig` (plugin keys left out)."""
    section = config.get("data", {})
    return typed_section(DataConfig, {k: v for k, v in section.items() if k in DATA_KEYS}, "data")


def typed_section(cls: type, section: Mapping[str, Any], where: str) -> Any:
    """``cls(**section)`` after checking every key, type and declared range (values coerced)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    return cls(**validate_parameters(cls, section, f"[{where}]", reserved=frozenset()))


def defaults() -> dict[str, Any]:
    """The config every run starts from: Real NVP by maximum likelihood on the digits."""
    return {
        "transform": {"name": "realnvp"},
        "embedding": dict(DEFAULT_EMBEDDING),
        "prior": {"name": "gaussian"},
        "objective": {"name": "mle"},
        "data": asdict(DataConfig()),
        "train": _plain(asdict(TrainConfig())),
        "eval": asdict(EvalConfig()),
    }


# -- presets and files -------------------------------------------------------------------------
def available_presets() -> list[str]:
    """Names of the presets shipped inside the package."""
    root = resources.files("flowkit.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_toml(source: str | Path) -> dict[str, Any]:
    """Read a preset (by name) or a TOML file (by path)."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        label = str(path)
    else:
        presets = available_presets()
        if str(source) not in presets:
            raise ConfigError(
                f"no preset or file named {str(source)!r}.{did_you_mean(str(source), presets)} "
                f"Presets: {', '.join(presets)}; or give a path to a .toml file."
            )
        text = resources.files("flowkit.presets").joinpath(f"{source}.toml").read_text("utf-8")
        label = f"preset {source}"
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label} is not valid TOML: {exc}") from exc


def dumps(config: Mapping[str, Any]) -> str:
    """TOML text of a config (``None`` values are left out: TOML has no null)."""
    return tomli_w.dumps(_plain(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of ``update`` into a copy of ``base`` (tables merge, values replace)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}``: the values of a nested config under dotted keys (as ``--set``
    names them), each prefixed with ``prefix``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# -- overrides ---------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` → ``(["train", "lr"], 0.0003)``; values are TOML, bare words strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+", key):
        raise ConfigError(f"--set expects section.key=value (for example train.steps=200), got {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as realnvp or cpu
    return key.split("."), value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def set_plugin(config: dict[str, Any], section: str, name: str | None) -> dict[str, Any]:
    """Switch ``section`` to plugin ``name``; the old plugin's parameters are dropped."""
    if name is None or config.get(section, {}).get("name") == name:
        return config
    out = copy.deepcopy(config)
    keep = DATA_KEYS if section == "data" else ()
    out[section] = {k: v for k, v in out.get(section, {}).items() if k in keep} | {"name": name}
    return out


def apply_recommendations(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    """Merge the ``config_defaults`` a plugin recommends for other sections into ``config``.

    A plugin class may declare, e.g. for a per-class optimal-transport objective::

        config_defaults = {"prior": {"name": "class-gaussian"},
                           "train": {"sampler": "class-balanced"}}

    They apply when the plugin is chosen on the command line (``--objective ot``); explicit
    ``--prior``/``--set`` options still win. Presets and files spell everything out instead.
    """
    from flowkit import registry

    names = [t.name for t in parse_objective(name)] if section == "objective" else [name]
    recommended: dict[str, Any] = {}
    for plugin in names:
        recommended = merge(
            recommended,
            getattr(registry.registry(PLUGIN_SECTIONS[section]).get(plugin), "config_defaults", None) or {},
        )
    for other, values in recommended.items():
        if other not in SECTIONS or other == section:
            raise ConfigError(f"plugin '{name}' recommends settings for an invalid section [{other}]")
        config = set_plugin(config, other, values.get("name"))
        config = merge(config, {other: values})
    return config


def load_config(
    source: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    transform: str | None = None,
    prior: str | None = None,
    objective: str | None = None,
    data: str | None = None,
    data_dir: str | Path | None = None,
    base: Mapping[str, Any] | None = None,
    resolve_plugins: bool = True,
) -> dict[str, Any]:
    """Build and resolve a run config: defaults ← ``base`` ← ``source`` ← shortcuts ← ``overrides``.

    ``base`` is an existing config to start from (e.g. a run's own config when resuming).
    With ``resolve_plugins=False`` the registry is not consulted (no validation, no plugin
    recommendations): the merged, unvalidated config is returned.
    """
    config = defaults() if base is None else merge(defaults(), base)
    if source is not None:
        loaded = read_toml(source)
        unknown = [k for k in loaded if k not in SECTIONS]
        if unknown:
            raise ConfigError(_unknown_section_message(unknown[0]))
        for section in PLUGIN_SECTIONS:  # a file naming another plugin replaces the defaults
            if section in loaded and "name" in loaded[section]:
                config = set_plugin(config, section, loaded[section]["name"])
        config = merge(config, loaded)
    shortcuts = {"transform": transform, "objective": objective, "prior": prior, "data": data}
    for section, name in shortcuts.items():  # a plugin chosen here brings its recommendations
        if resolve_plugins and name is not None and config.get(section, {}).get("name") != name:
            config = apply_recommendations(config, section, name)
    for section, name in shortcuts.items():  # explicit shortcuts win over recommendations
        config = set_plugin(config, section, name)
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    config = apply_overrides(config, overrides)
    if not resolve_plugins:
        return config
    resolved = resolve(config)
    # the names of train.loggers, checked here (and when the trainer builds them) rather than in
    # TrainConfig: a run folder whose tracker is not installed here still loads for eval/sample
    from flowkit.loggers import check_logger_names

    check_logger_names(resolved["train"]["loggers"])
    return resolved


# -- validation --------------------------------------------------------------------------------
def _unknown_section_message(key: str) -> str:
    return f"unknown config section [{key}].{did_you_mean(key, SECTIONS)} Sections: {', '.join(SECTIONS)}."


@dataclass(frozen=True)
class ObjectiveTerm:
    """One term ``weight · name(**params)`` of an ``[objective]``: what the builder consumes."""

    name: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)


def parse_objective(section: Mapping[str, Any] | str) -> tuple[ObjectiveTerm, ...]:
    """The terms of an ``[objective]`` section (or of a bare expression), parsed once.

    ``name = "mle"`` with parameters beside it is one term of weight 1; ``name = "mle + 0.1*ot"``
    is a weighted sum whose terms take their parameters from sub-tables ``[objective.ot]``. A key
    beside a sum's name that is not one of its terms is an error.
    """
    if isinstance(section, str):
        section = {"name": section}
    expr = section.get("name")
    if not isinstance(expr, str):
        raise ConfigError('[objective] needs a name, e.g. name = "mle" or "mle + 0.1*ot"')
    parsed = _parse_expression(expr)
    if len(parsed) == 1 and parsed[0][1] == 1.0:
        params = {k: v for k, v in section.items() if k != "name"}
        return (ObjectiveTerm(parsed[0][0], 1.0, params),)
    names = {n for n, _ in parsed}
    for key in section:
        if key != "name" and key not in names:
            raise ConfigError(
                f"[objective] {key!r} is not a term of {expr!r}: parameters of a weighted sum "
                f"go in a sub-table per term, e.g. [objective.{parsed[0][0]}]"
            )
    terms = []
    for name, weight in parsed:
        sub = section.get(name, {})
        if not isinstance(sub, Mapping):
            raise ConfigError(f"[objective.{name}] must be a table of parameters")
        terms.append(ObjectiveTerm(name, weight, dict(sub)))
    return tuple(terms)


def is_weighted_sum(terms: tuple[ObjectiveTerm, ...]) -> bool:
    """Whether ``terms`` make a weighted sum (several terms, or one with a weight other than 1)."""
    return len(terms) != 1 or terms[0].weight != 1.0


def objective_section(terms: tuple[ObjectiveTerm, ...]) -> dict[str, Any]:
    """The ``[objective]`` section that :func:`parse_objective` reads back as ``terms``."""
    if not is_weighted_sum(terms):
        return {"name": terms[0].name, **terms[0].params}
    return {
        "name": " + ".join(f"{t.weight:g}*{t.name}" for t in terms),
        **{t.name: dict(t.params) for t in terms},
    }


def parse_objective_expression(expr: str) -> list[tuple[str, float]]:
    """``"mle + 0.1*ot"`` → ``[("mle", 1.0), ("ot", 0.1)]`` (names and weights only)."""
    return [(t.name, t.weight) for t in parse_objective(expr)]


def _parse_expression(expr: str) -> list[tuple[str, float]]:
    terms = []
    for part in expr.split("+"):
        part = part.strip()
        m = re.fullmatch(r"(?:([0-9.eE+-]+)\s*\*\s*)?([A-Za-z][\w\-]*)", part)
        if not m:
            raise ConfigError(
                f"objective {expr!r}: cannot read term {part!r}; write terms like 'mle + 0.1*ot'"
            )
        try:
            weight = float(m.group(1)) if m.group(1) else 1.0
        except ValueError:
            raise ConfigError(f"objective {expr!r}: {m.group(1)!r} is not a number") from None
        terms.append((m.group(2), weight))
    names = [n for n, _ in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"objective {expr!r} names a term twice")
    return terms


def _resolve_plugin(
    kind: str, section: Mapping[str, Any], where: str, generic: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate a plugin section and fill in the plugin's defaults."""
    from flowkit import registry

    if "name" not in section or not isinstance(section["name"], str):
        raise ConfigError(f'[{where}] needs a plugin name, e.g. name = "..."')
    name = section["name"]
    factory = registry.registry(kind).get(name)
    params = {k: v for k, v in section.items() if k != "name" and k not in generic}
    checked = validate_parameters(factory, params, f"[{where}] {name}")
    resolved: dict[str, Any] = {"name": name}
    for pname, p in user_parameters(factory).items():
        if pname in checked:
            resolved[pname] = checked[pname]
        elif p.default is not inspect.Parameter.empty and p.default is not None:
            resolved[pname] = p.default
    return resolved


def _plugin_available(kind: str, name: str) -> bool:
    """Whether plugin ``name`` of ``kind`` is registered, allowed and loads in this process."""
    from flowkit import registry
    from flowkit.errors import PluginError

    try:
        registry.registry(kind).get(name)
    except PluginError:
        return False
    return True


def _resolve_objective(section: Mapping[str, Any]) -> dict[str, Any]:
    terms = parse_objective(section)
    where = (lambda t: "objective") if not is_weighted_sum(terms) else (lambda t: f"objective.{t.name}")
    resolved = tuple(
        ObjectiveTerm(
            t.name,
            t.weight,
            {
                k: v
                for k, v in _resolve_plugin("objective", {**t.params, "name": t.name}, where(t)).items()
                if k != "name"
            },
        )
        for t in terms
    )
    return objective_section(resolved)


def _resolve_dataclass(cls: type, section: Mapping[str, Any], where: str) -> dict[str, Any]:
    return _plain(asdict(typed_section(cls, section, where)))


def resolve(config: Mapping[str, Any], *, dataset_required: bool = True) -> dict[str, Any]:
    """Validate every key and value and fill in every default (plugin defaults included).

    ``dataset_required=False`` is for a run folder's saved config, which rebuilds its model
    without the data (the checkpoint holds the :class:`~flowkit.data.DataMeta`): when the
    dataset plugin is not available in this process (registered at runtime by the process that
    trained, a plugin not installed here, or blocked), ``[data]``'s plugin parameters are kept
    as saved instead of being validated against the plugin.
    """
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(_unknown_section_message(key))
    for key in SECTIONS:
        if not isinstance(config.get(key, {}), Mapping):
            raise ConfigError(f"[{key}] must be a table, got {config[key]!r}")
    data = dict(config.get("data", {}))
    generic = {k: v for k, v in data.items() if k in DATA_KEYS}
    resolved_data = _resolve_dataclass(DataConfig, generic, "data")
    name = data.get("name")
    if dataset_required or not isinstance(name, str) or _plugin_available("dataset", name):
        resolved_data.update(_resolve_plugin("dataset", data, "data", generic=DATA_KEYS))
    else:
        resolved_data.update({k: v for k, v in data.items() if k not in DATA_KEYS})
    return {
        "transform": _resolve_plugin("transform", config.get("transform", {}), "transform"),
        "embedding": _resolve_plugin("embedding", config.get("embedding", DEFAULT_EMBEDDING), "embedding"),
        "prior": _resolve_plugin("prior", config.get("prior", {}), "prior"),
        "objective": _resolve_objective(config.get("objective", {})),
        "data": resolved_data,
        "train": _resolve_dataclass(TrainConfig, config.get("train", {}), "train"),
        "eval": _resolve_dataclass(EvalConfig, config.get("eval", {}), "eval"),
    }


def diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(diff(va, vb, path + "."))
        elif _plain(va) != _plain(vb):
            out.append(path)
    return out


# -- resuming ----------------------------------------------------------------------------------
def with_recorded_values(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> dict[str, Any]:
    """``requested`` with the values ``saved`` recorded for parameters it leaves unset.

    A run folder's ``config.toml`` records the values its plugins chose at build time for
    parameters left unset (e.g. Real NVP's ``hidden`` width; see
    :func:`flowkit.builder.record_effective_values`). A config resolved afresh leaves them unset
    again, which would rebuild the model with whatever the default is *today*; for the same
    plugin, such keys take the run's recorded values.
    """
    out = copy.deepcopy(dict(requested))
    for section in MODEL_SECTIONS:
        ours, theirs = out.get(section), saved.get(section)
        if (
            not isinstance(ours, dict)
            or not isinstance(theirs, Mapping)
            or ours.get("name") != theirs.get("name")
        ):
            continue
        for key, value in theirs.items():
            if key not in ours:
                ours[key] = copy.deepcopy(value)
    return out


def resume_conflicts(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Dotted keys in which ``requested`` differs from a run's ``saved`` config but may not.

    Only :data:`RESUMABLE_KEYS` may change when a run is resumed; values the run recorded for
    parameters ``requested`` leaves unset are not differences (:func:`with_recorded_values`).
    """
    return [k for k in diff(saved, with_recorded_values(saved, requested)) if k not in RESUMABLE_KEYS]


def resume_conflict_message(
    run_dir: Any, saved: Mapping[str, Any], requested: Mapping[str, Any], conflicts: list[str]
) -> str:
    """What is wrong with resuming ``run_dir`` with ``requested``, and what to do instead."""

    def lookup(config: Mapping[str, Any], dotted: str) -> Any:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    details = "; ".join(
        f"{k}: run has {lookup(saved, k)!r}, given {lookup(requested, k)!r}" for k in conflicts[:5]
    )
    defining = [k for k in conflicts if k.split(".")[0] not in ("train", "eval")]
    why = (
        "the model and its data define what the checkpoint's weights mean"
        if defining
        else "these keys shape the data stream or the optimiser's saved state"
    )
    return (
        f"--resume {run_dir}: the given config conflicts with the run's config.toml ({details}); "
        f"{why}, so they cannot change on resume. Keys that may change: the schedule "
        f"({', '.join(sorted(k.split('.', 1)[1] for k in SCHEDULE_KEYS))}), logging, "
        f"checkpointing and [eval] settings. Resume with the run's own config plus such "
        f"changes, or start a new run (e.g. flowkit run --config {run_dir}/config.toml "
        f"--set ...)."
    )
