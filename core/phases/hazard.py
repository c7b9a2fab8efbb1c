"""query.hazard: the Breslow sums (events and risk-set sums of the frozen Tier 1's risk, less the coordinator's
centre) on the coordinator's time grid, intervals merged to the floor or noised. Asked by server/phases.py;
computed by core/site/site_releases.SiteReleases.hazard_release."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..messages.record_names import HAZARD_RECORD, Records
from ..messages.replies import ArraysPayload
from ..privacy import request_checks as C
from ..privacy.request_policy import digest
from .phase import Phase
from .site_call import SiteCall


@dataclass
class HazardRequest:
    grid: np.ndarray  # time points of the Breslow sums
    center: float = 0.0  # subtracted from every risk before exp(): the sums are those of exp(risk - center)

    def to_records(self) -> Records:
        return {HAZARD_RECORD: {"grid": np.asarray(self.grid, dtype=np.float64),
                                "center": np.asarray([self.center], dtype=np.float64)}}

    @classmethod
    def from_records(cls, r: Records) -> "HazardRequest":
        rec = r[HAZARD_RECORD]
        center = np.asarray(rec["center"], dtype=np.float64).reshape(-1) if "center" in rec else np.zeros(1)
        return cls(np.asarray(rec["grid"], dtype=np.float64), float(center[0]) if center.size == 1 else float("nan"))


class HazardReply(ArraysPayload):
    """core/survival/merged_hazard.MergedHazard.to_arrays"""

    RECORD = HAZARD_RECORD
    sums = ArraysPayload.alias()


def answer(req: HazardRequest, site: SiteCall) -> HazardReply:
    bound = site.policy.policy.dp.hazard_risk_bound
    return site.release("hazard", digest(req.grid, np.asarray([req.center])),
                        lambda noise: HazardReply(site.session.hazard_release(
                            req.grid, site.floor(), noise, center=req.center, bound=bound).to_arrays()))


HAZARD = Phase("baseline_hazard", "query.hazard", "baseline-hazard", (HAZARD_RECORD,), (HAZARD_RECORD,),
               request_type=HazardRequest, reply_type=HazardReply, checks=(C.time_grid(), C.risk_center()),
               answer=answer)
