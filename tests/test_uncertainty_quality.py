"""Uncertainty quality: per-site Spearman with a patient bootstrap, the sites' scalars, and the
Fisher-z meta-analysis that combines them without pooling data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from rmmfed.core.config import DPConfig, RunConfig
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.site.site_session import SiteSession
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.train import predict_risk
from rmmfed.core.routing.two_tier import recovery_errors
from rmmfed.core.routing.uncertainty import masking_patterns
from rmmfed.core.routing.uncertainty_quality import (combine_sites, patient_bootstrap_spearman, quality_document,
                                             site_quality)
from rmmfed.core.model.weights import get_weights

pytestmark = pytest.mark.usefixtures("single_thread")

QUALITY_KEYS = {"uncertainty-error-spearman", "uncertainty-error-ci-low", "uncertainty-error-ci-high",
                "uncertainty-risk-spearman", "uncertainty-risk-ci-low", "uncertainty-risk-ci-high",
                "uncertainty-n-patients", "uncertainty-n-rows"}


def _rows(n_patients: int, rows_each: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pattern-major rows: a patient effect shared by its rows, sigma^2 and error both track it."""
    rng = np.random.default_rng(seed)
    u = np.tile(rng.normal(size=n_patients), rows_each)
    sigma2 = np.exp(u + 0.5 * rng.normal(size=u.size))
    err = np.exp(u + 1.0 * rng.normal(size=u.size))
    return sigma2, err, np.tile(np.arange(n_patients), rows_each)


# ---- per-site bootstrap ----------------------------------------------------------------------------
def test_bootstrap_interval_contains_the_point_estimate_and_narrows_with_more_patients():
    small = patient_bootstrap_spearman(*_rows(40), seed=0)
    large = patient_bootstrap_spearman(*_rows(400), seed=0)

    for s in (small, large):
        assert s.ci_low < s.rho < s.ci_high
        assert s.rho == pytest.approx(float(spearmanr(*_rows(s.n_patients)[:2]).statistic))
    assert (small.n_patients, small.n_rows, large.n_patients) == (40, 240, 400)
    assert large.ci_high - large.ci_low < 0.6 * (small.ci_high - small.ci_low)


def test_bootstrap_resamples_patients_so_copies_of_a_patients_row_add_no_precision():
    sigma2, err, _ = _rows(60, rows_each=1, seed=3)
    once = patient_bootstrap_spearman(sigma2, err, np.arange(60), seed=7)

    copied = patient_bootstrap_spearman(np.tile(sigma2, 6), np.tile(err, 6), np.tile(np.arange(60), 6), seed=7)

    assert copied.n_rows == 360 and copied.n_patients == 60
    assert copied.rho == pytest.approx(once.rho)
    assert (copied.ci_low, copied.ci_high) == pytest.approx((once.ci_low, once.ci_high))


def test_bootstrap_is_seeded():
    a = patient_bootstrap_spearman(*_rows(50), seed=1)
    b = patient_bootstrap_spearman(*_rows(50), seed=1)
    c = patient_bootstrap_spearman(*_rows(50), seed=2)

    assert a == b and (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_bootstrap_has_no_interval_below_three_patients_and_no_rho_for_constant_values():
    few = patient_bootstrap_spearman(*_rows(2), seed=0)  # 12 rows: rho as over rows, no interval
    flat = patient_bootstrap_spearman(np.ones(30), np.arange(30.0), np.arange(30), seed=0)

    assert few.rho == pytest.approx(float(spearmanr(*_rows(2)[:2]).statistic)) and few.n_patients == 2
    assert all(math.isnan(v) for v in (few.ci_low, few.ci_high, flat.rho, flat.ci_low, flat.ci_high))


# ---- combination across sites ---------------------------------------------------------------------
def test_fisher_z_of_identical_site_rhos_returns_that_rho_and_narrows_with_more_sites():
    two = combine_sites([(0.4, 50)] * 2)
    eight = combine_sites([(0.4, 50)] * 8)

    assert two.rho == pytest.approx(0.4) and eight.rho == pytest.approx(0.4)
    assert two.ci_low < 0.4 < two.ci_high
    assert eight.ci_high - eight.ci_low < 0.6 * (two.ci_high - two.ci_low)
    assert (eight.n_sites, eight.n_patients) == (8, 400)


def test_fisher_z_weights_sites_by_patients_minus_three():
    c = combine_sites([(0.2, 103), (0.6, 403)])

    z = (100 * math.atanh(0.2) + 400 * math.atanh(0.6)) / 500
    half = 1.959964 * math.sqrt(1.06 / 500)
    assert c.rho == pytest.approx(math.tanh(z))
    assert (c.ci_low, c.ci_high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), rel=1e-5)


