"""Whole-slide-scale bags: every instance at inference, a fresh subsample per training epoch, batches
bounded by padded instances, and the wsi preset at real widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmmfed.core.data import tensors as tensors_mod
from rmmfed.core.config import RunConfig
from rmmfed.core.errors import ConfigError, InstanceBudgetError
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums
from rmmfed.core.data.site_data import load_site
from rmmfed.core.data.tensors import build_tensors, patients_per_batch
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.train import predict_risk, train_tier1
from rmmfed.simulations.cohort import generate_cohort
from rmmfed.simulations.cohort_presets import PRESETS, preset_config
from rmmfed.simulations.simulate import main as simulate_main

pytestmark = pytest.mark.usefixtures("single_thread")
DIMS = {"a": 6, "b": 4, "c": 3}


@pytest.fixture
def long_site(site_factory):
    """A site whose bags hold up to 40 instances (the model's max-instances is 6)."""
    site = load_site(site_factory(n=30, dims=DIMS, max_instances=40), expected=DIMS)
    stats = FeatureStats.from_sums(add_sums([local_feature_sums(site, site.indices("train"), 1)]), DIMS, 2)
    return site, stats


def test_tensors_keep_every_instance_of_every_bag(long_site):
    site, stats = long_site

    data = build_tensors(site, stats)

    for k, m in enumerate(data.modalities):
        lengths = data.inst_mask[k].sum(dim=1).numpy()
        expect = [0 if b is None else len(b) for b in site.bags[m]]
        assert lengths.tolist() == expect
        assert data.x[k].shape[1] == max(expect)


def test_each_epoch_draws_a_fresh_subsample_in_bag_order(long_site):
    site, stats = long_site
    data = build_tensors(site, stats)
    gen = torch.Generator().manual_seed(0)

    first, second = data.sample_instances(6, gen), data.sample_instances(6, gen)

    k = data.modalities.index("a")
    full_len = data.inst_mask[k].sum(dim=1)
    kept = first.inst_mask[k].sum(dim=1)
    assert first.x[k].shape[1] == 6
    assert torch.equal(kept, torch.clamp(full_len, max=6))  # short bags whole, long ones capped
    long = int(torch.nonzero(full_len > 12)[0])
    assert not torch.equal(first.x[k][long], second.x[k][long])  # a fresh draw
    rows = {tuple(r.tolist()) for r in data.x[k][long][data.inst_mask[k][long]]}
    assert all(tuple(r.tolist()) in rows for r in first.x[k][long][first.inst_mask[k][long]])
    order = [next(i for i, r in enumerate(data.x[k][long]) if torch.equal(r, q))
             for q in first.x[k][long][first.inst_mask[k][long]]]
    assert order == sorted(order)  # kept in bag order


def test_short_bags_make_the_subsample_a_no_op(site_factory):
    site = load_site(site_factory(n=12, dims=DIMS, max_instances=4), expected=DIMS)
    stats = FeatureStats.from_sums(add_sums([local_feature_sums(site, site.indices("train"), 1)]), DIMS, 2)
    data = build_tensors(site, stats)

    assert data.sample_instances(4, torch.Generator().manual_seed(0)) is data


def test_training_on_long_bags_is_seeded_and_risks_do_not_depend_on_the_batch(long_site, tier1_cfg, monkeypatch):
    site, stats = long_site
    data = build_tensors(site, stats)
    cfg = RunConfig(model=tier1_cfg)

    def trained():
        model = build_model(DIMS, tier1_cfg, seed=3)
        train_tier1(model, data.subset(site.indices("train")), stats, cfg, epochs=2, seed=5)
        return model

    a, b = trained(), trained()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    whole = predict_risk(a, data)
    monkeypatch.setattr(tensors_mod, "INSTANCE_BUDGET", 50)  # forces batches of one patient
    assert patients_per_batch(data, 4096) == 1
    np.testing.assert_allclose(predict_risk(a, data), whole, rtol=1e-5, atol=1e-6)


def test_padding_budget_bounds_the_patients_per_batch(long_site, monkeypatch):
    site, stats = long_site
    data = build_tensors(site, stats)
    width = sum(x.shape[1] for x in data.x)
    monkeypatch.setattr(tensors_mod, "INSTANCE_BUDGET", 10 * width)

    assert patients_per_batch(data, 4096) == 10
    assert patients_per_batch(data, 3) == 3


def test_wsi_preset_writes_real_widths_and_bag_sizes(tmp_path):
    summary = generate_cohort(preset_config("wsi", n_patients=10, site_names=["A"], seed=0), tmp_path / "wsi")

    assert summary["n_patients"] == 10
    site = load_site(tmp_path / "wsi" / "site-A")
    assert site.modalities == PRESETS["wsi"]["dims"]
    for m, (lo, hi) in PRESETS["wsi"]["instances"].items():
        lengths = [len(b) for b in site.bags[m] if b is not None]
        assert lengths and all(lo <= n <= hi for n in lengths)


def test_unknown_preset_and_preset_with_data_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown cohort preset 'huge'.*Fix: use one of default, wsi"):
        preset_config("huge")
    assert simulate_main(["--preset", "wsi", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--preset chooses the cohort to generate, but --data gives one" in capsys.readouterr().err


def test_bags_too_large_to_keep_whole_are_refused_with_the_fix(long_site, monkeypatch):
    site, stats = long_site
    monkeypatch.setattr(tensors_mod, "TENSOR_BUDGET_BYTES", 1000)

    with pytest.raises(InstanceBudgetError, match=r"site 'site-A', modality 'a'.*Fix: keep the federated PCA on"):
        build_tensors(site, stats)


def test_tier2_inputs_from_cached_encodings_equal_a_fresh_encoding(long_site, tier1_cfg):
    from rmmfed.core.tier2.tier2_context import bag_encodings
    from rmmfed.core.tier2.tier2_context import tier2_inputs

    site, stats = long_site
    data = build_tensors(site, stats)
    model = build_model(DIMS, tier1_cfg, seed=1)
    observed = data.present & torch.tensor([True, False, True])

    fresh = tier2_inputs(model, data, observed, seed=4)
    cached = tier2_inputs(model, data, observed, seed=4, zs=bag_encodings(model, data))

    for a, b in zip(fresh, cached):
        assert torch.equal(a, b)
