"""Model bundle (one portable file) and the federated Breslow baseline hazard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rmmfed.core.survival.baseline_hazard import (add_hazard_sums, baseline_from_sums, breslow_baseline, cumhaz_at,
                                         local_hazard_sums, median_survival, survival_at, survival_curve, time_grid)
from rmmfed.core.outputs.model_card import MetricsDocumentError
from rmmfed.core.survival.baseline_hazard import BaselineHazard
from rmmfed.core.outputs.bundle import (BundleError, BundleVersionError, ModelBundle, bundle_from_run_dir,
                                check_site_schema, installed_version, load_bundle, load_model, make_bundle,
                                save_bundle)
from rmmfed.core.config import RunConfig
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.outputs.model_card import model_card_from_metrics
from rmmfed.core.errors import RmmError, SchemaMismatchError, SurvivalInputError
from rmmfed.core.aggregates.feature_stats import FeatureStats, local_feature_sums
from rmmfed.core.data.site_data import load_site
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2 import build_tier2
from rmmfed.core.tier2.tier2_config import Tier2Config
from rmmfed.core.routing.risk_scale import RiskScale

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_T2 = Tier2Config(timesteps=20, sample_steps=4, samples=2, hidden_dim=16, time_dim=4, branches=2, branch_dim=4)


def tiny_bundle(site_dir: Path, tier1_cfg, *, tier2: bool = True, **kw) -> ModelBundle:
    """A bundle of untrained tiny models with the site's own (train-split) feature statistics."""
    site = load_site(site_dir)
    dims = {m: int(d) for m, d in site.modalities.items()}
    cfg = RunConfig(model=tier1_cfg, tier2=TINY_T2)
    stats = FeatureStats.from_sums(local_feature_sums(site, site.indices("train"), 1), dims, tier1_cfg.anat_partitions)
    t1 = build_model(dims, cfg.model, cfg.seed)
    t2 = build_tier2(dims, cfg.tier2, cfg.seed, tier1=cfg.model) if tier2 else None
    card = kw.pop("model_card", None)
    kw.setdefault("theta_", 0.05)
    return make_bundle(t1, stats, cfg, tier2=t2, fitted=FittedTwoTier(**kw), model_card=card)


@pytest.fixture
def bundle(site_factory, tier1_cfg) -> ModelBundle:
    grid = time_grid(30.0, 16)
    hz = BaselineHazard(grid, np.linspace(0.01, 2.0, 16))
    return tiny_bundle(site_factory(n=30), tier1_cfg, abstain_bound_=0.7, risk_scale_=RiskScale(0.1, 2.0, -0.3, 0.5),
                       baseline_hazard_=hz, cutpoints_=(-0.5, 0.5),
                       model_card={"sites": ["site-A"], "c_index": 0.71, "date": "2025-01-01"})


# ---- bundle ----------------------------------------------------------------------------------------
def test_round_trip_keeps_weights_and_every_field_identical(bundle, tmp_path):
    path = save_bundle(bundle, tmp_path / "out" / "model.rmm")

    loaded = load_bundle(path)

    assert [p.name for p in path.parent.iterdir()] == ["model.rmm"]  # one file, no temporary left over
    assert loaded.tier1.keys() == bundle.tier1.keys()
    assert all(torch.equal(loaded.tier1[k], bundle.tier1[k]) for k in bundle.tier1)
    assert all(torch.equal(loaded.tier2[k], bundle.tier2[k]) for k in bundle.tier2)
    assert all(np.array_equal(loaded.feature_stats[k], bundle.feature_stats[k]) for k in bundle.feature_stats)
    assert loaded.modalities == bundle.modalities and list(loaded.modalities) == list(bundle.modalities)
    assert loaded.config == bundle.config and loaded.run_config == bundle.run_config
    f = loaded.fitted
    assert (f.theta_, f.abstain_bound_, f.risk_scale_) == (0.05, 0.7, RiskScale(0.1, 2.0, -0.3, 0.5))
    assert np.array_equal(f.baseline_hazard_.times, bundle.fitted.baseline_hazard_.times)
    assert np.array_equal(f.baseline_hazard_.cumhaz, bundle.fitted.baseline_hazard_.cumhaz)
    assert f.cutpoints_ == (-0.5, 0.5) and loaded.model_card == bundle.model_card
    assert f == bundle.fitted
    assert loaded.rmm_version == installed_version()
    # the rebuilt models carry the same weights
    t1 = loaded.build_tier1()
    assert all(torch.equal(v, bundle.tier1[k]) for k, v in t1.state_dict().items())
    assert not t1.training and loaded.build_tier2() is not None