def test_fisher_z_leaves_out_sites_without_a_rho_or_with_three_patients_or_fewer():
    c = combine_sites([(0.3, 40), (float("nan"), 0), (0.9, 3), (None, 10)])
    none = combine_sites([(float("nan"), 0)])

    assert (c.rho, c.n_sites, c.n_patients) == (pytest.approx(0.3), 1, 40)
    assert math.isnan(none.rho) and none.n_sites == 0


def test_quality_document_combines_the_sites_scalars(dims):
    per_site = {}
    for site, (r_err, r_risk, n) in {"A": (0.3, 0.1, 40), "B": (0.5, 0.2, 80), "C": (float("nan"), float("nan"), 0)}.items():
        per_site[site] = {"uncertainty-error-spearman": r_err, "uncertainty-error-ci-low": r_err - 0.1,
                          "uncertainty-error-ci-high": r_err + 0.1, "uncertainty-risk-spearman": r_risk,
                          "uncertainty-risk-ci-low": r_risk - 0.1, "uncertainty-risk-ci-high": r_risk + 0.1,
                          "uncertainty-risk-sd-spearman": r_risk + 0.3, "uncertainty-risk-sd-ci-low": r_risk + 0.2,
                          "uncertainty-risk-sd-ci-high": r_risk + 0.4,
                          "uncertainty-n-patients": float(n), "uncertainty-n-rows": float(6 * n)}
    per_site["old"] = {"uncertainty-error-spearman": 0.9}  # a site of an older rmm: no patient count, no weight

    doc = quality_document(per_site, "total")

    assert doc["definition"] == "total"
    assert doc["spearman_error"] == pytest.approx(combine_sites([(0.3, 40), (0.5, 80)]).to_dict(), nan_ok=True)
    assert doc["spearman_risk_error"]["n_sites"] == 2 and doc["spearman_risk_error"]["n_patients"] == 120
    assert set(doc["per_site"]) == {"A", "B", "C"}
    assert doc["per_site"]["B"] == {"spearman_error": {"rho": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                                    "spearman_risk_error": {"rho": 0.2, "ci_low": pytest.approx(0.1),
                                                            "ci_high": pytest.approx(0.3)},
                                    "spearman_risk_sd_change": {"rho": pytest.approx(0.5), "ci_low": pytest.approx(0.4),
                                                                "ci_high": pytest.approx(0.6)},
                                    "n_patients": 80, "n_rows": 480}
    assert doc["spearman_risk_sd_change"]["n_sites"] == 2
    old = quality_document({"old": {"uncertainty-error-spearman": 0.4, "uncertainty-n-patients": 40.0,
                                    "uncertainty-n-rows": 240.0}}, "total")  # a site of an rmm before the risk SD
    assert old["spearman_error"]["n_sites"] == 1 and old["spearman_risk_sd_change"]["n_sites"] == 0


# ---- what a site computes and sends ---------------------------------------------------------------
@pytest.fixture
def evaluated_site(site_factory, dims, tier1_cfg):
    session = SiteSession(site_factory(n=80, seed=2), device="cpu")
    cfg = RunConfig(seed=0, batch_size=16, model=tier1_cfg, hist_bins=64, dp=DPConfig(enabled=False))  # the non-DP path (DP-SGD: tests/test_dp.py)
    session.bind_schema(dims)
    session.setup(cfg, FeatureStats.from_sums(add_sums([session.feature_sums(cfg.min_stat_count)]), dims,
                                              cfg.model.anat_partitions))
    weights, _ = session.train(get_weights(build_model(dims, cfg.model, cfg.seed)), server_round=1)
    session.freeze(weights)
    session.histogram(HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins))
    return session


def test_recovery_rows_carry_the_patient_and_the_tier1_risk_gap(evaluated_site, dims):
    s = evaluated_site
    test = s.tensors.subset(s.data.indices("test"))
    tier1 = s.model(s.tier1_frozen)

    rec = recovery_errors(tier1, None, test, s.cfg, seed=1)

    complete = test.subset(np.flatnonzero(test.present.all(dim=1).numpy()))
    patterns = masking_patterns(len(dims))
    full = predict_risk(tier1, complete)
    expected = np.concatenate([np.abs(predict_risk(tier1, complete, torch.tensor(p).expand(len(complete), -1)) - full)
                               for p in patterns])
    np.testing.assert_array_equal(rec["patient"], np.tile(np.arange(len(complete)), len(patterns)))
    np.testing.assert_allclose(rec["risk_gap"], expected, rtol=1e-6)
    assert (rec["risk_gap"] > 0).any()


