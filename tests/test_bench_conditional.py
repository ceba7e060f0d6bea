"""``flowkit bench conditional``: simulators, reference posteriors, C2ST, the runner and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from flowkit.bench.conditional import reference as ref
from flowkit.bench.conditional.c2st import c2st
from flowkit.bench.conditional.models import ROWS
from flowkit.bench.conditional.report import step_ratios
from flowkit.bench.conditional.run import Settings, parse_sims, run_conditional
from flowkit.bench.conditional.tasks import DTYPE, TASKS, generator
from flowkit.cli.main import cli
from flowkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference samples are cached in a per-test folder, never in the user's cache."""
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", list(TASKS))
def test_simulator_shapes_and_fixed_observations(name: str):
    task = TASKS[name]
    theta, x = task.joint(7, generator("shapes", name))
    assert theta.shape == (7, task.theta_dim) and x.shape == (7, task.x_dim)
    assert theta.dtype == DTYPE and torch.isfinite(x).all()
    assert torch.isfinite(task.log_prior(theta)).all()
    _, obs = task.observations(3)
    _, again = task.observations(3)
    assert obs.shape == (3, task.x_dim) and torch.equal(obs, again)


def test_slcp_simulator_matches_its_likelihood():
    task = TASKS["slcp"]
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=DTYPE)
    x = task.simulate(theta.expand(20000, 5), generator("slcp-moments"))
    pts = x.reshape(-1, 4, 2).reshape(-1, 2)
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=DTYPE)
    assert torch.allclose(pts.mean(0), theta[0, :2], atol=0.03)
    assert torch.allclose(torch.cov(pts.T), cov, rtol=0.05, atol=0.01)
    mvn = torch.distributions.MultivariateNormal(theta[0, :2], cov)
    expected = mvn.log_prob(x[:5].reshape(5, 4, 2)).sum(-1)
    assert torch.allclose(task.log_likelihood(theta.expand(5, 5), x[:5]), expected)


def test_gaussian_linear_posterior_matches_brute_force():
    task = TASKS["gaussian-linear"]
    _, obs = task.observations(1)
    x = obs[0]
    mean, cov = ref.gaussian_linear_posterior(task, x)
    assert torch.allclose(mean, x / 2) and torch.allclose(cov, 0.05 * torch.eye(10, dtype=DTYPE))
    # Bayes' rule by quadrature, coordinate by coordinate (prior and likelihood factorise)
    t = torch.linspace(-3, 3, 60001, dtype=DTYPE)[:, None]
    logp = -0.5 * t**2 / task.prior_var - 0.5 * (x - t) ** 2 / task.noise_var  # (grid, 10)
    w = torch.softmax(logp, 0)
    q_mean = (w * t).sum(0)
    q_var = (w * (t - q_mean) ** 2).sum(0)
    assert torch.allclose(q_mean, mean, atol=1e-6)
    assert torch.allclose(q_var, torch.diagonal(cov), rtol=1e-4)
    # the general formula with a correlated prior, against a 2-d grid
    prior_cov = torch.tensor([[0.3, 0.2], [0.2, 0.4]], dtype=DTYPE)
    noise_cov = torch.tensor([[0.1, -0.03], [-0.03, 0.2]], dtype=DTYPE)
    prior_mean, x2 = torch.tensor([0.1, -0.2], dtype=DTYPE), torch.tensor([0.5, 0.4], dtype=DTYPE)
    m2, c2 = ref.gaussian_posterior(prior_mean, prior_cov, noise_cov, x2)
    g = torch.linspace(-3, 3, 801, dtype=DTYPE)
    pts = torch.cartesian_prod(g, g)
    logp = torch.distributions.MultivariateNormal(prior_mean, prior_cov).log_prob(
        pts
    ) + torch.distributions.MultivariateNormal(pts, noise_cov).log_prob(x2)
    w = torch.softmax(logp, 0)[:, None]
    g_mean = (w * pts).sum(0)
    g_cov = (w * (pts - g_mean)).T @ (pts - g_mean)
    assert torch.allclose(g_mean, m2, atol=1e-4) and torch.allclose(g_cov, c2, atol=1e-4)
    # the closed-form log-density (reference NLL) agrees with torch's MultivariateNormal
    theta = task.sample_prior(4, generator("gl-logpdf"))
    mvn = torch.distributions.MultivariateNormal(mean, cov)
    assert torch.allclose(
        ref.gaussian_linear_log_posterior(task, theta, x.expand(4, 10)), mvn.log_prob(theta)
    )


