"""User mistakes against a flowkit installation: a catalogue of cases, each classified (issue 17).

Each case is a mistake a user can make (or, as a control, a correct use that must keep working):
a ``flowkit`` command run in a fresh temporary folder, or a Python snippet run with
``python -c``, both in a subprocess with a timeout. A checker sorts every outcome into exactly one
of:

* ``clear error``: non-zero exit, no Python traceback, and the message names the problem;
* ``traceback``: a Python traceback, a raw ``KeyError``/``AttributeError``-style exception, or a
  non-zero exit whose message does not name the problem;
* ``silently wrong``: exit 0 although the input should have been refused, or a wrong result;
* ``handled``: exit 0 and the correct behaviour (for cases where accepting is right).

The kinds are those of issue 17: run folders and checkpoints, config numbers, CLI options and
names, the Python API, third-party plugins, benchmarks. Only the interpreter changes between
installations, so the same catalogue measures the code before and after a change::

    FLOWKIT_DATA=../shared/data nice -n 19 .venv/bin/python benchmarks/user_mistakes.py \\
        --flowkit-python .venv/bin/python --out /tmp/mistakes-after.json

``--flowkit-python`` is the interpreter of the installation under test; its ``flowkit`` command
is taken from the same folder unless ``--flowkit-exe`` names another. ``--only SUBSTRING`` runs
the matching cases. The JSON holds every case (kind, name, command, exit code, outcome, first
line of the message); the Markdown table (per kind: tried / clear error / traceback / silently
wrong / handled, and a total) goes to stdout. Runs are tiny (moons and digits, a few steps, small
networks, one thread); two cases start a second ``flowkit run`` beside a training one for a few
seconds, to test the one-writer rule.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLEAR, TRACEBACK, WRONG, HANDLED = "clear error", "traceback", "silently wrong", "handled"
OUTCOMES = (CLEAR, TRACEBACK, WRONG, HANDLED)
KINDS = (
    "run folders and checkpoints",
    "config numbers",
    "CLI options and names",
    "Python API",
    "third-party plugins",
    "benchmarks",
)
RAW_EXCEPTIONS = (
    "KeyError",
    "AttributeError",
    "IndexError",
    "TypeError",
    "ZeroDivisionError",
    "AssertionError",
    "RuntimeError",
    "NameError",
    "UnboundLocalError",
    "OverflowError",
    "ModuleNotFoundError",
    "ImportError",
    "UnpicklingError",
)
RAW_LINE = re.compile(r"^(?:\w+\.)*(" + "|".join(RAW_EXCEPTIONS) + r")\b:?", re.MULTILINE)

# small, fast models: NICE with one 16-unit hidden layer, no periodic evaluation or figures
MOONS = [
    "--data",
    "moons",
    "--transform",
    "nice",
    "--set",
    "transform.hidden=16",
    "--set",
    "transform.num_hidden=1",
    "--set",
    "train.eval_every=0",
    "--set",
    "train.sample_every=0",
    "--set",
    "train.checkpoint_every=0",
    "--set",
    "train.batch_size=64",
    "--set",
    "eval.final_max_examples=500",
    "--set",
    "train.steps=4",
    "-q",
]
DIGITS = [
    "--data",
    "digits",
    "--transform",
    "nice",
    "--prior",
    "class-gaussian",
    *MOONS[4:],
]


@dataclass
class Result:
    """What a subprocess did."""

    code: int | None  # None: timed out
    out: str
    seconds: float


@dataclass
class Ctx:
    """The installation under test and the shared fixtures."""

    python: str
    exe: str
    root: Path
    env: dict[str, str]
    timeout: float
    fixtures: dict[str, Path] = field(default_factory=dict)

    def flowkit(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Result:
        return run_process([self.exe, *args], cwd, {**self.env, **(env or {})}, self.timeout)

    def python_code(self, code: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
        wrapped = SNIPPET.format(code=repr(textwrap.dedent(code)))
        return run_process([self.python, "-c", wrapped], cwd, {**self.env, **(env or {})}, self.timeout)

    def fixture(self, name: str) -> Path:
        """A finished run folder (built once per harness run): moons, moons-wide, digits."""
        if name not in self.fixtures:
            where = self.root / "fixtures"
            where.mkdir(parents=True, exist_ok=True)
            args = {
                "moons": [*MOONS, "--name", "moons"],
                "moons-wide": [*MOONS, "--set", "transform.hidden=32", "--name", "moons-wide"],
                "digits": [*DIGITS, "--name", "digits"],
            }[name]
            res = self.flowkit(["run", *args, "--out", str(where)], where)
            if res.code != 0:
                raise SystemExit(f"fixture {name} failed (exit {res.code}):\n{res.out[-3000:]}")
            self.fixtures[name] = where / name
        return self.fixtures[name]

    def copy_run(self, name: str, cwd: Path, as_name: str | None = None) -> Path:
        dest = cwd / "runs" / (as_name or name)
        shutil.copytree(self.fixture(name), dest, ignore=shutil.ignore_patterns(".lock"))
        return dest


SNIPPET = """
import sys
code = {code}
try:
    exec(compile(code, "<case>", "exec"), {{"__name__": "__case__"}})
