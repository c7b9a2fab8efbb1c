"""The fitted two-tier decision is ONE object (core/routing/fitted_two_tier.py), shared by the federation result,
the requests to the sites, predict_two_tier, the bundle and rmm-predict; the Tier 2 gate is decided once,
from typed sums (core/tier2/tier2_gate.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rmmfed.core.messages import protocol as P
from rmmfed.core.survival.baseline_hazard import BaselineHazard, time_grid
from rmmfed.core.errors import FittedTwoTierError, RmmError
from rmmfed.core.routing.fitted_two_tier import SITE_GATE_REASON, FittedTwoTier
from rmmfed.core.survival.risk_groups import RISK_GRID
from rmmfed.core.routing.risk_scale import RiskScale
from rmmfed.core.tier2.tier2_gate import VALIDATION_KEYS, Tier2Gate, ValidationSums, decide, gate_of_round
from rmmfed.server.checkpoint import Checkpoint
from rmmfed.server.strategies import sums_from_plain, sums_to_plain

ROOT = Path(__file__).resolve().parents[1]


def _fitted(**kw) -> FittedTwoTier:
    gate = Tier2Gate(True, "Tier 2 beat Tier 1 on federated validation: ...", 120.0, 0.9, 0.7, 0.66, 0.68, 3,
                     float("nan"), float("nan"))
    base = dict(theta_=0.042, abstain_bound_=3.5, risk_scale_=RiskScale(0.1, 2.0, -0.3, 0.5), gate_=gate,
                cutpoints_=(-0.4, 0.6), conformal_q_={"tier1": 1.7, "tier2": math.inf}, conformal_alpha_=0.1,
                baseline_hazard_=BaselineHazard(time_grid(30.0, 8), np.linspace(0.01, 1.2, 8)), routing_score_="risk-sd")
    return FittedTwoTier(**{**base, **kw})


def _same(a: FittedTwoTier, b: FittedTwoTier) -> bool:
    """Equal, NaN equal to NaN (the gate's unknown widths)."""
    def text(f):
        d = f.to_bundle()
        d["baseline_hazard"] = None if f.baseline_hazard_ is None else [f.baseline_hazard_.times.tolist(),
                                                                        f.baseline_hazard_.cumhaz.tolist()]
        return json.dumps({**d, "routing_score": f.routing_score_,
                           "gate": None if f.gate_ is None else f.gate_.to_dict()}, sort_keys=True)
    return text(a) == text(b)


def test_the_fitted_two_tier_round_trips_through_the_bundle_and_the_protocol_record():
    f = _fitted()
    raw = torch.load(_saved(f.to_bundle()), weights_only=True)  # as a bundle file holds it
    assert _same(FittedTwoTier.from_bundle({**raw, "config": {"routing-score": "risk-sd"}}), f)
    told = FittedTwoTier.from_records(f.to_records())
    assert _same(told, f.for_sites()) and told.gate_.reason == SITE_GATE_REASON
    assert told.theta_ == f.theta_ and told.conformal_q_ == f.conformal_q_ and told.baseline_hazard_ == f.baseline_hazard_
    # the evaluation request carries the whole object, the risk-group request its scalars
    req = P.EvaluateRequest.from_records(P.EvaluateRequest(None, f, (0.1, math.inf)).to_records())
    assert _same(req.fitted, f.for_sites()) and req.thresholds == (0.1, math.inf)
    rg = P.RiskGroupsRequest.from_records(P.RiskGroupsRequest(None, RISK_GRID, f).to_records())
    assert (rg.fitted.theta_, rg.fitted.abstain_bound_, rg.fitted.risk_scale_, rg.fitted.tier2_used) == \
        (f.theta_, f.abstain_bound_, f.risk_scale_, True)


def _saved(obj) -> Path:
    import tempfile
    p = Path(tempfile.mkdtemp()) / "bundle-keys.pt"
    torch.save(obj, p)
    return p


def test_an_older_bundles_keys_read_as_the_fitted_two_tier():
    """Before the gate, conformal q-hats and cut points: absent keys; an infinite q-hat stored as null."""
    old = {"theta": 0.05, "abstain_bound": 0.7, "risk_scale": {"tier1_mean": 0.0, "tier1_std": 1.0,
                                                                "tier2_mean": 0.0, "tier2_std": 1.0},
           "conformal": {"alpha": 0.1, "q_hat": {"tier1": 2.0, "tier2": None}},
           "tier2_gate": {"open": False, "reason": "closed", "width_tier1": None}, "config": {}}
    f = FittedTwoTier.from_bundle(old)
    assert f.conformal_q_ == {"tier1": 2.0} and not f.tier2_used and math.isnan(f.gate_.width_tier1)
    assert f.cutpoints_ is None and f.baseline_hazard_ is None and f.routing_score_ == "risk-sd"
    assert FittedTwoTier.from_bundle({"theta": 0.05}).tier2_used  # no gate recorded: open, as it behaved


def test_a_site_is_told_the_gates_decision_not_its_figures():
    closed = _fitted(gate_=Tier2Gate(False, "Tier 2 did not beat Tier 1 (recovery MSE 0.9 vs 0.8)", 10.0, 0.8, 0.9))
    config = closed.to_records()[P.CONFIG]
    assert config[P.M.TIER2_USED] is False and not any("0.9" in str(v) for v in config.values())
    assert not FittedTwoTier.from_records(closed.to_records()).tier2_used
    assert FittedTwoTier(0.1).tier2_used and FittedTwoTier(0.1).for_sites().tier2_used  # no Tier 2 phase: open


@pytest.mark.parametrize("field, value, fix", [
    ("theta_", float("nan"), "calibrate theta"), ("abstain_bound_", float("nan"), "pass inf"),
    ("cutpoints_", (0.5, -0.5), "tertile cut points"), ("conformal_q_", {"tier3": 1.0}, "key the q-hats"),
    ("conformal_q_", {"tier1": -1.0}, ">= 0"), ("routing_score_", "variance", "risk-sd, sigma2"),
    ("risk_scale_", RiskScale(0.0, 0.0), "RiskScale.from_sums"), ("conformal_alpha_", 1.5, "conformal-alpha"),
    ("baseline_hazard_", (np.ones(3), np.ones(3)), "BaselineHazard"), ("gate_", {"open": True}, "tier2_gate.decide")])
def test_an_unusable_fitted_value_is_refused_naming_the_field_and_the_fix(field, value, fix):
    with pytest.raises(FittedTwoTierError, match=rf"'{field}'.*Fix: .*{re.escape(fix)}") as err:
        _fitted(**{field: value})
    assert isinstance(err.value, RmmError) and isinstance(err.value, ValueError)


def test_the_fitted_two_tier_is_frozen_and_changed_by_copy():
    f = _fitted()
    with pytest.raises(AttributeError):
        f.theta_ = 1.0  # type: ignore[misc]
    g = f.replace(cutpoints_=[-1.0, 1.0])
    assert g.cutpoints_ == (-1.0, 1.0) and f.cutpoints_ == (-0.4, 0.6)
    assert _fitted(conformal_q_={"tier1": 1.0, "tier2": float("nan")}).conformal_q_ == {"tier1": 1.0}  # NaN = none


# ---- the gate, decided once -----------------------------------------------------------------------
def _site(n, sse1, sse2, c1, c2) -> dict[str, float]:
    return dict(zip(VALIDATION_KEYS, [n, sse1, sse2, *c1, *c2]))


def test_the_gate_is_decided_once_from_typed_sums():
    sums = ValidationSums.of_sites([_site(60, 40.0, 35.0, (30, 0, 50), (31, 0, 50)),
                                    _site(40, 30.0, 30.0, (30, 2, 50), (30, 2, 50))])
    assert (sums.n, sums.sse_tier1, sums.sse_tier2, sums.sites) == (100.0, 70.0, 65.0, 2)
    assert sums.pairs_tier2.comparable == 100.0 and sums.mse_tier2 == 0.65
    gate = gate_of_round({1: ValidationSums(), 2: sums}, kept_round=2)
    assert gate == decide(sums) and gate.open and "2 site(s)" in gate.reason
    assert not gate_of_round({1: sums}, kept_round=2).open  # no validation of the kept round arrived
    assert "round 2" in gate_of_round({1: sums}, kept_round=2).reason
    assert gate_of_round({}, kept_round=2, enabled=False).open  # tier2-gate = false
    # the strategy and the phases hold typed sums; only core/tier2/tier2_gate.py decides, nothing sniffs a reply's keys
    server = {p.name: p.read_text() for p in (ROOT / "server").glob("*.py")}
    assert not [name for name, text in server.items() if re.search(r"\bdecide\(", text)]
    sniff = r"""["']val-sums["'] in|\[["']val-sums["']\]|get\(["']val-sums|TIER2_VAL_N in"""
    assert not [name for name, text in server.items() if re.search(sniff, text)]


def test_the_typed_sums_survive_a_checkpoint(tmp_path):
    sums = {2: ValidationSums.of_sites([_site(60, 40.0, 35.0, (30, 0, 50), (31, 0, 50))] * 3)}
    ckpt = Checkpoint(tmp_path / "ckpt.pt")
    ckpt.save({"config": {}, "validation_sums": sums_to_plain(sums)})
    assert sums_from_plain(ckpt.load({})["validation_sums"]) == sums
