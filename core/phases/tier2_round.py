"""train.tier2: one Tier 2 (conditional diffusion) training round with Tier 1 frozen, answered once per round
and run; with ``validate-sent`` its reply also carries the gate's sums of the weights it received
(core/phases/tier2_validation.py). Driven by Flower's strategy (server/strategies.py, server/phases.py); computed by
core/site/site_tier2.SiteTier2.train_tier2."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, METRICS
from ..messages.replies import RoundReply
from ..messages.round_request import RoundRequest
from ..privacy import request_checks as C
from ..tier2.tier2_train import LOSS_KEYS
from .phase import Phase
from .site_call import KEPT_DP, SiteCall
from .tier2_validation import SENT_METRICS, score_sent

TIER2_TRAIN_METRICS = (M.NUM_EXAMPLES, *(f"{M.TIER2_PREFIX}{k}" for k in (*LOSS_KEYS, "steps")),
                       M.DP_EPSILON, M.DP_DELTA)  # a DP round sends only num-examples and the accountant's figures


def answer(req: RoundRequest, site: SiteCall) -> RoundReply:
    s = site.session
    site.answer_once("tier2", req.run_round)
    scored = score_sent(req, site)  # before training: the weights as received
    dp = site.kept(KEPT_DP)
    if dp is not None:
        s.dp_state = dp
    weights, metrics = s.train_tier2(req.weights, req.run_round)
    if s.dp_state:
        site.keep(KEPT_DP, s.dp_state)
    return RoundReply(weights, {**metrics, **scored})


TIER2_ROUND = Phase("tier2", "train.tier2", "tier2", (ARRAYS, CONFIG), (ARRAYS, METRICS),
                    (*TIER2_TRAIN_METRICS, *SENT_METRICS),
                    request_type=RoundRequest, reply_type=RoundReply,
                    checks=(C.round_number(training=True), C.weights("tier2", what="Tier 2 weights")), answer=answer)