def test_c2st_is_half_for_identical_and_one_for_disjoint():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 2, generator=gen)
    b = torch.randn(400, 2, generator=gen)
    same = c2st(a, b, folds=3)
    apart = c2st(a, b + 20.0, folds=3)
    assert abs(same - 0.5) < 0.08
    assert apart > 0.97
    assert c2st(a, torch.full_like(b, float("nan")), folds=3) > 0.97  # a diverged flow


def test_two_moons_reference_is_exact_and_resimulates():
    task = TASKS["two-moons"]
    _, obs = task.observations(2)
    for x in obs:
        samples, _info = ref.sample_two_moons(task, x, 5000, generator("moons", 0))
        assert samples.shape == (5000, 2) and (samples.abs() <= 1).all()
        # every sample explains x: the simulator's noise it implies is in its support
        u = x - task.mean_shift(samples) - torch.tensor([task.shift, 0.0], dtype=DTYPE)
        r = u.norm(dim=-1)
        assert (u[:, 0] > 0).all() and ((r - 0.1).abs() < 0.06).all()
        assert torch.isfinite(task.log_likelihood(samples, x.expand(5000, 2))).all()
        grid = ref.grid_posterior(task, x, 5000, generator("moons-grid"), cells=500)
        assert torch.allclose(samples.mean(0), grid.mean(0), atol=0.03)
        assert torch.allclose(samples.std(0), grid.std(0), rtol=0.1)


def test_inverse_kinematics_reference_resimulates_and_matches_abc():
    task = TASKS["inverse-kinematics"]
    _, obs = task.observations(2)
    y = obs[1]
    samples, info = ref.sample_inverse_kinematics(task, y, 400, generator("ik"), chunk=200_000)
    err = (task.forward(samples) - y).norm(dim=-1)
    assert samples.shape == (400, 4) and float(err.max()) <= ref.IK_EPSILON * 1.0001
    assert info["resim_error_max"] <= ref.IK_EPSILON * 1.0001
    abc = ref.abc_inverse_kinematics(task, y, 400, generator("ik-abc"), eps=0.05, chunk=200_000)
    assert abc.shape[0] == 400
    se = samples.std(0) / math.sqrt(400)
    assert ((samples.mean(0) - abc.mean(0)).abs() < 5 * se + 0.02).all()
    assert torch.allclose(samples.std(0), abc.std(0), rtol=0.25)
    # the paper's target is observation 0
    _, first = task.observations(1)
    assert first[0].tolist() == [1.5, 0.0]


def test_slcp_mcmc_tiny_mixes_and_matches_importance_sampling():
    task = TASKS["slcp"]
    _, obs = task.observations(2)
    x = obs[1]
    samples, info = ref.slcp_mcmc(task, x, 320, generator("mcmc"), chains=16, warmup=400, thin=20)
    assert samples.shape == (320, 5) and (samples.abs() <= 3).all()
    assert info["chains"] == 16 and info["draws_per_chain"] == 20
    assert 0.05 < info["acceptance"] < 0.6
    assert info["rhat_max"] < 1.2
    neg = (samples[:, 2:4] < 0).double().mean(0)
    assert ((neg > 0.35) & (neg < 0.65)).all()  # the four reflected modes are all visited
    cand = task.sample_prior(400_000, generator("sir"))
    cand[:, 2:4] = cand[:, 2:4].abs()
    w = torch.softmax(task.log_likelihood(cand, x), 0)
    assert 1 / (w**2).sum() > 50
    sir_mean = (w[:, None] * cand).sum(0)
    folded = samples.clone()
    folded[:, 2:4] = folded[:, 2:4].abs()
    assert torch.allclose(folded.mean(0), sir_mean, atol=0.25)
    assert float(ref.split_rhat(torch.randn(50, 8, 3, dtype=DTYPE)).max()) < 1.2


