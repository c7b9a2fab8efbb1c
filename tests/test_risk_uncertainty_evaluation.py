"""What an evaluation sends about the risk distribution: floored conformal, value-of-information and
risk-coverage sums (core/routing/risk_uncertainty_evaluation.py), and what the coordinator makes of them."""

from __future__ import annotations

import math

import numpy as np

from rmmfed.core.messages import metric_names as M
from rmmfed.core.survival.concordance import concordance_counts
from rmmfed.core.routing.risk_uncertainty_evaluation import (conformal_sums, coverage_curve_document, kept_sums,
                                                     voi_document, voi_sums)


def _rec(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seen = rng.normal(0, 1, n)
    sd = rng.uniform(0.1, 1.0, n)
    return {"risk_seen": seen, "risk_mean": seen + sd * rng.normal(0, 1, n), "risk_sd": sd,
            "risk1": seen + rng.normal(0, 0.6, n), "change": rng.uniform(0, 1, n)}


def test_conformal_counts_are_sent_only_when_covered_and_uncovered_rows_reach_the_floor():
    rec = _rec(200)
    out = conformal_sums(rec, (1.64, math.nan), k=10)
    covered = int(out[M.conformal("tier1", "covered")])
    assert 150 < covered < 200 and out[M.conformal("tier1", "width-sum")] > 0
    assert out[M.conformal("tier2", "covered")] == 0 and out[M.conformal("tier2", "width-sum")] == 0
    tight = conformal_sums(rec, (1e3, math.nan), k=10)  # every row covered: its complement is 0, sent
    assert tight[M.conformal("tier1", "covered")] == 200
    s = np.sort(np.abs(rec["risk_seen"] - rec["risk_mean"]) / rec["risk_sd"])
    near_all = (s[-3] + s[-2]) / 2  # all but 2 rows covered: 2 uncovered rows < k -> zeros
    assert conformal_sums(rec, (near_all, math.nan), k=10)[M.conformal("tier1", "covered")] == 0


def test_nested_kept_groups_one_patient_apart_are_never_both_sent():
    """A coordinator that places two thresholds so that the kept groups differ by one patient learns
    nothing from the difference: the second level goes out as zeros."""
    rng = np.random.default_rng(1)
    n = 60
    score = np.sort(rng.uniform(0, 1, n))
    time, event, risk = rng.exponential(1, n), rng.integers(0, 2, n), rng.normal(0, 1, n)
    t1, t2 = (score[29] + score[30]) / 2, (score[30] + score[31]) / 2  # kept 30, then 31
    out = kept_sums(time, event, risk, score, (t1, t2, math.inf), k=10)
    assert out[M.kept_n(0)] == 30 and out[M.kept_n(1)] == 0 and out[M.kept(1).comparable] == 0
    assert out[M.kept_n(2)] == n
    c = concordance_counts(time[:30], risk[:30], event[:30])
    assert out[M.kept(0).comparable] == c.comparable and out[M.kept(0).concordant] == c.concordant
    assert all(out[M.kept_n(j)] == 0 for j in range(3, M.KEPT_LEVELS))


def test_the_capture_ratio_compares_the_top_tenth_by_expected_change_with_a_random_tenth():
    n = 200
    seen = np.linspace(-2, 2, n)
    hidden = seen.copy()
    flip = np.arange(0, n, 10)  # 20 rows whose group changes...
    hidden[flip] = -seen[flip] + np.sign(-seen[flip]) * 1.5
    change = np.zeros(n)
    change[flip] = 1.0  # ... are exactly the ones with the largest expected change
    draws = np.repeat(hidden[:, None], 4, axis=1)
    draws[flip, :2] = seen[flip, None]  # the flipping rows' draws reach the seen risk's group half the time
    rec = {"risk_seen": seen, "risk1": hidden, "change": change[::-1].copy(), "draws": draws}
    out = voi_sums(rec, (-0.5, 0.5), mean=0.0, sd=1.0, k=10)  # ranked by a useless expected change ...
    assert out[M.VOI_TOP_N] == 20 and out[M.VOI_TOP_CHANGES_P] == out[M.VOI_CHANGES] > 0  # ... P(change) finds them
    rec = {"risk_seen": seen, "risk1": hidden, "change": change, "draws": draws}
    out = voi_sums(rec, (-0.5, 0.5), mean=0.0, sd=1.0, k=10)
    assert out[M.VOI_TOP_N] == 20
    assert out[M.VOI_TOP_CHANGES] == out[M.VOI_CHANGES] > 0
    doc = voi_document({"A": {**out, M.MASKED_N: float(n)}})
    assert doc["capture_ratio"] == (out[M.VOI_TOP_CHANGES] / out[M.VOI_CHANGES]) / (20 / n)
    none = voi_sums(rec, (), mean=0.0, sd=1.0, k=10)  # no risk groups: nothing sent
    assert none[M.VOI_TOP_N] == 0 and math.isnan(voi_document({"A": {**none, M.MASKED_N: 200.0}})["capture_ratio"])


def test_the_risk_coverage_curve_combines_the_levels_every_site_sent():
    rng = np.random.default_rng(2)
    ps = {}
    for site, n in (("A", 80), ("B", 50)):
        score = rng.uniform(0, 1, n)
        time, event = rng.exponential(1, n), rng.integers(0, 2, n)
        risk = -time + rng.normal(0, 0.5, n) + 2 * score * rng.normal(0, 1, n)  # worse where the score is high
        ps[site] = {**kept_sums(time, event, risk, score, (0.5, math.inf), k=10), M.N_TEST: float(n)}
    doc = coverage_curve_document(ps, (0.5, math.inf), (0.5, 1.0))
    half, everyone = doc["points"]
    assert everyone["referral_rate"] == 0.0 and 0.3 < half["referral_rate"] < 0.7
    assert half["tier1_c_index_kept"] > everyone["tier1_c_index_kept"]
