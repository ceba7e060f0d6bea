"""Run the code blocks of the documentation, the way a reader would: the docs' test harness.

A page's blocks run in order, from an empty working folder, in one Python process:

* ```` ```python ```` blocks share one namespace (a later block sees an earlier block's names);
* in tutorials (``docs/tutorials/``), ```` ```bash ```` blocks run in ``bash -euo pipefail``, with
  the environment's ``flowkit`` first on ``PATH``, and a block with a ``title="NAME"`` (shown
  as a file name on the site) is written to that file instead of being run;
* elsewhere, shell blocks are not run (they often train for an hour); ``tests/test_docs.py``
  parses every ``flowkit`` command in them instead.

Tracebacks name the page and its line numbers. HTML comments right before a block (only blank
lines between) steer it, and are invisible on the site and on GitHub:

``<!-- skip-test: REASON -->``
    do not run the next block (a fragment, or a run that needs downloaded data or an hour);
    the reason is required and shows in ``python docs/tools/mdcode.py list``.
``<!-- test-setup: python`` (or ``bash``), code lines, ``-->``
    run this hidden code before the next block (e.g. train the run folder a snippet loads).

and anywhere on a page:

``<!-- test-replace: OLD => NEW -->``
    in the test run only, replace the text OLD by NEW in every block of the page, to cut step
    counts (``train.steps=2000 => train.steps=40``); an OLD that no block contains is an error.
``<!-- test-env: NAME=VALUE -->``
    in the test run only, set an environment variable (``{cwd}`` is the working folder).
``<!-- harness-replace: OLD => NEW -->``, ``<!-- harness-env: NAME=VALUE -->``
    the same in every run by this harness, full runs included: for what must not touch the
    environment it runs in (``pip install -e pkg`` becomes an install into the working folder).

A tutorial's figures are the images it links under ``figures/``: the run must create each of
them in its working folder (``figures/NAME.png``), and ``--write-figures`` copies them next to
the page, where the site shows them::

    python docs/tools/mdcode.py list docs/*.md docs/tutorials/*.md     # what runs, what is skipped
    python docs/tools/mdcode.py run docs/tutorials/quickstart.md         # the test run (cut down)
    python docs/tools/mdcode.py run docs/tutorials/quickstart.md --full --write-figures
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"bash", "sh", "shell"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_TITLE = re.compile(r"""title=(?:"([^"]*)"|'([^']*)'|(\S+))""")
_FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)\s]+)\)")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    line: int  # the line of the block's first code line (1-based)
    lang: str
    code: str
    title: str | None = None
    skip: str | None = None
    setup: list[tuple[str, str]] = field(default_factory=list)  # (lang, code)


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    replacements: list[tuple[str, str]]
    env: dict[str, str]
    figures: list[str]
    harness_replacements: list[tuple[str, str]] = field(default_factory=list)
    harness_env: dict[str, str] = field(default_factory=dict)

    @property
    def tutorial(self) -> bool:
        return self.path.resolve().parent.name == "tutorials"

    def runnable(self, block: Block) -> bool:
        """Whether the harness runs this block (skipped blocks included: they are not run)."""
        if block.lang in PYTHON_LANGS:
            return True
        return self.tutorial and (block.title is not None or block.lang in SHELL_LANGS)


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def parse(path: Path) -> Page:
    """The page's code blocks with the directives that steer them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    replacements: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    harness_replacements: list[tuple[str, str]] = []
    harness_env: dict[str, str] = {}
    skip: str | None = None
    setup: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("<!--"):
            j = i
            while "-->" not in lines[j]:
                j += 1
            body = "\n".join(lines[i : j + 1]).strip()[4:-3].strip()
            head, _, rest = body.partition("\n")
            if head.startswith("skip-test:"):
                skip = head.split(":", 1)[1].strip()
                if not skip:
                    raise ValueError(f"{_display(path)}:{i + 1}: skip-test needs a reason")
            elif head.startswith("test-setup:"):
                setup.append((head.split(":", 1)[1].strip() or "python", rest))
            elif head.startswith(("test-replace:", "harness-replace:")):
                old, sep, new = head.split(":", 1)[1].partition("=>")
                if not sep:
                    raise ValueError(f"{_display(path)}:{i + 1}: {head.split(':')[0]} needs OLD => NEW")
                target = replacements if head.startswith("test") else harness_replacements
                target.append((old.strip(), new.strip()))
            elif head.startswith(("test-env:", "harness-env:")):
                name, _, value = head.split(":", 1)[1].strip().partition("=")
                (env if head.startswith("test") else harness_env)[name.strip()] = value.strip()
            i = j + 1
            continue
        match = _FENCE.match(line)
        if match:
            indent, fence, info = match.group("indent", "fence", "info")
            words = info.split()
            lang = words[0].lower() if words and "=" not in words[0] else ""
            title = _TITLE.search(info)
            j = i + 1
            body = []
            while j < len(lines) and not (
                lines[j].strip().startswith(fence[0] * len(fence)) and lines[j].strip().strip(fence[0]) == ""
            ):
                text = lines[j]
                body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
                j += 1
            blocks.append(
                Block(
                    page=_display(path),
                    line=i + 2,
                    lang=lang,
                    code="\n".join(body) + "\n",
                    title=next((g for g in title.groups() if g), None) if title else None,
                    skip=skip,
                    setup=setup,
                )
            )
            skip, setup = None, []
            i = j + 1
            continue
        if stripped:
            skip, setup = None, []
        i += 1
    figures = list(dict.fromkeys(_FIGURE.findall("\n".join(lines))))
    return Page(path, blocks, replacements, env, figures, harness_replacements, harness_env)


def steps(page: Page, full: bool = False) -> list[dict]:
    """What the driver runs, in order; in the test run (not ``full``) with the replacements."""
    out: list[dict] = []
    used = set()

    active = page.harness_replacements + ([] if full else page.replacements)

    def edit(code: str) -> str:
        for k, (old, new) in enumerate(active):
            if old in code:
                used.add(k)
                code = code.replace(old, new)
        return code

    for block in page.blocks:
        if not page.runnable(block) or block.skip:
            continue
        for lang, code in block.setup:
            kind = "python" if lang in PYTHON_LANGS else "shell"
            out.append(
                {
                    "kind": kind,
                    "page": block.page,
                    "line": block.line,
                    "code": edit(code),
                    "what": "hidden setup",
                }
            )
        if block.title is not None:  # a file the reader creates, shown with its name
            kind = "file"
        else:
            kind = "python" if block.lang in PYTHON_LANGS else "shell"
        out.append(
            {
                "kind": kind,
                "page": block.page,
                "line": block.line,
                "code": edit(block.code),
                "title": block.title,
                "what": block.lang or "text",
            }
        )
    unused = [active[k][0] for k in range(len(active)) if k not in used]
    if unused:
        raise ValueError(f"{_display(page.path)}: test-replace text found in no block: {unused}")
    return out


def environment(page: Page, workdir: Path, full: bool = False) -> dict[str, str]:
    """The readers' environment: this Python's scripts first on PATH, one thread, no display."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    if not full:
        # Tiny models on a shared machine: one thread is faster, and several test processes
        # then never oversubscribe the cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        for name, value in page.env.items():
            env[name] = value.replace("{cwd}", str(workdir))
    for name, value in page.harness_env.items():
        env[name] = value.replace("{cwd}", str(workdir))
    return env


