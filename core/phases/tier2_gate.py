"""query.tier2_gate: the Tier 2 gate's one release, for sites that do not answer per-round validation (the
default policy: core/privacy/site_policy.py). After the Tier 2 rounds the site scores the run's Tier 2 against
its frozen Tier 1 on its masked complete validation cases and sends clipped sums, noised under its release
epsilon and charged once to its lifetime budget (exact, floored, under ``dp.release-epsilon = 0``); the same
request again gets the same reply. Asked by server/tier2_gate_phase.py; computed by
core/site/site_tier2.SiteTier2.gate_release; decided by core/tier2/tier2_gate.decide_noised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, METRICS, Records
from ..messages.replies import MetricsReply, arrays_of
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import SiteCall


@dataclass
class Tier2GateRequest:
    weights: dict[str, np.ndarray]  # the run's Tier 2 (its kept round)

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights)}

    @classmethod
    def from_records(cls, r: Records) -> "Tier2GateRequest":
        return cls(arrays_of(r, ARRAYS))


def answer(req: Tier2GateRequest, site: SiteCall) -> MetricsReply:
    def compute(noise):
        return MetricsReply(site.session.gate_release(req.weights, site.floor(), noise))
    return site.release("tier2-gate", "", compute)


TIER2_GATE = Phase("tier2_gate", "query.tier2_gate", "tier2", (ARRAYS,), (METRICS,), (*M.GATE_SUMS, M.NOISED),
                   request_type=Tier2GateRequest, reply_type=MetricsReply,
                   checks=(C.weights("tier2", what="Tier 2 gate weights"),), answer=answer)
