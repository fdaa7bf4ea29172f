"""Mean and sample standard deviation over seeds (the one place that computes them)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof 1; None for fewer than two values) and count of
    the values that are numbers (None and NaN are left out)."""
    good = [v for v in values if v is not None and not math.isnan(v)]
    if not good:
        return None, None, 0
    mean = sum(good) / len(good)
    if len(good) < 2:
        return mean, None, len(good)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in good) / (len(good) - 1)), len(good)