def _find(page: Page, needle: str) -> Block:
    found = [b for b in page.blocks if needle in b.code]
    if len(found) != 1:
        raise ValueError(f"{_display(page.path)}: {len(found)} blocks contain {needle!r}, not 1")
    return found[0]


@dataclass
class Outcome:
    page: str
    ok: bool
    seconds: float
    output: str
    missing_figures: list[str]


def run(
    path: Path,
    workdir: Path | None = None,
    full: bool = False,
    write_figures: bool = False,
    timeout: float | None = None,
    extra_setup: list[tuple[str, str, str]] | None = None,
    extra_replacements: list[tuple[str, str]] | None = None,
    extra_skips: list[tuple[str, str]] | None = None,
) -> Outcome:
    """Run the page's blocks in ``workdir`` (a new temporary folder if not given).

    ``extra_setup`` (``(text in the block, lang, code)``), ``extra_replacements`` and
    ``extra_skips`` (``(text in the block, reason)``) steer a page that cannot carry the
    comments itself (one that another tool writes, or README.md, kept free of them).
    """
    page = parse(path)
    for needle, lang, code in extra_setup or []:
        block = _find(page, needle)
        block.setup = [*block.setup, (lang, code)]
    for needle, reason in extra_skips or []:
        _find(page, needle).skip = reason
    page.replacements += extra_replacements or []
    plan = steps(page, full)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="flowkit-docs-")) if own else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    plan_file = workdir / ".mdcode-steps.json"
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "exec", str(plan_file)],
            cwd=workdir,
            env=environment(page, workdir, full),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {timeout} s]"
        ok = False
    seconds = time.perf_counter() - start
    missing = [f for f in page.figures if not (workdir / f).is_file()]
    if ok and write_figures:
        for figure in page.figures:
            if (workdir / figure).is_file():
                target = path.parent / figure
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(workdir / figure, target)
    if own and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(_display(path), ok, seconds, output, missing)


