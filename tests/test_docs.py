"""The documentation tells the truth: its code runs, its commands parse, its tables are current.

* Every ```` ```python ```` block of README.md and docs/**/*.md runs, page by page, in a fresh
  process and an empty folder (``docs/tools/mdcode.py``). A block that cannot run says why in the
  Markdown (``<!-- skip-test: reason -->``); there are few, and the count is capped below.
  The tutorials (docs/tutorials/) run in tests/test_tutorials.py.
* Every ``flowkit ...`` command in a shell block parses with the real command line (options,
  choices, types), and a ``flowkit run`` command's config resolves (plugin names, keys, ranges).
* Every run config written as a TOML block resolves.
* The cheap commands of README's "Command line" section run, as typed.
* The generated tables in committed pages match the code (regenerate with the command printed).
* Every page is in the site's navigation.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "tools"))

import gen_reference  # noqa: E402
import mdcode  # noqa: E402

#: Pages whose Python blocks are steered from here instead of by comments in the Markdown:
#: README.md (kept free of them) and the conditional benchmark's page (written by its own tool).
EXTERNAL: dict[str, dict] = {
    "README.md": {
        "extra_setup": [
            (
                "flows.MAF(features=6, context=2, transforms=5)",
                "python",
                "import torch\nx, c = torch.randn(16, 6), torch.randn(16, 2)\n",
            )
        ],
        "extra_replacements": [("train.steps=500", "train.steps=20")],
    },
    "docs/bench/conditional/README.md": {
        "extra_replacements": [
            ("sims=(1000,), steps=500)", 'sims=(200,), steps=5, rows=("flowkit-maf",))'),
            ("reference_samples(task, x_star, 1000)", "reference_samples(task, x_star, 100)"),
        ],
    },
}
#: At most this many blocks may be skipped across the docs (each with its reason in the page).
MAX_SKIPPED = 8


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def doc_pages() -> list[Path]:
    """README.md and every page under docs/ except the tutorials and the example package."""
    pages = [ROOT / "README.md"]
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS).parts
        if rel[0] in ("tutorials", "examples", "tools"):
            continue
        pages.append(path)
    return pages


def _pages_with_python() -> list[str]:
    out = []
    for path in doc_pages():
        page = mdcode.parse(path)
        if any(b.lang in mdcode.PYTHON_LANGS for b in page.blocks):
            out.append(_rel(path))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_python())
def test_python_blocks_run(page: str, tmp_path: Path) -> None:
    outcome = mdcode.run(ROOT / page, tmp_path / "work", timeout=600, **EXTERNAL.get(page, {}))
    assert outcome.ok, (
        f"{page}: a code block failed (after {outcome.seconds:.0f} s):\n{outcome.output[-5000:]}"
    )


def test_skipped_blocks_are_few_and_explained() -> None:
    skipped = []
    for path in [*doc_pages(), *sorted((DOCS / "tutorials").glob("*.md"))]:
        skipped += [f"{b.page}:{b.line}: {b.skip}" for b in mdcode.parse(path).blocks if b.skip]
    assert len(skipped) <= MAX_SKIPPED, "too many doc blocks are not run:\n" + "\n".join(skipped)


def test_directives_are_well_formed(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- skip-test: needs MNIST -->\n\n```python\nraise SystemExit(1)\n```\n\n"
        "Text.\n\n<!-- test-setup: python\nvalue = 41\n-->\n"
        "<!-- test-replace: 41 => 1 -->\n\n```python\nassert value + 1 == 2\n```\n"
    )
    parsed = mdcode.parse(page)
    assert [b.skip for b in parsed.blocks] == ["needs MNIST", None]
    assert parsed.blocks[1].setup == [("python", "value = 41")]
    assert mdcode.run(page, tmp_path / "work").ok
    assert not mdcode.run(page, tmp_path / "full", full=True).ok  # the replacement is test-only
    page.write_text("<!-- skip-test: -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        mdcode.parse(page)
    page.write_text("<!-- test-replace: absent => x -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="found in no block"):
        mdcode.steps(mdcode.parse(page))


def test_a_failing_block_names_its_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "broken.md"
    page.write_text("# Title\n\n```python\nx = 1\ny = undefined_name\n```\n")
    outcome = mdcode.run(page, tmp_path / "work")
    assert not outcome.ok
    assert "broken.md:4" in outcome.output and "line 5" in outcome.output
    assert "NameError" in outcome.output


# -- shell commands ----------------------------------------------------------------------------
def _shell_blocks() -> list[tuple[str, int, list[tuple[str, list[str]]]]]:
    found = []
    pages = [
        *doc_pages(),
        *sorted((DOCS / "tutorials").glob("*.md")),
        DOCS / "examples" / "flowkit-example-plugin" / "README.md",
    ]
    for path in pages:
        for block in mdcode.parse(path).blocks:
            if block.lang in ("bash", "sh", "shell", "console"):
                found.append((block.page, block.line, _console(block.code, block.lang)))
    return found


def _commands(code: str, lang: str) -> list[str]:
    """The commands of a shell block: continuations joined, console output left out."""
    return [command for command, _ in _console(code, lang)]


def _console(code: str, lang: str) -> list[tuple[str, list[str]]]:
    """``(command, output lines)`` of a shell block (output only in ``console`` blocks)."""
    found: list[tuple[str, list[str]]] = []
    continued = False
    for line in code.splitlines():
        if continued:
            command, output = found[-1]
            found[-1] = (command[:-1].rstrip() + " " + line.strip(), output)
        elif lang == "console" and not line.startswith("$ "):
            if found and line.strip():
                found[-1][1].append(line.strip())
            continue
        elif line.strip():
            found.append(((line[2:] if lang == "console" else line).strip(), []))
        continued = bool(found) and found[-1][0].endswith("\\")
    return found


def _flowkit_calls(command: str) -> list[list[str]]:
    """The argument lists of every ``flowkit`` call in a command line (pipelines, ``&&`` lists
    and redirections taken apart)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    calls: list[list[str]] = []
    segment: list[str] = []
    target_next = False
    for word in [*words, ";"]:
        if target_next:  # the file of a redirection such as `> out.txt`
            target_next = False
            continue
        if word in ("&&", "||", ";", "|"):
            args = _flowkit_args(segment)
            if args is not None:
                calls.append(args)
            segment = []
            continue
        redirection = re.match(r"^(\d?>>?|<|&>)(.*)$", word)
        if redirection:
            target_next = not redirection.group(2)
            continue
        segment.append(word)
    return calls


