"""Tier 2 as the referred meet it: scored through Tier 1's head, every masking pattern, the honest gate,
and high-risk patients with nothing to recover."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmmfed.core.config import RunConfig
from rmmfed.core.routing.routing import HIGH_RISK_CONTEXT, TIER1, TIER2, TIER2_NOT_USED, route_patient
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2 import build_tier2
from rmmfed.core.tier2.tier2_config import Tier2Config
from rmmfed.core.tier2.tier2_context import PatternBank, bag_encodings, data_means, observed_patterns
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.tier2.tier2_gate import VALIDATION_KEYS, Tier2Gate, ValidationSums, decide
from rmmfed.core.tier2.tier2_scoring import tier1_head_risk
from rmmfed.core.tier2.tier2_context import tier2_inputs
from rmmfed.core.tier2.tier2_train import predict_tier2
from rmmfed.core.routing.risk_scale import RiskScale
from rmmfed.core.routing.two_tier import predict_two_tier

from test_tier2 import TINY, make_site

HIGH_RISK = frozenset({"oncology-staging"})


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny models on one thread


def _sums(n=100.0, sse1=70.0, sse2=65.0, c1=(60.0, 0.0, 100.0), c2=(62.0, 0.0, 100.0), sites=3) -> ValidationSums:
    return ValidationSums.from_metrics(dict(zip(VALIDATION_KEYS, [n, sse1, sse2, *c1, *c2])), sites)


def _closed() -> Tier2Gate:
    return Tier2Gate(False, "Tier 2 did not beat Tier 1")


# ---- the gate --------------------------------------------------------------------------------------
def test_the_gate_opens_only_when_tier2_wins_on_recovery_and_c_index():
    assert decide(_sums()).open
    worse_recovery = decide(_sums(sse2=71.0))
    worse_ranking = decide(_sums(c2=(59.0, 0.0, 100.0)))
    assert not worse_recovery.open and not worse_ranking.open
    assert "did not beat" in worse_recovery.reason and "0.7100 vs Tier 1's 0.7000" in worse_recovery.reason
    equal_ranking = decide(_sums(c2=(60.0, 0.0, 100.0)))
    assert equal_ranking.open  # a tie in C-index with a lower recovery error is a win


def test_the_gate_stays_closed_without_validation_cases_and_round_trips():
    closed = decide(_sums(n=0.0, sites=2))
    assert not closed.open and "no site" in closed.reason
    g = decide(_sums())
    assert Tier2Gate.from_dict(g.to_dict()) == g
    assert Tier2Gate.from_dict(None).open  # bundles from before the gate behave as they did


# ---- routing: high-risk context -----------------------------------------------------------------
def test_a_complete_patient_in_a_high_risk_context_keeps_tier1_flagged():
    complete = route_patient(0.0, "oncology-staging", True, theta=0.5, high_risk=HIGH_RISK, all_present=True)
    gap = route_patient(0.0, "oncology-staging", True, theta=0.5, high_risk=HIGH_RISK, all_present=False)
    assert complete.route == TIER1 and HIGH_RISK_CONTEXT in complete.flags and "nothing to recover" in complete.reason
    assert gap.route == TIER2 and HIGH_RISK_CONTEXT in gap.flags


# ---- masking patterns --------------------------------------------------------------------------------
def test_the_pattern_bank_draws_every_valid_pattern_and_only_those(dims, tier1_cfg):
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]] * 4)
    data = make_site(dims, 12, seed=0, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    bank = PatternBank.build(tier1, data, seed=1, mc_samples=3)
    assert len(observed_patterns(3)) == 7 and bank.x_hat.shape[:2] == (7, 12)
    assert set(bank.trainable().tolist()) == {i for i in range(12) if present[i].sum() >= 2}
    g = torch.Generator().manual_seed(0)
    seen: dict[int, set] = {0: set(), 1: set()}
    for _ in range(300):
        for row, p in zip((0, 1), bank.draw(torch.tensor([0, 1]), g).tolist()):
            observed = present[row] & bank.patterns[p]
            hidden = present[row] & ~bank.patterns[p]
            assert observed.any() and hidden.any()
            seen[row].add(tuple(observed.tolist()))
    assert len(seen[0]) == 6  # all present: every non-empty proper subset
    assert seen[1] == {(True, False, False), (False, False, True)}


# ---- scoring through Tier 1's head --------------------------------------------------------------------
def test_tier2_fed_tier1s_own_estimate_gives_tier1s_risk(dims, tier1_cfg):
    """The head path of Tier 2 is Tier 1's: with Tier 1's x_hat as the recovery, the risk is Tier 1's."""
    present = torch.tensor([[True, False, True], [True, True, False], [False, True, True]] * 3)
    data = make_site(dims, 9, seed=3, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0).eval()
    with torch.no_grad():
        tier1.linear.weight.normal_(generator=torch.Generator().manual_seed(1))  # the linear path counts too
    zs = bag_encodings(tier1, data)
    with torch.no_grad():
        x_hat = tier1(list(data.x), list(data.inst_mask), present).x_hat
        risk = tier1_head_risk(tier1, zs, present, x_hat, data_means(data))
        expected = tier1(list(data.x), list(data.inst_mask), present).risk
    assert torch.allclose(risk, expected, atol=1e-6)


