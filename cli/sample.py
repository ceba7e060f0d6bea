"""``flowkit sample``: draw samples from a trained run."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-n", "num", default=64, show_default=True, type=click.IntRange(min=1),
              help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file: .png (grid or scatter plot) or .pt (tensor). "
                   "Default: RUN_DIR/samples.png")
@click.option("--temperature", "-T", default=1.0, show_default=True, type=float,
              help="Scale of the prior noise (Glow §5).")
@click.option("--label", type=int, default=None,
              help="Class label for class-conditional models (default: cycle through classes).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A specific checkpoint file (default: the newest).")
@click.option("--seed", default=0, show_default=True, type=int)
def sample(run_dir: Path, num: int, out: Path | None, temperature: float, label: int | None,
           checkpoint: Path | None, seed: int) -> None:
    """Sample from the model of RUN_DIR and write a PNG grid (images) or plot (2-D)."""
    import torch

    from flowkit.errors import ConfigError
    from flowkit.figures import save_image_grid
    from flowkit.runs import load_run

    run = load_run(run_dir, checkpoint)
    torch.manual_seed(seed)
    context = None
    if label is not None:
        if not run.meta.num_classes or not 0 <= label < run.meta.num_classes:
            raise ConfigError(f"--label must be a class in 0..{(run.meta.num_classes or 1) - 1} "
                              f"for this run")
        context = torch.full((num,), label, dtype=torch.long, device=run.model.device)
    out = out or run_dir / "samples.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        x = run.model.sample(num, context, temperature=temperature).cpu()
    if out.suffix == ".pt":
        torch.save(x, out)
    elif out.suffix == ".png":
        if len(run.meta.shape) == 3:
            save_image_grid(x, out)
        elif run.meta.shape == (2,):
            _scatter(x, out)
        else:
            raise ConfigError(f"cannot draw data of shape {run.meta.shape} as PNG; use --out .pt")
    else:
        raise ConfigError(f"--out must end in .png or .pt, got {out.name!r}")
    click.echo(f"wrote {num} samples to {out}")


def _scatter(x, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3, alpha=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