def test_reference_samples_are_cached(tmp_path: Path):
    task = TASKS["two-moons"]
    _, obs = task.observations(2)
    first, infos = ref.reference_samples(task, obs, 50)
    files = list((tmp_path / "cache" / "conditional-reference").glob("two-moons-*.pt"))
    assert len(files) == 2 and first.shape == (2, 50, 2) and infos[0]["method"] == "exact"
    again, _ = ref.reference_samples(task, obs, 50)
    assert torch.equal(first, again)


def test_step_ratios_are_against_the_fastest_peer_of_the_family():
    ratios = step_ratios(
        {"flowkit-maf": 3.0, "zuko-maf": 2.0, "nflows-maf": 4.0, "flowkit-realnvp": 1.0, "zuko-nsf": 5.0}
    )
    assert ratios == {
        "flowkit-maf": 1.5,
        "zuko-maf": 1.0,
        "nflows-maf": 2.0,
        "flowkit-realnvp": None,
        "zuko-nsf": 1.0,
    }


def test_targets_compare_best_flowkit_with_best_peer_and_step_ratios():
    from flowkit.bench.conditional.report import render, target_verdicts

    def cell(row: str, sims: int, c2st_value: float) -> dict:
        return {
            "task": "slcp",
            "row": row,
            "sims": sims,
            "status": "ok",
            "c2st": c2st_value,
            "nll": 1.0,
            "nll_median": 1.0,
            "library": ROWS[row].library,
        }

    settings = Settings(
        tasks=("slcp",),
        sims=(1000, 10000, 100000),
        rows=("flowkit-maf", "flowkit-nsf", "zuko-maf", "zuko-nsf"),
    )
    state = {
        "settings": settings,
        "cells": [
            cell("flowkit-maf", 1000, 0.90),
            cell("zuko-maf", 1000, 0.70),  # 1k: extra column
            cell("flowkit-nsf", 10000, 0.81),
            cell("zuko-nsf", 10000, 0.80),  # within 0.02
            cell("flowkit-maf", 100000, 0.75),
            cell("zuko-maf", 100000, 0.72),  # 0.03 behind
        ],
        "tasks": {
            "slcp": {
                "description": "d",
                "reference": "r",
                "paper": "p",
                "step_ms": {"flowkit-maf": 8.0, "zuko-maf": 10.0, "flowkit-nsf": 19.0, "zuko-nsf": 20.0},
                "step_cpu_ms": {"flowkit-maf": 7.0, "zuko-maf": 10.0},
                "optimizer": {"flowkit-maf": "fused", "zuko-maf": "foreach"},
                "timing_load_average": [3.1, 3.4],
            }
        },
    }
    v = target_verdicts(state)["slcp"]
    assert v["c2st"][1000]["met"] is False and not v["c2st"][1000]["target"]
    assert v["c2st"][10000]["met"] is True and v["c2st"][10000]["flowkit"] == (0.81, "flowkit-nsf")
    assert v["c2st"][100000]["met"] is False
    assert v["step_ratio"]["maf"] == {"ratio": 0.8, "met": True, "cpu_ratio": 0.7}
    assert v["step_ratio"]["spline"]["cpu_ratio"] is None
    assert v["step_ratio"]["spline"]["met"] is False
    assert v["unmet"] == ["C2ST 100k", "spline step"]
    text = render(state, {"machine": {"cpus": 2, "threads": 1}, "date": "today"})
    assert "## Targets" in text and "not met: C2ST 100k, spline step" in text
    assert "0.810 vs 0.800 ✓" in text and "0.900 vs 0.700 |" in text  # no verdict for 1k
    assert "0.80 ✓ (CPU 0.70)" in text and "| 0.95 ✗ |" in text and "CPU × peer" in text
    assert "here **fused**" in text and "**foreach**" in text and "load average 3.1–3.4" in text


def test_flowkit_rows_build_adam_through_flowkit_optim_and_peers_torch_default(
    monkeypatch: pytest.MonkeyPatch,
):
    from flowkit import optim
    from flowkit.bench.conditional.run import row_optimizer

    monkeypatch.setattr(optim, "_memo", {})
    monkeypatch.setattr(
        optim, "measure_implementations", lambda *a, **k: {"fused": 3.0, "foreach": 2.0, "for-loop": 1.0}
    )
    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    mine = row_optimizer("flowkit-maf", params, 1e-3)
    assert optim.implementation_of(mine) == "for-loop"  # the measured fastest, however odd
    peer = row_optimizer("zuko-maf", params, 1e-3)
    assert type(peer) is torch.optim.Adam and peer.defaults["foreach"] is None  # torch's default
    assert not peer.defaults["fused"] and peer.defaults["lr"] == mine.defaults["lr"] == 1e-3
    assert peer.defaults["betas"] == mine.defaults["betas"]


