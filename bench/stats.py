"""Shared helpers for the benchmarks: interleaved runs, medians, spread, ratios, percentiles.

    samples = interleave({"a": run_a, "b": run_b}, n=5, warmup=1)   # a b a b ... after a warm-up
    summary(samples["a"])   # {"median": .., "p25": .., "p75": .., "min": .., "max": .., "n": ..}

The machine a benchmark runs on is often busy with other work, so every comparison runs its
contenders in alternation within one run; a slow patch then weighs on all of them alike.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def smoke() -> bool:
    """True under BENCH_SMOKE=1: benchmarks shrink to 1-2 repeats and a few tokens."""
    return os.environ.get("BENCH_SMOKE", "") not in ("", "0")


def interleave(contenders: dict[str, Callable[[], T]], n: int, warmup: int = 1
               ) -> dict[str, list[T]]:
    """Run each contender `warmup` times (discarded), then `n` rounds of A B C A B C ...

    The order within a round alternates (A B, then B A) so neither side always goes first.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    for i in range(n):
        for name in names if i % 2 == 0 else list(reversed(names)):
            out[name].append(contenders[name]())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def percentile(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Interquartile range and min-max of `xs`."""
    return {"p25": percentile(xs, 25), "p75": percentile(xs, 75),
            "min": float(min(xs)) if xs else math.nan, "max": float(max(xs)) if xs else math.nan}


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or either is NaN."""
    if not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def summary(xs: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median, spread and count, rounded for the results file."""
    out = {"median": median(xs), **spread(xs)}
    return {**{k: _round(v, digits) for k, v in out.items()}, "n": len(xs)}


def _round(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(x, digits)