except BaseException as exc:
    try:
        from flowkit.errors import FlowkitError
        ours = isinstance(exc, FlowkitError)
    except BaseException:
        ours = False
    kind = type(exc).__module__ + "." + type(exc).__qualname__
    first = (str(exc).strip().splitlines() or [""])[0]
    print(f"EXCEPTION {{kind}} flowkit={{ours}}: {{first}}", file=sys.stderr)
    sys.exit(1)
print("SNIPPET OK")
"""


def run_process(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Result:
    """Run ``argv`` under ``nice`` in ``cwd``; stdout and stderr together."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            ["nice", "-n", "19", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, time.perf_counter() - t0)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Result(None, out, time.perf_counter() - t0)


# -- cases -------------------------------------------------------------------------------------
Action = Callable[[Ctx, Path], Result]
Check = Callable[[Ctx, Path, Result], tuple[bool, str]]


@dataclass
class Case:
    """One mistake (``refuse=True``) or one correct use (``refuse=False``)."""

    kind: str
    name: str
    command: str  # as a user would type it (``flowkit`` stands for the executable)
    action: Action
    keywords: tuple[str, ...] = ()  # a clear message names one of these (case-insensitive)
    refuse: bool = True
    check: Check | None = None  # exit 0: is the behaviour right? (refuse cases: was it said?)
    after_error: Check | None = None  # non-zero exit: is what was left behind right?


def cli(
    kind: str,
    name: str,
    args: list[str],
    keywords: tuple[str, ...],
    setup: tuple[str, ...] | list[str] = (),
    **kw: Any,
) -> Case:
    """A ``flowkit`` command in a fresh folder; ``setup`` names fixture runs copied into it first."""

    def action(ctx: Ctx, cwd: Path) -> Result:
        for fixture in setup:
            ctx.copy_run(fixture, cwd)
        return ctx.flowkit(args, cwd)

    shown = " ".join(a if re.fullmatch(r"[\w./=:,+*-]+", a) else repr(a) for a in args)
    return Case(kind, name, f"flowkit {shown}", action, keywords, **kw)


def snippet(kind: str, name: str, code: str, keywords: tuple[str, ...], **kw: Any) -> Case:
    def action(ctx: Ctx, cwd: Path) -> Result:
        return ctx.python_code(code, cwd)

    return Case(kind, name, "python -c " + repr(textwrap.dedent(code).strip()), action, keywords, **kw)


def number_case(key: str, value: str, keywords: tuple[str, ...] = ()) -> Case:
    leaf = key.split(".")[-1]
    args = ["run", *MOONS, "--set", f"{key}={value}", "--name", "r"]
    return cli("config numbers", f"{key}={value}", args, keywords or (leaf,))


