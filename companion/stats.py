"""Percentiles: one definition for every figure we report (status line, scheduler counters,
`companion bench`): nearest rank, so a percentile is always a value that was measured."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T", int, float)


def percentiles(values: Iterable[T], *qs: float, default: T = 0) -> tuple[T, ...]:
    """The `qs`-th percentiles (0-100) of `values` by nearest rank: for each q the smallest
    value with at least q% of the values at or below it. `default` for each q when there are
    no values."""
    v = sorted(values)
    if not v:
        return tuple(default for _ in qs)
    n = len(v)
    return tuple(v[min(n - 1, max(0, math.ceil(q * n / 100) - 1))] for q in qs)
