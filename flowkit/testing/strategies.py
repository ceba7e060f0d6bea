"""Valid shapes and hyper-parameters for a transform class: deterministic examples and
hypothesis strategies (hypothesis is imported only when a strategy is asked for)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowkit.transform import Shape, Transform

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

from flowkit.testing.checks import MAX_EVENT_SIZE, _plugin_name


def _strategies() -> Any:
    """``hypothesis.strategies``, or a :class:`~flowkit.extras.MissingExtraError` naming the
    ``testing`` extra (hypothesis is not a dependency of the plain install)."""
    from flowkit.extras import require

    return require(
        "hypothesis.strategies", extra="testing", feature="flowkit.testing's hypothesis strategies"
    )


# ---------------------------------------------------------------------------------------------
# shapes and hyper-parameters (deterministic, and hypothesis strategies)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Constraints:
    """The shape constraints a transform class declares (missing attributes take defaults)."""

    ranks: tuple[int, ...]
    channel: int
    size: int
    min_channels: int
    min_size: int

    @classmethod
    def of(cls, transform_cls: Any) -> _Constraints:
        return cls(
            ranks=tuple(getattr(transform_cls, "input_ranks", Transform.input_ranks)),
            channel=max(1, int(getattr(transform_cls, "channel_multiple", 1))),
            size=max(1, int(getattr(transform_cls, "size_multiple", 1))),
            min_channels=max(1, int(getattr(transform_cls, "min_channels", 1))),
            # optional: the smallest image height/width (e.g. 2 for a checkerboard mask)
            min_size=max(1, int(getattr(transform_cls, "min_size", 1))),
        )

    def channels(self, floor: int, maximum: int) -> list[int]:
        """Valid channel (or feature) counts in ``[max(floor, min_channels), maximum]``."""
        return _multiples(self.channel, max(floor, self.min_channels), maximum)

    def sides(self, floor: int, maximum: int) -> list[int]:
        """Valid image heights/widths in ``[max(floor, min_size), maximum]``."""
        return _multiples(self.size, max(floor, self.min_size), maximum)

    @property
    def smallest_side(self) -> int:
        return _multiples(self.size, self.min_size, self.size * self.min_size)[0]


def _multiples(multiple: int, minimum: int, maximum: int) -> list[int]:
    """Multiples of ``multiple`` in ``[minimum, maximum]`` (and at least 1)."""
    first = max(1, math.ceil(minimum / multiple)) * multiple
    return list(range(first, maximum + 1, multiple))


def _no_shape(transform_cls: Any, max_size: int) -> ValueError:
    c = _Constraints.of(transform_cls)
    return ValueError(
        f"{_plugin_name(transform_cls)}: no per-example shape with at most {max_size} scalars "
        f"satisfies input_ranks={c.ranks}, channel_multiple={c.channel}, "
        f"min_channels={c.min_channels}, size_multiple={c.size}, min_size={c.min_size} "
        f"(ranks 1 and 3 are supported)"
    )


def shapes_for(transform_cls: Any, max_size: int = MAX_EVENT_SIZE) -> SearchStrategy[Shape]:
    """Hypothesis strategy of per-example shapes the transform accepts (≤ ``max_size`` scalars).

    Rank 1 gives ``(D,)`` with ``D`` a multiple of ``channel_multiple`` and ``≥ min_channels``;
    rank 3 gives ``(C, H, W)`` with ``C`` like ``D`` and ``H``, ``W`` multiples of
    ``size_multiple`` (and ``≥ min_size`` when the class declares that optional attribute).
    Shrinks towards the smallest shapes.
    """
    st = _strategies()

    cons = _Constraints.of(transform_cls)
    options: list[SearchStrategy[Shape]] = []
    if 1 in cons.ranks and cons.channels(1, max_size):
        options.append(st.sampled_from(cons.channels(1, max_size)).map(lambda d: (d,)))
    side = cons.smallest_side
    if 3 in cons.ranks and cons.channels(1, max_size // side**2):

        @st.composite
        def images(draw: Callable[..., Any]) -> Shape:
            c = draw(st.sampled_from(cons.channels(1, max_size // side**2)))
            h = draw(st.sampled_from(cons.sides(1, max_size // (c * side))))
            w = draw(st.sampled_from(cons.sides(1, max_size // (c * h))))
            return (c, h, w)

        options.append(images())
    if not options:
        raise _no_shape(transform_cls, max_size)
    return st.one_of(options)


def params_for(transform_cls: Any) -> SearchStrategy[dict[str, Any]]:
    """Hypothesis strategy of hyper-parameters: one value for every list entry of ``test_params``.

    Non-list values of ``test_params`` are passed as they are.
    """
    st = _strategies()

    test_params: Mapping[str, Any] = getattr(transform_cls, "test_params", {}) or {}
    return st.fixed_dictionaries(
        {
            key: st.sampled_from(value) if isinstance(value, list) else st.just(value)
            for key, value in test_params.items()
        }
    )


#: Largest width ``k`` of a real-valued context the strategies draw, and the largest magnitude of
#: its entries (moderate: a conditioner should not saturate on such values).
MAX_CONTEXT_FEATURES = 4
CONTEXT_BOUND = 3.0


def context_features_for(max_features: int = MAX_CONTEXT_FEATURES) -> SearchStrategy[int]:
    """Hypothesis strategy of context widths ``k`` in ``[1, max_features]`` (shrinks to 1)."""
    st = _strategies()

    return st.integers(1, max_features)


def contexts(batch_size: int, features: int, bound: float = CONTEXT_BOUND) -> SearchStrategy[Tensor]:
    """Hypothesis strategy of real-valued contexts: float32 tensors ``(batch_size, features)``.

    Entries are finite, in ``[-bound, bound]`` and not subnormal; shrinks towards zeros.
    """
    st = _strategies()

    size = batch_size * features
    values = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
    return st.lists(values, min_size=size, max_size=size).map(
        lambda v: torch.tensor(v, dtype=torch.float32).reshape(batch_size, features)
    )


def example_params(transform_cls: Any) -> dict[str, Any]:
    """Deterministic hyper-parameters: the first value of every list entry of ``test_params``."""
    test_params: Mapping[str, Any] = getattr(transform_cls, "test_params", {}) or {}
    return {
        key: (value[0] if isinstance(value, list) and value else value) for key, value in test_params.items()
    }


def example_shapes(transform_cls: Any, max_size: int = MAX_EVENT_SIZE) -> list[Shape]:
    """One or two deterministic per-example shapes for each rank the transform accepts.

    Rank 1: the smallest valid ``D ≥ 4`` and the smallest valid ``D ≥ 10``. Rank 3: the smallest
    valid channel count ``≥ 2`` (so channel permutations are not trivial) with the smallest valid
    square side ``≥ 4`` (or ``≥ 2``, ``≥ 1`` if that is too big), and a non-square variant when
    it fits.
    """
    cons = _Constraints.of(transform_cls)
    shapes: list[Shape] = []
    if 1 in cons.ranks:
        for floor in (4, 10, 1):
            dims = cons.channels(floor, max_size)
            if dims and (dims[0],) not in shapes and (floor != 1 or not shapes):
                shapes.append((dims[0],))
    if 3 in cons.ranks:
        shapes.extend(_example_images(cons, max_size))
    if not shapes:
        raise _no_shape(transform_cls, max_size)
    return shapes


def _example_images(cons: _Constraints, max_size: int) -> list[Shape]:
    # two channels where allowed, so that channel permutations and splits are not trivial
    for channel_floor in (2, 1):
        chans = cons.channels(channel_floor, max_size)
        for side_floor in (4, 2, 1):
            sides = cons.sides(side_floor, max_size)
            if chans and sides and chans[0] * sides[0] ** 2 <= max_size:
                c, h = chans[0], sides[0]
                if c * h * (h + cons.size) <= max_size:
                    return [(c, h, h), (c, h, h + cons.size)]
                return [(c, h, h)]
    return []
