"""Reference tests for rmmfed.core.survival.cox (Cox partial likelihood, Efron / Breslow ties)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rmmfed.core.survival.cox import CoxLoss, cox_loss, cox_partial_log_likelihood
from rmmfed.core.errors import RmmError, SurvivalInputError


def naive_loglik(risk, time, event, ties):
    """Textbook loops: for every distinct event time, sum over the risk set and the deaths."""
    risk, time, event = list(map(float, risk)), list(map(float, time)), list(map(int, event))
    n = len(risk)
    total = 0.0
    for t in sorted({time[i] for i in range(n) if event[i]}):
        deaths = [i for i in range(n) if time[i] == t and event[i]]
        at_risk = [j for j in range(n) if time[j] >= t]
        d = len(deaths)
        s_r = sum(math.exp(risk[j]) for j in at_risk)
        s_d = sum(math.exp(risk[i]) for i in deaths)
        total += sum(risk[i] for i in deaths)
        if ties == "breslow":
            total -= d * math.log(s_r)
        else:
            for l in range(d):
                total -= math.log(s_r - l / d * s_d)
    return total


def tied_data(seed, n=60, n_times=8):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, n_times + 1, size=n).astype(np.float64)   # heavy ties
    event = (rng.random(n) < 0.6).astype(np.int64)
    risk = rng.normal(size=n)
    return risk, time, event


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_reference(ties, seed):
    risk, time, event = tied_data(seed)
    got = cox_partial_log_likelihood(torch.tensor(risk), torch.tensor(time), torch.tensor(event), ties)
    assert got.item() == pytest.approx(naive_loglik(risk, time, event, ties), rel=1e-12, abs=1e-10)


def test_no_ties_efron_equals_breslow():
    rng = np.random.default_rng(3)
    risk, time = torch.tensor(rng.normal(size=30)), torch.tensor(rng.permutation(30).astype(float))
    event = torch.tensor(rng.random(30) < 0.7)
    a = cox_partial_log_likelihood(risk, time, event, "efron")
    b = cox_partial_log_likelihood(risk, time, event, "breslow")
    assert a.item() == pytest.approx(b.item(), rel=1e-13)


def test_matches_lifelines_efron():
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=n)
    t_true = rng.exponential(scale=np.exp(-0.8 * x))
    c = rng.exponential(scale=1.5, size=n)
    time = np.ceil(np.minimum(t_true, c) * 5) / 5           # rounding creates many ties
    event = (t_true <= c).astype(int)
    df = pd.DataFrame({"x": x, "T": time, "E": event})
    cph = lifelines.CoxPHFitter().fit(df, "T", "E")
    beta = float(cph.params_["x"])
    got = cox_partial_log_likelihood(torch.tensor(beta * x), torch.tensor(time), torch.tensor(event))
    assert got.dtype == torch.float64
    assert abs(got.item() - cph.log_likelihood_) < 1e-6


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_gradcheck(ties):
    risk, time, event = tied_data(11, n=25, n_times=5)
    r = torch.tensor(risk, requires_grad=True)
    t, e = torch.tensor(time), torch.tensor(event)
    assert torch.autograd.gradcheck(lambda z: cox_loss(z, t, e, ties), (r,))


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_shift_and_permutation_invariance(ties):
    risk, time, event = (torch.tensor(a) for a in tied_data(5))
    base = cox_loss(risk, time, event, ties)
    assert cox_loss(risk + 123.4, time, event, ties).item() == pytest.approx(base.item(), rel=1e-10)
    perm = torch.randperm(len(risk), generator=torch.Generator().manual_seed(0))
    assert cox_loss(risk[perm], time[perm], event[perm], ties).item() == pytest.approx(base.item(), rel=1e-12)


def test_numerically_stable_for_huge_risks():
    risk, time, event = (torch.tensor(a) for a in tied_data(2))
    for dtype in (torch.float32, torch.float64):
        r = (risk * 1000).to(dtype).requires_grad_(True)
        loss = cox_loss(r, time, event)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(r.grad).all()


def test_float32_close_to_float64():
    risk, time, event = (torch.tensor(a) for a in tied_data(4))
    a = cox_loss(risk.float(), time, event).item()
    b = cox_loss(risk, time, event).item()
    assert a == pytest.approx(b, rel=1e-5)


def test_no_event_gives_zero_with_gradient():
    r = torch.randn(10, dtype=torch.float64, requires_grad=True)
    loss = cox_loss(r, torch.arange(10.0), torch.zeros(10))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(r.grad, torch.zeros(10, dtype=torch.float64))
    assert cox_partial_log_likelihood(r, torch.arange(10.0), torch.zeros(10)).item() == 0.0


def test_higher_risk_for_earlier_death_lowers_loss():
    time, event = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0])
    good = cox_loss(torch.tensor([2.0, 1.0, 0.0]), time, event)
    bad = cox_loss(torch.tensor([0.0, 1.0, 2.0]), time, event)
    assert good < bad


def test_module_wrapper_and_column_input():
    risk, time, event = (torch.tensor(a) for a in tied_data(1))
    mod = CoxLoss("breslow")
    assert mod(risk.unsqueeze(1), time, event).item() == pytest.approx(
        cox_loss(risk, time, event, "breslow").item(), rel=1e-14)


def test_input_errors():
    with pytest.raises(SurvivalInputError):
        cox_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(RmmError):
        cox_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), ties="exact")
    with pytest.raises(SurvivalInputError):
        cox_loss(torch.zeros(2), torch.tensor([1.0, float("nan")]), torch.ones(2))
