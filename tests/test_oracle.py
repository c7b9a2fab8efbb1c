"""Tests of the simulation-only oracle figures (truth.csv and cohort.json of a generated cohort)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rmmfed.simulations.oracle import oracle_figures


def _cohort(tmp_path, columns: dict):
    pd.DataFrame(columns).to_csv(tmp_path / "truth.csv", index=False)
    return tmp_path


def test_oracle_ranks_test_patients_by_true_and_observed_risk_also_on_the_referred(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    time = rng.exponential(size=n) * 10
    event = (rng.random(n) < 0.7).astype(int)
    ids = [f"A{i:04d}" for i in range(n)]
    true = -np.log(time)  # perfectly ranked by construction
    obs = true + rng.standard_normal(n)
    cohort = _cohort(tmp_path, {"site": ["A"] * n, "patient_id": ids, "true_risk": true, "observed_risk": obs})
    (tmp_path / "cohort.json").write_text(json.dumps({"cross_modal_r2": {"a": 0.3}, "oracle_c_index_all": 0.8,
                                                      "config": {"cross_modal_strength": 0.75}}))
    referred = np.zeros(n, bool)
    referred[:20] = True
    out = oracle_figures(cohort, ["site-A"], [ids], time, event, referred)
    o = out["oracle"]
    assert o["c_index"] == pytest.approx(1.0)
    assert 0.5 < o["c_index_observed"] < 1.0
    assert o["referred_n"] == 20 and o["c_index_referred"] == pytest.approx(1.0)
    assert o["c_index_observed_referred"] is not None
    assert out["cohort"] == {"cross_modal_r2": {"a": 0.3}, "oracle_c_index_all": 0.8, "cross_modal_strength": 0.75}


def test_truth_file_without_the_expected_columns_is_ignored_with_a_warning(tmp_path):
    cohort = _cohort(tmp_path, {"site": ["A"], "patient_id": ["A0001"], "grade": [2]})
    with pytest.warns(UserWarning, match="true_risk"):
        out = oracle_figures(cohort, ["site-A"], [["A0001"]], np.array([1.0]), np.array([1]))
    assert out == {}


def test_no_truth_file_gives_no_oracle(tmp_path):
    assert oracle_figures(tmp_path, ["site-A"], [["A1"]], np.array([1.0]), np.array([1])) == {}