def test_an_untrained_residual_tier2_recovers_exactly_tier1s_estimate(dims, tier1_cfg):
    present = torch.tensor([[True, False, True], [True, True, False]] * 3)
    data = make_site(dims, 6, seed=4, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    tier2 = build_tier2(dims, Tier2Config(timesteps=50, **TINY), seed=0, tier1=tier1_cfg)
    x_obs, x_hat, s2 = tier2_inputs(tier1, data, present, seed=0)
    from rmmfed.core.tier2.tier2_context import tier1_slots
    enc = tier1_slots(tier1.eval(), bag_encodings(tier1, data), present)
    x_rec, _ = tier2.recover(x_obs, present, x_hat, s2, samples=2, steps=5, generator=torch.Generator().manual_seed(0),
                             enc=enc)
    hidden = ~tier2.coord_mask(present)
    assert torch.allclose(x_rec[hidden], x_hat[hidden], atol=1e-5)
    assert torch.equal(x_rec[~hidden], x_obs[~hidden])


def test_a_closed_gate_keeps_tier1s_risk_for_the_referred_and_flags_them(dims, tier1_cfg):
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [True, True, False]] * 3)
    data = make_site(dims, 12, seed=2, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    cfg = RunConfig(model=tier1_cfg, tier2=Tier2Config(timesteps=50, **TINY))
    tier2 = build_tier2(dims, cfg.tier2, seed=0, tier1=tier1_cfg)
    scale = RiskScale(0.1, 2.0, 0.1, 2.0)
    used = predict_two_tier(tier1, tier2, data, cfg, fitted=FittedTwoTier(0.0, float("inf"), scale), seed=0)
    kept = predict_two_tier(tier1, tier2, data, cfg, fitted=FittedTwoTier(0.0, float("inf"), scale, _closed()),
                            seed=0)
    referred = np.isfinite(kept.tier2_risk)
    assert referred.sum() == (~present.all(dim=1)).sum()  # theta = 0: every patient with a gap
    assert np.allclose(kept.system_risk[referred], (kept.tier1_risk[referred] - 0.1) / 2.0)
    assert np.allclose(used.system_risk[referred], (used.tier2_risk[referred] - 0.1) / 2.0)
    assert np.array_equal(kept.tier2_risk, used.tier2_risk, equal_nan=True)  # still measured
    assert all(TIER2_NOT_USED in r.flags for r, ref in zip(kept.routes, referred) if ref)
    assert not kept.tier2_used and used.tier2_used


def test_predict_tier2_is_deterministic_and_scores_through_tier1(dims, tier1_cfg):
    present = torch.tensor([[True, False, True], [True, True, True]] * 3)
    data = make_site(dims, 6, seed=5, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    cfg = Tier2Config(timesteps=50, **TINY)
    tier2 = build_tier2(dims, cfg, seed=0, tier1=tier1_cfg)
    a, b = (predict_tier2(tier2, tier1, data, cfg, seed=3) for _ in range(2))
    assert np.array_equal(a.risk, b.risk) and np.array_equal(a.risk_draws, b.risk_draws)
    complete = present.all(dim=1).numpy()
    with torch.no_grad():  # nothing to recover: Tier 2's risk is Tier 1's
        r1 = tier1.eval()(list(data.x), list(data.inst_mask), present).risk.numpy()
    assert np.allclose(a.risk[complete], r1[complete], atol=1e-6)


# ---- risk intervals ----------------------------------------------------------------------------------
def test_risk_intervals_are_zero_width_when_complete_and_widest_when_the_gate_keeps_tier1(dims, tier1_cfg):
    from rmmfed.core.routing.risk_interval import BASIS_COMPLETE, BASIS_HULL, BASIS_TIER1, BASIS_TIER2

    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [True, True, False]] * 3)
    data = make_site(dims, 12, seed=2, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    cfg = RunConfig(model=tier1_cfg, tier2=Tier2Config(timesteps=50, parametrisation="v", **TINY))
    tier2 = build_tier2(dims, cfg.tier2, seed=0, tier1=tier1_cfg)
    kw = dict(seed=0, with_interval=True)
    routine = predict_two_tier(tier1, tier2, data, cfg, fitted=FittedTwoTier(1e9), **kw)  # nobody referred
    used = predict_two_tier(tier1, tier2, data, cfg, fitted=FittedTwoTier(0.0), **kw)
    kept = predict_two_tier(tier1, tier2, data, cfg, fitted=FittedTwoTier(0.0, gate_=_closed()), **kw)
    complete = present.all(dim=1).numpy()
    assert np.allclose(routine.risk_low[complete], routine.system_risk[complete], atol=1e-6)
    assert np.allclose(routine.risk_high[complete], routine.system_risk[complete], atol=1e-6)
    assert all(b == BASIS_COMPLETE for b, c in zip(routine.interval_basis, complete) if c)
    assert all(b == BASIS_TIER1 for b, c in zip(routine.interval_basis, complete) if not c)
    assert (routine.risk_high[~complete] > routine.risk_low[~complete]).all()  # MC dropout moves the risk
    ref = np.isfinite(used.tier2_risk)
    assert all(used.interval_basis[i] == BASIS_TIER2 and kept.interval_basis[i] == BASIS_HULL for i in np.flatnonzero(ref))
    width = lambda p: p.risk_high[ref] - p.risk_low[ref]  # noqa: E731
    assert (width(kept) >= width(used) - 1e-9).all() and (width(kept) >= width(routine) - 1e-9).all()
    assert (kept.risk_low[ref] <= kept.system_risk[ref] + 1e-6).all()  # Tier 1's answer lies inside its own hull
