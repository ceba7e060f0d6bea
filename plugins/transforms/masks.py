"""Binary masks that split an input into a conditioning side and a transformed side.

A coupling layer keeps the entries where ``mask == 1`` (the conditioning side ``x_A``) and
transforms the entries where ``mask == 0`` (``x_B``) as a function of ``mask ⊙ x`` (Dinh et al.
2017, "Density estimation using Real NVP", §3.4-3.5, eq. (9)). Every builder is a pure function
returning a float tensor that broadcasts against one example of the input; ``invert=True`` swaps
the two sides, so consecutive layers with alternating parity transform every entry.

* vectors ``(D,)``: ``"half"`` (the first ``⌈D/2⌉`` features condition) and ``"alternate"``
  (even indices condition; Dinh et al. 2015, "NICE", §5.1);
* images ``(C, H, W)``: ``"checkerboard"`` (pixels with ``r + c`` even condition; shape
  ``(1, H, W)``) and ``"channel"`` (the first ``⌈C/2⌉`` channels condition; shape ``(C, 1, 1)``)
  (Dinh et al. 2017, §3.5, Figure 3).

Every mask but the checkerboard selects whole entries along dimension 1 (features or channels)
in a regular pattern, so :func:`split_slices` gives the two sides as slices: a coupling layer can
then cut the input in two views instead of multiplying full-size tensors by the mask. An explicit
list of conditioning indices along dimension 1 (:func:`index_split`) is a split too; it becomes
slices where the indices are evenly spaced. :func:`build_split` gives any of them as a
:class:`Split`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor

from flowkit.errors import ConfigError, ShapeError
from flowkit.transform import Shape

#: The rank of input each mask kind applies to.
MASK_RANKS: dict[str, int] = {"half": 1, "alternate": 1, "checkerboard": 3, "channel": 3}


def _finish(mask: Tensor, invert: bool) -> Tensor:
    return (1.0 - mask) if invert else mask


def half_mask(features: int, invert: bool = False) -> Tensor:
    """Vector mask whose first ``⌈D/2⌉`` entries are 1 (the conditioning side).

    Shape ``(D,)``. With ``invert=True`` the last ``⌊D/2⌋`` entries are 1 instead.
    """
    mask = torch.zeros(features)
    mask[: math.ceil(features / 2)] = 1.0
    return _finish(mask, invert)


def alternate_mask(features: int, invert: bool = False) -> Tensor:
    """Vector mask that is 1 at even indices, 0 at odd ones (NICE's interleaved partition).

    Shape ``(D,)``; ``invert=True`` marks the odd indices instead (Dinh et al. 2015, §5.1).
    """
    mask = (torch.arange(features) % 2 == 0).float()
    return _finish(mask, invert)


def checkerboard_mask(height: int, width: int, invert: bool = False) -> Tensor:
    """Image mask that is 1 where ``row + column`` is even, shape ``(1, H, W)``.

    The spatial checkerboard of Dinh et al. 2017, "Real NVP", §3.5; the same pattern is used for
    every channel. ``invert=True`` marks the pixels where ``row + column`` is odd.
    """
    rows = torch.arange(height).unsqueeze(1)
    cols = torch.arange(width).unsqueeze(0)
    mask = ((rows + cols) % 2 == 0).float().unsqueeze(0)
    return _finish(mask, invert)


def channel_mask(channels: int, invert: bool = False) -> Tensor:
    """Image mask that is 1 on the first ``⌈C/2⌉`` channels, shape ``(C, 1, 1)``.

    The channel-wise mask of Dinh et al. 2017, "Real NVP", §3.5; ``invert=True`` marks the last
    ``⌊C/2⌋`` channels instead.
    """
    mask = torch.zeros(channels, 1, 1)
    mask[: math.ceil(channels / 2)] = 1.0
    return _finish(mask, invert)


def build_mask(kind: str, event_shape: Shape, invert: bool = False, owner: str = "mask") -> Tensor:
    """Build the ``kind`` mask for one example of shape ``event_shape``.

    Raises :class:`ShapeError` when the mask does not fit the shape (a vector mask for an image
    or vice versa, fewer than 2 features or channels to split) and :class:`ConfigError` for an
    unknown kind.
    """
    if kind not in MASK_RANKS:
        raise ConfigError(
            f"{owner}: unknown mask {kind!r}; choose one of {', '.join(map(repr, MASK_RANKS))}."
        )
    shape = tuple(event_shape)
    rank = MASK_RANKS[kind]
    if len(shape) != rank:
        fits = [k for k, r in MASK_RANKS.items() if r == len(shape)]
        raise ShapeError(
            f"{owner}: mask={kind!r} is for {'vectors (D,)' if rank == 1 else 'images (C, H, W)'}"
            f" but the input has shape {shape}; use mask="
            + " or ".join(repr(k) for k in fits)
            + " (or leave mask unset for the default)."
        )
    if kind in ("half", "alternate"):
        if shape[0] < 2:
            raise ShapeError(
                f"{owner}: mask={kind!r} splits the features in two, so it needs at least 2 "
                f"features, but the input has shape {shape}."
            )
        builder = half_mask if kind == "half" else alternate_mask
        return builder(shape[0], invert)
    if kind == "channel":
        if shape[0] < 2:
            raise ShapeError(
                f"{owner}: mask='channel' splits the channels in two, so it needs at least 2 "
                f"channels, but the input has shape {shape}; use mask='checkerboard', or "
                f"squeeze first."
            )
        return channel_mask(shape[0], invert)
    return checkerboard_mask(shape[1], shape[2], invert)


class SplitSlices(NamedTuple):
    """The conditioning (``cond``) and transformed (``free``) entries along dimension 1: slices,
    or lists of indices for an explicit split that is not evenly spaced."""

    cond: slice | list[int]
    free: slice | list[int]


def split_slices(kind: str, event_shape: Shape, invert: bool = False) -> SplitSlices | None:
    """The two sides of the ``kind`` mask as slices of dimension 1, or ``None`` (checkerboard).

    ``x[:, cond]`` is the conditioning side ``x_A`` (where the mask is 1) and ``x[:, free]`` the
    transformed side ``x_B``, for vectors ``(B, D)`` and images ``(B, C, H, W)`` alike: "half" and
    "channel" are the contiguous blocks ``[0, ⌈n/2⌉)`` and ``[⌈n/2⌉, n)``, "alternate" the even
    and odd indices; ``invert`` swaps them, exactly as in :func:`build_mask`. The checkerboard
    mixes the sides inside every channel, so it has no slices.
    """
    if kind == "checkerboard":
        return None
    n = int(event_shape[0])
    if kind == "alternate":
        even, odd = slice(0, n, 2), slice(1, n, 2)
        return SplitSlices(odd, even) if invert else SplitSlices(even, odd)
    first, second = slice(0, math.ceil(n / 2)), slice(math.ceil(n / 2), n)
    return SplitSlices(second, first) if invert else SplitSlices(first, second)


def slice_indices(part: slice | list[int], size: int) -> list[int]:
    """The indices a slice (or an index list) selects from ``range(size)``."""
    return list(part) if isinstance(part, list) else list(range(size))[part]


def _as_slice(indices: list[int]) -> slice | list[int]:
    """``indices`` (sorted, distinct) as a slice when evenly spaced, else unchanged."""
    steps = {b - a for a, b in pairwise(indices)}
    if len(steps) > 1:
        return indices
    step = steps.pop() if steps else 1
    return slice(indices[0], indices[-1] + 1, step if step != 1 else None)


def index_split(cond: Sequence[int], size: int, invert: bool = False, owner: str = "split") -> SplitSlices:
    """An explicit split along dimension 1: ``cond`` condition, the other indices are transformed.

    ``size`` is the number of features (vectors) or channels (images); ``invert`` swaps the two
    sides. Raises :class:`ConfigError` unless ``cond`` holds distinct indices in ``[0, size)``
    and leaves at least one on each side.
    """
    chosen = sorted(int(i) for i in cond)
    if len(set(chosen)) != len(chosen) or any(i < 0 or i >= size for i in chosen):
        raise ConfigError(
            f"{owner}: the conditioning indices {list(cond)} must be distinct and "
            f"in [0, {size}) (features, or channels of an image)."
        )
    if not chosen or len(chosen) == size:
        raise ConfigError(
            f"{owner}: the conditioning indices {list(cond)} must leave at least "
            f"one of the {size} entries on each side of the split."
        )
    taken = set(chosen)
    free = [i for i in range(size) if i not in taken]
    first, second = _as_slice(chosen), _as_slice(free)
    return SplitSlices(second, first) if invert else SplitSlices(first, second)


@dataclass(frozen=True)
class Split:
    """A split of one example into a conditioning side ``A`` and a transformed side ``B``.

    ``kind`` is a mask kind (:data:`MASK_RANKS`) or ``"indices"``; ``mask`` is 1 on ``A`` and
    broadcasts against one example; ``slices`` gives both sides along dimension 1, or is
    ``None`` for the checkerboard, whose sides are the pixels :attr:`free_positions` of every
    channel.
    """

    kind: str
    mask: Tensor
    slices: SplitSlices | None

    @property
    def free_positions(self) -> Tensor | None:
        """Flat ``H·W`` positions of the transformed pixels (checkerboard only)."""
        if self.slices is not None:
            return None
        return (self.mask.flatten() == 0).nonzero().squeeze(1)


def build_split(
    mask: str | Sequence[int], event_shape: Shape, invert: bool = False, owner: str = "split"
) -> Split:
    """The :class:`Split` of a mask kind (:func:`build_mask`) or of explicit conditioning indices
    along dimension 1 (:func:`index_split`); ``invert`` swaps the sides."""
    shape = tuple(event_shape)
    if isinstance(mask, str):
        return Split(mask, build_mask(mask, shape, invert, owner), split_slices(mask, shape, invert))
    slices = index_split(mask, shape[0], invert, owner)
    marks = torch.zeros(shape[0])
    marks[slices.cond] = 1.0
    return Split("indices", marks.reshape(shape[0], *([1] * (len(shape) - 1))), slices)
