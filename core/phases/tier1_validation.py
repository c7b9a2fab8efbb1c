"""evaluate.tier1_validation: a round's Tier 1 scored on the site's validation split (pair counts and the
partial likelihood), one set of weights per round: the phase's last round here, every earlier round inside
the next training round's reply (:func:`score_sent`). Driven by Flower's strategy (server/strategies.py);
computed by core/site/site_evaluation.SiteEvaluation.validate."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, METRICS
from ..messages.replies import MetricsReply
from ..messages.round_request import RoundRequest
from ..privacy import request_checks as C
from ..privacy.site_policy import PolicyViolation
from .phase import Phase
from .site_call import SiteCall

VALIDATION_POLICY_PHASE = "validation"  # the site policy's opt-in key (core/privacy/site_policy.py)
VALIDATION_METRICS = (M.NUM_EXAMPLES, M.N_VAL, *M.PAIRS.counts, M.VAL_PLL, M.VAL_EVENTS)
SENT_METRICS = VALIDATION_METRICS[1:]  # what a training round adds when it scores the weights it received


def score_sent(req: RoundRequest, site: SiteCall) -> dict[str, float]:
    """In a training round with ``validate-sent``: the validation metrics of the weights it received (the
    previous round's aggregate), pinned as that round's validation; nothing when the policy (no opt-in
    ``validation`` phase), the floor or the pin would refuse a validation message (the training round is
    answered all the same)."""
    if not req.validate_sent or req.run_round < 2:  # round 1 received no aggregate: there is no round 0
        return {}
    try:
        site.policy.check_phase(VALIDATION_POLICY_PHASE)  # opt-in: exact answers to weights the coordinator chose
        C.split_floor("val", "validation pair counts")(req, site)
        site.pin(f"validation-{req.run_round - 1}")
    except PolicyViolation:
        return {}
    metrics = site.session.validate(req.weights)
    return {k: metrics[k] for k in SENT_METRICS}


def answer(req: RoundRequest, site: SiteCall) -> MetricsReply:
    site.pin(f"validation-{req.run_round}")
    metrics = site.session.validate(req.weights)
    return MetricsReply({M.NUM_EXAMPLES: metrics[M.N_VAL], **metrics})


TIER1_VALIDATION = Phase("tier1_validation", "evaluate.tier1_validation", VALIDATION_POLICY_PHASE,
                         (ARRAYS, CONFIG), (METRICS,),
                         VALIDATION_METRICS, request_type=RoundRequest, reply_type=MetricsReply,
                         checks=(C.round_number(), C.weights("tier1", what="Tier 1 weights"),
                                 C.split_floor("val", "validation pair counts")), answer=answer)
