"""query.risk_groups: the training patients' two-tier system risk on a grid, whose tertiles become the risk
groups' cut points. Asked by server/federation.py; computed by
core/site/site_releases.SiteReleases.risk_group_release."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aggregates.histogram import HistogramGrid
from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, COUNTS, METRICS, Records
from ..messages.replies import HistogramReply, arrays_of
from ..privacy import request_checks as C
from ..routing.fitted_two_tier import FittedTwoTier
from .phase import Phase
from .site_call import SiteCall


@dataclass
class RiskGroupsRequest:
    tier2_weights: dict[str, np.ndarray] | None
    grid: HistogramGrid
    fitted: FittedTwoTier  # its scalars travel (FittedTwoTier.to_config): the cut points are what this asks for

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.tier2_weights or {}), CONFIG: {**self.grid.to_config(), **self.fitted.to_config()}}

    @classmethod
    def from_records(cls, r: Records) -> "RiskGroupsRequest":
        c = r[CONFIG]
        return cls(arrays_of(r, ARRAYS) or None, HistogramGrid.from_config(dict(c)), FittedTwoTier.from_records({CONFIG: c}))


def answer(req: RiskGroupsRequest, site: SiteCall) -> HistogramReply:
    def compute(noise):
        merged = site.session.risk_group_release(req.tier2_weights, req.fitted, site.floor(), req.grid, noise=noise)
        return HistogramReply(merged.to_arrays(), {M.NOISED: noise.epsilon} if noise else {})
    return site.release("risk-groups", repr(req.grid), compute)


RISK_GROUPS = Phase("risk_groups", "query.risk_groups", "risk-groups", (ARRAYS, CONFIG), (COUNTS, METRICS), (M.NOISED,),
                    request_type=RiskGroupsRequest, reply_type=HistogramReply,
                    checks=(C.grid(), C.weights("tier2", "tier2_weights", "risk-groups weights")), answer=answer)
