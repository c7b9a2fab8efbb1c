"""query.followup: the histogram of the training patients' follow-up times, which places the time grids
(the Breslow grid, DP time cuts). Asked by server/phases.py; computed by
core/site/site_releases.SiteReleases.followup_release."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import CONFIG, COUNTS, METRICS
from ..messages.replies import HistogramReply
from ..privacy import request_checks as C
from .calibration import GridRequest
from .phase import Phase
from .site_call import SiteCall


def answer(req: GridRequest, site: SiteCall) -> HistogramReply:
    return site.release("followup", repr(req.grid), lambda noise: HistogramReply(
        site.session.followup_release(req.grid, site.floor(), noise).to_arrays(),
        {M.NOISED: noise.epsilon} if noise else {}))


FOLLOWUP = Phase("followup", "query.followup", "baseline-hazard", (CONFIG,), (COUNTS, METRICS), (M.NOISED,),
                 request_type=GridRequest, reply_type=HistogramReply, checks=(C.grid(),), answer=answer)
