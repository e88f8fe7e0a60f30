"""Growth exponents: least squares on log-log axes, ``log t = log a + k log n``.

An exponent near 1 means cost grows like the work (linear); above 1, faster than the
work, which is what a planner must know before scaling a scan or a scrub up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PowerFit:
    exponent: float
    coefficient: float
    r2: float
    n_points: int


def fit_power(xs: Sequence[float], ys: Sequence[float]) -> PowerFit | None:
    """Fit ``y = a * x**k``; None with fewer than two distinct positive x (nothing to fit)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    k = sxy / sxx
    b = my - k * mx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - (b + k * p[0])) ** 2 for p in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerFit(exponent=k, coefficient=math.exp(b), r2=r2, n_points=n)
