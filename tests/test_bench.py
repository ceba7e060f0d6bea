"""``flowkit bench``: suite parsing, the cell matrix, running, skipping, resuming and the report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowkit.bench.report import fmt
from flowkit.bench.suite import BUILTIN_SUITES, Budget, load_suite, parse_filters
from flowkit.cli.main import cli
from flowkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
[suite]
description = "test suite"
rank_by = "test_nll"
baseline = { transform = "realnvp" }
python_path = ["."]

[base.train]
batch_size = 128
eval_every = 0
sample_every = 0
checkpoint_every = 10
threads = 1

[base.eval]
final_max_examples = 500

[matrix]
transform = ["realnvp", "glow", "nice"]
data = ["moons"]
budget = [20]
seed = [0, 1]

[[override]]
match = { transform = "realnvp" }
set = { "transform.num_blocks" = 2, "transform.hidden" = 16 }

[[exclude]]
match = { transform = "nice" }
reason = "left out on purpose"

[metrics]
n_samples = 200
sample_quality = false
reconstruction = false
throughput = false

[[python]]
name = "probe"
callable = "probe_cell:measure"
params = { scale = 3 }
"""

PROBE = """
def measure(scale: int, seed: int) -> list[dict]:
    return [{"library": "a", "value": 1.5 * scale + seed}, {"library": "b", "value": 2.0}]
"""


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "mini.toml"
    path.write_text(SUITE)
    (tmp_path / "probe_cell.py").write_text(PROBE)
    return path


def test_matrix_expands_with_overrides_and_exclusions(suite_file: Path) -> None:
    suite = load_suite(suite_file)
    ids = [c.id for c in suite.cells]
    assert len(ids) == 3 * 2 + 1
    assert "realnvp__mle__moons__20-steps__s0" in ids
    realnvp = next(c for c in suite.cells if c.id.startswith("realnvp"))
    assert realnvp.settings == {"transform.num_blocks": 2, "transform.hidden": 16}
    assert realnvp.group == "realnvp__mle__moons__20-steps"
    nice = [c for c in suite.cells if c.axes.get("transform") == "nice"]
    assert all(c.excluded == "left out on purpose" for c in nice)
    assert [c.id for c in suite.select(filters=("transform=glow",))] == [
        "glow__mle__moons__20-steps__s0",
        "glow__mle__moons__20-steps__s1",
    ]
    assert len(suite.select(only=("*__s1",))) == 3


def test_budgets_parse() -> None:
    assert Budget.parse(200) == Budget(steps=200)
    assert Budget.parse("200 steps") == Budget(steps=200)
    assert Budget.parse("1.5 min") == Budget(minutes=1.5)
    assert Budget.parse("90 s") == Budget(minutes=1.5)
    assert Budget.parse("2 min").overrides()["max_minutes"] == 2.0
    with pytest.raises(ConfigError, match="wall-clock"):
        Budget.parse("fast")


