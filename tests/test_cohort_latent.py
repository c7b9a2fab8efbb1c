"""Tests of the synthetic cohort's latent model and of its cross-modal R^2 measurement."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.simulations.cohort_latent import LatentModel, draw_latents, expected_risk, risk_parts, view_risk
from rmmfed.simulations.cohort_measure import cross_modal_r2


def _model(c: float, eta: float = 0.3) -> LatentModel:
    return LatentModel(n_factors=4, n_specific=2, cross_modal=c, shared_share=0.65, nonlinearity=eta,
                       risk_sd=1.7, specific_weights=np.array([0.7, 0.5, 0.4]))


@pytest.mark.parametrize("c", [0.0, 0.25, 0.75, 1.0])
def test_true_risk_has_the_configured_sd_and_shared_share_for_every_cross_modal_strength(c):
    lm = _model(c)
    lat = draw_latents(lm, 200_000, 3, np.random.default_rng(0))
    shared, specific = risk_parts(lm, lat)
    assert np.std(shared + specific.sum(1)) == pytest.approx(1.7, rel=0.02)
    assert np.var(shared) / np.var(shared + specific.sum(1)) == pytest.approx(0.65, abs=0.02)


def test_view_risk_of_a_gaussian_is_the_monte_carlo_mean():
    lm, rng = _model(0.5, eta=0.6), np.random.default_rng(1)
    mean, var = np.array([[0.4, -1.0, 0.8, 0.3]]), 0.35
    draws = mean + np.sqrt(var) * rng.standard_normal((400_000, 4))
    assert view_risk(lm, mean, var)[0] == pytest.approx(view_risk(lm, draws).mean(), abs=0.01)


@pytest.mark.parametrize("c", [0.25, 0.75])
def test_expected_risk_is_the_conditional_mean_given_the_observed_modalities(c):
    lm, rng = _model(c), np.random.default_rng(2)
    n = 200_000
    lat = draw_latents(lm, n, 3, rng)
    shared, specific = risk_parts(lm, lat)
    risk = shared + specific.sum(1)
    observed = np.ones((n, 3), dtype=bool)
    observed[:, 2] = False  # report absent
    e_obs = expected_risk(lm, lat, observed)
    e_none = expected_risk(lm, lat, observed, recover=False)
    resid = risk - e_obs
    assert abs(resid.mean()) < 0.01
    # the residual is uncorrelated with anything the observed modalities show
    for feature in (lat.views[:, 0, 0], lat.views[:, 1, 2] ** 2, lat.views[:, 0, 0] * lat.views[:, 1, 1], e_obs):
        assert abs(np.corrcoef(resid, feature)[0, 1]) < 0.01
    assert np.mean(resid**2) < np.mean((risk - e_none) ** 2)  # inferring the absent view helps


def test_expected_risk_with_everything_observed_is_the_true_risk():
    lm = _model(0.5)
    lat = draw_latents(lm, 1000, 3, np.random.default_rng(3))
    shared, specific = risk_parts(lm, lat)
    np.testing.assert_allclose(expected_risk(lm, lat, np.ones((1000, 3), bool)), shared + specific.sum(1))


def test_cross_modal_r2_recovers_a_known_linear_relation_and_zero_for_independent_noise():
    rng = np.random.default_rng(4)
    n = 600
    z = rng.standard_normal((n, 3))
    a = z @ rng.standard_normal((3, 8)) + 0.5 * rng.standard_normal((n, 8))
    b = z @ rng.standard_normal((3, 6)) + 0.5 * rng.standard_normal((n, 6))
    noise = rng.standard_normal((n, 5))
    split = np.where(np.arange(n) % 5 < 3, "train", "test")
    present = {"a": np.ones(n, bool), "b": np.ones(n, bool), "noise": np.ones(n, bool)}
    r2 = cross_modal_r2([{"a": a, "b": b, "noise": noise}], [present], [split])
    assert r2["a"] > 0.6 and r2["b"] > 0.6
    assert abs(r2["noise"]) < 0.05
