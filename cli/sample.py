"""``flowkit sample``: draw samples from a trained run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowkit.cli.options import checkpoint_option, run_dir_argument

if TYPE_CHECKING:  # imported when a command runs, not when the command line starts
    import numpy as np
    from torch import Tensor


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """``--temperature``: click's ``FloatRange`` lets ``nan`` and ``inf`` through."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number.", ctx, param)
    return value


@click.command()
@run_dir_argument
@click.option(
    "-n", "num", default=64, show_default=True, type=click.IntRange(min=1), help="Number of samples."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output file: .png (grid or scatter plot), .pt (tensor), .npy (array) or "
    ".csv (vector data, one sample per row). Default: RUN_DIR/samples.png",
)
@click.option(
    "--temperature",
    "-T",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    callback=_finite,
    help="Scale of the prior noise (Glow §5), a finite number > 0.",
)
@click.option(
    "--label",
    type=click.IntRange(min=0),
    default=None,
    help="Class label for class-conditional models (default: cycle through classes).",
)
@click.option(
    "--context",
    "context_spec",
    default=None,
    metavar="VALUES|FILE.npy",
    help="The context of a conditional model: comma-separated numbers (one context "
    'for every sample, e.g. "0.3,1.2") or a .npy file with one row per sample.',
)
@checkpoint_option
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
def sample(
    run_dir: Path,
    num: int,
    out: Path | None,
    temperature: float,
    label: int | None,
    context_spec: str | None,
    checkpoint: Path | None,
    seed: int,
) -> None:
    """Sample from the model of RUN_DIR and write a PNG grid (images) or plot (2-D), or the
    samples themselves (.pt, .npy, .csv)."""
    import numpy as np
    import torch

    from flowkit.atomic import atomic_write
    from flowkit.errors import ConfigError
    from flowkit.figures import save_image_grid
    from flowkit.metrics.likelihood import model_dtype
    from flowkit.runs import load_run

    out = out or run_dir / "samples.png"
    if out.suffix not in (".png", ".pt", ".npy", ".csv"):
        raise ConfigError(f"--out must end in .png, .pt, .npy or .csv, got {out.name!r}")
    run = load_run(run_dir, checkpoint)
    torch.manual_seed(seed)
    context = None
    context_shape = run.meta.context_shape
    if label is not None:
        if not run.meta.num_classes:
            raise ConfigError(
                f"--label {label}: this run's dataset has no class labels, so there is no class "
                f"to draw from; leave out --label"
            )
        if not 0 <= label < run.meta.num_classes:
            raise ConfigError(
                f"--label must be a class in 0..{run.meta.num_classes - 1} for this run, got {label}"
            )
        context = torch.full((num,), label, dtype=torch.long, device=run.model.device)
    if context_spec is not None:
        if context_shape is None:
            raise ConfigError(
                "--context: this run's model has no real-valued context (it models p(x)"
                + (", conditioned on class labels: use --label" if run.meta.num_classes else "")
                + "); drop --context"
            )
        given_n = (
            click.get_current_context().get_parameter_source("num") is click.core.ParameterSource.COMMANDLINE
        )
        rows = _read_context(context_spec, tuple(context_shape), num, given_n)
        num = rows.shape[0]
        context = torch.as_tensor(rows).to(run.model.device, model_dtype(run.model))
    elif context_shape is not None:
        k = math.prod(context_shape)
        example = ",".join(["0.0"] * k) if k <= 8 else "FILE.npy"
        raise ConfigError(
            f"this run's model is conditional on a context of shape {tuple(context_shape)}: pass "
            f"--context {example} (comma-separated, one context for every sample) or --context "
            f"FILE.npy (one row per sample)"
        )
    if out.suffix == ".png" and not (len(run.meta.shape) == 3 or run.meta.shape == (2,)):
        raise ConfigError(f"cannot draw data of shape {run.meta.shape} as PNG; use --out .npy, .csv or .pt")
    if out.suffix == ".csv" and len(run.meta.shape) != 1:
        raise ConfigError(
            f"--out .csv writes vectors, one per row; data of shape {run.meta.shape} needs .npy or .pt"
        )
    with torch.inference_mode():
        x = run.model.sample(num, context, temperature=temperature).cpu()
    # every output is written atomically: a full disk or a crash leaves no partial file
    if out.suffix == ".pt":
        atomic_write(out, lambda fh: torch.save(x, fh))
    elif out.suffix == ".npy":
        atomic_write(out, lambda fh: np.save(fh, x.numpy()))
    elif out.suffix == ".csv":
        atomic_write(out, lambda fh: np.savetxt(fh, x.double().numpy(), delimiter=",", fmt="%.9g"))
    elif len(run.meta.shape) == 3:
        save_image_grid(x, out)
    else:
        _scatter(x, out)
    click.echo(f"wrote {num} samples to {out}")


def _read_context(spec: str, shape: tuple[int, ...], num: int, num_given: bool) -> np.ndarray:
    """Context rows ``(n, *shape)`` from ``"v1,v2,..."`` (repeated ``num`` times) or a .npy file.

    A file with several rows sets the number of samples (``-n``, if given, must agree).
    """
    import numpy as np

    from flowkit.errors import ConfigError

    k = math.prod(shape)
    if spec.endswith(".npy") or Path(spec).is_file():
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"--context: file {spec!r} not found")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ConfigError(f"--context: {spec!r} is not a readable .npy array ({exc})") from exc
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            raise ConfigError(f"--context: {spec!r} must hold numbers, one row per sample")
        if array.size == k and array.shape in (shape, (k,)):  # a single context
            rows = array.reshape(1, k)
        elif array.shape[1:] == shape or (array.ndim == 2 and array.shape[1] == k):
            rows = array.reshape(array.shape[0], k)
        else:
            raise ConfigError(
                f"--context: {spec!r} has shape {array.shape}, but the model's context has shape "
                f"{shape}: the file needs one row of {k} value(s) per sample, shape (n, "
                f"{', '.join(map(str, shape))})"
            )
        if rows.shape[0] > 1 and num_given and num != rows.shape[0]:
            raise ConfigError(
                f"--context: {spec!r} holds {rows.shape[0]} contexts (one per sample) but -n "
                f"asks for {num} samples; drop -n or make them agree"
            )
    else:
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ConfigError(
                f'--context must be comma-separated numbers (e.g. "0.3,1.2") or a .npy file, got {spec!r}'
            ) from None
        if len(values) != k:
            raise ConfigError(
                f"--context has {len(values)} value(s) but the model's context has {k} "
                f"feature(s) (shape {shape}); give exactly {k} comma-separated numbers"
            )
        rows = np.asarray(values, dtype=np.float64).reshape(1, k)
    if not np.isfinite(rows).all():
        raise ConfigError("--context holds NaN or infinite values")
    if rows.shape[0] == 1:
        rows = np.repeat(rows, num, axis=0)
    return rows.reshape(rows.shape[0], *shape).astype(np.float32)


def _scatter(x: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from flowkit.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3, alpha=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)