def test_settings_and_parsing():
    assert parse_sims("1000,1e4,100k") == (1000, 10000, 100000)
    with pytest.raises(ConfigError, match="did you mean 'two-moons'"):
        Settings(tasks=("two-moon",))
    with pytest.raises(ConfigError, match="unknown row"):
        Settings(rows=("zuko-maff",))
    s = Settings(tasks=("slcp",), sims=(1000,), steps=10)
    assert s.command().startswith("flowkit bench conditional --sims 1000 --steps 10 --tasks slcp")
    assert s.cell_fingerprint("slcp", "zuko-maf", 1000) != Settings(
        tasks=("slcp",), sims=(1000,), steps=11
    ).cell_fingerprint("slcp", "zuko-maf", 1000)


@pytest.mark.usefixtures("benchmarks_importable")
def test_runner_end_to_end_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import benchmarks.peers.conditional_peers as peers
    from flowkit.bench.conditional.models import MissingLibrary

    real_require = peers._require

    def nflows_missing(library: str) -> None:
        if library == "nflows":
            raise MissingLibrary("nflows is not installed (simulated)")
        real_require(library)

    monkeypatch.setattr(peers, "_require", nflows_missing)
    rows = ("flowkit-maf", "zuko-maf", "nflows-maf")
    settings = Settings(
        tasks=("inverse-kinematics",),
        sims=(200,),
        steps=6,
        rows=rows,
        observations=1,
        c2st_samples=100,
        c2st_folds=2,
        test_size=64,
        evals=2,
        timing_rounds=2,
        timing_steps=1,
    )
    out = tmp_path / "out"
    lines: list[str] = []
    run_conditional(settings, out, log=lines.append)
    result = json.loads((out / "results.json").read_text())
    cells = {c["row"]: c for c in result["cells"]}
    assert cells["nflows-maf"]["status"] == "not installed"
    import importlib.util

    have_zuko = importlib.util.find_spec("zuko") is not None  # the `bench` extra, not `dev`
    if not have_zuko:
        assert cells["zuko-maf"]["status"] == "not installed"
    for row in rows[:2] if have_zuko else rows[:1]:
        assert cells[row]["status"] == "ok", cells[row]
        assert 0.3 <= cells[row]["c2st"] <= 1.0 and math.isfinite(cells[row]["nll"])
        assert cells[row]["nll_median"] <= cells[row]["nll_max"]
        assert cells[row]["resim_error"] >= 0 and cells[row]["best_step"] in (3, 6)
    assert cells["flowkit-maf"]["optimizer"] in ("fused", "foreach", "for-loop")
    task = result["tasks"]["inverse-kinematics"]
    assert set(task["step_ms"]) <= set(rows[:2]) and result["machine"]["threads"] >= 1
    assert task["optimizer"]["flowkit-maf"] == cells["flowkit-maf"]["optimizer"]
    with open(out / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    report = (out / "report.md").read_text()
    assert "## inverse-kinematics" in report and "not installed" in report
    assert settings.command() in report and ROWS["zuko-maf"].label in report
    # a re-run reuses every stored cell
    lines.clear()
    run_conditional(settings, out, log=lines.append)
    assert not [line for line in lines if "sims:" in line]


def test_cli_conditional(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "bench",
            "conditional",
            "--dry-run",
            "--sims",
            "200",
            "--tasks",
            "two-moons",
            "--rows",
            "zuko-maf",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "two-moons__zuko-maf__200" in res.output and "to run" in res.output
    res = runner.invoke(cli, ["bench", "quick", "--sims", "200"])
    assert res.exit_code == 2 and "only apply to `flowkit bench conditional`" in res.output
    res = runner.invoke(cli, ["bench", "conditional", "--tasks", "moons", "--dry-run"])
    assert res.exit_code == 1 and "unknown conditional task" in res.output
    res = runner.invoke(cli, ["bench", "--list"])
    assert res.exit_code == 0 and "conditional" in res.output
