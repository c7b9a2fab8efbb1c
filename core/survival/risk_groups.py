"""Risk groups with the same meaning at every site: tertile cut points of the TRAINING system risk,
found federatedly from histograms (sites send bin counts, never risks).

The system risk is a z-score (``two_tier.RiskScale``), so it can be negative, while
:class:`~rmmfed.core.aggregates.histogram.HistogramGrid` bins positive values on a log scale. Sites therefore
histogram exp(risk) on ``RISK_GRID`` (exp(-8) .. exp(8), 512 bins): a log grid on exp(risk) is a
linear grid on the risk, 16/510 = 0.031 risk units per bin; risks beyond +-8 fall in the end bins.
The server sums the counts and takes log of the 1/3 and 2/3 quantiles.
"""

from __future__ import annotations

import math

import numpy as np

from ..aggregates.histogram import HistogramGrid, quantile_from_counts

RISK_GRID = HistogramGrid(math.exp(-8.0), math.exp(8.0), 512)
TERTILES = (1 / 3, 2 / 3)


def risk_counts(system_risk: np.ndarray, grid: HistogramGrid = RISK_GRID) -> np.ndarray:
    """Bin counts of exp(risk) over the finite risks (abstained patients, NaN, are left out)."""
    r = np.asarray(system_risk, dtype=np.float64)
    r = r[np.isfinite(r)]
    return grid.counts(np.exp(np.clip(r, -50.0, 50.0)))


def cutpoints_from_counts(counts: np.ndarray, grid: HistogramGrid = RISK_GRID,
                          quantiles: tuple[float, ...] = TERTILES) -> list[float] | None:
    """Risk cut points at ``quantiles`` of the summed counts (within one bin, 0.031, of the pooled
    quantiles); None with fewer than 3 values or when they are not strictly increasing."""
    counts = np.asarray(counts)
    if counts.sum() < 3:
        return None
    frac = bool((counts != np.round(counts)).any())  # merged bins spread by the server (merged_histogram)
    cuts = [math.log(quantile_from_counts(grid, counts, q, fractional=frac)) for q in quantiles]
    return cuts if all(a < b for a, b in zip(cuts, cuts[1:])) else None