def _flowkit_args(words: list[str]) -> list[str] | None:
    """The arguments of one simple command that runs ``flowkit`` (``.venv/bin/flowkit``,
    ``python -m flowkit.cli``, ``torchrun ... -m flowkit.cli``), or None."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]  # VAR=value flowkit ...
    if words and (words[0] == "flowkit" or words[0].endswith("/flowkit")):
        return words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] == "flowkit.cli":
            return words[i + 2 :]
    return None


def _parse(args: list[str]) -> click.Context | None:
    """Parse ``flowkit ARGS`` with the real command line; raises on a usage error.

    Paths that do not exist here (``RUN_DIR``, a file the page creates) are accepted.
    """
    from flowkit.cli.main import cli

    ctx = cli.make_context("flowkit", list(args))
    rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    if not rest:
        return None
    command = cli.get_command(ctx, rest[0])
    if command is None:
        raise click.UsageError(f"no such command {rest[0]!r}")
    try:
        return command.make_context(rest[0], rest[1:], parent=ctx)
    except click.BadParameter as exc:
        if isinstance(getattr(exc.param, "type", None), click.Path) and "does not exist" in str(exc):
            return None
        raise


def _check_run_config(params: dict) -> None:
    from flowkit.config import available_presets, load_config

    source = params.get("config_source")
    if params.get("resume_dir") or (
        source and source not in available_presets() and not Path(source).is_file()
    ):
        return  # resumes a run, or a config file the page writes: nothing to resolve here
    load_config(
        source,
        params.get("overrides", ()),
        transform=params.get("transform"),
        objective=params.get("objective"),
        prior=params.get("prior"),
        data=params.get("data"),
    )


def test_flowkit_commands_in_the_docs_parse() -> None:
    from flowkit.errors import FlowkitError

    problems, checked = [], 0
    calls = [
        (page, line, command, output, args)
        for page, line, commands in _shell_blocks()
        for command, output in commands
        for args in _flowkit_calls(command)
    ]
    for page, line, command, output, args in calls:
        if "--help" in args or "-h" in args:
            continue
        checked += 1
        # a console block that shows an error: flowkit must refuse with that very message
        expected = output[0][len("Error: ") :] if output and output[0].startswith("Error: ") else None
        try:
            ctx = _parse(args)
            # tutorials run their commands (tests/test_tutorials.py), with the plugins
            # and files they create first: only the options are checked here
            if ctx is not None and ctx.command.name == "run" and "/tutorials/" not in page:
                _check_run_config(ctx.params)
        except (click.ClickException, FlowkitError) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            if message != expected:
                problems.append(
                    f"{page}:{line}: `{command}`: {message}"
                    + (f"\n    (the page shows: {expected})" if expected else "")
                )
        else:
            if expected is not None:
                problems.append(
                    f"{page}:{line}: `{command}` is accepted; the page shows the error {expected!r}"
                )
    assert checked > 50
    assert not problems, "commands in the docs that flowkit refuses:\n" + "\n".join(problems)


def test_run_configs_in_the_docs_resolve(tmp_path: Path) -> None:
    from flowkit.config import SECTIONS, load_config

    checked, problems = 0, []
    for path in [*doc_pages(), *sorted((DOCS / "tutorials").glob("*.md"))]:
        for block in mdcode.parse(path).blocks:
            if block.lang != "toml":
                continue
            try:
                table = tomllib.loads(block.code)
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{block.page}:{block.line}: not TOML: {exc}")
                continue
            if not table or not set(table) <= set(SECTIONS):
                continue  # a suite, a pyproject table: not a run config
            checked += 1
            file = tmp_path / f"{path.stem}-{block.line}.toml"
            file.write_text(block.code, encoding="utf-8")
            try:
                load_config(file)
            except Exception as exc:  # a config error, or a plugin that fails to load
                problems.append(f"{block.page}:{block.line}: {type(exc).__name__}: {exc}")
    assert checked >= 5
    assert not problems, "run configs in the docs that do not resolve:\n" + "\n".join(problems)


# -- README's command line ---------------------------------------------------------------------
def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's 'Command line' section has no bash block"
    return _commands(block.group(1), "bash")


#: README commands not run by the smoke test, and why (each still parses, above).
README_NOT_RUN = {
    "--data-dir": "needs the downloaded MNIST files",
    "bench quick": "minutes; tests/test_bench.py runs the suite machinery, the bench tutorial a suite",
    "bench mnist": "hours",
    "torchrun": "tests/test_distributed.py runs torchrun",
    "glow-mnist": "needs MNIST",
    "--resume": "tests/test_cli.py resumes runs",
    "inpaint": "run below on an image model (the README's run is a 2-D one)",
}


@pytest.mark.slow
def test_readme_command_line_section_runs(tmp_path: Path) -> None:
    """The cheap commands run as typed; RUN_DIR is a short run of the README's first training."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    commands = _readme_commands()
    ran = []

    def sh(command: str) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"`{command}` failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        ran.append(command)
        return proc.stdout

    run_dir = "runs/readme"
    for command in commands:
        if any(key in command for key in README_NOT_RUN):
            continue
        command = command.split(" #", 1)[0].strip()
        if command.startswith("flowkit run") and "--dry-run" not in command:
            command += (
                " --set train.steps=15 --set train.eval_every=0 "
                "--set eval.final_max_examples=200 --out runs --name readme -q"
            )
        command = command.replace("RUN_DIR", run_dir)
        if command.startswith("flowkit check"):
            pytest.importorskip("flowkit_example", reason="the example plugin is not installed")
        sh(command)
    # inpaint needs an image model: the digits, briefly
    sh(
        "flowkit run --transform nice --data digits --set transform.hidden=32 --set train.steps=5 "
        "--set train.eval_every=0 --set train.sample_every=0 --set eval.final_max_examples=100 "
        "--out runs --name digits -q"
    )
    inpaint = next(c for c in commands if c.startswith("flowkit inpaint"))
    sh(inpaint.split(" #", 1)[0].replace("RUN_DIR", "runs/digits") + " --steps 5")
    assert any(c.startswith("flowkit sample") for c in ran) and any("eval" in c for c in ran)
    assert len(ran) >= 10