def test_bundle_loads_with_weights_only(bundle, tmp_path):
    raw = torch.load(save_bundle(bundle, tmp_path / "b.rmm"), weights_only=True)
    assert raw["format"] == "rmm-model-bundle" and raw["format_version"] == 1


def test_a_bundle_saved_before_the_variance_head_loads_with_eq3_sigma2(site_factory, tier1_cfg, tmp_path):
    old = tiny_bundle(site_factory(n=30), tier1_cfg.model_copy(update={"uncertainty": "epistemic"}), tier2=False)
    raw = old.to_plain()
    del raw["config"]["model.uncertainty"]  # a bundle without the key reads as 'epistemic'
    torch.save(raw, tmp_path / "old.rmm")

    loaded = load_bundle(tmp_path / "old.rmm")

    assert loaded.run_config.model.uncertainty == "epistemic"
    assert loaded.build_tier1().est_logvar is None


def test_tier1_only_bundle_round_trips(site_factory, tier1_cfg, tmp_path):
    b = tiny_bundle(site_factory(n=20), tier1_cfg, tier2=False)
    loaded = load_bundle(save_bundle(b, tmp_path / "t1.rmm"))
    assert loaded.tier2 is None and loaded.build_tier2() is None and loaded.fitted.baseline_hazard_ is None
    assert loaded.fitted.abstain_bound_ == float("inf")


@pytest.mark.parametrize("version", ["0.99.0", "1.1.0", "9.0"])
def test_refuses_other_major_minor_version_with_the_fix(bundle, tmp_path, version):
    bundle.rmm_version = version
    path = save_bundle(bundle, tmp_path / "old.rmm")
    with pytest.raises(BundleVersionError, match="Fix: install rmmfed") as err:
        load_bundle(path)
    assert version in str(err.value) and installed_version() in str(err.value)
    assert isinstance(err.value, RmmError)


def test_accepts_another_patch_release(bundle, tmp_path):
    major, minor = installed_version().split(".")[:2]
    bundle.rmm_version = f"{major}.{minor}.99"
    assert load_bundle(save_bundle(bundle, tmp_path / "p.rmm")).rmm_version.endswith(".99")


