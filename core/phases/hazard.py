"""query.hazard: the Breslow sums (events and risk-set sums of the frozen Tier 1's risk) on the coordinator's
time grid, intervals merged to the floor. Asked by server/phases.py; computed by
core/site/site_releases.SiteReleases.hazard_release."""

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

    def to_records(self) -> Records:
        return {HAZARD_RECORD: {"grid": np.asarray(self.grid, dtype=np.float64)}}

    @classmethod
    def from_records(cls, r: Records) -> "HazardRequest":
        return cls(np.asarray(r[HAZARD_RECORD]["grid"], dtype=np.float64))


class HazardReply(ArraysPayload):
    """core/survival/merged_hazard.MergedHazard.to_arrays"""

    RECORD = HAZARD_RECORD
    sums = ArraysPayload.alias()


def answer(req: HazardRequest, site: SiteCall) -> HazardReply:
    return site.release("hazard", digest(req.grid),
                        lambda noise: HazardReply(site.session.hazard_release(req.grid, site.floor(), noise).to_arrays()))


HAZARD = Phase("baseline_hazard", "query.hazard", "baseline-hazard", (HAZARD_RECORD,), (HAZARD_RECORD,),
               request_type=HazardRequest, reply_type=HazardReply, checks=(C.time_grid(),), answer=answer)
