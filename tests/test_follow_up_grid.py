"""The Breslow grid at the pooled follow-up quantiles (core/survival/follow_up_grid.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.aggregates.merged_histogram import merge_bins, pooled_counts
from rmmfed.core.survival.baseline_hazard import baseline_from_sums, breslow_baseline, cumhaz_at, time_grid
from rmmfed.core.survival.follow_up_grid import quantile_time_grid
from rmmfed.core.survival.merged_hazard import fine_sums, merge_intervals
from rmmfed.server.phases import monotone_risk_sets

GRID = HistogramGrid(1e-3, 1e6, 512)


def early_deaths_cohort(seed: int, sites: int = 4, n: int = 70):
    """Sites whose deaths crowd the first year and whose survivors are followed for up to ten: the shape
    of an aggressive subtype beside an indolent one (TCGA GBM/LGG)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sites):
        aggressive = rng.random(n) < 0.5
        death = np.where(aggressive, rng.exponential(0.6, n), rng.exponential(12.0, n))
        censor = rng.uniform(0.5, 10.0, n)
        time = np.minimum(death, censor)
        out.append((time, death <= censor, rng.normal(0.0, 0.5, n)))
    return out


def merged_baseline(cohort, grid, k=10):
    parts = [merge_intervals(t, e, r, grid, k) for t, e, r in cohort]
    events, sums = fine_sums([p for p in parts if p is not None], len(grid))
    return baseline_from_sums(grid, events, monotone_risk_sets(sums))


def pooled_followup(cohort, k=None):
    times = np.concatenate([t for t, _, _ in cohort])
    if k is None:
        return GRID.counts(times).astype(float), times
    return pooled_counts([merge_bins(GRID, t, np.arange(len(t)), k) for t, _, _ in cohort], GRID.n_bins), times


def test_the_grid_is_increasing_ends_at_t_max_and_splits_the_follow_up_evenly():
    counts, times = pooled_followup(early_deaths_cohort(0))
    t_max = float(np.quantile(times, 0.95))
    g = quantile_time_grid(GRID, counts, t_max, 32)
    assert g is not None and len(g) <= 32 and g[-1] == t_max
    assert np.all(np.diff(g) > 0) and g[0] > 0
    per_interval = np.bincount(np.searchsorted(g, times[times <= t_max], side="left"), minlength=len(g))
    expected = (times <= t_max).sum() / len(g)
    assert per_interval.min() > 0.4 * expected and per_interval.max() < 2.0 * expected  # a uniform grid: 0 to 15x


@pytest.mark.parametrize("merged, bound, ratio", [(False, 0.1, 0.5), (True, 0.2, 0.7)])
def test_merged_breslow_on_the_quantile_grid_is_closer_to_the_exact_baseline_than_on_a_uniform_grid(merged, bound, ratio):
    """Mean relative error of H0 at 19 follow-up quantiles: uniform grid 0.24-0.26; the quantile grid
    0.04-0.06 from an exact follow-up histogram, 0.10-0.16 from one merged to k = 10 per site."""
    for seed in range(3):
        cohort = early_deaths_cohort(seed)
        counts, times = pooled_followup(cohort, k=10 if merged else None)
        t_max = float(np.quantile(times, 0.95))
        at = np.quantile(times[times <= t_max], np.linspace(0.05, 0.95, 19))
        exact = cumhaz_at(at, np.sort(np.unique(times)), breslow_baseline(
            np.concatenate([c[0] for c in cohort]), np.concatenate([c[1] for c in cohort]),
            np.concatenate([c[2] for c in cohort]), np.sort(np.unique(times))))
        errors = {}
        for name, grid in (("uniform", time_grid(t_max, 64)), ("quantile", quantile_time_grid(GRID, counts, t_max, 64))):
            h = cumhaz_at(at, grid, merged_baseline(cohort, grid))
            errors[name] = float(np.mean(np.abs(h - exact) / exact))
        assert errors["quantile"] < bound, errors
        assert errors["quantile"] < ratio * errors["uniform"], errors


def test_no_usable_follow_up_keeps_the_uniform_grid():
    assert quantile_time_grid(GRID, np.zeros(GRID.n_bins), 5.0, 16) is None
    lumpy = GRID.counts(np.full(50, 3.0)).astype(float)  # everyone followed for the same time
    assert quantile_time_grid(GRID, lumpy, 3.0, 16) is None
    assert quantile_time_grid(GRID, GRID.counts(np.linspace(1, 9, 50)).astype(float), float("nan"), 16) is None


def test_noised_risk_sets_are_made_monotone_by_a_running_minimum_or_by_isotonic_regression():
    exact = np.array([400.0, 340.0, 280.0, 220.0, 170.0, 120.0, 80.0, 50.0])
    for rule in ("running-min", "isotonic"):  # exact sums already shrink: as they are
        assert np.array_equal(monotone_risk_sets(exact, rule), exact)
    noised = exact + np.array([10.0, -5.0, -250.0, 20.0, -10.0, 15.0, -5.0, 10.0])  # one deep dip at interval 2
    iso, running = monotone_risk_sets(noised, "isotonic"), monotone_risk_sets(noised)
    assert np.all(np.diff(iso) <= 1e-12) and np.all(iso >= 0) and np.all(np.diff(running) <= 0)
    assert np.all(running[2:] == 30.0)  # the running minimum keeps the dip's 30 to the end
    assert np.array_equal(iso[5:], noised[5:])  # isotonic regression pools it with two neighbours, no further
    assert iso[2] > 4 * running[2]
    assert np.sum((iso - noised) ** 2) <= np.sum((running - noised) ** 2)  # and is the nearer of the two