# -- the driver: runs in the working folder, in its own process -------------------------------
def execute(plan_file: Path) -> int:
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    plan_file.unlink()
    import importlib
    import types

    # The blocks run as a reader's script would: in a fresh ``__main__`` module, so that what
    # they define can be pickled (flowkit.testing pickles transforms) and found by name.
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__

    for step in plan:
        where = f"{step['page']}:{step['line']}"
        print(f"--- {where} [{step['what']}]", flush=True)
        if step["kind"] == "file":
            target = Path(step["title"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step["code"], encoding="utf-8")
            continue
        if step["kind"] == "shell":
            print(step["code"].rstrip(), flush=True)
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", step["code"]])
            if proc.returncode != 0:
                print(f"FAILED: the shell block at {where} exited with {proc.returncode}", flush=True)
                return 1
            continue
        importlib.invalidate_caches()  # packages a shell block installed since the last step
        code = "\n" * (step["line"] - 1) + step["code"]  # tracebacks give the page's line numbers
        try:
            exec(compile(code, step["page"], "exec", dont_inherit=True), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: the python block at {where}", flush=True)
            return 1
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the code blocks of PAGES and whether they run")
    listing.add_argument("pages", nargs="+", type=Path)
    running = sub.add_parser("run", help="run the code blocks of PAGES")
    running.add_argument("pages", nargs="+", type=Path)
    running.add_argument("--full", action="store_true", help="as written (no test-replace)")
    running.add_argument(
        "--write-figures", action="store_true", help="copy the figures the page links to next to it"
    )
    running.add_argument("--workdir", type=Path, help="run here (kept) instead of a temp folder")
    running.add_argument("--show", action="store_true", help="print what the blocks print")
    driver = sub.add_parser("exec", help=argparse.SUPPRESS)
    driver.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    if args.command == "exec":
        return execute(args.plan)
    if args.command == "list":
        for path in args.pages:
            page = parse(path)
            for block in page.blocks:
                state = (
                    "skipped: " + block.skip if block.skip else "runs" if page.runnable(block) else "not run"
                )
                print(f"{block.page}:{block.line}  {block.lang or '-':8} {state}")
        return 0
    failed = 0
    for path in args.pages:
        workdir = args.workdir / path.stem if args.workdir else None
        outcome = run(path, workdir, full=args.full, write_figures=args.write_figures)
        status = "ok" if outcome.ok and not outcome.missing_figures else "FAILED"
        print(f"{outcome.page}: {status} in {outcome.seconds:.1f} s")
        if outcome.missing_figures:
            print(f"  figures not produced: {', '.join(outcome.missing_figures)}")
        if args.show:
            print(re.sub(r"[^\n]*\r", "", outcome.output))  # progress bars: their last state
        elif not outcome.ok:
            print(outcome.output[-6000:])
        failed += status != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
