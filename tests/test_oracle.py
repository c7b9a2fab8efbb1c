"""Tests of the simulation-only oracle figures (truth.csv and cohort.json of a generated cohort)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmmfed.simulations.optional_inputs import Truth
from rmmfed.simulations.oracle import cohort_figures, oracle_figures
from rmmfed.simulations.pooled_test import PooledTest


def _test_split(n: int, rng) -> PooledTest:
    time = rng.exponential(size=n) * 10
    event = (rng.random(n) < 0.7).astype(int)
    route = np.array(["tier2" if i < 20 else "tier1" for i in range(n)], dtype=object)
    empty = np.zeros(0)
    return PooledTest(["a"], np.full(n, "site-A", dtype=object), [[f"A{i:04d}" for i in range(n)]], time, event,
                      np.zeros(n), np.zeros(n), route, np.ones((n, 1), bool), empty, empty, empty, empty)


def test_oracle_ranks_test_patients_by_true_and_observed_risk_also_on_the_referred():
    rng = np.random.default_rng(0)
    test = _test_split(60, rng)
    true = -np.log(test.time)  # perfectly ranked by construction
    obs = true + rng.standard_normal(60)
    ids = test.patient_ids[0]
    truth = Truth({("site-A", p): r for p, r in zip(ids, true)}, {("site-A", p): r for p, r in zip(ids, obs)})
    o = oracle_figures(truth, ["site-A"], test)
    assert o["c_index"] == pytest.approx(1.0)
    assert 0.5 < o["c_index_observed"] < 1.0
    assert o["referred_n"] == 20 and o["c_index_referred"] == pytest.approx(1.0)
    assert o["c_index_observed_referred"] is not None


def test_truth_without_observed_risk_gives_the_true_risk_oracle_only():
    rng = np.random.default_rng(1)
    test = _test_split(40, rng)
    truth = Truth({("site-A", p): float(-t) for p, t in zip(test.patient_ids[0], test.time)})
    o = oracle_figures(truth, ["site-A"], test)
    assert o["c_index"] == pytest.approx(1.0) and "c_index_observed" not in o


def test_cohort_figures_come_from_cohort_json_and_are_empty_for_real_data(tmp_path):
    assert cohort_figures(tmp_path) == {}
    (tmp_path / "cohort.json").write_text(json.dumps({"cross_modal_r2": {"a": 0.3}, "oracle_c_index_all": 0.8,
                                                      "sites": {}, "config": {"cross_modal_strength": 0.75}}))
    assert cohort_figures(tmp_path) == {"cross_modal_r2": {"a": 0.3}, "oracle_c_index_all": 0.8,
                                        "cross_modal_strength": 0.75}
