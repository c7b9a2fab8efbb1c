"""The server's pooled counts from merged site histograms do not depend on the order sites answer in."""

from __future__ import annotations

import numpy as np

from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.aggregates.merged_histogram import merge_bins, pooled_counts


def test_pooled_counts_are_bitwise_the_same_for_any_site_order():
    grid = HistogramGrid(1e-4, 10.0, 128)
    rng = np.random.default_rng(5)
    parts = []
    for site in range(4):
        n = 40 + 15 * site
        values = rng.lognormal(mean=-3 + 0.3 * site, sigma=1.0, size=n)
        parts.append(merge_bins(grid, values, np.arange(n), k=10))
    n_bins = parts[0].n_bins
    a, b = pooled_counts(parts, n_bins), pooled_counts(parts[::-1], n_bins)
    assert a.sum() > 0 and np.array_equal(a, b)
