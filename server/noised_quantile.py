"""A quantile from sites' noised histograms: a coarse grid first, then a zoom around its estimate.

Noised releases (core/privacy/noised_release.py) carry counts on every bin with noise on each; the error of a
quantile grows with the number of bins its cumulative count crosses. So when the sites noise, the
server asks a coarse grid over the whole range (``COARSE_BINS`` bins), then a fine one over
``ZOOM_DECADES`` decades around the coarse estimate (``ZOOM_BINS`` bins). A site answers at most
``dp.release-grids`` (default 2) grids per kind per run and charges each to its budget. With exact
(merged) releases one ask on the run's grid is enough.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.aggregates.histogram import HistogramGrid
from ..core.aggregates.merged_histogram import MergedBins, merged_quantile, spread
from ..core.messages import protocol as P
from .queries import NOISE_FLOOR, merged_parts

COARSE_BINS = 24  # 22 log bins over the default 11 decades: about a half decade each
ZOOM_BINS = 34  # 32 log bins over the zoom's 2 decades: 15.5 % each
ZOOM_DECADES = 2.0


def zoom_grid(base: HistogramGrid, estimate: float) -> HistogramGrid:
    half = 10 ** (ZOOM_DECADES / 2)
    low, high = max(base.low, estimate / half), min(base.high, estimate * half)
    if not high > low * 1.5:
        low, high = base.low, base.high
    return HistogramGrid(low, high, ZOOM_BINS)


def quantile_release(ask: Callable[[P.Phase, object], dict], phase: P.Phase, request_of: Callable[[HistogramGrid], object],
                     base: HistogramGrid, q: float, noised: bool, exact_noisy: bool = False,
                     floor: float = NOISE_FLOOR) -> tuple[HistogramGrid, dict, list[MergedBins]]:
    """(grid used, replies, parts) for the ``q`` quantile of ``phase``'s histograms; ``floor``: pooled
    noisy bins within this many noise sds count as empty (0: none, the unbiased CDF of spread scores)."""
    if not noised:
        replies = ask(phase, request_of(base))
        return base, replies, merged_parts(replies, base.n_bins, exact_noisy)
    coarse = HistogramGrid(base.low, base.high, COARSE_BINS)
    replies = ask(phase, request_of(coarse))
    parts = merged_parts(replies, coarse.n_bins, True, floor)
    if not parts or spread(parts, coarse.n_bins).sum() <= 0:
        return coarse, replies, parts
    fine = zoom_grid(base, merged_quantile(coarse, parts, q).estimate)
    replies = ask(phase, request_of(fine))
    return fine, replies, merged_parts(replies, fine.n_bins, True, floor)
