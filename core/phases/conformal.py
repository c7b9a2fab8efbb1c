"""query.conformal: each site's histogram of one tier's conformal scores |risk seen - mean draw| / risk SD
(core/routing/conformal.py) on its masked complete validation cases. The coordinator's side:
server/conformal_phase.py; the site's: core/site/site_releases.SiteReleases.conformal_release."""

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
class ConformalRequest:
    tier: str  # "tier1" or "tier2"
    grid: HistogramGrid
    tier2_weights: dict[str, np.ndarray] | None = None  # with tier = "tier2"

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.tier2_weights or {}), CONFIG: {**self.grid.to_config(), "tier": self.tier}}

    @classmethod
    def from_records(cls, r: Records) -> "ConformalRequest":
        c = r[CONFIG]
        return cls(str(c.get("tier", "")), HistogramGrid.from_config(dict(c)), arrays_of(r, ARRAYS) or None)


def answer(req: ConformalRequest, site: SiteCall) -> HistogramReply:
    def compute(noise):
        merged, sums = site.session.conformal_release(req.tier, req.tier2_weights, req.grid, site.floor(), noise)
        return HistogramReply(merged.to_arrays(), {**sums, M.NOISED: noise.epsilon} if noise else sums)
    kind = "conformal-tier2" if req.tier == "tier2" else "conformal-tier1"
    return site.release(kind, repr(req.grid), compute)


CONFORMAL = Phase("conformal", "query.conformal", "calibration", (ARRAYS, CONFIG), (COUNTS, METRICS),
                  (M.N_VALUES, M.NOISED, M.CONFORMAL_SD_SUM, M.CONFORMAL_SD_N),
                  request_type=ConformalRequest, reply_type=HistogramReply,
                  checks=(C.grid(), C.weights("tier2", "tier2_weights", "conformal Tier 2 weights")), answer=answer)
