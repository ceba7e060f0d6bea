"""Figures: sample grids for images, density and sample plots for 2-D data, pairwise marginals
for vectors of more dimensions (PNG).

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
    test_context = data.test_context if model.context_shape is not None else None
    contexts = None if test_context is None else test_context[:n_samples]

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


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    if a.size == 0 or b.size == 0:
        return 0.0
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    gap = np.searchsorted(a, at, side="right") / a.size - np.searchsorted(b, at, side="right") / b.size
    return float(np.abs(gap).max())


def pairwise_dimensions(test: np.ndarray, samples: np.ndarray, max_dims: int = 5) -> list[int]:
    """The dimensions a pairwise-marginals figure shows: all of them when there are at most
    ``max_dims``, else the ``max_dims`` whose 1-D marginals differ most between ``samples`` and
    ``test`` (Kolmogorov–Smirnov distance; ties to the lower index), in increasing order."""
    dim = test.shape[1]
    if dim <= max_dims:
        return list(range(dim))
    gaps = [_ks_distance(test[:, d], samples[np.isfinite(samples[:, d]), d]) for d in range(dim)]
    worst = sorted(range(dim), key=lambda d: (-gaps[d], d))[:max_dims]
    return sorted(worst)


def dimension_labels(data: DataSplits) -> list[str]:
    """A name per data dimension of vector data: the table's column header when it has one
    (``info["column_names"]`` and ``info["x_columns"]``), else ``x[i]``."""
    dim = data.dim
    names, columns = data.info.get("column_names"), data.info.get("x_columns")
    if isinstance(names, list) and isinstance(columns, list) and len(columns) == dim:
        try:
            return [f"{names[c]} (x[{i}])" for i, c in enumerate(columns)]
        except (IndexError, TypeError):
            pass
    return [f"x[{i}]" for i in range(dim)]


@torch.inference_mode()
def plot_pairs(
    model: Flow,
    data: DataSplits,
    path: str | Path,
    n_samples: int = 2000,
    max_dims: int = 5,
    temperature: float = 1.0,
) -> Path:
    """Pairwise marginals of vector data of 3+ dimensions: model samples against test data.

    A ``k × k`` grid (``k ≤ max_dims`` dimensions, chosen by :func:`pairwise_dimensions` and
    labelled by :func:`dimension_labels`): 1-D histograms on the diagonal, 2-D scatter plots of
    both below it. Axes span the test data's 0.5–99.5 percentiles (samples beyond are cut off).
    A model with a real-valued context is sampled at the test examples' own contexts, one each.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if len(data.shape) != 1 or data.dim < 3:
        raise ValueError(
            f"pairwise marginals are for vectors of 3+ dimensions, not data of shape {data.shape}"
        )
    was_training = model.training
    model.eval()
    test = data.test[:n_samples].reshape(-1, data.dim).double().numpy()
    test_context = data.test_context if model.context_shape is not None else None
    contexts = None if test_context is None else test_context[:n_samples]
    if contexts is None:
        x = model.sample(n_samples, temperature=temperature)
    else:
        x = model.sample(contexts.shape[0], contexts.to(model.device), temperature=temperature)
    samples = x.reshape(x.shape[0], -1).double().cpu().numpy()
    model.train(was_training)

    dims = pairwise_dimensions(test, samples, max_dims)
    labels = dimension_labels(data)
    k = len(dims)
    lo = np.percentile(test, 0.5, axis=0)
    hi = np.percentile(test, 99.5, axis=0)
    margin = 0.1 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin, hi + margin
    finite = np.isfinite(samples).all(axis=1)
    shown = samples[finite]
    n_bins = int(np.clip(2 * np.sqrt(test.shape[0]), 8, 30))
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k, 2.3 * k), squeeze=False)
    for r, dr in enumerate(dims):
        for c, dc in enumerate(dims):
            ax = axes[r][c]
            if c > r:
                ax.axis("off")
                continue
            if r == c:
                bins = np.linspace(lo[dc], hi[dc], n_bins + 1)
                ax.hist(test[:, dc], bins=bins, density=True, histtype="step", color="tab:blue")
                ax.hist(shown[:, dc], bins=bins, density=True, histtype="step", color="tab:orange")
                ax.set_yticks([])
            else:
                ax.scatter(shown[:, dc], shown[:, dr], s=1.5, alpha=0.3, color="tab:orange", linewidths=0)
                ax.scatter(test[:, dc], test[:, dr], s=4, alpha=0.7, color="tab:blue", linewidths=0)
                ax.set_ylim(lo[dr], hi[dr])
            ax.set_xlim(lo[dc], hi[dc])
            ax.tick_params(labelsize=6)
            if r == k - 1:
                ax.set_xlabel(labels[dc], fontsize=8)
            if c == 0 and r > 0:
                ax.set_ylabel(labels[dr], fontsize=8)
    which = (
        f"all {data.dim} dimensions"
        if k == data.dim
        else f"{k} of {data.dim} dimensions: those whose marginals differ most (KS distance)"
    )
    legend = [
        f"{data.name}: pairwise marginals",
        which,
        f"blue: test data ({test.shape[0]})",
        f"orange: model samples ({shown.shape[0]}"
        + ("" if contexts is None else ", at the test contexts")
        + ")",
    ]
    if not finite.all():
        legend.append(f"{int((~finite).sum())} non-finite samples left out")
    fig.text(0.98, 0.98, "\n".join(legend), ha="right", va="top", fontsize=9)
    size = 2.3 * k  # fixed margins in inches: tight_layout would draw the whole figure twice
    fig.subplots_adjust(
        left=0.65 / size, bottom=0.55 / size, right=1 - 0.1 / size, top=1 - 0.1 / size, wspace=0.3, hspace=0.3
    )
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)


def has_samples_figure(data: DataSplits) -> bool:
    """Whether :func:`save_samples_figure` draws ``data``: images, 2-D data, vectors of 3+ dims."""
    return data.is_image or data.dim == 2 or (len(data.shape) == 1 and data.dim >= 3)


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
    if context is None and model.class_conditional and model.num_classes:  # the first implies the second
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
    and reconstructions for image data; density and samples for 2-D data; pairwise marginals for
    vectors of 3+ dimensions."""
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
    """The run figure: a sample grid for images, density and samples for 2-D data, pairwise
    marginals of samples against test data for vectors of 3+ dimensions (:func:`plot_pairs`)."""
    if data.is_image:
        was_training = model.training
        model.eval()
        test_context = data.test_context if model.context_shape is not None else None
        contexts = None if test_context is None else test_context[:n]
        samples = model.sample(
            n if contexts is None else contexts.shape[0], contexts, temperature=temperature
        )
        model.train(was_training)
        return save_image_grid(samples, path)
    if data.dim == 2:
        return plot_2d(model, data, path, n_samples=max(n, 2000))
    if len(data.shape) == 1 and data.dim >= 3:
        return plot_pairs(model, data, path, n_samples=max(n, 2000), temperature=temperature)
    raise ValueError(f"no figure for data of shape {data.shape}")
