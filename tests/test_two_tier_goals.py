"""The two-tier goals benchmark reads what a run wrote (no Flower: a metrics document by hand)."""

from __future__ import annotations

from rmmfed.simulations.evidence.two_tier_goals import collect, referral_within_binomial


def test_a_site_referral_rate_is_judged_against_the_binomial_interval_of_five_percent():
    assert referral_within_binomial(0.05, 600)
    assert not referral_within_binomial(0.12, 600)  # 72 of 600: far outside 30 +- 11
    assert referral_within_binomial(0.10, 20)  # 2 of 20 is inside the wide interval of a small site
    assert referral_within_binomial(float("nan"), 10) is None and referral_within_binomial(0.05, 0) is None


def test_collect_prefers_the_pooled_referred_figures_and_counts_sites_in_the_band():
    m = {"two_tier": {"c_index": {"tier1_referred": None, "tier2_referred": None, "two_tier_referred": None,
                                  "tier1_covered": 0.76, "two_tier_covered": 0.75},
                      "recovery_mse": {"tier1": 0.79, "tier2": 0.76}, "gate": {"open": True},
                      "ms_per_patient": {"tier1": 0.2, "tier2": 5.0}, "compute_share_vs_always_tier2": 0.08,
                      "referred_pooled": {"n": 25, "tier1_covered": 0.70, "tier2": 0.72, "two_tier_covered": 0.71}},
         "uncertainty": {"spearman_error": {"rho": 0.35, "ci_low": 0.2, "ci_high": 0.49},
                         "spearman_risk_error": {"rho": 0.1}},
         "routing": {"masked_complete_referral_rate": 0.069,
                     "masked_complete_referral_rate_per_site": {"A": 0.05, "B": 0.2},
                     "masked_complete_n_per_site": {"A": 600, "B": 300}},
         "timing_s": {"total": 160.0}}
    r = collect(m, "default", 0)
    assert (r["c_tier1_referred"], r["c_tier2_referred"], r["c_two_tier_referred"], r["n_referred"]) == (0.70, 0.72, 0.71, 25)
    assert (r["sites_inside_binomial"], r["sites"]) == (1, 2) and r["gate_open"] is True
    assert r["spearman_error"] == 0.35 and r["mse_tier2"] < r["mse_tier1"]
