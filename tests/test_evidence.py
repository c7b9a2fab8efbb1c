"""Pure functions of the evidence commands (no Flower runs): Brier score, masking, late fusion, tables."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from rmmfed.simulations.evidence.ablation import summarise
from rmmfed.simulations.evidence.brier import (CensoringKM, breslow, brier_score, ibs_for_method, integrated_brier,
                                               survival)
from rmmfed.simulations.evidence.common import markdown_table, mean_sd, pair_weighted
from rmmfed.simulations.evidence.features import Featurizer, PooledCohort
from rmmfed.simulations.evidence.masking import expected_drop_fraction, mask_present, realised_drop_fraction
from rmmfed.simulations.evidence.methods import LateFusion, PooledCox, RidgeImputedCox, late_fusion_combine, ridge_fit
from rmmfed.simulations.evidence.robustness import summary


# ---- Brier score ----------------------------------------------------------------------------------
def test_censoring_km_right_value_and_left_limit():
    g = CensoringKM(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 1]))
    # censoring "events": only t=2 (3 at risk) -> G = 2/3 from t=2 on
    assert g.at(np.array([1.5]))[0] == pytest.approx(1.0)
    assert g.at(np.array([2.0]))[0] == pytest.approx(2 / 3)
    assert g.before(np.array([2.0]))[0] == pytest.approx(1.0)
    assert g.before(np.array([2.5]))[0] == pytest.approx(2 / 3)


def test_brier_score_matches_hand_computation():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 0, 1, 1])
    g = CensoringKM(time, event)
    s = np.array([0.2, 0.5, 0.6, 0.9])  # predicted S(2.5)
    # died at 1: 0.2^2 / G(1-)=1; censored at 2 before t: 0; alive at 3 and 4: (1-S)^2 / G(2.5)=2/3
    hand = (0.04 / 1.0 + 0.0 + 0.16 / (2 / 3) + 0.01 / (2 / 3)) / 4
    assert brier_score(2.5, s, time, event, g) == pytest.approx(hand)
    assert hand == pytest.approx(0.07375)


def test_brier_event_at_a_censoring_time_uses_the_left_limit():
    time = np.array([2.0, 2.0, 5.0])
    event = np.array([1, 0, 1])
    g = CensoringKM(time, event)  # 3 at risk at t=2, 1 censored -> G(2) = 2/3; the death at 2 uses G(2-) = 1
    s = np.array([0.3, 0.5, 0.8])
    hand = (0.3**2 / 1.0 + 0.0 + (1 - 0.8) ** 2 / (2 / 3)) / 3
    assert brier_score(3.0, s, time, event, g) == pytest.approx(hand)


def test_breslow_baseline_hazard_by_hand():
    times, h0 = breslow(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.log(np.array([2.0, 1.0, 1.0])))
    assert times.tolist() == [1.0, 2.0]
    assert h0 == pytest.approx([1 / 4, 1 / 4 + 1 / 2])
    surv = survival(np.array([0.5, 1.0, 2.5]), times, h0, np.array([0.0, math.log(2)]))
    assert surv[0] == pytest.approx([1.0, math.exp(-0.25), math.exp(-0.75)])
    assert surv[1] == pytest.approx([1.0, math.exp(-0.5), math.exp(-1.5)])


def test_integrated_brier_is_the_normalised_trapezoid():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 0, 1, 1])
    g = CensoringKM(time, event)
    grid = np.array([1.5, 2.5, 3.5])
    surv = np.array([[0.2, 0.1, 0.1], [0.6, 0.5, 0.4], [0.9, 0.6, 0.3], [0.95, 0.9, 0.85]])
    bs = [brier_score(t, surv[:, j], time, event, g) for j, t in enumerate(grid)]
    assert integrated_brier(grid, surv, time, event, g) == pytest.approx((bs[0] + 2 * bs[1] + bs[2]) / 4)


def test_informative_risk_beats_the_null_model_in_ibs():
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=n)
    t = rng.exponential(size=n) / np.exp(1.5 * x)
    c = rng.exponential(size=n) * 2
    time, event = np.minimum(t, c), (t <= c).astype(int)
    tr, te = slice(0, 400), slice(400, None)
    good = ibs_for_method((time[tr], event[tr], x[tr]), (time[te], event[te], x[te]))
    null = ibs_for_method((time[tr], event[tr], 0 * x[tr]), (time[te], event[te], 0 * x[te]))
    assert 0 < good < null < 0.35


# ---- test-time masking ----------------------------------------------------------------------------
def test_masking_keeps_one_modality_and_never_adds_any():
    rng = np.random.default_rng(1)
    present = rng.random((5000, 3)) < 0.7
    present[:10] = False  # empty patients stay empty
    for rate in (0.0, 0.3, 0.9):
        out = mask_present(present, rate, np.random.default_rng(2))
        assert not (out & ~present).any()
        assert (out.any(axis=1) == present.any(axis=1)).all()
        if rate == 0.0:
            assert (out == present).all()


def test_masking_hits_the_rate():
    present = np.ones((40000, 3), dtype=bool)
    for rate in (0.1, 0.3, 0.6):
        out = mask_present(present, rate, np.random.default_rng(3))
        assert realised_drop_fraction(present, out) == pytest.approx(expected_drop_fraction(3, rate), abs=0.006)
    assert expected_drop_fraction(3, 0.3) == pytest.approx((0.9 - 0.027) / 3)
    assert expected_drop_fraction(1, 0.5) == 0.0
    # is seeded
    a = mask_present(present[:100], 0.5, np.random.default_rng(7))
    b = mask_present(present[:100], 0.5, np.random.default_rng(7))
    assert (a == b).all()


# ---- late fusion and baselines ------------------------------------------------------------------------
def test_late_fusion_averages_present_z_scores():
    z = np.array([[1.0, 3.0, np.nan], [2.0, -1.0, 5.0], [4.0, 4.0, 4.0]])
    present = np.array([[True, True, False], [True, True, True], [False, False, False]])
    assert late_fusion_combine(z, present).tolist() == pytest.approx([2.0, 2.0, 0.0])


def _toy_cohort(n=300, seed=0) -> PooledCohort:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n)
    a = rng.normal(size=(n, 4))
    a[:, 0] += 1.5 * u
    b = rng.normal(size=(n, 80))
    b[:, :10] += u[:, None]
    present = np.stack([rng.random(n) < 0.8, rng.random(n) < 0.7], axis=1)
    present[~present.any(axis=1), 0] = True
    t = rng.exponential(size=n) / np.exp(u)
    return PooledCohort(("a", "b"), np.array(["S1", "S2"] * (n // 2)), np.arange(n).astype(str), t,
                        np.ones(n, int), np.array(["train", "train", "test"] * (n // 3)),
                        {"a": np.where(present[:, :1], a, 0), "b": np.where(present[:, 1:], b, 0)}, present)


def test_featurizer_reduces_wide_modalities_and_imputes_zero():
    data = _toy_cohort()
    tr = data.rows("train")
    f = Featurizer(max_dim=64, n_pcs=16).fit(data, tr)
    assert f.width("a") == 4 and f.width("b") == 16
    x = f.design(data, np.arange(len(data)))
    assert x.shape[1] == 4 + 1 + 16 + 1
    absent = ~data.present[:, 1]
    assert (x.loc[absent, [f"b_{j}" for j in range(16)]].to_numpy() == 0).all()
    assert (x.loc[absent, "missing_b"] == 1).all()
    assert abs(x.loc[tr[data.present[tr, 1]], "b_0"].mean()) < 1e-8
    assert "(b) reduced to their first 16 PCs" in f.describe()


def test_cox_and_late_fusion_learn_the_toy_signal():
    from rmmfed.core.survival.concordance import c_index

    data = _toy_cohort()
    tr, te = data.rows("train"), data.rows("test")
    for method in (PooledCox(), LateFusion()):
        method.fit(data, tr)
        assert c_index(data.time[te], method.risk(data, te), data.event[te]) > 0.65


def test_ridge_imputation_fills_an_absent_modality_from_the_others():
    from rmmfed.core.survival.concordance import c_index

    data = _toy_cohort()
    tr, te = data.rows("train"), data.rows("test")
    model = RidgeImputedCox().fit(data, tr)
    assert c_index(data.time[te], model.risk(data, te), data.event[te]) > 0.65
    rows = np.arange(len(data))
    x = model._imputed(data, rows, None)
    gone = ~data.present[:, 1]
    filled = x.loc[gone, "b_0"].to_numpy()
    assert np.abs(filled).max() > 0.1  # not mean imputation (0) ...
    u_proxy = data.feats["a"][gone, 0]
    assert abs(np.corrcoef(filled, u_proxy)[0, 1]) > 0.9  # ... but the conditional mean given modality a
    assert (x.loc[gone, "missing_b"] == 1).all()


def test_ridge_fit_recovers_a_linear_map_with_intercept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 3.0
    coef, icpt = ridge_fit(x, y, alpha=1e-6)
    np.testing.assert_allclose(coef.ravel(), [1.0, -2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(icpt, [3.0], atol=1e-6)


def test_tier1_cohorts_goals_read_the_per_cohort_means():
    import pandas as pd

    from rmmfed.simulations.evidence.tier1_cohorts import CENT, FED, POOLED_COX, goals

    rows = []
    for cohort, fed, cox, cent in (("x", 0.70, 0.69, 0.705), ("y", 0.60, 0.62, 0.58)):
        for seed, jitter in ((0, -0.01), (1, 0.01)):
            rows += [{"cohort": cohort, "seed": seed, "method": FED, "c_index": fed + jitter},
                     {"cohort": cohort, "seed": seed, "method": POOLED_COX, "c_index": cox},
                     {"cohort": cohort, "seed": seed, "method": CENT, "c_index": cent}]
    text = "\n".join(goals(pd.DataFrame(rows)))
    assert "missed (0.650 vs 0.655, " + POOLED_COX in text
    assert "pooled Cox - 0.01 on each cohort: missed on y (x +0.010, y -0.020)" in text
    assert "Centralised within 0.01 of federated: missed on y (x +0.005, y -0.020)" in text


# ---- tables ---------------------------------------------------------------------------------------
def test_mean_sd_and_markdown_table():
    assert mean_sd([0.4, 0.6]) == "0.500 +- 0.141"
    assert mean_sd([0.7]) == "0.700"
    assert mean_sd([float("nan")]) == "n/a"
    text = markdown_table([{"method": "x", "c": 0.12345, "n": 3, "d": float("nan")}])
    assert text.splitlines() == ["| method | c | n | d |", "|---|---|---|---|", "| x | 0.123 | 3 | n/a |"]


def test_ablation_summary_pairs_deltas_by_seed():
    raw = [{"seed": s, "row": row, "tier1": v, "tier1_covered": v, "two_tier": v - 0.01}
           for s, base in ((0, 0.80), (1, 0.70)) for row, v in (("full", base), ("no-pseudo", base - 0.05))]
    t = summarise(raw)
    assert [r["configuration"].split()[0] for r in t] == ["Full", "w/o"]
    assert t[0]["Tier 1 C-index"] == "0.750 +- 0.071"
    assert t[1]["delta vs full (Tier 1)"] == "-0.050 +- 0.000"
    assert t[0]["delta vs full (Tier 1)"] == "-"


def test_robustness_summary_reports_the_drop_at_30_percent():
    rows = [{"method": "m", "rate": r, "mask_seed": s, "c_index": 0.8 - r / 10 + s * 0.001}
            for r in (0.0, 0.3) for s in (0, 1)]
    (row,) = summary(rows)
    assert row["r=0.0"] == pytest.approx(0.8005)
    assert row["drop at 30%"] == pytest.approx(0.03)


def test_pair_weighted_combines_within_site_pairs_only():
    time = np.array([1.0, 2.0, 1.0, 2.0])
    event = np.array([1, 1, 1, 1])
    risk = np.array([2.0, 1.0, 0.0, 1.0])  # site X concordant, site Y discordant
    assert pair_weighted(time, risk, event, np.array(["X", "X", "Y", "Y"])) == pytest.approx(0.5)


def test_loso_symlink_cohort(tmp_path):
    from rmmfed.simulations.evidence.loso import symlink_cohort

    sites = []
    for name in ("site-A", "site-B", "site-C"):
        (tmp_path / "c" / name).mkdir(parents=True)
        sites.append(tmp_path / "c" / name)
    folder = symlink_cohort(tmp_path / "c", sites[1:], tmp_path / "hold-A")
    assert sorted(p.name for p in folder.iterdir()) == ["site-B", "site-C"]
    assert all(p.is_symlink() and p.resolve() == (tmp_path / "c" / p.name).resolve() for p in folder.iterdir())
    symlink_cohort(tmp_path / "c", sites[2:], folder)  # rerun with fewer sites removes stale links
    assert [p.name for p in folder.iterdir()] == ["site-C"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_tree_rss_counts_this_process():
    from rmmfed.simulations.evidence.scale import _tree_rss_kib

    assert _tree_rss_kib(os.getpid()) > 1000


def test_scale_upload_is_summed_from_every_sites_ledger(tmp_path):
    import json as _json

    from rmmfed.simulations.evidence.scale import ledger_figures

    led = tmp_path / "run" / "ledger"
    led.mkdir(parents=True)
    lines = {"site-A": [("train", 100), ("train", 100), ("train.tier2", 50), ("evaluate", 5)],
             "site-B": [("train", 120), ("train", 120), ("train.tier2", 60), ("query.schema", 7)]}
    for site, entries in lines.items():
        (led / f"{site}.jsonl").write_text("".join(
            _json.dumps({"message_type": t, "total_bytes": b, "time": "2026-11-25T10:00:00+00:00", "records": []}) + "\n"
            for t, b in entries))
    got = ledger_figures(tmp_path / "run", rounds=2, tier2_rounds=1)
    assert got["tier1_bytes_per_round"] == (200 + 240) / 2
    assert got["tier2_bytes_per_round"] == 110
    assert got["bytes_sent_total"] == 100 * 2 + 50 + 5 + 120 * 2 + 60 + 7 and got["messages_total"] == 8


def test_the_exact_conformal_q_hat_is_the_corrected_rank_or_inf_when_too_few_scores():
    from rmmfed.simulations.evidence.tier2_intervals import exact_q_hat

    scores = np.arange(1.0, 10.0)  # 9 scores: rank ceil(10 x 0.9) = 9, the largest
    assert exact_q_hat(scores, 0.1) == 9.0
    assert exact_q_hat(np.arange(1.0, 20.0), 0.1) == 18.0  # 19 scores: rank ceil(20 x 0.9) = 18
    assert exact_q_hat(scores[:8], 0.1) == float("inf")  # 8 scores: rank 9 > 8, no finite guarantee


def test_model_selection_table_pairs_the_last_round_with_the_validated_round_of_the_same_seed():
    import pandas as pd

    from rmmfed.simulations.evidence.model_selection import LAST, VALIDATED, table

    rows = [{"cohort": c, "seed": s, "config": cfg, "c_index": v, "kept_round": k}
            for c, s, cfg, v, k in [("a", 0, VALIDATED, 0.70, 12), ("a", 0, LAST, 0.68, 30),
                                    ("a", 1, VALIDATED, 0.60, 30), ("a", 1, LAST, 0.60, 30),
                                    ("b", 0, VALIDATED, 0.50, 3), ("b", 0, LAST, 0.55, 30)]]
    out, gaps = table(pd.DataFrame(rows), ["a", "b"])
    assert gaps == pytest.approx([-0.01, 0.05])
    assert out[-1]["a"] == "12, 30" and out[-1]["b"] == "3"
    assert out[2]["b"].startswith("0.050")


def test_risk_routing_reads_tier2_against_tier1_on_masked_test_cases_and_nan_from_a_noised_gate():
    from rmmfed.simulations.evidence.risk_routing import figures

    m = {"two_tier": {"recovery_mse": {"tier1": 0.8, "tier2": 0.6},
                      "gate": {"open": False, "mse_tier1": None, "mse_tier2": None}}}  # a noised gate: no MSE
    got = figures(m)
    assert got["tier2_test_mse_ratio"] == pytest.approx(0.75)
    assert math.isnan(got["tier2_mse_ratio"]) and got["gate_open"] == 0.0


def test_the_dp_learning_rate_is_chosen_on_validation_never_on_test():
    from rmmfed.simulations.evidence.dp_lr import best_lr, table

    rows = [{"cohort": c, "seed": s, "lr": lr, "val": v, "test": t}
            for c in ("a", "b") for s in (0, 1)
            for lr, v, t in ((0.002, 0.70, 0.80), (0.01, 0.72, 0.60))]
    assert best_lr(rows, [0.002, 0.01]) == 0.01  # the better validation, although its test C-index is worse
    lines = table(rows, [0.002, 0.01])
    assert "| val C-index, lr 0.01 | 0.720 | 0.720 | 0.720 |" in lines and lines[-1].endswith("lr 0.01.")
    clip = table(rows, [0.002, 0.01], "dp.max-grad-norm")  # another key swept: the table names it
    assert clip[0].startswith("| dp.max-grad-norm |") and "| test C-index, dp.max-grad-norm 0.002 | 0.800 | 0.800 | 0.800 |" in clip


def test_the_dp_sweep_runs_each_value_with_the_extra_overrides_under_the_default_policy(tmp_path, monkeypatch):
    from rmmfed.simulations.evidence import dp_lr

    calls = []
    monkeypatch.setattr(dp_lr.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    (tmp_path / "data" / "tcga-x").mkdir(parents=True)
    run, data = dp_lr._run(tmp_path / "out", "tcga-x", tmp_path / "data", 1, "average-last", 10.0,
                           extra=("dp.batch-size=16",))
    assert run == tmp_path / "out" / "tcga-x" / "seed-1" / "lr-10" and data == tmp_path / "data" / "tcga-x"
    cmd = calls[0]
    pairs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "average-last=10" in pairs and "dp.batch-size=16" in pairs and "dp.target-epsilon=6" in pairs
    assert "--policy" not in cmd and "--seeded-noise" in cmd  # the default policy; noise seeded by the simulation's explicit switch


def test_the_penalty_study_picks_what_a_run_picks_under_the_runs_rule(tmp_path):
    """evidence.cox_penalty's row for the run's rule is the Cox core a run fits: the same penalizer, and a
    test C-index computed on the same design."""
    from conftest import write_site
    from rmmfed.core.config import RunConfig
    from rmmfed.core.survival.cox_core import fit_cox_core
    from rmmfed.simulations.evidence.cox_penalty import RULES, designs, study

    for name, seed in (("site-A", 1), ("site-B", 2)):
        write_site(tmp_path / "c", name=name, n=90, seed=seed)
    rows, path = study(tmp_path / "c", "toy", 0)
    picked = {r["rule"]: r for r in rows}
    split, _ = designs(tmp_path / "c", 0)
    val = split["val"]
    core = fit_cox_core(split["train"].sums, val.loglik, split["train"].moments(), RunConfig().model.penalizers())
    assert picked[RULES[0]]["penalizer"] == core.penalizer
    assert picked[RULES[0]]["test_c"] == pytest.approx(split["test"].c_index(core.coef))
    assert {p["penalizer"] for p in path} == set(RunConfig().model.penalizers())
    assert all(0.0 <= r["test_c"] <= 1.0 for r in rows)


def test_noised_breslow_study_scores_every_design_and_the_flat_noise_free_baseline_beats_the_noisiest():
    """evidence.noised_breslow: one row per design plus the exact sums; the 0.13 design (bound 2, 16 points,
    no centre) is the noisiest of them on a small cohort, so its validation IBS is the worst on average."""
    import pandas as pd

    from rmmfed.simulations.evidence.noised_breslow import DESIGNS, study, table

    rng = np.random.default_rng(0)

    def site(n):
        risk = rng.normal(0.0, 0.8, n)
        t = rng.exponential(20.0 * np.exp(-risk))
        c = rng.exponential(30.0, n)
        return np.minimum(t, c), t <= c, risk

    risks = {split: [site(n) for _ in range(3)] for split, n in (("train", 80), ("val", 40), ("test", 40))}
    rows = study(risks, 0.0, draws=4, seed=1)
    assert len(rows) == len(DESIGNS) + 1 and rows[0]["design"] == "exact sums, 16 points"
    assert all(np.isfinite(r["val_ibs"]) and 0.0 < r["test_ibs"] < 1.0 for r in rows)
    by = {r["design"]: r["val_ibs"] for r in rows}
    assert by["16 points, bound 2, centre none"] > by["8 points, bound 0.5, centre risk groups"]
    df = pd.DataFrame([{"cohort": "toy", "seed": 0, **r} for r in rows])
    assert "Lowest mean validation IBS" in table(df)[-1]