def test_refuses_files_that_are_not_bundles(bundle, tmp_path):
    junk = tmp_path / "junk.rmm"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(BundleError, match="not an rmm model bundle"):
        load_bundle(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(BundleError, match="Fix"):
        load_bundle(plain)
    with pytest.raises(BundleError, match="no such model file"):
        load_bundle(tmp_path / "missing.rmm")


def test_refuses_a_bundle_with_missing_keys(bundle, tmp_path):
    raw = bundle.to_plain()
    del raw["theta"], raw["tier1"]
    torch.save(raw, tmp_path / "cut.rmm")
    with pytest.raises(BundleError, match=r"missing required key\(s\) tier1, theta"):
        load_bundle(tmp_path / "cut.rmm")


def test_refuses_a_pickled_object(tmp_path):
    """weights_only=True: a file that needs arbitrary unpickling is refused, never executed."""
    torch.save({"format": "rmm-model-bundle", "obj": Path("x")}, tmp_path / "evil.rmm")
    with pytest.raises(BundleError, match="not an rmm model bundle"):
        load_bundle(tmp_path / "evil.rmm")


def test_check_site_schema_names_modality_dims_and_fix(bundle):
    check_site_schema(bundle, dict(bundle.modalities))
    check_site_schema(bundle, {"a": 5, "b": None})  # a modality missing, or a folder without files, is fine
    with pytest.raises(SchemaMismatchError, match=r"'b'.*dim 7.*expects dim 4.*Fix"):
        check_site_schema(bundle, {"a": 5, "b": 7, "c": 3})
    with pytest.raises(SchemaMismatchError, match=r"genomics.*Fix"):
        check_site_schema(bundle, {"a": 5, "genomics": 10})


def _metrics_document(bundle) -> dict:
    """A metrics.json of the RunMetrics layout (core/outputs/metrics_document.py) for two sites."""
    return {"rmm_version": installed_version(),
            "federated": {"c_index": 0.7, "c_index_method": "m", "c_index_combined_pairs": 0.7, "per_site": {
                "site-A": {"c_index": 0.72, "n_test": 10, "n_events_test": 6},
                "site-B": {"c_index": 0.68, "n_test": 8, "n_events_test": 3}}},
            "calibration": {"theta": 0.05, "quantile": 0.95, "n_values": 100},
            "routing": {"referral_rate_per_site": {"site-A": 0.1, "site-B": 0.2},
                        "route_counts_per_site": {"site-A": {"tier1": 9, "tier2": 1, "abstain": 0}},
                        "masked_complete_referral_rate": 0.05, "masked_complete_n_per_site": {"site-A": 6},
                        "masked_complete_referral_rate_per_site": {"site-A": 0.05}, "high_risk_contexts": []},
            "two_tier": {"enabled": True}, "uncertainty": {},
            "sites": {"accepted": ["site-A", "site-B"], "refused": {}, "modalities": bundle.modalities,
                      "model_dims": bundle.modalities, "reduced": []},
            "risk_groups": {"cutpoints": None, "n_values": 0, "basis": "b"}, "participation": {},
            "history": [], "selected_round": 3, "timing_s": {"total": 1.0}}


def test_a_metrics_json_of_another_layout_is_refused_naming_the_section(bundle, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_bundle(bundle, run / "model.pt")
    doc = _metrics_document(bundle)
    del doc["calibration"]["n_values"]
    (run / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(MetricsDocumentError, match=r"'calibration.n_values'.*Fix"):
        load_model(run)


def test_bundle_from_run_dir_reads_model_pt_and_metrics(bundle, tmp_path):
    """The model.pt that runs before the bundle format wrote (plain keys) + metrics.json: still read."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"tier1": bundle.tier1, "tier2": bundle.tier2, "abstain_bound": 0.7,
                "risk_scale": vars(bundle.fitted.risk_scale_),
                "feature_stats": {k: torch.from_numpy(np.asarray(v)) for k, v in bundle.feature_stats.items()},
                "modalities": bundle.modalities, "config": bundle.config, "theta": 0.05,
                "rmm_version": installed_version()}, run / "model.pt")
    metrics = _metrics_document(bundle)
    (run / "metrics.json").write_text(json.dumps(metrics))

    b = load_model(run)

    assert all(torch.equal(b.tier1[k], bundle.tier1[k]) for k in bundle.tier1)
    card = b.model_card
    assert card["sites"] == ["site-A", "site-B"] and card["n_patients_test"] == 18 and card["n_events_test"] == 9
    assert card["per_site"]["site-A"] == {"c_index": 0.72, "n_test": 10, "n_events_test": 6, "referral_rate": 0.1,
                                          "route_counts": {"tier1": 9, "tier2": 1, "abstain": 0}}
    assert card["per_site"]["site-B"]["route_counts"] is None
    assert len(card["date"]) == 10 and card["c_index"] == 0.7 and b.fitted.baseline_hazard_ is None
    assert b.build_tier1() is not None
    # and it exports as a bundle
    assert load_bundle(save_bundle(b, tmp_path / "x.rmm")).model_card == card


def test_run_dir_model_pt_may_carry_a_baseline_hazard_and_cutpoints(bundle, tmp_path):
    """Once the server adds these two keys to model.pt, run folders give survival curves too."""
    run = tmp_path / "run"
    run.mkdir()
    raw = bundle.to_plain()
    for k in ("format", "format_version", "model_card"):
        del raw[k]
    torch.save(raw, run / "model.pt")

    b = bundle_from_run_dir(run)

    assert np.array_equal(b.fitted.baseline_hazard_.cumhaz, bundle.fitted.baseline_hazard_.cumhaz)
    assert b.fitted.cutpoints_ == (-0.5, 0.5) and b.model_card == {"source": str(run.resolve())}


def test_run_dir_without_model_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a finished rmm run folder"):
        bundle_from_run_dir(tmp_path)


# ---- baseline hazard ---------------------------------------------------------------------------------
def _cox_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(10 * np.exp(-0.8 * x))
    c = rng.exponential(15, size=n)
    time = np.round(np.minimum(t, c), 2) + 0.01  # some ties
    return x, time, (t <= c).astype(int)


def _lifelines_baseline(x, time, event):
    from lifelines import CoxPHFitter
    cph = CoxPHFitter().fit(pd.DataFrame({"x": x, "T": time, "E": event}), "T", "E")
    beta = float(cph.params_["x"])
    bch = cph.baseline_cumulative_hazard_.iloc[:, 0]
    # lifelines' baseline is for centred covariates: risk = beta * (x - mean x)
    return beta * (x - x.mean()), bch.index.to_numpy(), bch.to_numpy()


def test_baseline_matches_lifelines_breslow(single_thread):
    x, time, event = _cox_data(300, 0)
    risk, ref_t, ref_h = _lifelines_baseline(x, time, event)
    at = np.array([1.0, 3.0, 7.5, 15.0, 25.0])
    ref = ref_h[np.searchsorted(ref_t, at, side="right") - 1]  # step function

    exact_grid = np.unique(time)  # every observed time: exactly Breslow
    h_exact = cumhaz_at(at, exact_grid, breslow_baseline(time, event, risk, exact_grid))
    fine_grid = time_grid(time.max(), 2000)  # a fixed, fine grid: close at its points
    on_grid = fine_grid[np.searchsorted(fine_grid, at) - 1]
    ref_on_grid = ref_h[np.searchsorted(ref_t, on_grid, side="right") - 1]
    h_fine = cumhaz_at(on_grid, fine_grid, breslow_baseline(time, event, risk, fine_grid))

    np.testing.assert_allclose(h_exact, ref, rtol=1e-9)
    np.testing.assert_allclose(h_fine, ref_on_grid, rtol=0.02)


def test_site_sums_add_up_to_the_pooled_computation():
    x, time, event = _cox_data(200, 1)
    risk = 0.7 * x
    grid = time_grid(40.0, 64)
    a, b = slice(0, 120), slice(120, 200)

    pooled = local_hazard_sums(time, event, risk, grid)
    summed = add_hazard_sums([local_hazard_sums(time[a], event[a], risk[a], grid),
                              local_hazard_sums(time[b], event[b], risk[b], grid)])

    np.testing.assert_allclose(summed[0], pooled[0])
    np.testing.assert_allclose(summed[1], pooled[1], rtol=1e-12)
    np.testing.assert_allclose(baseline_from_sums(grid, *summed), breslow_baseline(time, event, risk, grid), rtol=1e-12)
    assert pooled[0].sum() == event[time <= 40.0].sum()  # events after the grid are not counted
    assert pooled[1][0] == pytest.approx(np.exp(risk).sum())  # everyone is at risk at the start


def test_survival_summaries():
    grid = np.array([1.0, 2.0, 3.0, 4.0])
    H0 = np.array([0.1, 0.3, 0.6, 1.0])
    s = survival_curve(0.0, grid, H0)
    np.testing.assert_allclose(s, np.exp(-H0))
    assert median_survival(0.0, grid, H0) == 4.0  # exp(-0.6) > 0.5, exp(-1.0) <= 0.5
    assert np.isnan(median_survival(-3.0, grid, H0))  # not reached on the grid
    np.testing.assert_allclose(median_survival(np.array([0.0, 1.0]), grid, H0), [4.0, 2.0])
    at = survival_at(np.log(2.0), [0.5, 2.5, 4.0, 9.0], grid, H0)
    np.testing.assert_allclose(at[:3], [1.0, np.exp(-0.6), np.exp(-2.0)])
    assert np.isnan(at[3])  # beyond the grid
    assert survival_curve(np.zeros(3), grid, H0).shape == (3, 4)


def test_bad_hazard_inputs_are_typed_errors():
    with pytest.raises(SurvivalInputError, match="strictly increasing"):
        local_hazard_sums([1.0], [1], [0.0], [2.0, 1.0])
    with pytest.raises(SurvivalInputError, match="one value per patient"):
        local_hazard_sums([1.0, 2.0], [1], [0.0], [1.0, 2.0])
    with pytest.raises(SurvivalInputError, match="same grid"):
        baseline_from_sums([1.0, 2.0], [1.0], [1.0])