def _said(*words: str) -> Check:
    """Exit 0 is right only if the output says one of ``words`` (e.g. a run that did nothing)."""

    def check(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
        found = [w for w in words if w.lower() in res.out.lower()]
        return bool(found), f"said {found[0]!r}" if found else "exit 0 and nothing said"

    return check


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_resume(steps: int) -> Check:
    def check(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
        recs = _records(cwd / "runs" / "moons")
        finals = [r for r in recs if r.get("kind") == "final"]
        steps_seen = [r["step"] for r in recs if "kind" not in r and "step" in r]
        dup = sorted({s for s in steps_seen if steps_seen.count(s) > 1})
        if len(finals) != 1:
            return False, f"metrics.jsonl has {len(finals)} final records"
        if dup:
            return False, f"metrics.jsonl repeats steps {dup}"
        if finals[0].get("step") != steps:
            return False, f"final record at step {finals[0].get('step')}, expected {steps}"
        return True, "one final record, no repeated steps"

    return check


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.pt"))


def _foreign(target: str, command: list[str]) -> Action:
    """Copy the moons checkpoint into ``target``'s folder under a newer step, then run."""

    def action(ctx: Ctx, cwd: Path) -> Result:
        run = ctx.copy_run(target, cwd, "target")
        src = _checkpoints(ctx.fixture("moons" if target != "moons" else "moons-wide"))[-1]
        for old in _checkpoints(run):
            old.unlink()
        shutil.copy(src, run / "checkpoints" / "step-00000004.pt")
        return ctx.flowkit(command, cwd)

    return action


def _damaged(how: str, command: list[str]) -> Action:
    def action(ctx: Ctx, cwd: Path) -> Result:
        run = ctx.copy_run("moons", cwd)
        ckpt = _checkpoints(run)[-1]
        data = ckpt.read_bytes()
        if how == "truncated":
            ckpt.write_bytes(data[: len(data) // 2])
        elif how == "empty":
            ckpt.write_bytes(b"")
        elif how == "pickle":
            code = f"""
            import fractions, torch
            state = torch.load({str(ckpt)!r}, weights_only=True)
            state["note"] = fractions.Fraction(1, 3)  # a Python object only pickle can restore
            torch.save(state, {str(ckpt)!r})
            """
            made = ctx.python_code(code, cwd)
            if made.code != 0:
                return made
        return ctx.flowkit(command, cwd)

    return action


def _with_writer(second: Callable[[Path], list[str]]) -> Action:
    """Start a long training run in runs/shared, wait for its first checkpoint, run ``second``."""

    def action(ctx: Ctx, cwd: Path) -> Result:
        args = [
            "run",
            *MOONS,
            "--set",
            "train.steps=1000000",
            "--set",
            "train.checkpoint_every=5",
            "--set",
            "train.threads=1",
            "--name",
            "shared",
        ]
        log = open(cwd / "writer.log", "w")  # noqa: SIM115 - closed below
        writer = subprocess.Popen(
            ["nice", "-n", "19", ctx.exe, *args],
            cwd=cwd,
            env=ctx.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + ctx.timeout
            while not _checkpoints(cwd / "runs" / "shared") and time.monotonic() < deadline:
                if writer.poll() is not None:
                    return Result(-1, "the first writer exited: " + (cwd / "writer.log").read_text(), 0.0)
                time.sleep(0.5)
            return ctx.flowkit(second(cwd), cwd)
        finally:
            os.killpg(writer.pid, signal.SIGTERM)  # the process group this case started
            try:
                writer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(writer.pid, signal.SIGKILL)
                writer.wait()
            log.close()

    return action


def _run_name_collision(ctx: Ctx, cwd: Path) -> Result:
    run = ctx.copy_run("moons", cwd)
    (cwd / "before.json").write_text(json.dumps(_fingerprint_files(run)))
    return ctx.flowkit(["run", *MOONS, "--set", "transform.hidden=8", "--name", "moons"], cwd)


def _fingerprint_files(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in [run / "config.toml", *_checkpoints(run)]}


def _check_collision(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    before = json.loads((cwd / "before.json").read_text())
    run = cwd / "runs" / "moons"
    after = _fingerprint_files(run)
    config = (run / "config.toml").read_text()
    if after != before or re.search(r"^hidden = 8$", config, re.MULTILINE):
        return False, "the second run wrote into the finished run's folder"
    return True, "the finished run is untouched"


def _orphan(ctx: Ctx, cwd: Path) -> Result:
    run = ctx.copy_run("moons", cwd)
    (run / "checkpoints" / ".step-00000009.pt.a1b2c3d4.tmp").write_bytes(b"partial")
    return ctx.flowkit(["run", "--resume", "runs/moons", "--set", "train.steps=6", "-q"], cwd)


def _check_orphan(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    left = list((cwd / "runs" / "moons").rglob("*.tmp"))
    return (not left), (f"left behind: {left[0].name}" if left else "no temporary file left")


def _diverge(ctx: Ctx, cwd: Path) -> Result:
    args = [
        "run",
        *MOONS,
        "--set",
        "train.lr=300",
        "--set",
        "train.warmup_steps=20",
        "--set",
        "train.steps=20",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.keep_checkpoints=20",
        "--name",
        "div",
    ]
    return ctx.flowkit(args, cwd)


def _check_last_good(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    """After a divergence: the newest checkpoint left must evaluate to a finite NLL."""
    run = cwd / "runs" / "div"
    if not _checkpoints(run):
        return True, "no checkpoint left"
    ev = ctx.flowkit(["eval", "runs/div", "--max-examples", "200"], cwd)
    nums = re.findall(r"(?:NLL|nll)\D{0,20}?(-?[\d.]+(?:e[-+]?\d+)?|nan|inf)", ev.out)
    if ev.code != 0:
        return False, f"eval of the 'last good' checkpoint failed: {_first_line(ev.out)}"
    if not nums or not all(math.isfinite(float(n)) for n in nums):
        return False, f"the checkpoint left evaluates to a non-finite NLL: {_first_line(ev.out)}"
    return True, "the checkpoint left evaluates to a finite NLL"


def _plugin(behaviour: str, command: list[str]) -> Action:
    """A throwaway third-party distribution (a .dist-info on PYTHONPATH, nothing installed)."""

    def action(ctx: Ctx, cwd: Path) -> Result:
        site = cwd / "site"
        info = site / "badplug-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[flowkit.transforms]\nbad-plug = badplug:Thing\n")
        (site / "badplug.py").write_text(behaviour + "\n")
        env = {"PYTHONPATH": str(site)}
        return ctx.flowkit(command, cwd, env)

    return action


def _lists_builtins(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    ok = "realnvp" in res.out
    named = "bad-plug" in res.out or "badplug" in res.out
    if not ok:
        return False, "exit 0 but the built-in transforms are not listed"
    return True, "built-ins listed" + (", the broken plugin named" if named else ", broken plugin not named")


SUITE_BASE = """
[suite]
description = "user-mistakes harness"
jobs = 1

[base.train]
batch_size = 64
eval_every = 0
sample_every = 0
checkpoint_every = 0
log_every = 5

[base.eval]
final_max_examples = 300

[base.transform]
hidden = 16
num_hidden = 1

[matrix]
transform = ["nice"]
objective = ["mle"]
data = ["moons"]
budget = [3]
seed = [0]

[metrics]
n_samples = 100
"""


def _bench(extra: str, shadow: bool = False) -> Action:
    def action(ctx: Ctx, cwd: Path) -> Result:
        (cwd / "suite.toml").write_text(SUITE_BASE + extra)
        if shadow:  # an old flowkit/ checkout in the folder the benchmark is started from
            (cwd / "flowkit").mkdir()
            (cwd / "flowkit" / "__init__.py").write_text('"""an unrelated old checkout"""\n')
        return ctx.flowkit(["bench", "suite.toml", "--out", "out", "-q"], cwd)

    return action


def _bench_completed(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    statuses = [json.loads(p.read_text()).get("status") for p in (cwd / "out").rglob("result.json")]
    if not statuses:
        return False, "no cell result written"
    bad = [s for s in statuses if s != "completed"]
    return (not bad), (f"exit 0 with cells {bad}" if bad else f"{len(statuses)} cell(s) completed")


def _bench_failed_said(ctx: Ctx, cwd: Path, res: Result) -> tuple[bool, str]:
    return False, "exit 0 although a cell failed"


API_FLOW = """
import flowkit
from flowkit.data import DataMeta
cfg = flowkit.load_config(data="moons", transform="nice", overrides=["transform.hidden=8"])
flow = flowkit.build_model(cfg, DataMeta(shape=(2,)))
"""


def catalogue() -> list[Case]:
    K0, _, K2, K3, K4, K5 = KINDS
    cases: list[Case] = []
    lock_words = ("in use", "lock", "another flowkit", "another process", "already running", "already holds")
    foreign_words = (
        "another run",
        "fingerprint",
        "belong",
        "foreign",
        "does not match",
        "different model",
        "does not fit",
    )
    cases += [
        Case(
            K0,
            "two writers on one run folder",
            "flowkit run ... --name shared  (while another `flowkit run --name shared` trains)",
            _with_writer(lambda cwd: ["run", *MOONS, "--name", "shared"]),
            lock_words,
        ),
        Case(
            K0,
            "--resume of a folder still training",
            "flowkit run --resume runs/shared --set train.steps=12  (while it trains)",
            _with_writer(lambda cwd: ["run", "--resume", "runs/shared", "--set", "train.steps=12", "-q"]),
            lock_words,
        ),
        Case(
            K0,
            "foreign checkpoint (moons in a digits run): sample",
            "cp runs/moons/checkpoints/step-4.pt runs/target/checkpoints/; flowkit sample runs/target",
            _foreign("digits", ["sample", "runs/target", "-n", "4", "--out", "s.png"]),
            foreign_words,
        ),
        Case(
            K0,
            "foreign checkpoint (moons in a digits run): eval",
            "cp moons checkpoint into runs/target/checkpoints/; flowkit eval runs/target",
            _foreign("digits", ["eval", "runs/target", "--max-examples", "50"]),
            foreign_words,
        ),
        Case(
            K0,
            "foreign checkpoint (moons in a digits run): --resume",
            "cp moons checkpoint into runs/target/checkpoints/; flowkit run --resume runs/target",
            _foreign("digits", ["run", "--resume", "runs/target", "--set", "train.steps=6", "-q"]),
            foreign_words,
        ),
        Case(
            K0,
            "foreign checkpoint, same data shape (wider moons net): sample",
            "cp runs/moons-wide/checkpoints/step-4.pt runs/target/checkpoints/; flowkit sample runs/target",
            _foreign("moons", ["sample", "runs/target", "-n", "4", "--out", "s.npy"]),
            foreign_words,
        ),
        Case(
            K0,
            "truncated checkpoint: sample",
            "truncate -s 50% runs/moons/checkpoints/step-4.pt; flowkit sample runs/moons",
            _damaged("truncated", ["sample", "runs/moons", "-n", "4", "--out", "s.npy"]),
            ("truncated", "corrupt", "incomplete"),
        ),
        Case(
            K0,
            "truncated checkpoint: --resume",
            "truncate -s 50% runs/moons/checkpoints/step-4.pt; flowkit run --resume runs/moons",
            _damaged("truncated", ["run", "--resume", "runs/moons", "--set", "train.steps=6", "-q"]),
            ("truncated", "corrupt", "incomplete", "no good checkpoint", "no usable"),
        ),
        Case(
            K0,
            "empty (0-byte) checkpoint: eval",
            ": > runs/moons/checkpoints/step-4.pt; flowkit eval runs/moons",
            _damaged("empty", ["eval", "runs/moons", "--max-examples", "50"]),
            ("empty", "0 bytes", "truncated", "corrupt"),
        ),
        Case(
            K0,
            "pickle-bearing checkpoint: sample",
            "add a fractions.Fraction to the checkpoint dict; flowkit sample runs/moons",
            _damaged("pickle", ["sample", "runs/moons", "-n", "4", "--out", "s.npy"]),
            ("pickle",),
        ),
        cli(
            K0,
            "--resume with fewer steps than done",
            ["run", "--resume", "runs/moons", "--set", "train.steps=2", "-q"],
            ("already", "fewer", "nothing to", "done"),
            ["moons"],
            check=_said("already", "fewer", "nothing to", "steps done"),
        ),
        cli(
            K0,
            "valid --resume to more steps (metrics not duplicated)",
            ["run", "--resume", "runs/moons", "--set", "train.steps=8", "-q"],
            (),
            ["moons"],
            refuse=False,
            check=_check_resume(8),
        ),
        cli(
            K0,
            "--resume with a lower learning rate (allowed)",
            ["run", "--resume", "runs/moons", "--set", "train.steps=6", "--set", "train.lr=5e-4", "-q"],
            ("lr",),
            ["moons"],
            refuse=False,
            check=lambda ctx, cwd, res: (
                "5e-4" in (cwd / "runs/moons/config.toml").read_text()
                or "0.0005" in (cwd / "runs/moons/config.toml").read_text(),
                "new lr recorded in config.toml",
            ),
        ),
        cli(
            K0,
            "--resume changing the architecture",
            ["run", "--resume", "runs/moons", "--set", "transform.hidden=32", "-q"],
            ("hidden", "conflict"),
            ["moons"],
        ),
        cli(
            K0,
            "--resume of a missing folder",
            ["run", "--resume", "runs/nope", "-q"],
            ("runs/nope", "not found", "no such", "does not exist"),
        ),
        Case(
            K0,
            "sample from a folder that is not a run",
            "mkdir empty; flowkit sample empty",
            lambda ctx, cwd: (cwd / "empty").mkdir() or ctx.flowkit(["sample", "empty", "-n", "4"], cwd),
            ("not a run", "no checkpoint", "config.toml", "empty"),
        ),
        Case(
            K0,
            "run --name of an existing finished run (no --resume)",
            "flowkit run ... --set transform.hidden=8 --name moons  (runs/moons exists)",
            _run_name_collision,
            ("exists", "already", "resume"),
            refuse=False,
            check=_check_collision,
        ),
        Case(
            K0,
            "orphaned temporary checkpoint file, then --resume",
            "touch runs/moons/checkpoints/.step-00000009.pt.a1b2c3d4.tmp; flowkit run --resume runs/moons",
            _orphan,
            (),
            refuse=False,
            check=_check_orphan,
        ),
        Case(
            K0,
            "divergence (lr=300 with warm-up): the 'last good' checkpoint is good",
            "flowkit run ... --set train.lr=300 --set train.warmup_steps=20 --set train.steps=20 "
            "--set train.checkpoint_every=2 --name div; flowkit eval runs/div",
            _diverge,
            ("nan", "infinite", "non-finite", "diverg"),
            check=_said("nan", "infinite", "non-finite", "diverg"),
            after_error=_check_last_good,
        ),
    ]
    cases += [
        number_case("train.steps", "0"),
        number_case("train.steps", "-5"),
        number_case("train.batch_size", "0"),
        number_case("train.log_every", "0"),
        number_case("train.eval_every", "-1"),
        number_case("train.checkpoint_every", "-1"),
        number_case("train.keep_checkpoints", "0"),
        number_case("train.threads", "-1"),
        number_case("train.warmup_steps", "-1"),
        number_case("train.lr", "nan"),
        number_case("train.lr", "-0.001"),
        number_case("train.seed", "-1"),
        number_case("eval.batch_size", "0"),
        number_case("eval.max_examples", "-1"),
        number_case("eval.n_samples", "0"),
        number_case("eval.temperature", "0"),
        number_case("transform.hidden", "0"),
    ]
    cases += [
        cli(K2, "sample -n -1", ["sample", "runs/moons", "-n", "-1"], ("-n",), ["moons"]),
        cli(
            K2,
            "sample -T 0",
            ["sample", "runs/moons", "-T", "0", "--out", "s.npy"],
            ("-T", "temperature"),
            ["moons"],
        ),
        cli(
            K2,
            "sample -T nan",
            ["sample", "runs/moons", "-T", "nan", "--out", "s.npy"],
            ("-T", "temperature"),
            ["moons"],
        ),
        cli(
            K2,
            "sample --label 99 (10 classes)",
            ["sample", "runs/digits", "--label", "99", "--out", "s.png"],
            ("label", "99"),
            ["digits"],
        ),
        cli(
            K2,
            "sample --label 3 (unlabelled moons)",
            ["sample", "runs/moons", "--label", "3", "--out", "s.npy"],
            ("label", "class"),
            ["moons"],
        ),
        cli(
            K2,
            "sample --seed -1",
            ["sample", "runs/moons", "--seed", "-1", "--out", "s.npy"],
            ("seed",),
            ["moons"],
        ),
        cli(
            K2,
            "eval --max-examples -3",
            ["eval", "runs/moons", "--max-examples", "-3"],
            ("max-examples", "max_examples"),
            ["moons"],
        ),
        cli(
            K2,
            "misspelt transform (realnvpp)",
            ["run", "--data", "moons", "--transform", "realnvpp", "-q"],
            ("realnvpp",),
        ),
        cli(K2, "misspelt dataset (moonz)", ["run", "--data", "moonz", "-q"], ("moonz",)),
        cli(
            K2,
            "misspelt objective in a sum (mle+0.1*oot)",
            ["run", "--data", "moons", "--objective", "mle+0.1*oot", "-q"],
            ("oot",),
        ),
        cli(K2, "unknown key (train.stepz)", ["run", *MOONS, "--set", "train.stepz=5"], ("stepz",)),
        cli(K2, "unknown section (trian.steps)", ["run", *MOONS, "--set", "trian.steps=5"], ("trian",)),
        cli(K2, "wrong type (train.steps=abc)", ["run", *MOONS, "--set", "train.steps=abc"], ("steps",)),
        cli(
            K2,
            "missing preset (--config no-such-preset)",
            ["run", "--config", "no-such-preset", "-q"],
            ("no-such-preset",),
        ),
    ]
    cases += [
        snippet(
            K3,
            "load_config: train.steps=-1",
            'import flowkit; flowkit.load_config("realnvp-moons", overrides=["train.steps=-1"])',
            ("steps",),
        ),
        snippet(
            K3,
            "load_config: train.lr=nan",
            'import flowkit; flowkit.load_config("realnvp-moons", overrides=["train.lr=nan"])',
            ("lr",),
        ),
        snippet(
            K3,
            "load_config: missing preset",
            'import flowkit; flowkit.load_config("no-such-preset")',
            ("no-such-preset",),
        ),
        snippet(
            K3,
            "load_config: misspelt transform",
            'import flowkit; flowkit.load_config(transform="realnvpp")',
            ("realnvpp",),
        ),
        snippet(
            K3,
            "load_config: unknown key",
            'import flowkit; flowkit.load_config(overrides=["train.stepz=3"])',
            ("stepz",),
        ),
        snippet(
            K3,
            "build_model: transform.hidden=-3 set after load_config",
            API_FLOW.replace("flow = ", "cfg['transform']['hidden'] = -3\nflow = "),
            ("hidden",),
        ),
        snippet(
            K3,
            "build_model: hand-written partial config",
            "import flowkit\nfrom flowkit.data import DataMeta\n"
            'flowkit.build_model({"transform": {"name": "nice"}}, DataMeta(shape=(2,)))',
            ("data", "prior", "missing", "section", "config"),
        ),
        snippet(
            K3, "Flow.sample(temperature=0)", API_FLOW + "flow.sample(8, temperature=0.0)", ("temperature",)
        ),
        snippet(
            K3,
            "Flow.sample(temperature=nan)",
            API_FLOW + "flow.sample(8, temperature=float('nan'))",
            ("temperature",),
        ),
        snippet(
            K3, "Flow.sample(temperature=-1)", API_FLOW + "flow.sample(8, temperature=-1.0)", ("temperature",)
        ),
        snippet(K3, "Flow.sample(-5)", API_FLOW + "flow.sample(-5)", ("n", "number", "negative", "samples")),
        snippet(
            K3,
            "load_run: missing folder",
            'import flowkit; flowkit.load_run("runs/nope")',
            ("runs/nope", "not found", "no such"),
        ),
        snippet(
            K3,
            "train(): unvalidated config with train.steps=-1",
            'import flowkit\ncfg = flowkit.load_config(data="moons", transform="nice", '
            'overrides=["transform.hidden=8"])\ncfg["train"]["steps"] = -1\n'
            'flowkit.train(cfg, run_dir="runs/api", progress=False)',
            ("steps",),
        ),
    ]
    cases += [
        Case(
            K4,
            "plugin calls sys.exit(0) at import: flowkit list transforms",
            "PYTHONPATH=site flowkit list transforms  (site/badplug.py: import sys; sys.exit(0))",
            _plugin("import sys\nsys.exit(0)", ["list", "transforms"]),
            ("bad-plug", "badplug"),
            refuse=False,
            check=_lists_builtins,
        ),
        Case(
            K4,
            "plugin calls sys.exit(3) at import: flowkit run --transform bad-plug",
            "PYTHONPATH=site flowkit run --data moons --transform bad-plug",
            _plugin("import sys\nsys.exit(3)", ["run", "--data", "moons", "--transform", "bad-plug", "-q"]),
            ("bad-plug", "badplug"),
        ),
        Case(
            K4,
            "plugin raises KeyboardInterrupt at import: flowkit list transforms",
            "PYTHONPATH=site flowkit list transforms  (site/badplug.py: raise KeyboardInterrupt)",
            _plugin("raise KeyboardInterrupt", ["list", "transforms"]),
            ("bad-plug", "badplug"),
            refuse=False,
            check=_lists_builtins,
        ),
        Case(
            K4,
            "plugin raises ImportError at import (control): flowkit list transforms",
            "PYTHONPATH=site flowkit list transforms  (site/badplug.py: import not_installed_xyz)",
            _plugin("import not_installed_xyz", ["list", "transforms"]),
            ("bad-plug", "badplug"),
            refuse=False,
            check=_lists_builtins,
        ),
    ]
    cases += [
        Case(
            K5,
            "bench: a cell that raises must make the command fail",
            "flowkit bench suite.toml  (suite: one tiny NICE cell + [[python]] json:loads('{'))",
            _bench('\n[[python]]\nname = "broken"\ncallable = "json:loads"\nparams = { s = "{" }\n'),
            ("failed", "broken"),
            check=_bench_failed_said,
        ),
        Case(
            K5,
            "bench: started from a folder holding a flowkit/ checkout",
            "mkdir flowkit; touch flowkit/__init__.py; flowkit bench suite.toml",
            _bench("", shadow=True),
            ("flowkit",),
            refuse=False,
            check=_bench_completed,
        ),
        Case(
            K5,
            "bench: unknown key in the suite file",
            "flowkit bench suite.toml  (suite has [suite] rank_byy = ...)",
            _bench_bad_key,
            ("rank_byy",),
        ),
    ]
    return cases


def _bench_bad_key(ctx: Ctx, cwd: Path) -> Result:
    text = SUITE_BASE.replace("jobs = 1", 'jobs = 1\nrank_byy = "test_nll"')
    (cwd / "suite.toml").write_text(text)
    return ctx.flowkit(["bench", "suite.toml", "--out", "out", "-q"], cwd)


# -- classification ----------------------------------------------------------------------------
def _first_line(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("warnings.warn", "Warning:"))]
    for ln in lines:  # the error line if there is one, else the first line
        if ln.startswith(("Error", "EXCEPTION", "error:")) or RAW_LINE.match(ln):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def classify(case: Case, ctx: Ctx, cwd: Path, res: Result) -> tuple[str, str]:
    """The outcome of ``case`` and a one-line reason."""
    out = res.out
    if res.code is None:
        return WRONG, f"no answer within {ctx.timeout:.0f} s (hang)"
    exc = re.search(r"^EXCEPTION (\S+) flowkit=(True|False): (.*)$", out, re.MULTILINE)
    if "Traceback (most recent call last)" in out:
        return TRACEBACK, "Python traceback"
    if "weights_only=False" in out:
        return TRACEBACK, "torch's raw message (weights_only hint)"
    if res.code == 0:
        if case.check is not None:
            good, why = case.check(ctx, cwd, res)
            if good:
                return HANDLED, why
            return WRONG, why
        if case.refuse:
            return WRONG, "exit 0 although the input should have been refused"
        return HANDLED, "exit 0"
    if exc is not None:
        kind, ours, msg = exc.group(1), exc.group(2) == "True", exc.group(3)
        if not ours and kind.rsplit(".", 1)[-1] in RAW_EXCEPTIONS:
            return TRACEBACK, f"raw {kind}"
        text = msg
    else:
        if RAW_LINE.search(out) and not re.search(r"^Error:", out, re.MULTILINE):
            return TRACEBACK, "raw exception message"
        text = out
    if case.keywords and not any(k.lower() in text.lower() for k in case.keywords):
        return TRACEBACK, "non-zero exit, but the message does not name the problem"
    if case.after_error is not None:
        good, why = case.after_error(ctx, cwd, res)
        if not good:
            return WRONG, why
    return CLEAR, "refused with a message naming the problem"


# -- main --------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = [
        "| kind | tried | clear error | traceback | silently wrong | handled |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    total = dict.fromkeys(OUTCOMES, 0)
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        counts = {o: sum(r["outcome"] == o for r in mine) for o in OUTCOMES}
        for o in OUTCOMES:
            total[o] += counts[o]
        lines.append(f"| {kind} | {len(mine)} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    lines.append(f"| **total** | **{len(rows)}** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flowkit-python", required=True, help="interpreter of the installation under test")
    parser.add_argument("--flowkit-exe", help="its flowkit command (default: beside the interpreter)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for every case")
    parser.add_argument("--work", type=Path, help="folder for the case folders (default: a new temp dir)")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per command")
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    args = parser.parse_args(argv)

    python = str(Path(args.flowkit_python).absolute())  # not resolved: a venv's python is a link
    exe = args.flowkit_exe or str(Path(python).parent / "flowkit")
    root = (args.work or Path(tempfile.mkdtemp(prefix="flowkit-mistakes-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    )
    # the shared data folder beside the checkout (../shared/data), unless $FLOWKIT_DATA says otherwise
    env.setdefault("FLOWKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ctx = Ctx(python, exe, root, env, args.timeout)

    version = run_process(
        [python, "-c", "import flowkit, torch; print(flowkit.__version__, torch.__version__)"], root, env, 120
    )
    rows: list[dict] = []
    cases = [c for c in catalogue() if not args.only or any(s in c.name for s in args.only)]
    for i, case in enumerate(cases):
        cwd = root / f"case-{i:02d}"
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir()
        try:
            res = case.action(ctx, cwd)
            outcome, why = classify(case, ctx, cwd, res)
        except SystemExit:
            raise
        except Exception as exc:  # a harness failure is reported, not hidden
            res = Result(-1, f"harness error: {type(exc).__name__}: {exc}", 0.0)
            outcome, why = TRACEBACK, "harness error"
        row = {
            "kind": case.kind,
            "name": case.name,
            "command": case.command,
            "exit_code": res.code,
            "outcome": outcome,
            "reason": why,
            "message": _first_line(res.out),
            "seconds": round(res.seconds, 1),
        }
        rows.append(row)
        print(
            f"[{i + 1}/{len(cases)}] {outcome:<14} {case.kind} / {case.name}: {row['message'][:110]}",
            file=sys.stderr,
        )
        if not args.keep:
            shutil.rmtree(cwd, ignore_errors=True)
    report = {
        "flowkit_python": python,
        "flowkit_exe": exe,
        "versions": version.out.strip(),
        "cases": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep and args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
