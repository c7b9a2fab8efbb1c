"""The phase as the unit: every phase's definition (core/phases/) decodes, checks and answers, with checks
from one registry (core/privacy/request_checks.py), and the coordinator can send a phase only its own
request type."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.messages import protocol as P
from rmmfed.core.privacy.request_checks import CHECKS
from rmmfed.core.privacy.request_policy import RequestPolicy
from rmmfed.core.privacy.site_policy import DEFAULT_POLICY, PolicyViolation


def test_every_check_a_phase_runs_comes_from_the_registry():
    names = {check.check_name for phase in P.PHASES for check in phase.checks}
    assert names <= set(CHECKS)
    # every phase that carries weights, a grid or a round number checks them before computing
    for phase in P.PHASES:
        own = {check.check_name for check in phase.checks}
        if P.ARRAYS in phase.request:
            assert "weights" in own, phase.name
        if phase.request_type in (P.GridRequest, P.ConformalRequest, P.RiskGroupsRequest, P.Tier2CalibrationRequest):
            assert "grid" in own, phase.name
        if phase.request_type is P.RoundRequest:
            assert "round" in own, phase.name


def test_the_coordinator_can_send_a_phase_only_its_own_request_type():
    grid = HistogramGrid(0.01, 10.0, 20)
    assert P.CALIBRATION.encode_request(P.GridRequest(grid))[P.CONFIG]["hist-bins"] == 20
    with pytest.raises(TypeError, match="conformal"):
        P.CONFORMAL.encode_request(P.GridRequest(grid))
    with pytest.raises(TypeError, match="needs a"):
        P.EVALUATION.encode_request(None)
    assert P.SCHEMA.encode_request(None) == {}


class _Site:
    """A SiteCall whose data must not be touched: any use of the session fails the test."""

    def __init__(self, policy: RequestPolicy) -> None:
        self.policy, self.records = policy, {}
        self.answered = False

    @property
    def session(self):
        raise AssertionError("the session was loaded for a request the policy refuses")

    def floor(self) -> int:
        return self.policy.floor()


def test_a_phase_the_policy_refuses_is_refused_before_the_site_loads_anything():
    policy = DEFAULT_POLICY.model_copy(update={"phases": tuple(p for p in DEFAULT_POLICY.phases if p != "calibration")})
    records = P.GridRequest(HistogramGrid(0.01, 10.0, 20)).to_records()
    with pytest.raises(PolicyViolation) as err:
        P.CALIBRATION.serve(records, _Site(RequestPolicy(policy)))
    assert err.value.key == "phases"


def test_a_request_check_refuses_before_the_answer_computes():
    """A grid finer than the policy allows is refused by the phase's registered check, not by the answer."""
    too_fine = HistogramGrid(1.0, 1.0001, 20)
    with pytest.raises(PolicyViolation) as err:
        P.CALIBRATION.serve(P.GridRequest(too_fine).to_records(), _Site(RequestPolicy(DEFAULT_POLICY)))
    assert err.value.key == "min-bin-ratio"


def test_request_payloads_survive_their_records():
    """Each request decodes to what was encoded (the two sides use the same definition)."""
    w = {"a": np.arange(3.0)}
    req = P.CoxRequest(np.array([0.5, -1.0]), "val")
    back = P.COX.decode_request(P.COX.encode_request(req))
    assert back.split == "val" and np.array_equal(back.coef, req.coef)
    rnd = P.TIER2_ROUND.decode_request(P.TIER2_ROUND.encode_request(P.RoundRequest(w, 3, 2, 0.1)))
    assert rnd.run_round == 5 and np.array_equal(rnd.weights["a"], w["a"])
