"""Reference tests for rmmfed.core.aggregates.histogram (federated percentile from bin counts)."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.errors import ConfigError, HistogramError, RmmError
from rmmfed.core.aggregates.histogram import DEFAULT_GRID, HistogramGrid, quantile_from_counts


def lognormal_sites(seed, sizes=(50, 400, 1500, 3000)):
    rng = np.random.default_rng(seed)
    return [np.exp(rng.normal(np.log(1e-3), 2.5, size=n)) for n in sizes]


def test_default_grid_layout():
    g = DEFAULT_GRID
    e = g.edges()
    assert (g.low, g.high, g.n_bins) == (1e-8, 1e3, 512)
    assert e.shape == (g.n_bins + 1,)
    assert e[0] == 0.0 and e[1] == g.low and e[-2] == g.high and np.isinf(e[-1])
    assert np.all(np.diff(e) > 0)
    np.testing.assert_allclose(e[2:-1] / e[1:-2], g.ratio, rtol=1e-9)
    assert 1.04 < g.ratio < 1.06                              # ~5 % bins


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_federated_quantile_within_one_bin(seed, q):
    g = DEFAULT_GRID
    sites = lognormal_sites(seed)
    total = sum(g.counts(v) for v in sites)
    pooled = np.concatenate(sites)
    est = quantile_from_counts(g, total, q)
    ref = float(np.percentile(pooled, 100 * q))
    e = g.edges()
    b = np.searchsorted(e, est, side="right") - 1
    inside = e[b] <= ref <= e[b + 1]
    assert inside or abs(est - ref) / ref <= g.ratio - 1, (est, ref)


def test_counts_sum_and_split_invariance():
    g = DEFAULT_GRID
    sites = lognormal_sites(9)
    pooled = np.concatenate(sites)
    c = g.counts(pooled)
    assert c.dtype == np.int64 and c.shape == (g.n_bins,)
    assert c.sum() == pooled.size
    np.testing.assert_array_equal(sum(g.counts(v) for v in sites), c)


def test_edge_values_go_to_upper_bin_and_tails_are_counted():
    g = HistogramGrid(1e-2, 1e2, 10)
    e = g.edges()
    c = g.counts(e[:-1])                                      # each finite edge once
    np.testing.assert_array_equal(c, np.ones(g.n_bins, dtype=np.int64))
    c = g.counts([0.0, 1e-5, 1e-2, 1e2, 1e6, np.inf])
    assert c[0] == 2                                          # 0 and 1e-5 underflow
    assert c[1] == 1                                          # low itself: first log bin
    assert c[-1] == 3                                         # high, 1e6, inf overflow
    assert c.sum() == 6


def test_quantile_in_underflow_and_overflow():
    g = HistogramGrid(1.0, 100.0, 6)
    assert quantile_from_counts(g, g.counts([1e3] * 10), 0.5) == 100.0   # overflow -> high
    q = quantile_from_counts(g, g.counts([0.5] * 4), 0.5)                # linear in [0, low)
    assert 0.0 <= q < 1.0
    est = quantile_from_counts(g, g.counts([5.0]), 0.3)                 # single value: bin mid
    lo, hi = 100 ** 0.25, 100 ** 0.5
    assert est == pytest.approx(np.sqrt(lo * hi))


def test_quantile_monotone_in_q():
    g = DEFAULT_GRID
    c = g.counts(np.concatenate(lognormal_sites(3)))
    qs = [quantile_from_counts(g, c, q) for q in np.linspace(0.01, 0.99, 99)]
    assert np.all(np.diff(qs) >= 0)


def test_config_round_trip():
    g = HistogramGrid(1e-6, 10.0, 200)
    cfg = g.to_config()
    assert cfg == {"hist-low": 1e-6, "hist-high": 10.0, "hist-bins": 200}
    assert all(isinstance(v, (int, float)) for v in cfg.values())
    assert HistogramGrid.from_config(cfg) == g
    assert HistogramGrid.from_config({**DEFAULT_GRID.to_config(), "other": 1}) == DEFAULT_GRID
    with pytest.raises(ConfigError):
        HistogramGrid.from_config({"hist-low": 1e-6})


@pytest.mark.parametrize("kwargs", [dict(low=0.0), dict(low=5.0, high=1.0), dict(n_bins=2),
                                    dict(high=float("inf")), dict(n_bins=10.5)])
def test_invalid_grid(kwargs):
    with pytest.raises(ConfigError):
        HistogramGrid(**kwargs)


def test_errors():
    g = HistogramGrid(1e-2, 1e2, 10)
    good = g.counts([1.0, 2.0])
    with pytest.raises(HistogramError, match="NaN"):
        g.counts([1.0, np.nan])
    with pytest.raises(HistogramError, match="negative"):
        g.counts([-1.0])
    for q in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(HistogramError, match="between 0 and 1"):
            quantile_from_counts(g, good, q)
    with pytest.raises(HistogramError, match="all counts are zero"):
        quantile_from_counts(g, np.zeros(10), 0.5)
    with pytest.raises(HistogramError, match="hist-bins"):
        quantile_from_counts(g, np.ones(11), 0.5)
    with pytest.raises(HistogramError, match="non-negative"):
        quantile_from_counts(g, np.r_[-1, np.ones(9)], 0.5)
    assert issubclass(HistogramError, RmmError) and issubclass(HistogramError, ValueError)
