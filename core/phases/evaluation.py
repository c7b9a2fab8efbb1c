"""evaluate: the run's last message. The site scores the fitted two-tier decision on its test split (C-index
pair counts, routes, survival metrics, conformal coverage, which-exam sums), every count floored, once per
run and at most max-evaluations times in the site's life (these figures are exact), then releases its data. Asked by server/federation.py; computed by
core/site/site_evaluation.SiteEvaluation.evaluate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..messages import metric_names as M
from ..messages.record_names import ARRAYS, CONFIG, METRICS, PLAN_RECORD, SURVIVAL_RECORD, Records
from ..messages.replies import MetricsReply, arrays_of
from ..privacy import request_checks as C
from ..routing.fitted_two_tier import FittedTwoTier
from ..survival.survival_metrics import SURVIVAL_METRICS
from .phase import Phase
from .site_call import SiteCall

EVALUATION_METRICS = (
    M.NUM_EXAMPLES, M.N_TEST, M.N_EVENTS_TEST, *(k for g in M.GROUPS for k in g.all), *M.ROUTED.values(),
    M.REFERRED, M.REFERRAL_RATE, M.TIER1_SECONDS, M.TIER2_SECONDS, M.TIER2_USED, M.HIGH_RISK_KEPT_TIER1, M.MASKED_N,
    M.MASKED_REFERRED, M.RECOVERY_N, M.RECOVERY_SSE_TIER1, M.RECOVERY_SSE_TIER2,
    *(M.uncertainty(t, k) for t in M.UNCERTAINTY_TARGETS for k in M.UNCERTAINTY_STATS),
    M.UNCERTAINTY_N_PATIENTS, M.UNCERTAINTY_N_ROWS, *SURVIVAL_METRICS, *M.EXTRA_EVALUATION)


@dataclass
class EvaluateRequest:
    """Tier 2's weights, the whole fitted decision (its baseline hazard gives the survival metrics, its q-hats
    and cut points the coverage and which-exam sums), and the routing-score ``thresholds`` of the
    risk-coverage curve (at most metric_names.KEPT_LEVELS)."""

    tier2_weights: dict[str, np.ndarray] | None
    fitted: FittedTwoTier
    thresholds: tuple[float, ...] = ()

    def to_records(self) -> Records:
        r = self.fitted.to_records()
        r[CONFIG] = {**r[CONFIG], "has-tier2": self.tier2_weights is not None}
        r[PLAN_RECORD] = {**r[PLAN_RECORD], "thresholds": np.asarray(self.thresholds, np.float64)}
        return {ARRAYS: dict(self.tier2_weights or {}), **r}

    @classmethod
    def from_records(cls, r: Records) -> "EvaluateRequest":
        c, plan = r[CONFIG], arrays_of(r, PLAN_RECORD)
        fitted = FittedTwoTier.from_records({CONFIG: c, PLAN_RECORD: plan, SURVIVAL_RECORD: arrays_of(r, SURVIVAL_RECORD)})
        return cls(arrays_of(r, ARRAYS) if bool(c["has-tier2"]) else None, fitted,
                   tuple(float(v) for v in np.asarray(plan.get("thresholds", []), np.float64).ravel()))


def answer(req: EvaluateRequest, site: SiteCall) -> MetricsReply:
    site.pin("evaluation")
    site.count_evaluation()  # exact figures: a lifetime count, across run ids, before anything is computed
    metrics = site.session.evaluate(req.tier2_weights, req.fitted, site.floor(), thresholds=req.thresholds)
    # a retried evaluation rebuilds the session from what the site kept (config, statistics, frozen Tier 1)
    site.end_session()
    return MetricsReply({M.NUM_EXAMPLES: metrics[M.N_TEST], **metrics})


EVALUATION = Phase("evaluation", "evaluate", "evaluation", (ARRAYS, CONFIG, SURVIVAL_RECORD, PLAN_RECORD), (METRICS,),
                   EVALUATION_METRICS, request_type=EvaluateRequest, reply_type=MetricsReply,
                   checks=(C.weights("tier2", "tier2_weights", "Tier 2 weights"),
                           C.split_floor("test", "test metrics"), C.baseline_hazard()), answer=answer)
