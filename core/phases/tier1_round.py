"""train: one Tier 1 training round (DP-SGD under the run's accountant where DP is on), answered once per
round and run; with ``validate-sent`` its reply also scores the weights it received (core/phases/tier1_validation.py).
Driven by Flower's strategy (server/strategies.py, server/phases.py); computed by
core/site/site_session.SiteSession.train."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, METRICS
from ..messages.replies import RoundReply
from ..messages.round_request import RoundRequest
from ..privacy import request_checks as C
from .phase import Phase
from .site_call import KEPT_DP, SiteCall
from .tier1_validation import SENT_METRICS, score_sent

TRAIN_METRICS = (M.NUM_EXAMPLES, M.TRAIN_LOSS, M.TRAIN_TASK, M.TRAIN_REC, M.TRAIN_ANAT, M.TRAIN_NLL,
                 M.DP_EPSILON_ROUND, M.DP_EPSILON, M.DP_DELTA, M.DP_NOISE_MULTIPLIER)


def answer(req: RoundRequest, site: SiteCall) -> RoundReply:
    s = site.session
    site.answer_once("tier1", req.run_round)
    scored = score_sent(req, site)  # before training: the weights as received
    dp = site.kept(KEPT_DP)  # epsilon accumulates across rounds and ClientApp processes
    if dp is not None:
        s.dp_state = dp
    weights, result = s.train(req.weights, req.run_round, req.proximal_mu)
    if s.dp_state:
        site.keep(KEPT_DP, s.dp_state)
    return RoundReply(weights, {M.NUM_EXAMPLES: result.n_examples, **result.metrics(), **scored})


TIER1_ROUND = Phase("tier1", "train", "tier1", (ARRAYS, CONFIG), (ARRAYS, METRICS), (*TRAIN_METRICS, *SENT_METRICS),
                    request_type=RoundRequest, reply_type=RoundReply,
                    checks=(C.round_number(training=True), C.weights("tier1", what="Tier 1 weights")), answer=answer)
