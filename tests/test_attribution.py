"""Per-modality integrated-gradients attributions of Tier 1's risk and attention top instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmmfed.core.model.attribution import (attribute, bag_row_indices, integrated_gradients, masked_risk, path_risk,
                                     top_instances)
from rmmfed.core.aggregates.feature_stats import FeatureStats, local_feature_sums
from rmmfed.core.data.site_data import load_site
from rmmfed.core.data.tensors import build_tensors
from rmmfed.core.model.tier1 import bag_means, build_model

pytestmark = pytest.mark.usefixtures("single_thread")

SWITCHES = ("modality_prompts", "missing_prompts", "pseudo_embeddings", "estimator")


def _model(dims, cfg, seed=0, *, sharp: bool = False, **off):
    """An eval-mode tiny model; ``sharp`` scales the head's output layer and the pseudo-embeddings up so
    that risks differ by O(1) between patterns (an untrained head is nearly flat)."""
    model = build_model(dims, cfg.model_copy(update=off), seed)
    if sharp:
        with torch.no_grad():
            model.head[-1].weight.mul_(30.0)
            model.pseudo.mul_(10.0)
    model.eval()
    return model


def test_shapes_zero_for_absent_and_endpoints_equal_the_model(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg)
    x, mask, present = batch_factory(dims, 12, 4, seed=1)
    present[0] = torch.tensor([True, False, False])

    att = integrated_gradients(model, x, mask, present, steps=16)

    assert att.values.shape == (12, 3) and att.modalities == ("a", "b", "c")
    assert np.all(att.values[~present.numpy()] == 0.0)
    assert np.any(att.values[present.numpy()] != 0.0)
    with torch.no_grad():
        full = model(x, mask, present).risk.numpy()
        none = model(x, mask, torch.zeros_like(present)).risk.numpy()
    np.testing.assert_allclose(att.risk, full, atol=1e-6)
    np.testing.assert_allclose(att.baseline_risk, none, atol=1e-6)
    assert [a.shape for a in att.attention] == [tuple(m.shape) for m in mask]


@pytest.mark.parametrize("off", [None, *SWITCHES])
def test_completeness_sum_of_attributions_is_risk_minus_all_absent_risk(dims, tier1_cfg, batch_factory, off):
    model = _model(dims, tier1_cfg, seed=3, sharp=True, **({off: False} if off else {}))
    x, mask, present = batch_factory(dims, 16, 5, seed=2)

    coarse = integrated_gradients(model, x, mask, present, steps=8)
    att = integrated_gradients(model, x, mask, present, steps=1024)  # attention fusion curves the path more

    delta = att.risk - att.baseline_risk
    assert np.abs(delta).max() > 0.5  # a real test: the patterns' risks differ
    np.testing.assert_allclose(att.values.sum(axis=1), delta, atol=1e-3 + 0.02 * np.abs(delta).max())
    assert np.abs(att.completeness_gap).max() < np.abs(coarse.completeness_gap).max()  # quadrature converges


def test_single_present_modality_gets_the_whole_difference(dims, tier1_cfg, batch_factory):
    """With one modality present, completeness puts all of risk - baseline on it (others exactly 0)."""
    model = _model(dims, tier1_cfg, seed=4, sharp=True)
    present = torch.tensor([[True, False, False], [False, False, True]])
    x, mask, present = batch_factory(dims, 2, 3, seed=5, present=present)

    att = integrated_gradients(model, x, mask, present, steps=1024)  # attention fusion curves the path more

    delta = att.risk - att.baseline_risk
    np.testing.assert_allclose(att.values[present.numpy()], delta, atol=1e-3 + 0.02 * np.abs(delta).max())
    assert np.all(att.values[~present.numpy()] == 0.0)


def test_path_risk_matches_forward_on_any_observed_pattern(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, seed=6)
    x, mask, present = batch_factory(dims, 8, 4, seed=7)
    with torch.no_grad():
        zs, _ = model.encode(x, mask)
        z = [torch.where(present[:, j : j + 1], zs[j], model.pseudo[j].expand(8, -1)) for j in range(3)]
        p = [present[:, j : j + 1].float() for j in range(3)]
        m = [mean * p[j] for j, mean in enumerate(bag_means(x, mask))]
        torch.testing.assert_close(path_risk(model, z, p, m), model(x, mask, present).risk)


def test_mode_is_restored_and_chunks_agree(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg, 0)
    model.train()
    x, mask, present = batch_factory(dims, 10, 4, seed=8)

    a = integrated_gradients(model, x, mask, present, steps=8, chunk=3)
    b = integrated_gradients(model, x, mask, present, steps=8, chunk=100)

    assert model.training
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)


def test_top_instances_are_valid_indices_sorted_by_weight(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg)
    x, mask, present = batch_factory(dims, 10, 6, seed=9)
    att = integrated_gradients(model, x, mask, present, steps=4)
    for k in range(3):
        for i in range(10):
            top = top_instances(att.attention[k][i], att.inst_mask[k][i], 3)
            n_real = int(mask[k][i].sum())
            assert len(top) == min(3, n_real)
            assert all(0 <= idx < n_real and mask[k][i, idx] for idx, _ in top)
            weights = [w for _, w in top]
            assert weights == sorted(weights, reverse=True)
            assert all(w == pytest.approx(float(att.attention[k][i, idx])) for idx, w in top)
            assert len({idx for idx, _ in top}) == len(top)


def test_top_instances_map_positions_to_file_rows():
    att = np.array([0.1, 0.6, 0.3, 0.0])
    mask = np.array([True, True, True, False])
    assert top_instances(att, mask, 2, rows=np.array([4, 9, 17])) == [(9, 0.6), (17, 0.3)]
    assert top_instances(att, np.zeros(4, dtype=bool), 2) == []
    assert top_instances(att, mask, 0) == []


def test_bag_row_indices_replay_the_tensors_subsample(site_factory, dims):
    site = load_site(site_factory(n=15, max_instances=9))
    stats = FeatureStats.from_sums(local_feature_sums(site, np.arange(15), 1), dims, 2)
    data = build_tensors(site, stats, max_instances=3, seed=11)

    rows = bag_row_indices(site, tuple(stats.mean), max_instances=3, seed=11)

    subsampled = 0
    for k, m in enumerate(stats.mean):
        for i, bag in enumerate(site.bags[m]):
            if bag is None:
                assert rows[m][i] is None
                continue
            r = rows[m][i]
            subsampled += len(bag) > 3
            expect = (bag[r] - stats.mean[m].astype(np.float32)) / stats.std[m].astype(np.float32)
            np.testing.assert_allclose(data.x[k][i, : len(r)].numpy(), expect, rtol=1e-6, atol=1e-6)
    assert subsampled > 0


def test_attribute_and_masked_risk_on_site_tensors(site_factory, dims, tier1_cfg):
    site = load_site(site_factory(n=12))
    stats = FeatureStats.from_sums(local_feature_sums(site, np.arange(12), 1), dims, 2)
    data = build_tensors(site, stats, max_instances=4, seed=0)
    model = _model(dims, tier1_cfg)

    att = attribute(model, data, steps=8)

    np.testing.assert_allclose(att.risk, masked_risk(model, data, data.present), atol=1e-6)
    assert att.values.shape == (12, 3)


def test_completeness_holds_with_token_fusion_and_the_linear_path(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, seed=3, sharp=True, fusion="attention")
    with torch.no_grad():
        model.linear.weight.normal_(generator=torch.Generator().manual_seed(4))
    x, mask, present = batch_factory(dims, 16, 5, seed=2)
    att = integrated_gradients(model, x, mask, present, steps=1024)
    delta = att.risk - att.baseline_risk
    assert np.abs(delta).max() > 0.5
    np.testing.assert_allclose(att.values.sum(axis=1), delta, atol=1e-3 + 0.02 * np.abs(delta).max())