# -- generated tables and the site -------------------------------------------------------------
def test_generated_tables_match_the_code() -> None:
    stale = [_rel(p) for p in gen_reference.stale_pages()]
    assert not stale, (
        f"generated tables in {', '.join(stale)} no longer match the code; "
        "regenerate them with: .venv/bin/python docs/tools/gen_reference.py --write"
    )


def test_presets_table_lists_every_preset() -> None:
    """Every file of flowkit/presets/ is in the generated table of configuration.md and in
    README's plugin table, and neither names a preset that is not shipped."""
    from flowkit.config import available_presets

    files = sorted(p.stem for p in (ROOT / "flowkit" / "presets").glob("*.toml"))
    assert files and files == available_presets()
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- generated: presets[^>]*-->\n(.*?)<!-- end generated -->", text, re.DOTALL)
    assert table, "docs/configuration.md has no generated presets table"
    listed = re.findall(r"^\| `([\w.-]+)` \|", table.group(1), re.MULTILINE)
    assert sorted(listed) == files, (
        f"docs/configuration.md's presets table is stale (missing {sorted(set(files) - set(listed))}, "
        f"extra {sorted(set(listed) - set(files))}); regenerate it: "
        ".venv/bin/python docs/tools/gen_reference.py --write"
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = re.search(r"^\| presets \| (.*) \|$", readme, re.MULTILINE)
    assert row, "README.md's plugin table has no presets row"
    in_readme = re.findall(r"`([\w.-]+)`", row.group(1))
    assert sorted(in_readme) == files, (
        f"README.md's presets row is stale: missing {sorted(set(files) - set(in_readme))}, "
        f"extra {sorted(set(in_readme) - set(files))}"
    )


def test_every_page_is_in_the_site_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:", 1)[1]
    listed = set(re.findall(r"([\w./-]+\.md)\s*$", nav, re.MULTILINE))
    directories = re.findall(r":\s*([\w./-]+/)\s*$", nav, re.MULTILINE)
    missing = []
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS).as_posix()
        if rel.startswith(("tools/", "examples/")) and not rel.endswith("flowkit-example-plugin/README.md"):
            continue
        if rel not in listed and not any(rel.startswith(d) for d in directories):
            missing.append(rel)
    assert not missing, f"pages missing from the nav in mkdocs.yml: {missing}"


def test_plugin_reference_covers_every_builtin_plugin() -> None:
    from flowkit.registry import KINDS, registry

    pages = dict(gen_reference.plugin_pages())
    for kind in KINDS:
        for entry in registry(kind).entries():
            if entry.target.startswith("flowkit.plugins."):
                folder = registry(kind).group.removeprefix("flowkit.")
                page = pages[f"reference/plugins/{folder}/{entry.name}.md"]
                assert f"# `{entry.name}`" in page
    realnvp = pages["reference/plugins/transforms/realnvp.md"]
    assert "| `hidden` | `int ≥ 1 | None` | at least 1" in realnvp  # type, range, default
    assert "| `num_scales` | `int ≥ 1` | at least 1 | `2` |" in realnvp


def test_api_reference_covers_the_public_modules() -> None:
    modules = gen_reference.public_modules()
    assert {"flowkit", "flowkit.config", "flowkit.flows", "flowkit.params", "flowkit.testing"} <= set(modules)
    assert not [m for m in modules if m.startswith(("flowkit.plugins", "flowkit.cli"))]
    assert not [m for m in modules if any(p.startswith("_") for p in m.split("."))]
