"""Federated tertile cut points of the training system risk (rmm-predict's risk groups)."""

from __future__ import annotations

import numpy as np

from rmmfed.core.survival.risk_groups import RISK_GRID, cutpoints_from_counts, risk_counts


def test_summed_site_histograms_give_the_pooled_tertiles_within_one_bin():
    rng = np.random.default_rng(0)
    sites = [rng.normal(loc, 1.0, n) for loc, n in ((-0.5, 300), (0.2, 150), (0.8, 90))]
    counts = sum(risk_counts(r) for r in sites)
    cuts = cutpoints_from_counts(counts)
    exact = np.quantile(np.concatenate(sites), [1 / 3, 2 / 3])
    width = 16.0 / (RISK_GRID.n_bins - 2)  # one bin, in risk units
    assert cuts is not None and np.allclose(cuts, exact, atol=width)


def test_abstained_patients_are_left_out_and_extreme_risks_land_in_the_end_bins():
    counts = risk_counts(np.array([np.nan, -100.0, 0.0, 100.0]))
    assert counts.sum() == 3 and counts[0] == 1 and counts[-1] == 1


def test_fewer_than_three_risks_give_no_cut_points():
    assert cutpoints_from_counts(risk_counts(np.array([0.1, 0.2]))) is None
    assert cutpoints_from_counts(np.zeros(RISK_GRID.n_bins)) is None
