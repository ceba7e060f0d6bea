"""``flowkit inpaint``: fill in missing pixels of test images with a trained run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from flowkit.cli.options import checkpoint_option, data_dir_option, run_dir_argument


@click.command()
@run_dir_argument
@click.option(
    "--images",
    "images_spec",
    default="0:16",
    show_default=True,
    metavar="INDICES",
    help="Which images of the split: a slice START:STOP[:STEP] (e.g. 0:16), a list (3,5,9) or one index.",
)
@click.option(
    "--mask",
    "mask_spec",
    default="center",
    show_default=True,
    metavar="NAME|FILE",
    help="Missing region: left, right, top, bottom, center, random, or a .npy/.png "
    "file whose non-zero/bright pixels are missing.",
)
@click.option(
    "--mask-fraction",
    type=float,
    default=None,
    help="Share of the image a named mask hides (default: 0.5; center: 0.25 of the "
    "area; random: probability per pixel).",
)
@click.option(
    "--steps", default=300, show_default=True, type=click.IntRange(min=0), help="Gradient-ascent steps."
)
@click.option(
    "--step-size",
    default=0.01,
    show_default=True,
    type=float,
    help="Step size α (the starting value for --schedule adaptive).",
)
@click.option(
    "--schedule",
    type=click.Choice(["adaptive", "constant", "harmonic"]),
    default="adaptive",
    show_default=True,
    help="adaptive: per image, ×1.25 after a step that raised log p, ×0.5 (step "
    "undone) otherwise; harmonic: α/(1 + i/decay_steps); constant: α.",
)
@click.option(
    "--decay-steps",
    default=100.0,
    show_default=True,
    type=float,
    help="Steps until the harmonic schedule halves α.",
)
@click.option(
    "--init",
    type=click.Choice(["noise", "mean"]),
    default="noise",
    show_default=True,
    help="Start of the missing pixels: uniform noise over [0, 1], or each image's mean observed value.",
)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the noise start and of the random mask."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output PNG. Default: RUN_DIR/inpaint-<mask>.png",
)
@checkpoint_option
@data_dir_option
def inpaint(
    run_dir: Path,
    images_spec: str,
    mask_spec: str,
    mask_fraction: float | None,
    steps: int,
    step_size: float,
    schedule: Literal["adaptive", "constant", "harmonic"],  # click.Choice
    decay_steps: float,
    init: Literal["noise", "mean"],
    split: str,
    seed: int,
    out: Path | None,
    checkpoint: Path | None,
    data_dir: Path | None,
) -> None:
    """Inpaint images of RUN_DIR's dataset by gradient ascent on log p (NICE §5.2).

    Only the missing pixels change; the command prints log p(x) before and after and writes a
    grid with one row each of originals, masked inputs (missing pixels in red) and inpaintings.
    """
    import torch

    from flowkit.errors import ConfigError
    from flowkit.figures import save_image_grid
    from flowkit.inpaint import (
        comparison_grid,
        log_likelihood,
        parse_indices,
        parse_mask,
    )
    from flowkit.inpaint import inpaint as run_inpaint
    from flowkit.runs import load_run

    out = out or run_dir / f"inpaint-{Path(mask_spec).stem}.png"
    if out.suffix != ".png":
        raise ConfigError(f"--out must end in .png, got {out.name!r}")
    run = load_run(run_dir, checkpoint)
    data = run.load_data(data_dir)
    if not data.is_image:
        raise ConfigError(
            f"flowkit inpaint fills in pixels of images, but dataset "
            f"{data.name!r} has examples of shape {data.shape}; use an image "
            f"dataset run (e.g. digits, mnist)."
        )
    pool = data.test if split == "test" else data.train
    labels = data.test_labels if split == "test" else data.train_labels
    index = torch.tensor(parse_indices(images_spec, pool.shape[0]), dtype=torch.long)
    images = pool[index]
    context = labels[index] if labels is not None else None
    generator = torch.Generator().manual_seed(seed)
    mask = parse_mask(mask_spec, data.shape, images.shape[0], mask_fraction, generator)
    missing = mask.expand(images.shape)
    if not missing.any():
        raise ConfigError(
            f"--mask {mask_spec!r} hides no pixel of the chosen images; nothing "
            f"to inpaint. Use a larger --mask-fraction or another mask."
        )
    start = run_inpaint(run.model, images, mask, 0, init=init, generator=generator)
    result = run_inpaint(
        run.model,
        images,
        mask,
        steps,
        step_size,
        schedule=schedule,
        decay_steps=decay_steps,
        init=start,
        context=context,
    )
    log_p = [log_likelihood(run.model, x, context).mean().item() for x in (images, start, result)]
    errors = [(x - images)[missing].pow(2).mean().item() for x in (start, result)]

    click.echo(
        f"inpainted {images.shape[0]} {split} images of {data.name} (mask "
        f"{mask_spec!r}: {missing.float().mean().item():.1%} of the pixels missing), "
        f"{steps} steps ({schedule}, step size {step_size:g}), start: {init}"
    )
    click.echo("log p(x) in nats, mean over the images:")
    click.echo(f"  original        {log_p[0]:12.2f}")
    click.echo(f"  before (start)  {log_p[1]:12.2f}")
    click.echo(f"  after           {log_p[2]:12.2f}")
    click.echo(f"mean squared error on the missing pixels: before {errors[0]:.4f}, after {errors[1]:.4f}")
    tiles, nrow = comparison_grid(images, result, missing)
    save_image_grid(tiles, out, nrow=nrow)
    click.echo(f"wrote {out} (rows: original, masked input, inpainted)")
