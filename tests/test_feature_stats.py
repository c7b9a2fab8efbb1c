"""Federated feature statistics: sums per site, pooled standardisation and L_anat statistics."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.aggregates.feature_stats import (FeatureStats, add_sums, local_feature_sums, partition_slices,
                                       pooled_features)
from rmmfed.core.data.site_data import load_site

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def two_sites(site_factory, dims):
    a = load_site(site_factory(name="site-A", n=40, seed=1), expected=dims)
    b = load_site(site_factory(name="site-B", n=25, seed=2, absent_rate=0.5), expected=dims)
    return a, b


def _pooled_numpy(sites, m, block="all"):
    """Mean-pooled features (float64) of the train patients of every site, computed independently."""
    rows = []
    for s in sites:
        for i in s.indices("train"):
            bags = {k: s.bags[k][i] for k in s.bags}
            if block == "complete" and any(v is None for v in bags.values()):
                continue
            if bags[m] is not None:
                rows.append(np.asarray(bags[m], dtype=np.float64).mean(axis=0))
    return np.array(rows)


def _stats(sites, dims, partitions=2, min_count=1):
    sums = add_sums([local_feature_sums(s, s.indices("train"), min_count) for s in sites])
    return sums, FeatureStats.from_sums(sums, dims, partitions)


def test_pooled_features_are_bag_means_with_zeros_where_absent(two_sites):
    site, _ = two_sites

    feats, present = pooled_features(site, "b")

    for i, bag in enumerate(site.bags["b"]):
        if bag is None:
            assert not present[i] and np.all(feats[i] == 0)
        else:
            assert present[i]
            np.testing.assert_allclose(feats[i], bag.read().astype(np.float64).mean(axis=0))


def test_summed_site_sums_give_pooled_mean_and_std(two_sites, dims):
    sums, stats = _stats(two_sites, dims)

    for m in dims:
        x = _pooled_numpy(two_sites, m)
        assert float(sums[f"{m}.all.n"][0]) == len(x)
        np.testing.assert_allclose(stats.mean[m], x.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats.std[m], x.std(axis=0), rtol=1e-8)


def test_sums_carry_only_counts_sums_and_squares(two_sites, dims):
    site, _ = two_sites

    sums = local_feature_sums(site, site.indices("train"), min_count=1)

    assert set(sums) == {f"{m}.{b}.{q}" for m in dims for b in ("all", "complete") for q in ("n", "sum", "sumsq")}
    for m, d in dims.items():
        assert sums[f"{m}.all.n"].shape == (1,)
        assert sums[f"{m}.all.sum"].shape == (d,) and sums[f"{m}.all.sumsq"].shape == (d,)


def test_site_below_min_count_sends_zeros(two_sites, dims):
    site, _ = two_sites
    few = site.indices("train")[:3]

    sums = local_feature_sums(site, few, min_count=5)

    assert all(np.all(v == 0) for v in sums.values())
    assert all(sums[f"{m}.all.sum"].shape == (d,) for m, d in dims.items())


def test_small_site_does_not_shift_pooled_stats_when_below_min_count(two_sites, dims):
    big, small = two_sites
    alone = FeatureStats.from_sums(local_feature_sums(big, big.indices("train"), 5), dims, 2)

    combined = FeatureStats.from_sums(add_sums([local_feature_sums(big, big.indices("train"), 5),
                                                local_feature_sums(small, small.indices("train")[:4], 5)]), dims, 2)

    for m in dims:
        np.testing.assert_array_equal(alone.mean[m], combined.mean[m])
        np.testing.assert_array_equal(alone.std[m], combined.std[m])


def test_anatomical_stats_match_numpy_on_standardised_complete_cases(two_sites, dims):
    _, stats = _stats(two_sites, dims, partitions=2)

    for m, d in dims.items():
        x = _pooled_numpy(two_sites, m, block="complete")
        assert len(x) >= 5
        z = (x - stats.mean[m]) / stats.std[m]
        var = z.var(axis=0)
        assert stats.anat_source[m] == "complete"
        np.testing.assert_allclose(stats.anat_mu[m], z.mean(axis=0), atol=1e-9)
        expected_sigma = [np.sqrt(var[sl].sum()) for sl in partition_slices(d, 2)]
        np.testing.assert_allclose(stats.anat_sigma[m], expected_sigma, rtol=1e-7)
        assert stats.anat_sigma[m].shape == (2,)


def test_anatomical_stats_fall_back_to_all_cases_without_complete_cases(site_factory):
    dims = {"a": 3, "b": 2}
    site = load_site(site_factory(name="site-X", n=20, dims=dims, seed=5), expected=dims)
    for i in range(len(site)):  # make b absent for every patient that has a  -> no complete case
        site.bags["b"][i] = None if i % 2 == 0 else site.bags["b"][i]
        site.bags["a"][i] = site.bags["a"][i] if i % 2 == 0 else None

    sums = local_feature_sums(site, np.arange(len(site)), min_count=1)
    stats = FeatureStats.from_sums(sums, dims, 2)

    assert stats.anat_source == {"a": "all", "b": "all"}
    np.testing.assert_allclose(stats.anat_mu["a"], np.zeros(3), atol=1e-9)  # mean of standardised = 0


def test_modality_without_any_statistics_gets_identity_transform():
    dims = {"a": 3}
    zeros = {"a.all.n": np.zeros(1), "a.all.sum": np.zeros(3), "a.all.sumsq": np.zeros(3),
             "a.complete.n": np.zeros(1), "a.complete.sum": np.zeros(3), "a.complete.sumsq": np.zeros(3)}

    stats = FeatureStats.from_sums(zeros, dims, 2)

    np.testing.assert_array_equal(stats.mean["a"], np.zeros(3))
    np.testing.assert_array_equal(stats.std["a"], np.ones(3))
    assert np.isfinite(stats.anat_sigma["a"]).all()


def test_constant_feature_gets_unit_std():
    sums = {"a.all.n": np.array([4.0]), "a.all.sum": np.array([8.0, 4.0]), "a.all.sumsq": np.array([16.0, 10.0]),
            "a.complete.n": np.array([4.0]), "a.complete.sum": np.array([8.0, 4.0]),
            "a.complete.sumsq": np.array([16.0, 10.0])}

    stats = FeatureStats.from_sums(sums, {"a": 2}, 1)

    np.testing.assert_allclose(stats.mean["a"], [2.0, 1.0])
    np.testing.assert_allclose(stats.std["a"], [1.0, np.sqrt(10 / 4 - 1)])


def test_add_sums_rejects_sites_with_different_keys(two_sites):
    a, _ = two_sites
    sums = local_feature_sums(a, a.indices("train"), 1)
    other = {k: v for k, v in sums.items() if not k.startswith("a.")}

    with pytest.raises(ValueError, match="schema"):
        add_sums([sums, other])


def test_add_sums_does_not_modify_its_inputs(two_sites):
    a, b = two_sites
    sa = local_feature_sums(a, a.indices("train"), 1)
    copy = {k: v.copy() for k, v in sa.items()}

    add_sums([sa, local_feature_sums(b, b.indices("train"), 1)])

    assert all(np.array_equal(sa[k], copy[k]) for k in sa)


@pytest.mark.parametrize("dim,partitions", [(1, 1), (1, 4), (5, 2), (7, 3), (64, 4), (10, 10), (3, 8)])
def test_partition_slices_cover_every_dim_exactly_once(dim, partitions):
    slices = partition_slices(dim, partitions)

    covered = np.concatenate([np.arange(dim)[sl] for sl in slices])
    np.testing.assert_array_equal(covered, np.arange(dim))
    assert len(slices) == min(partitions, dim)
    assert all(sl.stop > sl.start for sl in slices)
    sizes = [sl.stop - sl.start for sl in slices]
    assert max(sizes) - min(sizes) <= 1


def test_to_arrays_from_arrays_round_trip(two_sites, dims):
    _, stats = _stats(two_sites, dims, partitions=2)

    back = FeatureStats.from_arrays(stats.to_arrays(), partitions=2)

    assert list(back.mean) == sorted(dims)
    assert back.partitions == 2
    for m in dims:
        np.testing.assert_array_equal(back.mean[m], stats.mean[m])
        np.testing.assert_array_equal(back.std[m], stats.std[m])
        np.testing.assert_array_equal(back.anat_mu[m], stats.anat_mu[m])
        np.testing.assert_array_equal(back.anat_sigma[m], stats.anat_sigma[m])
