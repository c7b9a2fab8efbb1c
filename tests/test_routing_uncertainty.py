"""Tier 1 uncertainty (seed 000 eq. 3), masking patterns and uncertainty-guided routing (eq. 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmmfed.core.routing.routing import ABSTAIN, TIER1, TIER2, Route, route_all, route_counts, route_patient
from rmmfed.core.data.tensors import SiteTensors
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.routing.uncertainty import (calibration_uncertainties, masking_patterns, modality_variance,
                                     patient_uncertainty, uncertainty)

pytestmark = pytest.mark.usefixtures("single_thread")

HIGH_RISK = frozenset({"oncology-staging"})


def _tensors(dims, batch_factory, n: int = 6, seed: int = 0, present=None) -> SiteTensors:
    x, masks, present = batch_factory(dims, batch=n, max_len=3, seed=seed, present=present)
    target = tuple(torch.zeros(n, d) for d in dims.values())
    return SiteTensors(tuple(dims), tuple(x), tuple(masks), target, present,
                       torch.arange(1, n + 1, dtype=torch.float32), torch.ones(n), tuple("" for _ in range(n)))


# ---- helpers ---------------------------------------------------------------------------------
def test_modality_variance_is_eq3_divided_by_width():
    g = torch.Generator().manual_seed(0)
    mc = [torch.randn(7, 3, 4, generator=g, dtype=torch.float64), torch.randn(7, 3, 2, generator=g, dtype=torch.float64)]

    var = modality_variance(mc)

    expected = np.zeros((3, 2))
    for k, e in enumerate(mc):
        a = e.numpy()
        T, B, D = a.shape
        for b in range(B):
            mean = a[:, b].mean(axis=0)
            expected[b, k] = sum(np.sum((a[t, b] - mean) ** 2) for t in range(T)) / T / D
    assert var.shape == (3, 2)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-12)


def test_modality_variance_is_zero_for_identical_samples():
    e = torch.randn(1, 4, 3).expand(5, 4, 3)

    var = modality_variance([e])

    assert torch.allclose(var, torch.zeros(4, 1), atol=1e-12)  # up to float rounding of the mean


def test_patient_uncertainty_is_mean_over_unobserved_modalities():
    var_k = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    observed = torch.tensor([[True, False, False], [False, True, True], [True, True, True], [True, False, True]])

    sigma2 = patient_uncertainty(var_k, observed)

    assert torch.allclose(sigma2, torch.tensor([3.0, 1.0, 0.0, 2.0]))


def test_patient_uncertainty_is_zero_when_everything_observed():
    var_k = torch.rand(5, 3) + 1.0
    observed = torch.ones(5, 3, dtype=torch.bool)

    assert torch.equal(patient_uncertainty(var_k, observed), torch.zeros(5))


def test_masking_patterns_leave_one_observed_and_one_hidden():
    patterns = masking_patterns(3)

    assert len(patterns) == 6
    assert len(set(patterns)) == 6
    assert all(len(p) == 3 and any(p) and not all(p) for p in patterns)
    assert masking_patterns(3) == patterns  # fixed order
    assert len(masking_patterns(2)) == 2 and len(masking_patterns(4)) == 14


# ---- uncertainty() ---------------------------------------------------------------------------
def test_uncertainty_is_deterministic_for_a_seed_and_keeps_global_rng(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg, 0)
    data = _tensors(dims, batch_factory)
    observed = torch.tensor([[True, False, False]] * 3 + [[False, True, True]] * 3)
    torch.manual_seed(99)
    before = torch.get_rng_state()

    u1 = uncertainty(model, data, observed, seed=3)
    u2 = uncertainty(model, data, observed, seed=3)
    u3 = uncertainty(model, data, observed, seed=4)

    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(u1, u2)
    assert not np.array_equal(u1, u3)
    assert u1.shape == (6,) and (u1 > 0).all()


def test_uncertainty_does_not_depend_on_batching(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg.model_copy(update={"dropout": 0.0}), 0)
    data = _tensors(dims, batch_factory, n=7)
    observed = torch.tensor([[True, False, True]] * 7)

    whole = uncertainty(model, data, observed, seed=0)
    chunked = uncertainty(model, data, observed, seed=0, batch=3)

    np.testing.assert_allclose(whole, chunked, rtol=1e-6, atol=1e-7)  # float32 batched matmuls round differently


def test_uncertainty_is_zero_for_patients_with_everything_observed(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg, 0)
    data = _tensors(dims, batch_factory, present=torch.ones(6, 3, dtype=torch.bool))

    u = uncertainty(model, data)

    np.testing.assert_array_equal(u, np.zeros(6))


def test_calibration_uses_complete_cases_under_every_pattern(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg, 0)
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True], [False, False, True]])
    data = _tensors(dims, batch_factory, n=4, present=present)

    values = calibration_uncertainties(model, data, seed=0)

    assert values.shape == (2 * 6,)  # 2 complete cases x 6 patterns
    assert (values > 0).all()


# ---- routing ---------------------------------------------------------------------------------
def test_route_abstains_without_any_modality_even_in_high_risk_context():
    r1 = route_patient(10.0, "oncology-staging", False, theta=0.5, high_risk=HIGH_RISK)
    r2 = route_patient(0.0, "", False, theta=0.5, high_risk=HIGH_RISK)

    assert r1.route == ABSTAIN and r2.route == ABSTAIN


def test_route_high_risk_context_goes_to_tier2_even_with_zero_uncertainty():
    r = route_patient(0.0, "oncology-staging", True, theta=0.5, high_risk=HIGH_RISK)

    assert r.route == TIER2
    assert "oncology-staging" in r.reason


def test_route_uncertainty_above_theta_goes_to_tier2_else_tier1():
    above = route_patient(0.51, "", True, theta=0.5, high_risk=HIGH_RISK)
    equal = route_patient(0.5, "", True, theta=0.5, high_risk=HIGH_RISK)
    below = route_patient(0.1, "other", True, theta=0.5, high_risk=HIGH_RISK)

    assert above.route == TIER2
    assert equal.route == TIER1
    assert below.route == TIER1


def test_every_route_has_a_reason_and_counts_sum_to_n():
    rng = np.random.default_rng(0)
    n = 200
    sigma2 = rng.exponential(size=n)
    contexts = [("oncology-staging", "", "follow-up")[i % 3] for i in range(n)]
    any_present = rng.random(n) > 0.1

    routes = route_all(sigma2, contexts, any_present, theta=1.0, high_risk=HIGH_RISK)
    counts = route_counts(routes)

    assert len(routes) == n
    assert all(isinstance(r, Route) and r.reason.strip() for r in routes)
    assert sum(counts.values()) == n
    assert set(counts) == {TIER1, TIER2, ABSTAIN}
    assert counts[ABSTAIN] == int((~any_present).sum())
    assert all(c > 0 for c in counts.values())


def test_route_counts_of_nothing_are_zero():
    assert route_counts([]) == {TIER1: 0, TIER2: 0, ABSTAIN: 0}
