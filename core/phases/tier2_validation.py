"""evaluate.tier2_validation: a round's Tier 2 scored on the masked complete validation cases (the gate's
typed sums, core/tier2/tier2_gate.py), one set of weights per round: the phase's last round here, every earlier
round inside the next training round's reply (:func:`score_sent`). Driven by Flower's strategy
(server/strategies.py); computed by core/site/site_tier2.SiteTier2.tier2_validation."""

from __future__ import annotations

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, METRICS
from ..messages.replies import MetricsReply
from ..messages.round_request import RoundRequest
from ..privacy import request_checks as C
from ..privacy.site_policy import PolicyViolation
from ..tier2.tier2_gate import VALIDATION_KEYS
from .phase import Phase
from .site_call import SiteCall
from .tier1_validation import VALIDATION_POLICY_PHASE

TIER2_VALIDATION_METRICS = (M.NUM_EXAMPLES, M.TIER2_VAL_CASES, *VALIDATION_KEYS)
SENT_METRICS = TIER2_VALIDATION_METRICS[1:]  # what a Tier 2 training round adds for the weights it received


def score_sent(req: RoundRequest, site: SiteCall) -> dict[str, float]:
    """In a Tier 2 training round with ``validate-sent``: the gate's sums of the weights it received (the
    previous round's aggregate), pinned as that round's validation; nothing below the floor or without the
    policy's opt-in ``validation`` phase."""
    if not req.validate_sent or req.run_round < 2:  # round 1 received no aggregate: there is no round 0
        return {}
    try:
        site.policy.check_phase(VALIDATION_POLICY_PHASE)  # opt-in, as the evaluate message
        site.pin(f"validation-tier2-{req.run_round - 1}")
    except PolicyViolation:
        return {}
    k = site.floor()
    metrics = site.session.tier2_validation(req.weights, k)
    return {key: metrics[key] for key in SENT_METRICS} if metrics[M.TIER2_VAL_CASES] >= k else {}


def answer(req: RoundRequest, site: SiteCall) -> MetricsReply:
    site.pin(f"validation-tier2-{req.run_round}")
    k = site.floor()
    metrics = site.session.tier2_validation(req.weights, k)
    # the cases are known only once the masks are drawn: the floor is checked on them here
    C.require_patients(int(metrics[M.TIER2_VAL_CASES]), k, "Tier 2 validation sums (masked complete val cases)")
    return MetricsReply({M.NUM_EXAMPLES: metrics[M.TIER2_VAL_CASES], **metrics})


TIER2_VALIDATION = Phase("tier2_validation", "evaluate.tier2_validation", VALIDATION_POLICY_PHASE,
                         (ARRAYS, CONFIG), (METRICS,),
                         TIER2_VALIDATION_METRICS, request_type=RoundRequest, reply_type=MetricsReply,
                         checks=(C.round_number(), C.weights("tier2", what="Tier 2 weights")), answer=answer)
