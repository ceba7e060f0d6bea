"""Inpainting with a trained flow: projected gradient ascent on ``log p(x)`` over missing pixels.

Dinh, Krueger & Bengio 2015, "NICE: Non-linear Independent Components Estimation", §5.2: a
model trained only for density estimation fills in missing pixels ``x_H`` of an image whose
other pixels ``x_O`` are observed by maximising the exact log-likelihood over ``x_H`` alone::

    x_H ← clip(x_H + α_i ∇_{x_H} log p(x_O, x_H), domain)       i = 0 … steps − 1

The observed pixels never change; ``clip`` projects onto the data's domain (``[0, 1]`` for
images), and ``α_i`` follows a step-size schedule: constant, the harmonic decay
``α_i = α / (1 + i / decay_steps)``, or adaptive (per image, grown after a step that raised
``log p`` and halved, with the step undone, after one that lowered it). This module holds the
method (:func:`inpaint`), the masks it takes (:func:`named_mask`, :func:`load_mask_file`,
:func:`parse_mask`) and the index syntax of ``flowkit inpaint --images``
(:func:`parse_indices`).

Mask convention: ``True`` (or non-zero) marks a **missing** pixel, the one to fill in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flowkit.errors import ConfigError, DataError, ShapeError, did_you_mean
from flowkit.model import Flow

#: The named masks and the fraction of the image each hides by default.
DEFAULT_FRACTIONS: dict[str, float] = {
    "left": 0.5,
    "right": 0.5,
    "top": 0.5,
    "bottom": 0.5,
    "center": 0.25,
    "random": 0.5,
}
MASK_NAMES: tuple[str, ...] = tuple(DEFAULT_FRACTIONS)
MASK_SUFFIXES: tuple[str, ...] = (".npy", ".png")

Schedule = Literal["adaptive", "constant", "harmonic"]
SCHEDULES: tuple[str, ...] = ("adaptive", "constant", "harmonic")
Init = Literal["noise", "mean"]


# -- masks ---------------------------------------------------------------------------------------
def named_mask(
    name: str,
    shape: tuple[int, ...],
    n: int = 1,
    fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A boolean mask ``(n, 1, H, W)`` (``True`` = missing) for images of shape ``(C, H, W)``.

    ``left``/``right``/``top``/``bottom`` hide that side: ``round(fraction · W)`` columns or
    ``round(fraction · H)`` rows (default fraction 0.5). ``center`` hides a centred rectangle
    covering ``fraction`` of the area (default 0.25: half the height and half the width).
    ``random`` hides each pixel independently with probability ``fraction`` (default 0.5), drawn
    from ``generator`` separately for every image. Masks cover every channel of a pixel.
    """
    if name not in DEFAULT_FRACTIONS:
        raise ConfigError(
            f"unknown mask {name!r}.{did_you_mean(name, MASK_NAMES)} Named masks: "
            f"{', '.join(MASK_NAMES)}; or give the path of a {' or '.join(MASK_SUFFIXES)} file."
        )
    if len(shape) != 3:
        raise ShapeError(
            f"named masks are for images (C, H, W), but the data has shape "
            f"{tuple(shape)}; give a .npy mask of the data's shape instead."
        )
    frac = DEFAULT_FRACTIONS[name] if fraction is None else float(fraction)
    if not 0.0 < frac <= 1.0:
        raise ConfigError(f"the mask fraction must lie in (0, 1], got {frac}.")
    _, h, w = shape
    if name == "random":
        return torch.rand(n, 1, h, w, generator=generator) < frac
    mask = torch.zeros(h, w, dtype=torch.bool)
    rows, cols = max(1, round(frac * h)), max(1, round(frac * w))
    if name == "left":
        mask[:, :cols] = True
    elif name == "right":
        mask[:, w - cols :] = True
    elif name == "top":
        mask[:rows, :] = True
    elif name == "bottom":
        mask[h - rows :, :] = True
    else:  # center: a rectangle of side √fraction of each side
        ch, cw = max(1, round(math.sqrt(frac) * h)), max(1, round(math.sqrt(frac) * w))
        top, left = (h - ch) // 2, (w - cw) // 2
        mask[top : top + ch, left : left + cw] = True
    return mask.expand(n, 1, h, w).clone()


