"""query.tier2_calibration: the histogram of the routing score with Tier 2's weights on the site's masked
validation cases, with the risk sums the gate reads. Asked by server/federation.py (through
server/noised_quantile.py); computed by core/site/site_releases.SiteReleases.tier2_release."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aggregates.histogram import HistogramGrid
from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, COUNTS, METRICS, Records
from ..messages.replies import HistogramReply, arrays_of
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import SiteCall


@dataclass
class Tier2CalibrationRequest:
    weights: dict[str, np.ndarray]  # Tier 2
    grid: HistogramGrid

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), CONFIG: self.grid.to_config()}

    @classmethod
    def from_records(cls, r: Records) -> "Tier2CalibrationRequest":
        return cls(arrays_of(r, ARRAYS), HistogramGrid.from_config(dict(r[CONFIG])))


def answer(req: Tier2CalibrationRequest, site: SiteCall) -> HistogramReply:
    def compute(noise):
        merged, sums = site.session.tier2_release(req.weights, req.grid, site.floor(), noise)
        return HistogramReply(merged.to_arrays(), {**sums, M.NOISED: noise.epsilon} if noise else sums)
    return site.release("tier2-calibration", repr(req.grid), compute)


TIER2_CALIBRATION = Phase("tier2_calibration", "query.tier2_calibration", "tier2", (ARRAYS, CONFIG),
                          (COUNTS, METRICS), (M.N_VALUES, *M.RISK_SUMS, M.NOISED),
                          request_type=Tier2CalibrationRequest, reply_type=HistogramReply,
                          checks=(C.grid(), C.weights("tier2", what="tier2-calibration weights")), answer=answer)
