"""Inpainting (NICE §5.2): masks, index syntax, the ascent itself, and `flowkit inpaint`."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import invoke, ok, user_error

import flowkit
from flowkit.errors import ConfigError, ShapeError
from flowkit.inpaint import (
    comparison_grid,
    inpaint,
    load_mask_file,
    log_likelihood,
    named_mask,
    parse_indices,
    parse_mask,
)

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A small NICE trained for 150 steps on the 8×8 digits (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("inpaint") / "nice"
    config = flowkit.load_config(
        None,
        [
            "transform.hidden=64",
            "transform.num_hidden=2",
            "train.steps=150",
            "train.batch_size=64",
            "train.eval_every=1000",
            "train.sample_every=1000",
            "train.checkpoint_every=150",
            "eval.n_samples=4",
            "eval.max_examples=64",
            "eval.final_max_examples=64",
        ],
        transform="nice",
        data="digits",
    )
    flowkit.train(config, run_dir, progress=False, log=lambda _: None)
    return run_dir


@pytest.fixture(scope="module")
def trained(digits_run: Path):
    run = flowkit.load_run(digits_run)
    return run.model, run.load_data().test[:12]


# -- masks and indices -------------------------------------------------------------------------
def test_named_masks_hide_the_named_region():
    left = named_mask("left", SHAPE)[0, 0]
    assert left[:, :4].all() and not left[:, 4:].any()
    right = named_mask("right", SHAPE, fraction=0.25)[0, 0]
    assert right[:, 6:].all() and not right[:, :6].any()
    assert named_mask("top", SHAPE)[0, 0, :4].all() and not named_mask("top", SHAPE)[0, 0, 4:].any()
    assert named_mask("bottom", SHAPE)[0, 0, 4:].all()
    center = named_mask("center", SHAPE)[0, 0]
    assert center[2:6, 2:6].all() and int(center.sum()) == 16
    rand = named_mask("random", SHAPE, n=50, fraction=0.3, generator=torch.Generator().manual_seed(0))
    assert rand.shape == (50, 1, 8, 8) and abs(rand.float().mean().item() - 0.3) < 0.03
    assert not torch.equal(rand[0], rand[1])  # one draw per image


def test_bad_mask_names_and_fractions_are_explained():
    with pytest.raises(ConfigError, match=r"unknown mask 'lefft'\. Did you mean 'left'\?"):
        parse_mask("lefft", SHAPE, 1)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        named_mask("random", SHAPE, fraction=1.5)
    with pytest.raises(ShapeError, match="images"):
        named_mask("left", (64,))


def test_mask_files(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 1
    np.save(tmp_path / "m.npy", mask)
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    for name in ("m.npy", "m.png"):
        loaded = parse_mask(str(tmp_path / name), SHAPE, 4)
        assert loaded.shape == (1, 8, 8) and torch.equal(loaded[0], torch.from_numpy(mask == 1))
    np.save(tmp_path / "bad.npy", np.zeros((7, 8)))
    with pytest.raises(ShapeError, match=r"\(7, 8\).*\(8, 8\)"):
        load_mask_file(tmp_path / "bad.npy", SHAPE)
    with pytest.raises(flowkit.errors.DataError, match="does not exist"):
        parse_mask(str(tmp_path / "missing.npy"), SHAPE, 1)


def test_image_index_syntax():
    assert parse_indices("0:4", 10) == [0, 1, 2, 3]
    assert parse_indices("0:8:3", 10) == [0, 3, 6]
    assert parse_indices("3,5,9", 10) == [3, 5, 9]
    assert parse_indices("7", 10) == [7]
    assert parse_indices("-1", 10) == [9]
    for bad, needle in (
        ("0:99", "outside the 10 examples"),
        ("12", "outside"),
        ("a:b", "not an index specification"),
        ("4:4", "selects no images"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_indices(bad, 10)


# -- the method --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_name", ["left", "random"])
def test_observed_pixels_are_untouched_bit_for_bit(trained, dtype, mask_name):
    model, images = trained
    images = images.to(dtype)
    mask = parse_mask(mask_name, SHAPE, images.shape[0], generator=torch.Generator().manual_seed(1))
    out = inpaint(model, images, mask, steps=15, schedule="constant", step_size=0.002)
    observed = ~mask.expand(images.shape)
    assert out.dtype == dtype and out.shape == images.shape
    assert torch.equal(out[observed], images[observed])
    assert not torch.equal(out[~observed], images[~observed])
    assert out.min() >= 0 and out.max() <= 1  # projected onto the pixel domain


def test_inpainting_raises_the_log_likelihood(trained):
    model, images = trained
    mask = named_mask("center", SHAPE, fraction=0.4)
    start = inpaint(model, images, mask, steps=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(start, inpaint(model, images, mask, 0, generator=torch.Generator().manual_seed(0)))
    trace: list[float] = []
    adaptive = inpaint(
        model,
        images,
        mask,
        steps=60,
        init=start,
        callback=lambda i, x: trace.append(float(log_likelihood(model, x).mean())),
    )
    before, after = log_likelihood(model, start), log_likelihood(model, adaptive)
    assert (after >= before - 1e-3).all()  # the adaptive schedule never accepts a worse step
    assert after.mean() > before.mean() + 20.0
    assert all(b >= a - 1e-3 for a, b in itertools.pairwise(trace))
    harmonic = inpaint(model, images, mask, steps=60, step_size=0.005, schedule="harmonic", init=start)
    assert log_likelihood(model, harmonic).mean() > before.mean() + 20.0
    mean_start = inpaint(model, images, mask, steps=0, init="mean")
    hidden = mask.expand(images.shape)
    per_image = (images * ~hidden).sum((1, 2, 3)) / (~hidden).sum((1, 2, 3))
    assert torch.allclose(mean_start[0][hidden[0]], per_image[0].expand(int(hidden[0].sum())))


def test_inpaint_rejects_mismatched_inputs(trained):
    model, images = trained
    with pytest.raises(ShapeError, match="does not broadcast"):
        inpaint(model, images, torch.ones(3, 1, 8, 8, dtype=torch.bool), steps=1)
    with pytest.raises(ShapeError, match="takes images of shape"):
        inpaint(model, images[:, :, :4], torch.ones(1, 8, 8, dtype=torch.bool), steps=1)
    with pytest.raises(ConfigError, match="schedule"):
        inpaint(model, images, named_mask("left", SHAPE), steps=1, schedule="linear")  # type: ignore[arg-type]


def test_comparison_grid_layout():
    images = torch.rand(5, 1, 8, 8)
    missing = named_mask("left", SHAPE)
    tiles, nrow = comparison_grid(images, images, missing, per_row=3)
    assert nrow == 3 and tiles.shape == (2 * 3 * 3, 3, 8, 8)
    assert torch.equal(tiles[3, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # a red hole


# -- the command -------------------------------------------------------------------------------
def test_cli_writes_the_grid_and_reports_log_likelihoods(digits_run: Path, tmp_path: Path):
    out = tmp_path / "grid.png"
    result = invoke(
        "inpaint", str(digits_run), "--images", "0:6", "--mask", "bottom", "--steps", "25", "--out", str(out)
    )
    ok(result)
    assert out.is_file()
    assert Image.open(out).size[0] > Image.open(out).size[1]  # 6 columns, 3 rows
    for needle in ("original", "before (start)", "after", "log p(x)", "6 test images"):
        assert needle in result.output, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    before = float(lines["before"].split()[-1])
    after = float(lines["after"].split()[-1])
    assert after > before
    default = invoke(
        "inpaint",
        str(digits_run),
        "--images",
        "2,3",
        "--mask",
        "random",
        "--mask-fraction",
        "0.3",
        "--steps",
        "2",
    )
    ok(default)
    assert (digits_run / "inpaint-random.png").is_file()


def test_cli_errors_are_clear(digits_run: Path):
    user_error(
        invoke("inpaint", str(digits_run), "--mask", "centre", "--steps", "1"),
        "unknown mask 'centre'",
        "Did you mean 'center'?",
    )
    user_error(
        invoke("inpaint", str(digits_run), "--images", "0:100000", "--steps", "1"),
        "outside the",
        "examples of the split",
    )
    user_error(invoke("inpaint", str(digits_run), "--out", "grid.jpg"), "must end in .png")
