"""Summaries of a metric over repeated runs (seeds): mean, spread and a ``1.234 ± 0.012`` label."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["format_mean_spread", "mean_spread"]


def mean_spread(values: Iterable[float | None]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of the values that are present (``None`` entries are dropped).

    ``mean = (1/n) Σ v_i`` and the sample standard deviation
    ``std = sqrt(Σ (v_i − mean)² / (n − 1))`` (Bessel's correction), which is 0 for ``n = 1``;
    ``(nan, nan, 0)`` when nothing is present. NaN values (e.g. a diverged run) are kept and make
    the mean and std NaN, so a failure is visible rather than averaged away.
    """
    present = [float(v) for v in values if v is not None]
    n = len(present)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(present) / n
    if n == 1:
        return mean, 0.0, 1
    var = math.fsum((v - mean) ** 2 for v in present) / (n - 1)
    return mean, math.sqrt(var), n


def format_mean_spread(values: Iterable[float | None], digits: int = 3) -> str:
    """``"mean ± std"`` with ``digits`` decimals, e.g. ``"1.234 ± 0.012"``.

    A single value is printed alone (``"1.234"``), no value as ``"n/a"``; see :func:`mean_spread`.
    Large magnitudes (≥ 1e5) or tiny non-zero ones (< 10^-digits) switch to ``digits``
    significant digits in scientific notation, so throughputs and round-off errors stay readable.
    """
    mean, std, n = mean_spread(values)
    if n == 0:
        return "n/a"
    big = abs(mean) >= 1e5
    tiny = 0.0 < abs(mean) < 10.0 ** (-digits)
    spec = f".{max(digits - 1, 0)}e" if (big or tiny) else f".{digits}f"
    text = format(mean, spec)
    return text if n == 1 else f"{text} ± {format(std, spec)}"
