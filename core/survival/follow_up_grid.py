"""The Breslow baseline's time grid, placed at the pooled quantiles of follow-up.

Where a site's Breslow sums are exact, it sends them merged until every group holds >= k events and
>= k patients leaving the risk set (:mod:`rmmfed.core.survival.merged_hazard`), and the server spreads
what a group holds back over its grid intervals: the events evenly, the risk set linearly. On a grid
uniform in time that is far from the data: deaths crowd the first months of an aggressive subtype, so a
site with 10-30 events (one to three groups) has its events smeared over years.

On a grid whose points are the pooled follow-up's quantiles, every interval holds about the same
number of patients leaving the risk set, by construction. Spreading a group's events evenly over its
intervals, and running its risk set down linearly, then follows the pooled follow-up instead of the
calendar. Measured on the TCGA cohorts (``python -m rmmfed.simulations.evidence.breslow_grid``,
docs/evidence/tier1/breslow_grid.md): Tier 1's integrated Brier score from exact sums fell from 0.200
to 0.182 on average, the pooled Cox's with an exact Breslow baseline being 0.182.

Noised sums are not merged (:func:`rmmfed.core.privacy.noised_release.noised_hazard`): there the server
keeps even spacing (server/phases.baseline_hazard), as quantile spacing was no better on average.

The quantiles come from the follow-up histogram the run already asked for to place the grid's end
(the pooled 95th percentile): the same release answered again, nothing new leaves a site. Only where
the grid can hold patients leaving the risk set matters: below its first point every patient is in
interval 0, after its last point nobody is counted.
"""

from __future__ import annotations

import numpy as np

from ..aggregates.histogram import HistogramGrid, quantile_from_counts

__all__ = ["quantile_time_grid", "MIN_QUANTILE_POINTS"]

MIN_QUANTILE_POINTS = 4  # fewer distinct quantiles than this: the follow-up is too lumpy, use a uniform grid


def quantile_time_grid(grid: HistogramGrid, counts: np.ndarray, t_max: float, points: int,
                       top: float = 0.95) -> np.ndarray | None:
    """Up to ``points`` increasing time points: the pooled follow-up quantiles ``top * i / points`` for
    i = 1 .. points - 1 that fall below ``t_max``, then ``t_max`` itself (the grid's end, the same as the
    uniform grid's). ``counts`` are the pooled (fractional) counts of the follow-up histogram on
    ``grid``. None when the histogram is empty or gives fewer than ``MIN_QUANTILE_POINTS`` distinct
    points (the caller keeps the uniform grid)."""
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    if not (np.isfinite(t_max) and t_max > 0) or points < 2 or c.sum() < 2:
        return None
    qs = [quantile_from_counts(grid, c, top * i / points, fractional=True) for i in range(1, points)]
    out: list[float] = []
    for q in qs:  # strictly increasing, positive, below the end (ties within 1e-9 relative merge)
        if q > 0 and q < t_max * (1 - 1e-9) and (not out or q > out[-1] * (1 + 1e-9)):
            out.append(float(q))
    out.append(float(t_max))
    return np.asarray(out) if len(out) >= MIN_QUANTILE_POINTS else None
