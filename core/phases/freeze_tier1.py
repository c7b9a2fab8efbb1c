"""query.freeze_tier1: the run's final Tier 1, which the site keeps frozen for calibration, Tier 2 and the
evaluation; one per run. Sent by server/federation.py; kept by core/site/site_session.SiteSession.freeze."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, METRICS
from ..messages.replies import ArraysPayload, MetricsReply
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import KEPT_TIER1, SiteCall


class FreezeRequest(ArraysPayload):
    RECORD = ARRAYS
    weights = ArraysPayload.alias()


def answer(req: FreezeRequest, site: SiteCall) -> MetricsReply:
    site.pin("freeze-tier1")  # one final Tier 1 per run
    site.keep(KEPT_TIER1, req.weights)
    site.session.freeze(req.weights)
    return MetricsReply({M.FROZEN: 1.0})


FREEZE_TIER1 = Phase("freeze_tier1", "query.freeze_tier1", None, (ARRAYS,), (METRICS,), (M.FROZEN,),
                     request_type=FreezeRequest, reply_type=MetricsReply,
                     checks=(C.weights("tier1", what="frozen Tier 1 weights"),), answer=answer)