def test_site_sends_only_scalars_about_its_patients(evaluated_site, dims):
    metrics = evaluated_site.evaluate(None, FittedTwoTier(1e-3), k=1)

    assert QUALITY_KEYS <= set(metrics)
    assert all(type(v) is float for v in metrics.values())
    n = metrics["uncertainty-n-patients"]
    assert n >= 3 and metrics["uncertainty-n-rows"] == n * len(masking_patterns(len(dims))) == metrics["masked-complete-n"]
    for t in ("error", "risk"):
        assert metrics[f"uncertainty-{t}-ci-low"] <= metrics[f"uncertainty-{t}-spearman"] <= metrics[f"uncertainty-{t}-ci-high"]


def test_a_site_below_its_floor_sends_nan_and_zero_counts(evaluated_site):
    metrics = evaluated_site.evaluate(None, FittedTwoTier(1e-3), k=10_000)

    assert metrics["uncertainty-n-patients"] == 0.0 and metrics["uncertainty-n-rows"] == 0.0
    assert all(math.isnan(metrics[k]) for k in QUALITY_KEYS if "-n-" not in k)


def test_site_quality_of_the_rows_matches_the_bootstrap_of_each_target():
    sigma2, err, patient = _rows(30)
    gap = np.abs(np.sin(sigma2))
    rec = {"sigma2": sigma2, "err1": err, "risk_gap": gap, "patient": patient, "risk_sd": np.sqrt(sigma2)}

    out = site_quality(rec, seed=4)

    s = patient_bootstrap_spearman(sigma2, gap, patient, seed=4)
    assert (out["uncertainty-risk-spearman"], out["uncertainty-risk-ci-low"], out["uncertainty-risk-ci-high"]) == \
        (s.rho, s.ci_low, s.ci_high)
    s = patient_bootstrap_spearman(np.sqrt(sigma2), gap, patient, seed=4)  # the risk SD against the same change
    assert (out["uncertainty-risk-sd-spearman"], out["uncertainty-risk-sd-ci-low"]) == (s.rho, s.ci_low)
    assert out["uncertainty-n-patients"] == 30.0 and out["uncertainty-n-rows"] == 180.0


# ---- what the server shows ------------------------------------------------------------------------
def _metrics_with_quality() -> dict:
    per_site = {s: {"spearman_error": {"rho": r, "ci_low": r - 0.1, "ci_high": r + 0.1},
                    "spearman_risk_error": {"rho": None, "ci_low": None, "ci_high": None},
                    "n_patients": 40, "n_rows": 240} for s, r in (("A", 0.3), ("B", 0.5))}
    return {"rmm_version": "x", "federated": {"c_index": 0.7, "c_index_method": "m", "c_index_combined_pairs": 0.7,
                                               "per_site": {s: {"n_test": 10, "n_events_test": 5, "c_index": 0.7}
                                                            for s in per_site}},
            "sites": {"accepted": ["A", "B"], "refused": {}},
            "routing": {"route_counts_per_site": {s: {"tier1": 9, "tier2": 1, "abstain": 0} for s in per_site},
                        "referral_rate_per_site": {"A": 0.1, "B": 0.1}, "masked_complete_referral_rate": 0.05,
                        "masked_complete_referral_rate_per_site": {"A": 0.05, "B": 0.05}},
            "calibration": {"theta": 0.01, "quantile": 0.95, "n_values": 10}, "timing_s": {"total": 1.0},
            "uncertainty": {"definition": "total", "per_site": per_site, "method": "fixed-effect Fisher-z",
                            "spearman_error": {"rho": 0.43, "ci_low": 0.25, "ci_high": 0.58, "n_patients": 80,
                                               "n_sites": 2},
                            "spearman_risk_error": {"rho": None, "ci_low": None, "ci_high": None, "n_patients": 0,
                                                    "n_sites": 0}}}


def test_summary_and_report_show_the_combined_spearman_with_its_interval(tmp_path):
    from rmmfed.server.plots import uncertainty_quality_forest
    from rmmfed.server.run_report import report_markdown
    from rmmfed.server.summary import summary_lines

    m = _metrics_with_quality()
    text = "\n".join(summary_lines(m, Path("o")))
    fig = uncertainty_quality_forest(m["uncertainty"], tmp_path)
    md = report_markdown(m, [fig])

    assert ("sigma^2 (total) vs recovery error: Spearman 0.43 [0.25, 0.58] (combined over 2 site(s), 80 patients"
            in text)
    assert "A 0.30 [0.20, 0.40] / n/a [n/a, n/a]" in text
    assert "| A | 40 | 240 | 0.30 [0.20, 0.40] | n/a [n/a, n/a] | n/a [n/a, n/a] |" in md and "| combined (2 sites) | 80 |" in md
    assert (tmp_path / "uncertainty_quality.png").is_file() and "](uncertainty_quality.png)" in md