def load_mask_file(path: str | Path, shape: tuple[int, ...]) -> Tensor:
    """Read a mask file for images of shape ``shape = (C, H, W)``; ``True`` = missing.

    ``.npy``: an array of shape ``(H, W)``, ``(1, H, W)``, ``(C, H, W)`` or ``(N, C|1, H, W)``
    whose non-zero entries are missing. ``.png``: a grey-scale (or colour, averaged) image of
    size ``H × W`` whose bright pixels (≥ 128 of 255) are missing. Raises :class:`DataError` for
    an unreadable file and :class:`ShapeError` when the size does not match the data.
    """
    path = Path(path)
    if len(shape) != 3:
        raise ShapeError(
            f"mask files are for images (C, H, W), but the data has shape "
            f"{tuple(shape)}; pass a mask tensor to flowkit.inpaint.inpaint instead."
        )
    if path.suffix not in MASK_SUFFIXES:
        raise ConfigError(f"mask file {str(path)!r} must end in {' or '.join(MASK_SUFFIXES)}.")
    if not path.is_file():
        raise DataError(f"mask file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False) != 0
        else:
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img.convert("L")) >= 128
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read mask file {str(path)!r}: {exc}") from exc
    mask = torch.from_numpy(np.ascontiguousarray(array))
    c, h, w = shape
    found = tuple(mask.shape)
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if not (mask.dim() in (3, 4) and tuple(mask.shape[-2:]) == (h, w) and mask.shape[-3] in (1, c)):
        accepted = [f"({h}, {w})", f"(1, {h}, {w})"] + ([f"({c}, {h}, {w})"] if c > 1 else [])
        raise ShapeError(
            f"mask file {str(path)!r} has shape {found}, but the images have shape {(c, h, w)}; "
            f"the mask must have shape {' or '.join(accepted)}, optionally with a leading axis "
            f"of one mask per image."
        )
    return mask


def parse_mask(
    spec: str,
    shape: tuple[int, ...],
    n: int,
    fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A mask from a name (``left``, ``random``, …) or the path of a ``.npy``/``.png`` file.

    Returns a boolean tensor that broadcasts against ``(n, *shape)``; raises a
    :class:`~flowkit.errors.FlowkitError` naming the accepted values for a bad spec.
    """
    if spec in DEFAULT_FRACTIONS:
        return named_mask(spec, shape, n, fraction, generator)
    if spec.endswith(MASK_SUFFIXES) or "/" in spec or Path(spec).exists():
        if fraction is not None:
            raise ConfigError("--mask-fraction applies to named masks only, not to mask files.")
        return load_mask_file(spec, shape)
    return named_mask(spec, shape, n, fraction, generator)  # raises with a did-you-mean


# -- choosing images ---------------------------------------------------------------------------
def parse_indices(spec: str, size: int) -> list[int]:
    """Image indices from ``"0:16"`` (a slice, ``start:stop[:step]``), ``"3,5,9"`` or ``"7"``.

    Indices refer to a split of ``size`` examples; negative ones count from the end, as in
    Python. Raises :class:`ConfigError` for malformed specs and indices out of range.
    """
    text = spec.replace(" ", "")
    hint = "use a slice such as 0:16 (or 0:64:4), a list such as 3,5,9, or one index such as 7"
    parts = text.split(":") if ":" in text else text.split(",")
    try:
        numbers = [int(p) if p else None for p in parts]
    except ValueError:
        numbers = []
    if not numbers or (":" in text and len(numbers) > 3) or (":" not in text and None in numbers):
        raise ConfigError(f"--images {spec!r} is not an index specification; {hint}.")
    if ":" in text:
        start, stop, step = [*numbers, None, None][:3]
        for bound in (start, stop):
            if bound is not None and not -size <= bound <= size:
                raise ConfigError(
                    f"--images {spec!r}: {bound} is outside the {size} examples of "
                    f"the split (0..{size - 1}); {hint}."
                )
        if step == 0:
            raise ConfigError(f"--images {spec!r}: the step of a slice cannot be 0; {hint}.")
        indices = list(range(*slice(start, stop, step).indices(size)))
    else:
        indices = [int(n) for n in numbers if n is not None]
    bad = [i for i in indices if not -size <= i < size]
    if bad:
        raise ConfigError(
            f"--images {spec!r}: index {bad[0]} is outside the {size} examples of the split (0..{size - 1})."
        )
    if not indices:
        raise ConfigError(f"--images {spec!r} selects no images; {hint}.")
    return [i % size for i in indices]


# -- the method ----------------------------------------------------------------------------------
#: Per-image step-size factors of the ``adaptive`` schedule after an accepted / a rejected step.
GROW, SHRINK = 1.25, 0.5


def step_sizes(
    step_size: float, steps: int, schedule: Schedule = "adaptive", decay_steps: float = 100.0
) -> list[float]:
    """The planned step sizes ``α_0 … α_{steps−1}`` of a schedule.

    ``constant``: ``α``; ``harmonic``: ``α / (1 + i / decay_steps)``; ``adaptive``: ``α`` as the
    starting value of every image's own step size, which :func:`inpaint` then grows by
    :data:`GROW` after each step that raised the image's ``log p`` and halves (undoing the
    step) after each one that lowered it.
    """
    if not step_size > 0:
        raise ConfigError(f"the step size must be positive, got {step_size}.")
    if schedule in ("constant", "adaptive"):
        return [float(step_size)] * steps
    if schedule == "harmonic":
        if not decay_steps > 0:
            raise ConfigError(f"decay_steps must be positive, got {decay_steps}.")
        return [step_size / (1.0 + i / decay_steps) for i in range(steps)]
    raise ConfigError(f"unknown step-size schedule {schedule!r}; use one of {', '.join(SCHEDULES)}.")


def _broadcast_mask(mask: Tensor, images: Tensor) -> Tensor:
    """``mask`` as a boolean tensor of ``images``' shape, or a :class:`ShapeError`."""
    try:
        shape = torch.broadcast_shapes(tuple(mask.shape), tuple(images.shape))
    except RuntimeError:
        shape = None
    if shape != tuple(images.shape):
        raise ShapeError(
            f"the mask has shape {tuple(mask.shape)}, which does not broadcast to the images' "
            f"shape {tuple(images.shape)}; give one mask per image (N, C or 1, H, W) or one for "
            f"all of them ((C or 1, H, W) or (H, W))."
        )
    return (mask != 0).to(images.device).expand(images.shape)


