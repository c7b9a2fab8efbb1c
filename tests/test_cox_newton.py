"""The exact federated Cox core (core/survival/cox_newton.py) against lifelines' stratified CoxPHFitter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index

from rmmfed.core.survival.cox_newton import (CoxFitError, add_cox_sums, newton_fit, pooled_standardisation, stratum_sums)


def _cohort(seed: int = 0, sizes=(120, 80, 50), d: int = 5):
    rng = np.random.default_rng(seed)
    rows = []
    true = rng.normal(0, 0.5, d)
    for s, n in enumerate(sizes):
        x = rng.normal(s * 0.3, 1.0 + 0.2 * s, size=(n, d))
        t = rng.exponential(np.exp(-(x @ true)) * (1 + s))
        c = rng.exponential(2.0, n)
        time = np.round(np.minimum(t, c), 1) + 0.1  # rounded: tied times, Efron matters
        event = (t <= c).astype(int)
        rows.append(pd.DataFrame({**{f"x{j}": x[:, j] for j in range(d)}, "T": time, "E": event, "site": s}))
    return pd.concat(rows, ignore_index=True)


def _federated(df: pd.DataFrame, penalizer: float):
    cols = [c for c in df.columns if c.startswith("x")]
    sites = [g for _, g in df.groupby("site")]
    # the sites' feature sums (count, sum, sum of squares) give the pooled standardisation exactly
    n = sum(len(g) for g in sites)
    mean, sd = pooled_standardisation(n, sum(g[cols].to_numpy().sum(0) for g in sites),
                                      sum((g[cols].to_numpy() ** 2).sum(0) for g in sites))
    calls = []

    def sums_at(beta):  # one round trip: every site's own stratum at the server's beta
        calls.append(beta.copy())
        return add_cox_sums([stratum_sums((g[cols].to_numpy() - mean) / sd, g["T"], g["E"], beta) for g in sites])

    return newton_fit(sums_at, len(cols), penalizer, n, mean=mean, sd=sd), calls, cols


@pytest.mark.parametrize("penalizer", [0.1, 0.01])
def test_the_federated_fit_equals_lifelines_stratified_cox_on_the_pooled_data(penalizer):
    df = _cohort()
    fit, calls, cols = _federated(df, penalizer)
    ref = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", strata=["site"],
                                               fit_options={"precision": 1e-12, "r_precision": 1e-15})
    np.testing.assert_allclose(fit.params, ref.params_[cols].to_numpy(), atol=1e-6, rtol=0)
    risk_ref = ref.predict_log_partial_hazard(df[cols + ["site"]]).to_numpy()
    risk = fit.risk(df[cols].to_numpy())
    c, c_ref = (concordance_index(df["T"], -r, df["E"]) for r in (risk, risk_ref))
    assert c == pytest.approx(c_ref, abs=1e-12)
    assert len(calls) <= 12  # a handful of Newton rounds


def test_stratum_sums_are_the_derivatives_of_the_efron_log_likelihood():
    df = _cohort(seed=3, sizes=(60,), d=3)
    x, t, e = df[["x0", "x1", "x2"]].to_numpy(), df["T"].to_numpy(), df["E"].to_numpy()
    beta = np.array([0.3, -0.2, 0.1])
    s = stratum_sums(x, t, e, beta)
    eps = 1e-6
    for j in range(3):
        step = np.eye(3)[j] * eps
        up, down = stratum_sums(x, t, e, beta + step), stratum_sums(x, t, e, beta - step)
        assert (up.loglik - down.loglik) / (2 * eps) == pytest.approx(s.grad[j], rel=1e-6, abs=1e-8)
        np.testing.assert_allclose((up.grad - down.grad) / (2 * eps), s.hess[j], rtol=1e-5, atol=1e-6)
    assert s.n == 60 and s.events == int(e.sum())


def test_the_unpenalised_fit_equals_lifelines_too():
    df = _cohort(seed=1)
    fit, _, cols = _federated(df, 0.0)
    ref = CoxPHFitter().fit(df, "T", "E", strata=["site"], fit_options={"precision": 1e-12, "r_precision": 1e-15})
    np.testing.assert_allclose(fit.params, ref.params_[cols].to_numpy(), atol=1e-6, rtol=0)


def test_bad_input_and_a_singular_hessian_say_the_fix():
    with pytest.raises(CoxFitError, match="one row of x"):
        stratum_sums(np.zeros((3, 2)), np.ones(4), np.ones(4), np.zeros(2))
    with pytest.raises(CoxFitError, match="NaN"):
        stratum_sums(np.array([[np.nan]]), np.ones(1), np.ones(1), np.zeros(1))
    x = np.c_[np.random.default_rng(0).normal(size=30), np.zeros(30)]  # a constant column, no penalty
    t, e = np.arange(1.0, 31.0), np.ones(30)
    with pytest.raises(CoxFitError, match="penalizer > 0"):
        newton_fit(lambda b: stratum_sums(x, t, e, b), 2, 0.0, 30)
    with pytest.raises(CoxFitError, match="penalizer"):
        newton_fit(lambda b: stratum_sums(x, t, e, b), 2, -1.0, 30)
