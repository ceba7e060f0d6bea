"""Generate the docs site's reference pages and tables from the code, never by hand.

Run by the ``gen-files`` plugin at every ``mkdocs build`` (``make docs``), it writes, into the
site only (nothing under docs/ changes):

* ``reference/api/``: one page per public module of ``flowkit`` (every ``.py`` outside
  ``flowkit.plugins`` and ``flowkit.cli`` whose name does not start with ``_``), rendered by
  mkdocstrings from the docstrings, and an index of the names ``flowkit`` exports;
* ``reference/plugins/``: one page per built-in plugin found in the registry (entry points of
  ``flowkit.transforms``, ``.priors``, ``.objectives``, ``.datasets``, ``.embeddings``, and any
  group added later), with its parameters, types, allowed values and defaults taken from the
  plugin's signature by :func:`flowkit.params.describe_parameters` — what ``flowkit list --params``
  prints;
* ``reference/config.md``: the keys of ``[train]``, ``[eval]`` and ``[data]`` (``flowkit list
  config``), and ``reference/presets.md``: the shipped presets;
* the test count in ``results.md`` (from ``pytest --collect-only``).

Tables that are also read on GitHub live in the Markdown between ``<!-- generated: NAME -->``
and ``<!-- end generated -->`` and are checked by ``tests/test_docs.py``; regenerate them with::

    .venv/bin/python docs/tools/gen_reference.py --write      # --check: exit 1 when stale
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import subprocess
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from griffe_rst import rst_to_markdown  # noqa: E402

#: Subpackages documented elsewhere: plugins get their own pages, the CLI its --help.
NOT_API = ("plugins", "cli")
BUILTIN_PREFIX = "flowkit.plugins."


# -- the API reference -------------------------------------------------------------------------
def public_modules() -> list[str]:
    """Dotted names of flowkit's public modules, from the source tree (nothing is imported)."""
    package = ROOT / "flowkit"
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] in NOT_API or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        if not all((package.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
            continue  # a script in a data folder, not a module
        dotted = ".".join(("flowkit", *parts))
        names.append(dotted.removesuffix(".__init__"))
    return names


def module_summary(module: str) -> str:
    """First line of a module's docstring, read with ``ast`` (no import)."""
    rel = Path(*module.split(".")[1:])
    path = ROOT / "flowkit" / rel
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return _first_line(doc)


def _first_line(doc: str) -> str:
    line = doc.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    return _cell(rst_to_markdown(line))


def _cell(text: str) -> str:
    """Text that is safe inside a Markdown table cell, on GitHub and on the site alike.

    A ``|`` outside code is escaped; inside a code span (where GitHub needs the escape and
    Python-Markdown prints it) it becomes the look-alike ``∣`` (U+2223, "divides").
    """
    parts = text.replace("\n", " ").split("`")
    return "`".join(p.replace("|", "∣") if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def api_pages() -> Iterator[tuple[str, str]]:
    modules = public_modules()
    import flowkit

    rows = []
    for name in sorted(flowkit.__all__):
        if name.startswith("__"):
            continue
        obj = getattr(flowkit, name)
        home = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "flowkit")
        target = obj.__name__ if inspect.ismodule(obj) else f"{home}.{name}"
        rows.append(f"| [`flowkit.{name}`][{target}] | {_first_line(inspect.getdoc(obj) or '')} |")
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings at every build of this site. `import flowkit` gives these",
        "names (each loads its module on first use):",
        "",
        "| name | what |",
        "| --- | --- |",
        *rows,
        "",
        "Every public module, one page each:",
        "",
        "| module | what |",
        "| --- | --- |",
        *(f"| [`{m}`]({m}.md) | {module_summary(m)} |" for m in modules),
        "",
        "Plugins are documented by name in the [plugin reference](../plugins/index.md); the",
        "command line by `flowkit --help` and `flowkit COMMAND --help`.",
        "",
    ]
    yield "reference/api/index.md", "\n".join(lines)
    for module in modules:
        yield (
            f"reference/api/{module}.md",
            f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n",
        )


# -- the plugin reference ----------------------------------------------------------------------
def _kinds() -> list[str]:
    from flowkit import registry as reg

    return list(reg.KINDS)


def builtin_entries(kind: str) -> list[Any]:
    """The registry's entries of ``kind`` that flowkit itself provides (not third-party ones)."""
    from flowkit.registry import registry

    return [e for e in registry(kind).entries(include_blocked=True) if e.target.startswith(BUILTIN_PREFIX)]


def _constraint_words(hint: Any) -> list[str]:
    """Every range marker inside a hint (unions and containers included), in words, with notes."""
    from flowkit.params import constraints_of

    words = []
    for c in constraints_of(hint):
        text = c.words()
        if c.note:
            text += f" ({c.note})"
        words.append(text)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Annotated:
        args = args[:1]
    for arg in args:
        if arg is not Ellipsis and not isinstance(arg, str | int | float | bool):
            words.extend(_constraint_words(arg))
    return list(dict.fromkeys(words))


def parameter_rows(target: Callable[..., Any], reserved: frozenset[str] | None = None) -> list[str]:
    """Markdown table rows ``name | type | allowed values | default`` for a plugin or config class."""
    from flowkit.params import INJECTED, describe_parameters, parameter_hints

    reserved = INJECTED if reserved is None else reserved
    hints = parameter_hints(target)
    rows = []
    for name, type_s, default in describe_parameters(target, reserved):
        allowed = "; ".join(_constraint_words(hints.get(name))) or "–"
        rows.append(f"| `{name}` | `{type_s}` | {_cell(allowed)} | `{default}` |")  # | in code is kept
    return rows


def _injected(target: Callable[..., Any]) -> list[str]:
    from flowkit.params import INJECTED

    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    return [p for p in params if p in INJECTED]


def _description(obj: Any) -> str:
    """The docstring after its first paragraph, as Markdown (RST roles to code spans)."""
    doc = inspect.getdoc(obj) or ""
    rest = doc.strip().split("\n\n", 1)[1] if "\n\n" in doc.strip() else ""
    return rst_to_markdown(rest)


SECTION = {
    "transform": "transform",
    "prior": "prior",
    "objective": "objective",
    "dataset": "data",
    "embedding": "embedding",
}
FLAG = {"transform": "--transform", "prior": "--prior", "objective": "--objective", "dataset": "--data"}


def _group(kind: str) -> str:
    from flowkit.registry import registry

    return registry(kind).group


def _folder(kind: str) -> str:
    """``transforms``, ``priors``, … : the entry-point group without ``flowkit.``."""
    return _group(kind).removeprefix("flowkit.")


def plugin_page(kind: str, entry: Any) -> str:
    from flowkit.registry import PluginLoadError

    section = SECTION.get(kind)
    try:
        obj = entry.load()
    except PluginLoadError as exc:
        return f"# `{entry.name}`\n\n*{kind} plugin* — could not be loaded when this site was built: {exc}\n"
    rows = parameter_rows(obj)
    injected = _injected(obj)
    lines = [
        f"# `{entry.name}`",
        "",
        f"*{kind} plugin* — {_first_line(inspect.getdoc(obj) or '')}",
        "",
        f'- **Entry point:** `{entry.name} = "{entry.target}"` in the group `{_group(kind)}`.',
    ]
    if section:
        use = f'`[{section}] name = "{entry.name}"`'
        if kind in FLAG:
            use += f", or `flowkit run {FLAG[kind]} {entry.name}`"
        lines.append(f"- **Use:** {use}.")
    elif kind == "logger":
        lines.append(f'- **Use:** `[train] loggers = ["{entry.name}"]` ([tracking](../../../tracking.md)).')
    if injected:
        lines.append(
            "- **Injected by flowkit** (never set in a config): "
            + ", ".join(f"`{p}`" for p in injected)
            + "."
        )
    if "context_features" in injected:
        lines.append(
            "- **Context:** reads a real-valued context ([conditional flows](../../../conditional.md))."
        )
    lines += ["", "## Parameters", ""]
    if rows:
        where = f"Set in `[{section}]` or with `--set {section}.NAME=VALUE`. " if section else ""
        lines += [
            f"{where}Every value is checked against its type and range before anything runs.",
            "",
            "| name | type | allowed values | default |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    else:
        lines.append("None: this plugin has no parameters a config sets.")
    description = _description(obj)
    if description:
        lines += ["", "## Description", "", description]
    return "\n".join(lines) + "\n"


def plugin_pages() -> Iterator[tuple[str, str]]:
    index = [
        "# Plugins",
        "",
        "Every plugin that ships with flowkit, by kind, generated from the registry when this site",
        "was built. Each page gives the plugin's parameters with their types, allowed values and",
        "defaults, read from the plugin's signature: the same source as `flowkit list --params`,",
        "which also lists the plugins of third-party packages installed beside flowkit.",
        "",
    ]
    summary = []
    for kind in _kinds():
        entries = builtin_entries(kind)
        if not entries:
            continue
        folder = _folder(kind)
        title = folder.capitalize()
        index += [
            f"## {title}",
            "",
            f"Entry-point group `{_group(kind)}`.",
            "",
            "| name | what |",
            "| --- | --- |",
        ]
        summary.append(f"    * {title}")
        for entry in entries:
            path = f"{folder}/{entry.name}.md"
            index.append(f"| [`{entry.name}`]({path}) | {_cell(entry.summary())} |")
            summary.append(f"        * [{entry.name}](plugins/{path})")
            yield f"reference/plugins/{path}", plugin_page(kind, entry)
        index.append("")
    yield "reference/plugins/index.md", "\n".join(index)
    yield "reference/_plugin_nav.txt", "\n".join(summary)


# -- config keys and presets -------------------------------------------------------------------
def config_page() -> str:
    from flowkit import config as cfg

    lines = [
        "# Config keys",
        "",
        "The keys of the sections that are not plugins, generated from `flowkit/config.py` when",
        "this site was built (what `flowkit list config` prints). The plugin sections",
        "(`[transform]`, `[embedding]`, `[prior]`, `[objective]`, and the dataset's own keys in",
        "`[data]`) take the [plugin's parameters](plugins/index.md). See",
        "[configuration](../configuration.md) for how the layers combine.",
        "",
    ]
    for section, name in (("train", "TrainConfig"), ("eval", "EvalConfig"), ("data", "DataConfig")):
        cls = getattr(cfg, name)
        lines += [
            f"## `[{section}]`",
            "",
            _first_line(inspect.getdoc(cls) or ""),
            "",
            "| key | type | allowed values | default |",
            "| --- | --- | --- | --- |",
            *parameter_rows(cls, reserved=frozenset()),
            "",
        ]
    return "\n".join(lines)


def _preset_description(text: str) -> str:
    """The first sentence of a preset's leading comment."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith("flowkit "):
            break
        comment.append(body)
    return _cell(first_sentence(" ".join(comment)))


def first_sentence(prose: str) -> str:
    """Up to the first full stop or colon that ends a sentence ("et al." and "e.g." do not)."""
    match = re.match(r"(.+?(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)[.:])(\s|$)", prose)
    return match.group(1).rstrip(":") if match else prose


def presets_table() -> str:
    """The table of shipped presets: name, transform, objective, prior, data, steps, what."""
    from importlib import resources

    from flowkit.config import available_presets

    rows = [
        "| preset | transform | objective | data | steps | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    root = resources.files("flowkit.presets")
    for name in available_presets():
        text = root.joinpath(f"{name}.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)

        def get(section: str, key: str = "name", d: dict[str, Any] = data) -> str:
            value = d.get(section, {}).get(key)
            if isinstance(value, int):
                return f"{value:,}"
            return f"`{value}`" if value is not None else "default"

        rows.append(
            f"| `{name}` | {get('transform')} | {get('objective')} | {get('data')} | "
            f"{get('train', 'steps')} | {_preset_description(text)} |"
        )
    return "\n".join(rows)


def presets_page() -> str:
    return "\n".join(
        [
            "# Presets",
            "",
            "The configs shipped inside the package (`flowkit run --config NAME`, `flowkit list",
            "presets`), generated from `flowkit/presets/*.toml` when this site was built. A preset",
            "sets only what differs from the defaults; `--dry-run` prints the whole resolved config.",
            "",
            presets_table(),
            "",
        ]
    )


# -- generated regions of committed pages ------------------------------------------------------
def bench_reports_table() -> str:
    """The published benchmark reports under docs/bench/: one row per suite."""
    rows = ["| suite | report |", "| --- | --- |"]
    for folder in sorted(p for p in (DOCS / "bench").iterdir() if p.is_dir()):
        report = folder / "report.md"
        if not report.exists():
            continue
        text = report.read_text(encoding="utf-8")
        title = re.sub(r"^#\s*", "", text.splitlines()[0]).strip() if text else folder.name
        paragraphs = [p for p in text.split("\n\n")[1:] if p.strip() and not p.startswith(("#", "|", "!"))]
        what = _cell(first_sentence(" ".join(paragraphs[0].split()))) if paragraphs else ""
        about = f" ([about the suite]({folder.name}/README.md))" if (folder / "README.md").exists() else ""
        rows.append(f"| [`{folder.name}`]({folder.name}/report.md){about} | **{_cell(title)}**. {what} |")
    return "\n".join(rows)


def regions() -> dict[str, Callable[[], str]]:
    """Generated regions of committed Markdown: the name in the marker -> its content."""
    return {"presets": presets_table, "bench-reports": bench_reports_table}


_REGION = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL
)


def refresh_regions(text: str) -> str:
    makers = regions()

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in makers:
            return match.group(0)
        return f"{match.group(1)}{makers[name]().rstrip()}\n{match.group(4)}"

    return _REGION.sub(fill, text)


def stale_pages() -> list[Path]:
    """Committed pages whose generated regions differ from what the code gives now."""
    stale = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        if "<!-- generated:" in text and refresh_regions(text) != text:
            stale.append(path)
    return stale


# -- counts from the test suite ----------------------------------------------------------------
def test_count() -> str:
    """``N tests`` as pytest collects them now, or why it could not count."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"an unknown number of tests (collection failed: {exc})"
    match = re.search(r"(\d+) tests? collected(?:, (\d+) errors?)?", out.stdout)
    if not match:
        return "an unknown number of tests (pytest collected none)"
    count = f"{int(match.group(1)):,} tests"
    if match.group(2):
        count += f" (and {match.group(2)} test files that failed to import)"
    return count


def results_page(text: str) -> str:
    """results.md with the current test count in place of its placeholder."""
    pattern = re.compile(r"<!-- test-count -->.*?<!-- /test-count -->", re.DOTALL)
    return pattern.sub(lambda _: test_count(), text, count=1) if pattern.search(text) else text


# -- mkdocs-gen-files entry point --------------------------------------------------------------
def build_site() -> None:
    import mkdocs_gen_files

    nav_lines = ["* [Plugins](plugins/index.md)"]
    for path, content in plugin_pages():
        if path.endswith("_plugin_nav.txt"):
            nav_lines += content.splitlines()
            continue
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(content)
    api_nav = ["* [API](api/index.md)"]
    for path, content in api_pages():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(content)
        if not path.endswith("index.md"):
            module = Path(path).stem
            api_nav.append(f"    * [{module}](api/{module}.md)")
    with mkdocs_gen_files.open("reference/config.md", "w") as f:
        f.write(config_page())
    with mkdocs_gen_files.open("reference/presets.md", "w") as f:
        f.write(presets_page())
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.write(
            "\n".join([*api_nav, *nav_lines, "* [Config keys](config.md)", "* [Presets](presets.md)", ""])
        )
    results = DOCS / "results.md"
    if results.exists():
        with mkdocs_gen_files.open("results.md", "w") as f:
            f.write(results_page(results.read_text(encoding="utf-8")))
    for path in stale_pages():  # the site shows what the code says, even before --write
        rel = path.relative_to(DOCS).as_posix()
        if rel == "results.md":
            continue
        with mkdocs_gen_files.open(rel, "w") as f:
            f.write(refresh_regions(path.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated table is stale")
    mode.add_argument("--write", action="store_true", help="rewrite the stale generated tables")
    args = parser.parse_args(argv)
    stale = stale_pages()
    for path in stale:
        if args.write:
            path.write_text(refresh_regions(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"{'rewrote' if args.write else 'stale'}: {path.relative_to(ROOT)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == "<run_path>":  # mkdocs-gen-files
    build_site()
