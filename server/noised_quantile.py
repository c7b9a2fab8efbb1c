"""A quantile from sites' noised histograms: a coarse grid first, then a zoom around its estimate.

Noised releases (core/privacy/noised_release.py) carry counts on every bin with noise on each; the error of a
quantile grows with the number of bins its cumulative count crosses. So when the sites noise, the
server asks a coarse grid over the whole range (``COARSE_BINS`` bins), then a fine one over
``ZOOM_DECADES`` decades around the coarse estimate (``ZOOM_BINS`` bins). A site answers at most
``dp.release-grids`` (default 2) grids per kind per run and charges each to its budget. With exact
(merged) releases one ask on the run's grid is enough.

Small cohorts (tens of values in all, a 0.95 quantile a few values from the top) make a spurious bin the
main error: pooled noise passes a floor of 2 sds in about 2.4 % of empty bins, and one such bin above the
data moves a tail quantile by decades (simulations/bench_theta.py). So the coarse grid, whose only job is
to place the zoom, floors at ``COARSE_FLOOR`` sds (real bins there hold many values); the zoom keeps only
bins that overlap a coarse bin with mass left (``support_on``: an empty bin far from the data has to
pass the noise twice), and floors lower, at ``ZOOM_FLOOR`` sds, so that the sparse real tail is kept.
Both are post-processing of the same two releases: no extra ask, no extra privacy cost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.aggregates.histogram import HistogramGrid
from ..core.aggregates.merged_histogram import MergedBins, merged_quantile, spread
from ..core.messages import protocol as P
from .queries import merged_parts

COARSE_BINS = 24  # 22 log bins over the default 11 decades: about a half decade each
ZOOM_BINS = 34  # 32 log bins over the zoom's 2 decades: 15.5 % each
ZOOM_DECADES = 2.0
COARSE_FLOOR = 4.0  # pooled noise passes it in under 0.1 % of bins: the zoom is rarely placed on noise
ZOOM_FLOOR = 1.0  # inside the coarse support: low, so that the few values of a tail quantile count


def zoom_grid(base: HistogramGrid, estimate: float) -> HistogramGrid:
    half = 10 ** (ZOOM_DECADES / 2)
    low, high = max(base.low, estimate / half), min(base.high, estimate * half)
    if not high > low * 1.5:
        low, high = base.low, base.high
    return HistogramGrid(low, high, ZOOM_BINS)


TAIL_VALUES = 5  # a tail quantile with fewer values expected above it rests on the extreme few


def thin_tail(n_values: float, q: float, what: str = "the quantile") -> str | None:
    """What to say when the ``q`` quantile (``what``) of ``n_values`` values has fewer than :data:`TAIL_VALUES`
    of them above it (its sampling error alone then moves the share above it by several points), else None."""
    above = float(n_values) * (1.0 - q)
    if above >= TAIL_VALUES:
        return None
    return (f"{what}, the {q:g} quantile of {float(n_values):.0f} values, rests on about {above:.1f} value(s) above "
            f"it, so the share of patients above it will differ from {100 * (1 - q):.0f}% by several points. Fix: "
            "calibrate on more held-out complete cases (larger 'val' splits, or more sites above their floor)")


def support_on(coarse: HistogramGrid, coarse_parts: list[MergedBins], fine: HistogramGrid) -> np.ndarray:
    """The bins of ``fine`` that overlap a bin of ``coarse`` holding pooled mass (after its floor)."""
    keep = spread(coarse_parts, coarse.n_bins) > 0
    ce, fe = coarse.edges(), fine.edges()
    lo, hi = ce[:-1][keep], ce[1:][keep]
    return ((lo[None, :] < fe[1:, None]) & (hi[None, :] > fe[:-1, None])).any(axis=1)


def quantile_release(ask: Callable[[P.Phase, object], dict], phase: P.Phase, request_of: Callable[[HistogramGrid], object],
                     base: HistogramGrid, q: float, noised: bool, exact_noisy: bool = False,
                     floors: tuple[float, float] = (COARSE_FLOOR, ZOOM_FLOOR), support: bool = True
                     ) -> tuple[HistogramGrid, dict, list[MergedBins]]:
    """(grid used, replies, parts) for the ``q`` quantile of ``phase``'s histograms; ``floors``: pooled
    noisy bins within this many noise sds count as empty on the coarse grid and on the zoom (0: none);
    ``support``: zoom bins outside the coarse grid's mass count as empty (module docstring)."""
    if not noised:
        replies = ask(phase, request_of(base))
        return base, replies, merged_parts(replies, base.n_bins, exact_noisy)
    coarse = HistogramGrid(base.low, base.high, COARSE_BINS)
    replies = ask(phase, request_of(coarse))
    parts = merged_parts(replies, coarse.n_bins, True, floors[0])
    if not parts or spread(parts, coarse.n_bins).sum() <= 0:
        return coarse, replies, parts
    fine = zoom_grid(base, merged_quantile(coarse, parts, q).estimate)
    replies = ask(phase, request_of(fine))
    mask = support_on(coarse, parts, fine) if support else None
    return fine, replies, merged_parts(replies, fine.n_bins, True, floors[1], mask)
