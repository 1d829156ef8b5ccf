"""Bjontegaard delta rate (BD-rate): average rate difference of two RD curves at equal quality.

The usual modern form (as in the JVET/AOM tools): log-rate as a function of quality, interpolated with a
piecewise-cubic Hermite (PCHIP) curve through each curve's points, integrated over the quality range both
curves cover, and the mean log-rate difference turned into a percentage. Negative means the test codec needs
fewer bits than the anchor. Points that are not on a curve's Pareto front (more bits for no better quality)
are dropped first, because PCHIP needs quality strictly increasing and because a real user would never
pick them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


def pareto_front(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated by one of lower (or equal) rate, sorted by rate; both coordinates increase."""
    pts = sorted(
        ((float(r), float(q)) for r, q in zip(rates, qualities, strict=True) if np.isfinite(r) and np.isfinite(q)),
        key=lambda p: (p[0], -p[1]),
    )
    keep: list[tuple[float, float]] = []
    for r, q in pts:
        if not keep or q > keep[-1][1]:
            keep.append((r, q))
    arr = np.array(keep, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def rate_at_quality(rates: Sequence[float], qualities: Sequence[float], quality: float) -> float | None:
    """The rate the curve needs for ``quality``: its log-rate PCHIP-interpolated as in :func:`bd_rate`, so a
    point's excess and a BD-rate read the same curve; ``None`` outside the curve's quality range (no
    extrapolation) or where it has fewer than two Pareto points."""
    r, q = pareto_front(rates, qualities)
    if len(r) < 2 or r[0] <= 0 or not q[0] <= quality <= q[-1]:
        return None
    return float(np.exp(PchipInterpolator(q, np.log(r))(quality)))


@dataclass(frozen=True)
class BdRate:
    percent: float  # negative: the test curve needs fewer bits than the anchor at equal quality
    quality_lo: float  # the overlapping quality interval the average is taken over
    quality_hi: float


def no_bd_rate_reason(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    min_quality: float | None = None,
) -> str:
    """Why :func:`bd_rate` gives ``None`` for these curves (a report says which, not always "no overlap")."""
    missing = _missing_curve(pareto_front(anchor_rates, anchor_quality)[0], pareto_front(test_rates, test_quality)[0])
    if missing:
        return missing
    return "no overlap" if min_quality is None else f"no overlap from {min_quality:g} up"


def _missing_curve(anchor_rates: np.ndarray, test_rates: np.ndarray) -> str | None:
    """What keeps two Pareto fronts (their rates) from being curves: fewer than two points, or a rate of 0."""
    for name, r in (("anchor", anchor_rates), ("test", test_rates)):
        if len(r) < 2:
            return f"{name} has {len(r)} point{'s' if len(r) != 1 else ''}: no curve"
        if r[0] <= 0:
            return f"{name} has a point at rate 0"
    return None


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    min_quality: float | None = None,
) -> BdRate | None:
    """BD-rate of ``test`` against ``anchor``, or ``None`` when the curves' quality ranges do not overlap.

    Each curve needs at least two Pareto points with positive rate, otherwise there is no curve either.
    ``min_quality`` starts the overlap no lower than this (e.g. only where images are usable).
    """
    ra, qa = pareto_front(anchor_rates, anchor_quality)
    rt, qt = pareto_front(test_rates, test_quality)
    if _missing_curve(ra, rt):
        return None
    lo, hi = max(qa[0], qt[0], -np.inf if min_quality is None else min_quality), min(qa[-1], qt[-1])
    if not hi > lo:
        return None
    int_a = PchipInterpolator(qa, np.log(ra)).integrate(lo, hi)
    int_t = PchipInterpolator(qt, np.log(rt)).integrate(lo, hi)
    return BdRate(float((np.exp((int_t - int_a) / (hi - lo)) - 1.0) * 100.0), float(lo), float(hi))