def test_bad_suites_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[matrix]\ntransfrom = ["realnvp"]\ndata = ["moons"]\n')
    with pytest.raises(ConfigError, match="Did you mean 'transform'"):
        load_suite(bad)
    bad.write_text("[metrics]\nfrechett = true\n")
    with pytest.raises(ConfigError, match="frechet"):
        load_suite(bad)
    bad.write_text("[suite\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="Did you mean 'quick'"):
        load_suite("quik", (BUILTIN_SUITES,))
    with pytest.raises(ConfigError, match="AXIS=VALUE"):
        parse_filters(("tranform=glow",))


def test_format() -> None:
    assert fmt(2.5981, 0.061, 2) == "2.598 ± 0.061"
    assert fmt(150.0, 0.0, 2) == "150"


def test_a_cell_trains_what_its_command_trains(tmp_path: Path) -> None:
    """The suite's [base] settings win over what a chosen plugin recommends (flow-matching
    recommends train.batch_size = 256), in the cell's config exactly as in its reported
    `flowkit run` command: the cnf cell of the mnist suite once trained at 256 while its
    command said 64."""
    import shlex

    from flowkit.bench.cell import cell_command, cell_config
    from flowkit.config import load_config

    path = tmp_path / "fm.toml"
    path.write_text(
        "[base.train]\nbatch_size = 64\nlr = 5e-4\n[base.eval]\nn_samples = 16\n"
        '[matrix]\ntransform = ["cnf"]\nobjective = ["flow-matching", "ot"]\ndata = ["moons"]\n'
        "budget = [10]\n"
    )
    suite = load_suite(path)
    for cell in suite.cells:
        config = cell_config(suite.base, cell, None)
        assert config["train"]["batch_size"] == 64 and config["train"]["lr"] == 5e-4
        assert config["eval"]["n_samples"] == 16
        args = shlex.split(cell_command(suite.base, cell))[2:]
        shortcuts = {args[i][2:]: args[i + 1] for i in range(0, len(args), 2) if args[i] != "--set"}
        sets = [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"]
        assert load_config(None, sets, **shortcuts) == config


def test_separation_says_whether_a_gap_exceeds_the_seed_noise() -> None:
    from flowkit.bench.report import separation

    # means 1.0 and 2.0, sd 0.1 over 3 seeds each: z = 1 / sqrt(2 * 0.01 / 3) ≈ 12
    assert separation((1.0, 0.1, 3), (2.0, 0.1, 3)) == "yes (z = 12.2)"
    # the same gap with sd 1.0: z ≈ 1.2, within the noise
    assert separation((1.0, 1.0, 3), (2.0, 1.0, 3)) == "no (z = 1.2)"
    assert separation((1.0, 0.0, 1), (2.0, 0.1, 3)) == "–"  # one seed: no spread to compare
    assert separation((1.0, 0.0, 3), (1.0, 0.0, 3)) == "no"


def test_bench_runs_skips_and_resumes(suite_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", str(suite_file), "--out", str(out), "--jobs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    status = {c["id"]: c["status"] for c in payload["cells"]}
    assert status["realnvp__mle__moons__20-steps__s0"] == "completed"
    assert status["glow__mle__moons__20-steps__s1"] == "invalid"
    assert status["nice__mle__moons__20-steps__s0"] == "excluded"
    assert status["probe__s0"] == "completed"
    probe = next(c for c in payload["cells"] if c["id"] == "probe__s0")
    assert probe["rows"][0]["value"] == 4.5
    group = next(g for g in payload["groups"] if g["axes"]["transform"] == "realnvp")
    assert group["metrics"]["test_nll"]["n"] == 2 and group["seeds"] == [0, 1]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["id"] for r in rows} >= {"realnvp__mle__moons__20-steps__s0", "probe__s0"}
    report = (out / "report.md").read_text()
    assert report.startswith("# Benchmark suite `mini`")
    assert "## Ranking" in report and "## Cells that did not run" in report
    assert "apart from the next?" in report  # realnvp has 2 seeds
    assert "Glow takes images" in report and "flowkit run --transform realnvp" in report
    # the machine and each cell's threads and execution paths (issue 21)
    from flowkit.execution.autotune import cpu_info

    assert payload["machine"]["isa_flags"] == cpu_info()["flags"]
    assert f"instruction-set flags: {' '.join(cpu_info()['flags'])}" in report
    assert "| probe__s0 | " in report.split("## Ranking")[0]  # threads and paths of each cell
    assert all("threads" in c["execution"] for c in payload["cells"] if c["status"] == "completed")
    assert (out / "figures" / "ranking.png").stat().st_size > 0
    # every reported command is a valid flowkit run command
    cmd = group["command"].split()
    assert cmd[:2] == ["flowkit", "run"]
    dry = runner.invoke(cli, [*cmd[1:], "--dry-run"])
    assert dry.exit_code == 0, dry.output

    # a re-run skips finished cells
    cell0 = out / "cells" / "realnvp__mle__moons__20-steps__s0"
    before = (cell0 / "result.json").read_text()
    again = runner.invoke(cli, ["bench", str(suite_file), "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "0 to run" in again.output
    assert (cell0 / "result.json").read_text() == before

    # a cut-off cell (checkpoint, no result) resumes from its checkpoint
    (cell0 / "result.json").unlink()
    ckpts = sorted((cell0 / "run" / "checkpoints").glob("step-*.pt"))
    for extra in ckpts[1:]:
        extra.unlink()
    assert ckpts[0].name == "step-00000010.pt"  # only the step-10 checkpoint is left
    resumed = runner.invoke(
        cli, ["bench", str(suite_file), "--out", str(out), "--quiet", "--only", "realnvp*s0"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in (cell0 / "log.txt").read_text()
    assert json.loads((cell0 / "result.json").read_text())["status"] == "completed"


def test_bench_list_and_dry_run(suite_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["bench", "--list", "--suites-dir", str(suite_file.parent)])
    assert listed.exit_code == 0 and "mini" in listed.output and "7 cells" in listed.output
    dry = runner.invoke(
        cli,
        ["bench", str(suite_file), "--dry-run", "--out", str(tmp_path / "x"), "--filter", "transform=glow"],
    )
    assert dry.exit_code == 0 and dry.output.count("to run") == 2
    missing = runner.invoke(
        cli, ["bench", str(suite_file), "--only", "nothing*", "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code != 0 and "no cell" in missing.output


def test_shipped_suites_parse() -> None:
    builtin = sorted(BUILTIN_SUITES.glob("*.toml"))
    assert {p.stem for p in builtin} >= {"quick", "toy2d", "mnist", "ood", "parallelism"}
    checkout = sorted((ROOT / "benchmarks" / "suites").glob("*.toml"))
    # one source: a suite is either built in or a checkout-only one, never both
    assert not {p.stem for p in builtin} & {p.stem for p in checkout}
    for path in builtin + checkout:
        suite = load_suite(path)
        assert suite.cells, path
    for path in builtin:  # built-in suites run from a wheel: no code outside the package
        suite = load_suite(path)
        assert not suite.meta["python_path"], path
        assert all(c.callable.startswith("flowkit.") for c in suite.cells if c.kind == "python")
        assert suite.ref == path.stem


def test_quick_suite_smoke(tmp_path: Path) -> None:
    """The shipped CI-sized suite runs and produces a well-formed report (issue: CI smoke test)."""
    out = tmp_path / "quick"
    result = CliRunner().invoke(cli, ["bench", "quick", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    status = {c["id"]: c["status"] for c in payload["cells"]}
    assert all(s in ("completed", "invalid") for s in status.values()), status
    assert sum(s == "completed" for s in status.values()) >= 7
    assert not any(c.get("metric_errors") for c in payload["cells"])
    report = (out / "report.md").read_text()
    for section in (
        "## Ranking",
        "## Likelihood",
        "## Sample quality",
        "## Reconstruction",
        "## Cost",
        "## cost-asymmetry",
        "## Commands",
    ):
        assert section in report, section
    assert (out / "figures" / "ranking.png").is_file()
    assert (out / "figures" / "samples-grid.png").is_file()
    # a built-in suite is named, not given by a path into site-packages
    assert "by `flowkit bench quick`" in report and "flowkit bench quick --only cost-asymmetry" in report


def test_cell_command_is_one_line_and_runs():
    """Array settings (e.g. Adam's betas) stay inline, so the reported command is copy-pastable."""
    import shlex

    from flowkit.bench.cell import cell_command
    from flowkit.bench.suite import Cell

    cell = Cell(
        "realnvp__mle__moons__20-steps__s0",
        "train",
        {
            "transform": "realnvp",
            "objective": "mle",
            "prior": "",
            "data": "moons",
            "budget": "20 steps",
            "seed": 0,
        },
        settings={"train.betas": [0.0, 0.9], "transform.hidden": 8},
    )
    command = cell_command({"train": {"lr": 1e-3}}, cell)
    assert "\n" not in command and "train.betas=[0.0, 0.9]" in command
    dry = CliRunner().invoke(cli, [*shlex.split(command)[1:], "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "betas = [\n    0.0,\n    0.9,\n]" in dry.output  # the resolved config took them


def test_python_table_moves_shared_columns_below():
    from flowkit.bench.report import _python_sections

    rows = [{"library": "a", "ms": 1.5, "threads": 2}, {"library": "b", "ms": 3.0, "threads": 2}]
    rec = {
        "kind": "python",
        "status": "completed",
        "rows": rows,
        "command": "cmd",
        "axes": {"name": "speed", "seed": 0},
    }
    text = "\n".join(_python_sections([rec]))
    assert "| library | ms |" in text and "| b | 3 |" in text
    assert "Same for every row: threads 2." in text


def test_ood_measure_reports_other_sets_and_draws_the_histogram(tmp_path):
    """The out-of-distribution measure on a 2-D stand-in: trained on moons, scored on the
    checkerboard; per-example bits/dim, the 'more likely' share, and the figure."""
    import flowkit
    from flowkit.bench.measures import ood
    from flowkit.runs import load_dataset, load_run

    cfg = flowkit.load_config(
        "realnvp-moons",
        [
            "data.n_train=512",
            "data.n_test=256",
            "transform.num_layers=2",
            "transform.hidden=16",
            "train.steps=60",
            "train.batch_size=128",
        ],
    )
    flowkit.train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    data = load_dataset(run.config)
    metrics = ood(run, data, {"ood": ["checkerboard"], "n_samples": 20}, tmp_path, None)
    assert metrics["_figures"] == ["ood-histogram.png"]
    assert (tmp_path / "ood-histogram.png").stat().st_size > 0
    for key in (
        "in_dist_bpd",
        "in_dist_bpd_median",
        "ood_checkerboard_bpd",
        "ood_checkerboard_bpd_median",
        "ood_checkerboard_frac_more_likely",
    ):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["ood_checkerboard_frac_more_likely"] <= 1.0
    # moons-trained: the checkerboard is *less* likely on average
    assert metrics["ood_checkerboard_bpd"] > metrics["in_dist_bpd"]


def test_publish_copies_the_report_and_its_images(tmp_path):
    from flowkit.bench.publish import embedded_images, publish
    from flowkit.errors import FlowkitError

    out = tmp_path / "results"
    (out / "figures").mkdir(parents=True)
    (out / "cells" / "a").mkdir(parents=True)
    (out / "figures" / "ranking.png").write_bytes(b"png1")
    (out / "cells" / "a" / "hist.png").write_bytes(b"png2")
    report = (
        "# r\n![ranking](figures/ranking.png)\n![a](cells/a/hist.png)\n"
        "![gone](figures/missing.png)\n[not an image](figures/ranking.png)\n"
    )
    (out / "report.md").write_text(report)
    assert embedded_images(report) == ["figures/ranking.png", "cells/a/hist.png", "figures/missing.png"]
    written = publish(out, tmp_path / "docs")
    assert (tmp_path / "docs" / "report.md").read_text() == report
    assert (tmp_path / "docs" / "cells" / "a" / "hist.png").read_bytes() == b"png2"
    assert len(written) == 3  # two images and the report; the missing one is skipped
    (out / "report.md").write_text("![x](../secret.png)")
    with pytest.raises(FlowkitError, match="outside the results folder"):
        publish(out, tmp_path / "docs")
    with pytest.raises(FlowkitError, match="run the suite first"):
        publish(tmp_path / "nothing", tmp_path / "docs")
    # with the machine in results.json, a copy named after the machine is kept too
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps({"machine": {"cpu_model": "AMD EPYC 9R14", "cpu_capability": "AVX512"}})
    )
    written = publish(out, tmp_path / "docs")
    assert (tmp_path / "docs" / "report-amd-epyc-9r14-avx512.md").read_text() == report
    assert len(written) == 4


def test_a_changed_cell_does_not_resume_its_old_run(tmp_path):
    """A run trained for another config (the suite was edited) is not resumed: it is kept as
    run.previous-<time> and the cell trains afresh; a run of the same config is resumed."""
    import flowkit
    from flowkit.bench.cell import _set_aside_other_run

    small = [
        "data.n_train=256",
        "data.n_test=128",
        "transform.num_layers=2",
        "transform.hidden=8",
        "train.steps=4",
        "train.batch_size=32",
    ]
    cfg = flowkit.load_config("realnvp-moons", small)
    flowkit.train(cfg, tmp_path / "run", progress=False)
    longer = flowkit.load_config("realnvp-moons", [*small, "train.steps=8"])
    assert _set_aside_other_run(tmp_path / "run", longer) is None  # resumable change
    wider = flowkit.load_config("realnvp-moons", [*small, "transform.hidden=16"])
    kept = _set_aside_other_run(tmp_path / "run", wider)
    assert kept is not None and kept.name.startswith("run.previous-")
    assert (kept / "config.toml").is_file() and not (tmp_path / "run").exists()


def test_a_failed_cell_makes_the_bench_exit_non_zero(tmp_path: Path) -> None:
    """Every cell failing must not end with exit status 0; the report names the failure."""
    suite = tmp_path / "broken.toml"
    suite.write_text(
        '[suite]\ndescription = "a broken python cell"\npython_path = ["."]\n\n'
        '[[python]]\nname = "boom"\ncallable = "boom_cell:measure"\n'
    )
    (tmp_path / "boom_cell.py").write_text(
        "def measure(seed: int) -> list[dict]:\n    raise RuntimeError('the cell broke')\n"
    )
    # a folder holding another `flowkit/` must not change what the cells import
    (tmp_path / "flowkit").mkdir()
    (tmp_path / "flowkit" / "__init__.py").write_text("raise ImportError('wrong flowkit')\n")
    out = tmp_path / "results"
    import os

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        result = CliRunner().invoke(cli, ["bench", str(suite), "--out", str(out), "--quiet"])
    finally:
        os.chdir(cwd)
    assert result.exit_code != 0
    assert "1 of 1 cell(s) failed" in result.output and "the cell broke" in result.output
    assert "wrong flowkit" not in (out / "cells" / "boom__s0" / "stderr.txt").read_text()
    assert "the cell broke" in (out / "report.md").read_text()


def test_report_names_each_cells_threads_and_execution_paths():
    """The path each measured operation took, per cell (issue 21), and a forced setting."""
    from flowkit.bench.report import _paths_detail, _paths_summary, machine_line

    results = [
        {
            "id": "realnvp784__s0",
            "status": "completed",
            "execution": {
                "threads": 2,
                "overrides": {},
                "ops": {
                    "linear.train": [
                        {
                            "signature": "256|392|512|True|True|False",
                            "choice": "onednn",
                            "source": "measured",
                            "ms": {"onednn": 1.25, "aten": 2.5},
                        },
                        {"signature": "256|512|512|True|True|True", "choice": "aten", "source": "cache"},
                    ],
                },
            },
        },
        {
            "id": "glow28__s0",
            "status": "completed",
            "execution": {"threads": 1, "overrides": {"conv2d.infer": "aten (FLOWKIT_ONEDNN=0)"}, "ops": {}},
        },
        {"id": "old__s0", "status": "completed"},  # a result from before the record existed
    ]
    summary = "\n".join(_paths_summary(results))
    assert "| realnvp784__s0 | 2 | linear.train: aten ×1, onednn ×1 |" in summary
    assert "| glow28__s0 | 1 | conv2d.infer: aten (FLOWKIT_ONEDNN=0) |" in summary
    detail = "\n".join(_paths_detail(results))
    assert (
        "| realnvp784__s0 | linear.train | `256, 392, 512, True, True, False` | onednn | "
        "measured | onednn 1.25, aten 2.5 |" in detail
    )
    assert "| glow28__s0 | conv2d.infer | all | aten (FLOWKIT_ONEDNN=0) | set | – |" in detail
    line = machine_line(
        {"cpu_model": "AMD EPYC", "cpus": 2, "cpu_capability": "AVX2", "isa_flags": ["avx", "avx2", "fma"]}
    )
    assert line == ("AMD EPYC (2 CPUs; PyTorch CPU kernels AVX2; instruction-set flags: avx avx2 fma)")


def test_an_axis_value_can_be_a_label_and_setup_errors_are_invalid(tmp_path: Path) -> None:
    """An [[override]] that sets `objective.name` makes the axis value a label (issue 16: flow
    matching with OT pairs beside independent ones); an objective that refuses the transform in
    its setup (flow matching without a vector field) is reported invalid, not failed."""
    import shlex

    from flowkit.bench.cell import cell_command, cell_config, execute

    suite_path = tmp_path / "fm.toml"
    suite_path.write_text(
        "[base.train]\nthreads = 1\n\n"
        '[matrix]\ntransform = ["cnf", "realnvp"]\nobjective = ["flow-matching", "flow-matching-ot"]\n'
        'data = ["moons"]\nbudget = [2]\n\n'
        '[[override]]\nmatch = { objective = "flow-matching-ot" }\n'
        'set = { "objective.name" = "flow-matching", "objective.coupling" = "ot" }\n'
    )
    suite = load_suite(suite_path)
    cells = {c.id: c for c in suite.cells}
    ot = cells["cnf__flow-matching-ot__moons__2-steps__s0"]
    config = cell_config(suite.base, ot, None)
    assert config["objective"]["name"] == "flow-matching" and config["objective"]["coupling"] == "ot"
    independent = cell_config(suite.base, cells["cnf__flow-matching__moons__2-steps__s0"], None)
    assert independent["objective"]["coupling"] == "independent"
    parts = shlex.split(cell_command(suite.base, ot))
    assert parts[parts.index("--objective") + 1] == "flow-matching"  # a runnable command
    assert suite.select(filters=("objective=flow-matching-ot",)) == [
        ot,
        cells["realnvp__flow-matching-ot__moons__2-steps__s0"],
    ]
    bad = cells["realnvp__flow-matching__moons__2-steps__s0"]
    spec = {"cell": bad.to_dict(), "cell_dir": str(tmp_path / "bad"), "base": suite.base, "metrics": {}}
    record = execute(spec)
    assert record["status"] == "invalid" and "vector field" in record["reason"]


def test_class_accuracy_measures_models_conditional_through_the_transform(monkeypatch) -> None:
    """A cnf that reads the labels (prior unconditional) is class-conditional: the suite's
    class_accuracy measure must score it (it once looked only at the prior)."""
    from types import SimpleNamespace

    import flowkit.metrics as metrics
    from flowkit.bench import measures

    monkeypatch.setattr(metrics, "train_classifier", lambda data: ("clf", 0.98))
    monkeypatch.setattr(
        metrics, "class_sample_accuracy", lambda model, clf, per_class: 0.5 + per_class / 1000
    )
    data = SimpleNamespace(is_image=True, num_classes=10)
    prior = SimpleNamespace(conditional=False)
    run = SimpleNamespace(model=SimpleNamespace(class_conditional=True, prior=prior))
    out = measures.class_accuracy(run, data, {"n_samples": 1000}, Path("."), None)  # type: ignore[arg-type]
    assert out == {"sample_accuracy": 0.6, "classifier_test_accuracy": 0.98}
    run = SimpleNamespace(model=SimpleNamespace(class_conditional=False, prior=prior))
    assert measures.class_accuracy(run, data, {"n_samples": 1000}, Path("."), None) == {}  # type: ignore[arg-type]
