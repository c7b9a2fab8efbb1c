"""Federated PCA of wide modalities: exact against the centralised PCA, floored, carried to the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums, pooled_features
from rmmfed.core.data.site_data import load_site
from rmmfed.core.data.tensors import build_tensors
from rmmfed.core.model.tier1 import build_model

pytestmark = pytest.mark.usefixtures("single_thread")
WIDE = {"a": 12, "b": 4, "c": 3}
RULE = dict(reduce_above=8, reduce_dim=3)


@pytest.fixture
def sites(site_factory):
    a = load_site(site_factory(name="site-A", n=50, seed=1, dims=WIDE), expected=WIDE)
    b = load_site(site_factory(name="site-B", n=35, seed=2, dims=WIDE, absent_rate=0.5), expected=WIDE)
    return a, b


def _federated(sites, min_count=1):
    sums = add_sums([local_feature_sums(s, s.indices("train"), min_count, **RULE) for s in sites])
    return sums, FeatureStats.from_sums(sums, WIDE, 2, RULE["reduce_dim"])


def _pooled_train(sites, m):
    rows = []
    for s in sites:
        feats, present = pooled_features(s, m)
        idx = s.indices("train")
        rows.append(feats[idx][present[idx]])
    return np.concatenate(rows)


def test_only_wide_modalities_send_outer_products_and_get_a_basis(sites):
    sums, stats = _federated(sites)
    assert "a.pca.outer" in sums and sums["a.pca.outer"].shape == (12, 12)
    assert not any(k.startswith(("b.", "c.")) and k.endswith("outer") for k in sums)
    assert set(stats.basis) == {"a"} and stats.model_dims(WIDE) == {"a": 3, "b": 4, "c": 3}
    assert stats.input_dims() == WIDE


def test_federated_scores_equal_the_centralised_pca_of_the_pooled_training_rows(sites):
    _, stats = _federated(sites)
    x = _pooled_train(sites, "a")
    z = (x - x.mean(0)) / x.std(0)
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    central = z @ vt[:3].T
    central /= central.std(0)
    fed = stats.transform("a", x)
    # the same scores up to each component's sign, whitened: unit variance, uncorrelated, mean 0
    np.testing.assert_allclose(np.abs(fed), np.abs(central), atol=1e-8)
    np.testing.assert_allclose(np.cov(fed.T, bias=True), np.eye(3), atol=1e-8)
    np.testing.assert_allclose(fed.mean(0), 0.0, atol=1e-10)


def test_outer_products_are_withheld_below_the_floor(sites):
    site = sites[0]
    few = site.indices("train")[:3]
    sums = local_feature_sums(site, few, 5, **RULE)
    assert np.all(sums["a.pca.outer"] == 0) and sums["a.pca.n"][0] == 0
    stats = FeatureStats.from_sums(sums, WIDE, 2, RULE["reduce_dim"])
    assert "a" not in stats.basis  # nothing to reduce from: the modality keeps its width


def test_reduction_off_keeps_every_width(sites):
    sums = add_sums([local_feature_sums(s, s.indices("train"), 1, reduce_above=8, reduce_dim=0) for s in sites])
    stats = FeatureStats.from_sums(sums, WIDE, 2, 0)
    assert not any(k.endswith("outer") for k in sums) and stats.model_dims(WIDE) == WIDE


def test_a_site_withholding_second_moments_leaves_the_basis_to_the_others(sites):
    a, b = sites
    withheld = local_feature_sums(b, b.indices("train"), 1, **RULE, second_moments=False)
    assert withheld["a.pca.n"][0] == 0 and not withheld["a.pca.outer"].any() and withheld["a.all.n"][0] > 0
    both = FeatureStats.from_sums(add_sums([local_feature_sums(a, a.indices("train"), 1, **RULE), withheld]), WIDE, 2, 3)
    alone = FeatureStats.from_sums(local_feature_sums(a, a.indices("train"), 1, **RULE), WIDE, 2, 3)
    assert both.basis["a"].shape == (12, 3)
    # the directions are site A's alone; only the standardisation (all sites) differs
    assert not np.allclose(both.mean["a"], alone.mean["a"])


def test_tensors_and_targets_live_in_the_reduced_space_and_the_basis_travels(sites, tier1_cfg):
    _, stats = _federated(sites)
    site = sites[0]
    data = build_tensors(site, stats, max_instances=6, seed=0)
    assert data.x[0].shape[2] == 3 and data.target[0].shape[1] == 3 and data.x[1].shape[2] == 4
    feats, present = pooled_features(site, "a")
    np.testing.assert_allclose(data.target[0].numpy()[present], stats.transform("a", feats[present]), rtol=1e-4, atol=1e-5)
    # each instance is projected, so the mean of the reduced instances is the reduced mean
    i = int(np.flatnonzero(present)[0])
    n = int(data.inst_mask[0][i].sum())
    np.testing.assert_allclose(data.x[0][i, :n].mean(0).numpy(), data.target[0][i].numpy(), rtol=1e-4, atol=1e-5)
    back = FeatureStats.from_arrays(stats.to_arrays(), 2)
    np.testing.assert_array_equal(back.basis["a"], stats.basis["a"])
    model = build_model(back.model_dims(WIDE), tier1_cfg, 0).eval()
    with torch.no_grad():
        assert model(list(data.x), list(data.inst_mask), data.present).risk.shape == (len(site.patient_ids),)


def test_a_bundle_with_a_reduced_modality_predicts_from_the_raw_files(sites, site_factory, tier1_cfg, tmp_path):
    from rmmfed.client.predict import load_site_for, predict_site
    from rmmfed.core.outputs.bundle import load_bundle, make_bundle, save_bundle
    from rmmfed.core.config import RunConfig
    from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
    from rmmfed.core.tier2.tier2 import build_tier2
    from rmmfed.core.tier2.tier2_config import Tier2Config

    _, stats = _federated(sites)
    cfg = RunConfig(model=tier1_cfg, tier2=Tier2Config(timesteps=20, sample_steps=4, samples=2, hidden_dim=16,
                                                       time_dim=4, branches=2, branch_dim=4))
    dims = stats.model_dims(WIDE)
    bundle = make_bundle(build_model(dims, cfg.model, 0), stats, cfg, fitted=FittedTwoTier(0.05),
                         tier2=build_tier2(dims, cfg.tier2, 0, tier1=cfg.model))
    assert bundle.modalities == WIDE  # the schema on disk, not the model's widths
    loaded = load_bundle(save_bundle(bundle, tmp_path / "model.rmm"))
    assert loaded.model_dims == dims and loaded.build_tier1().dims == (3, 4, 3)
    new = load_site_for(loaded, site_factory(name="site-N", n=8, seed=9, dims=WIDE))
    records = predict_site(loaded, new)
    assert len(records) == 8 and all(np.isfinite(r["risk"]) for r in records)