def _initial_fill(
    images: Tensor,
    missing: Tensor,
    init: Init | Tensor,
    domain: tuple[float, float] | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Starting values of the missing pixels (the observed ones are taken from ``images``)."""
    if isinstance(init, Tensor):
        return init.to(images).expand(images.shape)
    if init == "noise":
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        noise = noise.to(images.device)
        return noise if domain is None else domain[0] + (domain[1] - domain[0]) * noise
    if init == "mean":
        observed = (~missing).to(images.dtype)
        dims = tuple(range(2, images.dim())) if images.dim() > 2 else (1,)
        count = observed.sum(dims, keepdim=True)
        mean = (images * observed).sum(dims, keepdim=True) / count.clamp(min=1)
        middle = 0.0 if domain is None else 0.5 * (domain[0] + domain[1])
        mean = torch.where(count > 0, mean, torch.full_like(mean, middle))
        return mean.expand(images.shape)
    raise ConfigError(f"unknown init {init!r}; use 'noise', 'mean' or a tensor of start values.")


def _value_and_grad(model: Flow, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """``log p(x)`` per image and its gradient with respect to ``x``."""
    with torch.enable_grad():
        var = x.detach().requires_grad_(True)
        log_p = model.log_prob(var, context)
        (grad,) = torch.autograd.grad(log_p.sum(), var)
    return log_p.detach(), grad


def _per_image(values: Tensor, like: Tensor) -> Tensor:
    """``(N,)`` values shaped to broadcast against ``like`` ``(N, ...)``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def inpaint(
    model: Flow,
    images: Tensor,
    mask: Tensor,
    steps: int = 300,
    step_size: float = 0.01,
    *,
    schedule: Schedule = "adaptive",
    decay_steps: float = 100.0,
    init: Init | Tensor = "noise",
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Fill the missing pixels of ``images`` by projected gradient ascent on ``log p(x)``.

    ``x_H ← clip(x_H + α_i ∇_{x_H} log p(x), domain)`` for ``i = 0 … steps − 1`` over the
    missing pixels ``H`` only (Dinh, Krueger & Bengio 2015, "NICE", §5.2), with ``domain`` the
    model's data domain (``model.preprocess.domain``, ``[0, 1]`` for images; no clipping without
    one). The step sizes ``α_i`` follow ``schedule`` (see :func:`step_sizes`): ``constant``,
    ``harmonic`` (``α / (1 + i / decay_steps)``) or ``adaptive`` (the default: every image has its
    own step size, starting at ``step_size``, ×1.25 after a step that raised its ``log p`` and
    ×0.5 — with the step undone — after one that lowered it, so ``log p`` never decreases;
    ``log p``'s gradient scale differs by orders of magnitude between models and a fixed step
    that suits one diverges on another).

    ``images`` is ``(N, *model.event_shape)``; ``mask`` is boolean (or 0/1) and broadcasts to it,
    ``True`` marking a missing pixel. The missing pixels start from ``init``: ``"noise"`` (uniform
    over the domain, from ``generator``), ``"mean"`` (each image's mean observed value per
    channel) or a tensor of start values. ``context`` holds class labels for conditional models.
    ``callback(i, x)`` is called after every step with the current images. Returns a tensor like
    ``images`` (same dtype and device) whose observed pixels are bit-for-bit those of
    ``images``; with ``steps = 0`` it is the starting point. The model is put in eval mode for
    the ascent and restored after.
    """
    if images.dim() < 2 or tuple(images.shape[1:]) != tuple(model.event_shape):
        raise ShapeError(
            f"inpaint: the model takes images of shape (N, "
            f"{', '.join(map(str, model.event_shape))}) but got "
            f"{tuple(images.shape)}."
        )
    if steps < 0:
        raise ConfigError(f"inpaint: steps must be >= 0, got {steps}.")
    alphas = step_sizes(step_size, steps, schedule, decay_steps)
    missing = _broadcast_mask(mask, images)
    reference = next(iter(model.parameters()), None)
    dtype = reference.dtype if reference is not None else images.dtype
    observed = images.detach().to(model.device, dtype)
    hidden = missing.to(model.device)
    domain = getattr(model.preprocess, "domain", None)
    x = torch.where(hidden, _initial_fill(observed, hidden, init, domain, generator), observed)
    context = None if context is None else context.to(model.device)
    was_training = model.training
    model.eval()
    try:
        x = _ascend(model, x, hidden, observed, alphas, schedule == "adaptive", domain, context, callback)
    finally:
        model.train(was_training)
    return torch.where(missing, x.to(images.device, images.dtype), images)


def _ascend(
    model: Flow,
    x: Tensor,
    hidden: Tensor,
    observed: Tensor,
    alphas: list[float],
    adaptive: bool,
    domain: tuple[float, float] | None,
    context: Tensor | None,
    callback: Callable[[int, Tensor], None] | None,
) -> Tensor:
    """The ascent loop of :func:`inpaint` (one ``log p`` evaluation and gradient per step)."""
    if not alphas:
        return x
    log_p, grad = _value_and_grad(model, x, context)
    rate = x.new_full((x.shape[0],), alphas[0])
    for i, alpha in enumerate(alphas):
        step = x + (_per_image(rate, x) if adaptive else alpha) * grad
        if domain is not None:
            step = step.clamp(*domain)
        proposal = torch.where(hidden, step, observed)
        new_log_p, new_grad = _value_and_grad(model, proposal, context)
        if adaptive:  # keep a step only where it did not lower log p (NaN counts as lower)
            accept = new_log_p >= log_p
            rate = torch.where(accept, rate * GROW, rate * SHRINK)
            keep = _per_image(accept, x)
            x = torch.where(keep, proposal, x)
            grad = torch.where(keep, new_grad, grad)
            log_p = torch.where(accept, new_log_p, log_p)
        else:
            if not (torch.isfinite(new_log_p).all() and torch.isfinite(new_grad[hidden]).all()):
                raise ConfigError(
                    "inpaint: log p(x) or its gradient became NaN or infinite; lower the step "
                    "size, or use schedule='adaptive'."
                )
            x, grad, log_p = proposal, new_grad, new_log_p
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def log_likelihood(
    model: Flow, images: Tensor, context: Tensor | None = None, batch_size: int = 500
) -> Tensor:
    """``log p(x)`` (nats) of every image, in batches, on the model's device and dtype."""
    reference = next(iter(model.parameters()), None)
    dtype = reference.dtype if reference is not None else images.dtype
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(model.device, dtype)
            ctx = None if context is None else context[start : start + batch_size].to(model.device)
            parts.append(model.log_prob(x, ctx).cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts)


#: Colour of the missing pixels in the "masked input" row of :func:`comparison_grid` (red).
HOLE_COLOUR = (1.0, 0.0, 0.0)


def comparison_grid(
    original: Tensor, inpainted: Tensor, missing: Tensor, per_row: int = 16
) -> tuple[Tensor, int]:
    """Images for a before/after figure: rows of originals, masked inputs and inpaintings.

    Every block of up to ``per_row`` images gives three rows — the originals, the masked inputs
    (missing pixels in red) and the inpainted images — as RGB ``(K, 3, H, W)`` in ``[0, 1]``,
    ready for :func:`flowkit.figures.save_image_grid` with the returned ``nrow``. A last,
    shorter block is padded with white tiles.
    """

    def rgb(t: Tensor) -> Tensor:
        t = t.detach().float().cpu().clamp(0, 1)
        return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t

    missing = missing.expand(original.shape).any(dim=1, keepdim=True).cpu()
    holes = torch.tensor(HOLE_COLOUR).reshape(1, 3, 1, 1).expand(original.shape[0], 3, *original.shape[2:])
    masked = torch.where(missing, holes, rgb(original))
    rows = [rgb(original), masked, rgb(inpainted)]
    n = original.shape[0]
    nrow = min(per_row, n)
    tiles = []
    for start in range(0, n, nrow):
        for row in rows:
            block = row[start : start + nrow]
            if block.shape[0] < nrow:
                pad = torch.ones(nrow - block.shape[0], *block.shape[1:])
                block = torch.cat([block, pad])
            tiles.append(block)
    return torch.cat(tiles), nrow
