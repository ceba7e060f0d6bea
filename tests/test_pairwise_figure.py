"""Runs on vector data of 3+ dimensions write a pairwise-marginals figure (samples vs test data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flowkit
from flowkit.figures import dimension_labels, has_samples_figure, pairwise_dimensions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _table_run(tmp_path: Path, dim: int) -> tuple[Path, dict]:
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(120, dim)) @ rng.normal(size=(dim, dim)) + 2.0
    header = ",".join(f"col{i}" for i in range(dim))
    path = tmp_path / f"t{dim}.csv"
    np.savetxt(path, x, delimiter=",", header=header, comments="")
    config = flowkit.load_config(
        None,
        [
            f"data.path={path}",
            "train.steps=5",
            "train.eval_every=0",
            "train.sample_every=0",
            "train.device=cpu",
            "transform.hidden=8",
            "transform.num_layers=2",
            "eval.n_samples=200",
        ],
        transform="maf",
        data="table",
    )
    run_dir = tmp_path / f"run{dim}"
    summary = flowkit.train(config, run_dir, progress=False, log=lambda _: None)
    return run_dir, summary


@pytest.mark.parametrize("dim", [3, 6])
def test_table_run_writes_a_pairwise_figure(tmp_path: Path, dim: int):
    run_dir, summary = _table_run(tmp_path, dim)
    figure = run_dir / "samples.png"
    assert "samples.png" in summary["figures"]
    assert figure.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(figure) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(figure) as image:
        assert image.width > 300 and image.height > 300
    assert not list(run_dir.glob(".*.tmp"))  # written atomically: no temporary file left


def test_the_dimensions_shown():
    rng = np.random.default_rng(0)
    test = rng.normal(size=(400, 8))
    samples = rng.normal(size=(400, 8))
    assert pairwise_dimensions(test[:, :4], samples[:, :4]) == [0, 1, 2, 3]
    samples[:, 6] += 3.0  # the worst-fit marginals are the ones shown
    samples[:, 1] *= 4.0
    samples[:5, 2] = np.nan  # non-finite samples are ignored, not an error
    shown = pairwise_dimensions(test, samples, max_dims=5)
    assert len(shown) == 5 and shown == sorted(shown) and {1, 6} <= set(shown)


def test_dimension_labels_use_the_table_header(tmp_path: Path):
    from flowkit import registry

    path = tmp_path / "t.csv"
    path.write_text("a,b,c,d\n" + "\n".join(f"{i},{i % 3},{i * i % 5},{i % 2}" for i in range(30)) + "\n")
    data = registry.datasets.build(
        "table", {"path": str(path), "context_columns": [1]}, injected={"seed": 0, "data_dir": None}
    )
    assert has_samples_figure(data)
    assert dimension_labels(data) == ["a (x[0])", "c (x[1])", "d (x[2])"]
