"""Figures: sample grids for images, density and sample plots for 2-D data (PNG).

Every figure is written atomically (:func:`flowkit.atomic.atomic_write`): a crash or a full disk
never leaves a truncated or zero-byte PNG that looks complete (a full disk is a
:class:`~flowkit.atomic.DiskFullError` naming the file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from flowkit.atomic import atomic_write
from flowkit.data.base import DataSplits
from flowkit.model import Flow


def image_grid(images: Tensor, nrow: int | None = None, min_tile: int = 32, pad: int = 2) -> Image.Image:
    """Tile ``images`` ``(N, C, H, W)`` with values in ``[0, 1]`` into one PIL image.

    Small images are enlarged by an integer factor (nearest neighbour) to at least ``min_tile``
    pixels, so 8×8 digits stay readable.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
        ] = x[i]
    arr = (grid * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0))
    scale = max(1, math.ceil(min_tile / max(h, w)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write :func:`image_grid` of ``images`` to ``path`` (PNG)."""
    image = image_grid(images, nrow)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG"))


@torch.inference_mode()
def plot_2d(
    model: Flow, data: DataSplits, path: str | Path, n_samples: int = 2000, resolution: int = 200
) -> Path:
    """Three panels for 2-D data: test data, the model's density, and model samples.

    For a model with a real-valued context the density is drawn at the first test example's
    context and the samples at the test examples' own contexts (one each), so they compare with
    the test data.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    was_training = model.training
    model.eval()
    test = data.test[:n_samples].numpy()
    lo = np.percentile(test, 0.5, axis=0)
    hi = np.percentile(test, 99.5, axis=0)
    margin = 0.15 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    xs = np.linspace(lo[0], hi[0], resolution)
    ys = np.linspace(lo[1], hi[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    dtype = next(iter(model.parameters()), model.prior._anchor).dtype
    contexts = data.test_context[:n_samples] if model.context_shape is not None else None

    def at_first_context(chunk: Tensor) -> Tensor | None:
        return None if contexts is None else contexts[:1].expand(chunk.shape[0], *contexts.shape[1:])

    dens = torch.cat(
        [
            model.log_prob(chunk.to(model.device, dtype), at_first_context(chunk)).exp().cpu()
            for chunk in grid.split(10000)
        ]
    ).reshape(resolution, resolution)
    if contexts is None:
        samples = model.sample(n_samples).float().cpu().numpy()
    else:
        samples = model.sample(contexts.shape[0], contexts).float().cpu().numpy()
    model.train(was_training)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].scatter(test[:, 0], test[:, 1], s=2, alpha=0.5)
    axes[0].set_title(f"{data.name}: test data")
    axes[1].imshow(
        dens.numpy(), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="viridis"
    )
    axes[1].set_title("model density" + ("" if contexts is None else " (test context 0)"))
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, color="tab:orange")
    axes[2].set_title("model samples" + ("" if contexts is None else " (test contexts)"))
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal", adjustable="box")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)


@torch.inference_mode()
def class_sample_grid(model: Flow, per_class: int = 10, temperature: float = 1.0) -> Tensor:
    """Samples of a class-conditional model, one row per class: ``(K·per_class, C, H, W)``."""
    k = int(model.num_classes or 1)
    labels = torch.arange(k, device=model.device).repeat_interleave(per_class)
    return model.sample(labels.numel(), labels, temperature=temperature)


@torch.inference_mode()
def latent_traversals(
    model: Flow, n_dims: int = 4, steps: int = 9, context: Tensor | None = None
) -> Tensor | None:
    """Decoded latents that walk the ``n_dims`` dimensions with the largest prior σ.

    Starting from the prior mean, each of the chosen dimensions in turn takes ``steps`` evenly
    spaced values in ``[μ − 2σ, μ + 2σ]`` (as in the GRN reference's plots). Returns
    ``(rows·steps, C, H, W)`` with one row per (class, dimension), or ``None`` when the prior has
    no Gaussian moments.
    """
    if context is None and model.class_conditional:
        context = torch.arange(model.num_classes, device=model.device)
    n = 1 if context is None else context.numel()
    moments = model.prior.moments(n, context)
    if moments is None:
        return None
    mean, std = (t.reshape(n, -1) for t in moments)
    dims = torch.argsort(std.mean(0), descending=True)[:n_dims]
    offsets = torch.linspace(-2.0, 2.0, steps, device=mean.device, dtype=mean.dtype)
    rows, row_context = [], []
    for i in range(n):
        for d in dims:
            z = mean[i].repeat(steps, 1)
            z[:, d] = mean[i, d] + offsets * std[i, d]
            rows.append(z)
            if context is not None:
                row_context.append(context[i].repeat(steps))
    z = torch.cat(rows).reshape(-1, *model.prior.shape)
    ctx = torch.cat(row_context) if row_context else None
    return model.decode(model.prior.project(z), ctx).clamp(0, 1)


@torch.inference_mode()
def reconstructions(model: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    """Pairs of rows: data, then ``decode(project(encode(x)))`` (through the prior's support)."""
    z, _ = model.encode(x, context)
    rec = model.decode(model.prior.project(z), context).clamp(0, 1)
    return torch.stack([x, rec]).reshape(-1, *x.shape[1:])


@torch.inference_mode()
def save_run_figures(
    model: Flow, data: DataSplits, folder: str | Path, n: int = 64, temperature: float = 1.0, prefix: str = ""
) -> list[Path]:
    """The figures of a run: samples (per class for class-conditional priors), latent traversals
    and reconstructions for image data; density and samples for 2-D data."""
    folder = Path(folder)
    was_training = model.training
    model.eval()
    paths = [save_samples_figure(model, data, folder / f"{prefix}samples.png", n, temperature)]
    if data.is_image:
        if model.class_conditional:
            paths.append(
                save_image_grid(
                    class_sample_grid(model, 10, temperature), folder / f"{prefix}class-samples.png", nrow=10
                )
            )
        trav = latent_traversals(model) if model.context_shape is None else None
        if trav is not None:
            paths.append(save_image_grid(trav, folder / f"{prefix}traversals.png", nrow=9))
        k = min(16, data.test.shape[0])
        x = data.test[:k].to(model.device, next(model.parameters()).dtype)
        cond = data.conditioning("test")
        ctx = cond[:k].to(model.device) if cond is not None else None
        paths.append(
            save_image_grid(reconstructions(model, x, ctx), folder / f"{prefix}reconstructions.png", nrow=k)
        )
    model.train(was_training)
    return paths


@torch.inference_mode()
def save_samples_figure(
    model: Flow, data: DataSplits, path: str | Path, n: int = 64, temperature: float = 1.0
) -> Path:
    """The run figure: a sample grid for images, density and samples for 2-D data."""
    if data.is_image:
        was_training = model.training
        model.eval()
        contexts = data.test_context[:n] if model.context_shape is not None else None
        samples = model.sample(
            n if contexts is None else contexts.shape[0], contexts, temperature=temperature
        )
        model.train(was_training)
        return save_image_grid(samples, path)
    if data.dim == 2:
        return plot_2d(model, data, path, n_samples=max(n, 2000))
    raise ValueError(f"no figure for data of shape {data.shape}")
