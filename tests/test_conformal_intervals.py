"""Federated split-conformal risk intervals (core/routing/conformal.py) and the risk draws they stand on
(core/routing/risk_interval.risk_if_acquired)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rmmfed.core.routing.conformal import SCORE_GRID, corrected_level, coverage_sums, needs_infinite, scores
from rmmfed.core.aggregates.histogram import quantile_from_counts
from rmmfed.core.routing.risk_interval import risk_if_acquired, tier1_risk_draws
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2_context import bag_encodings, data_means
from rmmfed.core.model.train import predict_risk

from test_tier2 import make_site


def test_the_conformal_level_is_the_finite_sample_corrected_one():
    assert corrected_level(99, 0.1) == pytest.approx(90 / 99)
    assert corrected_level(9, 0.1) == 1.0
    assert needs_infinite(8, 0.1) and not needs_infinite(9, 0.1)  # (n + 1)(1 - alpha) > n below 9 scores
    assert math.isnan(corrected_level(0, 0.1))


def _site_rows(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic rows: the seen risk is the centre plus the row's SD times a heavy-tailed draw."""
    sd = rng.uniform(0.05, 1.0, n)
    centre = rng.normal(shift, 1.0, n)
    return centre + sd * rng.standard_t(4, n), centre, sd


def test_summed_site_histograms_give_the_pooled_conformal_guarantee_on_held_out_rows():
    rng = np.random.default_rng(0)
    alpha = 0.1
    calib = [_site_rows(rng, n, shift) for n, shift in ((1500, 0.0), (800, 0.5), (400, -0.3), (300, 1.0))]
    counts = sum(SCORE_GRID.counts(scores(*c)) for c in calib)  # what the coordinator sums
    n = int(counts.sum())
    q = quantile_from_counts(SCORE_GRID, counts, corrected_level(n, alpha))
    pooled = np.sort(np.concatenate([scores(*c) for c in calib]))[math.ceil((n + 1) * (1 - alpha)) - 1]
    assert abs(math.log(q / pooled)) < math.log(SCORE_GRID.ratio)  # within one bin of the exact split-conformal q
    covered, rows = 0, 0
    for shift in (0.0, 0.5, -0.3, 1.0):  # held-out rows from the same sites
        seen, centre, sd = _site_rows(rng, 2000, shift)
        c, width = coverage_sums(seen, centre, sd, q)
        covered, rows = covered + c, rows + 2000
        assert width == pytest.approx(float((2 * q * sd).sum()))
    assert 0.88 <= covered / rows <= 0.93


def test_an_uncalibrated_tier_covers_nothing_and_sends_no_width():
    assert coverage_sums(np.zeros(3), np.zeros(3), np.ones(3), math.inf) == (0, pytest.approx(float("nan"), nan_ok=True))
    assert coverage_sums(np.zeros(0), np.zeros(0), np.zeros(0), 1.0) == (0, 0.0)


def test_a_draw_equal_to_the_real_features_gives_the_risk_with_the_modality_seen(dims, tier1_cfg):
    """The risk draws stand in for the exam: read at the patient's real (one-instance) bag, the hidden
    modality counts as observed, so the risk is the one Tier 1 gives with it seen."""
    data = make_site(dims, 16, seed=3)
    tier1 = build_model(dims, tier1_cfg, seed=1).eval()
    seen = torch.tensor(predict_risk(tier1, data))
    for hidden in range(len(dims)):
        observed = torch.ones(len(data), len(dims), dtype=torch.bool)
        observed[:, hidden] = False
        acquire = ~observed
        with torch.no_grad():
            r = risk_if_acquired(tier1, bag_encodings(tier1, data), observed, acquire, list(data.target),
                                 data_means(data))
        assert torch.allclose(r, seen, atol=1e-5)
        masked = torch.tensor(predict_risk(tier1, data, observed))
        assert not torch.allclose(masked, seen, atol=1e-4)  # hiding it does change the risk


def test_risk_draws_are_seeded_zero_width_when_nothing_is_missing_and_spread_otherwise(dims, tier1_cfg):
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]] * 4)
    data = make_site(dims, 12, seed=4, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=2)
    a, b = tier1_risk_draws(tier1, data, seed=5), tier1_risk_draws(tier1, data, seed=5)
    assert np.array_equal(a, b) and a.dtype == np.float64
    complete = present.all(dim=1).numpy()
    assert (a[complete].std(axis=1) == 0).all() and (a[~complete].std(axis=1) > 0).all()
    only = tier1_risk_draws(tier1, data, seed=5, only=1)  # only modality 1 drawn: patients without it spread
    assert (only[present[:, 1].numpy()].std(axis=1) == 0).all() and (only[~present[:, 1].numpy()].std(axis=1) > 0).all()


def test_the_gate_keeps_tier2_only_where_its_intervals_are_narrower():
    from rmmfed.core.tier2.tier2_gate import Tier2Gate, judge_intervals

    won = Tier2Gate(True, "Tier 2 beat Tier 1 on federated validation: figures", 100.0)
    assert judge_intervals(won, 2.0, 1.5).open
    closed = judge_intervals(won, 2.0, 2.5)
    assert not closed.open and "not narrower" in closed.reason and closed.width_tier2 == 2.5
    assert not judge_intervals(won, 2.0, math.inf).open  # uncalibrated Tier 2: its draws do not cover
    assert not judge_intervals(won, 2.0, math.nan).open
    lost = Tier2Gate(False, "Tier 2 did not beat Tier 1")
    assert not judge_intervals(lost, 2.0, 1.0).open  # a closed gate stays closed
    noised = judge_intervals(won, math.nan, math.nan, q_tier2=3.0)  # widths not released under noise
    assert noised.open and "calibrated" in noised.reason
    assert not judge_intervals(won, math.nan, math.nan, q_tier2=math.inf).open  # Tier 2's draws cannot cover
