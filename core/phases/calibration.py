"""query.calibration: the histogram of the frozen Tier 1's routing score on the site's masked validation
cases, from which the coordinator sets theta (its quantile). Asked by server/federation.py (through
server/noised_quantile.py); computed by core/site/site_releases.SiteReleases.calibration_release."""

from __future__ import annotations

from dataclasses import dataclass

from ..aggregates.histogram import HistogramGrid
from ..messages import metric_names as M
from ..messages.record_names import CONFIG, COUNTS, METRICS, Records
from ..messages.replies import HistogramReply
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import SiteCall


@dataclass
class GridRequest:
    """A histogram on a grid the server fixes (Tier 1 calibration, the follow-up times)."""

    grid: HistogramGrid

    def to_records(self) -> Records:
        return {CONFIG: self.grid.to_config()}

    @classmethod
    def from_records(cls, r: Records) -> "GridRequest":
        return cls(HistogramGrid.from_config(dict(r[CONFIG])))


def answer(req: GridRequest, site: SiteCall) -> HistogramReply:
    def compute(noise):
        merged, n = site.session.calibration_release(req.grid, site.floor(), noise)
        return HistogramReply(merged.to_arrays(), {M.NOISED: noise.epsilon} if noise else {M.N_VALUES: float(n)})
    return site.release("calibration", repr(req.grid), compute)


CALIBRATION = Phase("calibration", "query.calibration", "calibration", (CONFIG,), (COUNTS, METRICS),
                    (M.N_VALUES, M.NOISED), request_type=GridRequest, reply_type=HistogramReply,
                    checks=(C.grid(),), answer=answer)
