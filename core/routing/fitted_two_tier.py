"""The fitted two-tier decision, ONE object: what a run learned about routing and answering patients.

In the style of a lifelines fitter, every fitted attribute ends in an underscore:

=====================  =================================================================================
attribute              what it is (where the run fits it)
=====================  =================================================================================
``theta_``             routing threshold on ``routing_score_`` (calibration: server/federation.calibration)
``abstain_bound_``     bound on Tier 2's uncertainty above which a referred patient abstains (inf: never)
``risk_scale_``        core/routing/risk_scale.RiskScale: each head's training-risk mean and SD (the system scale)
``gate_``              core/tier2/tier2_gate.Tier2Gate, the decision with its reason and figures; None: no Tier 2
                       phase, or a bundle from before the gate (Tier 2 answers the referred, as it did)
``cutpoints_``         the risk groups' two tertile cut points of the training system risk (None: unknown)
``conformal_q_``       {tier: conformal q-hat} (core/routing/conformal.py); a tier without one is absent
``conformal_alpha_``   the miscoverage the q-hats were calibrated for (NaN: no conformal phase)
``baseline_hazard_``   core/survival/baseline_hazard.BaselineHazard of Tier 1's risk, or None
``routing_score_``     the score theta is on (core/routing/routing_score.SCORES); equals the run's routing-score
=====================  =================================================================================

The federation result (server/federation.py), the requests that carry it to the sites (risk groups and
evaluation, core/phases/risk_groups.py, core/phases/evaluation.py), :func:`~rmmfed.core.routing.two_tier.predict_two_tier`, the model bundle
(core/outputs/bundle.py) and rmm-predict (client/predict.py) all hold this one object. It converts to and from
the protocol's records (:meth:`to_records` / :meth:`from_records`: what a site is told, :meth:`for_sites`)
and the bundle's keys (:meth:`to_bundle` / :meth:`from_bundle`), and refuses a value it cannot route with
(:class:`~rmmfed.core.errors.FittedTwoTierError`, naming the field and the fix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from ..messages import metric_names as M
from ..survival.baseline_hazard import BaselineHazard
from ..errors import FittedTwoTierError
from ..outputs.model_card import plain
from ..messages.record_names import CONFIG, PLAN_RECORD, SURVIVAL_RECORD, Records
from .risk_scale import RiskScale
from .routing_score import SCORES
from ..tier2.tier2_gate import Tier2Gate

TIERS = ("tier1", "tier2")
SITE_GATE_REASON = "the coordinator's gate (its figures stay with the coordinator)"
_SCALE = ("scale-tier1-mean", "scale-tier1-std", "scale-tier2-mean", "scale-tier2-std")


def _fail(name: str, problem: str, fix: str) -> FittedTwoTierError:
    return FittedTwoTierError(f"fitted two-tier field '{name}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class FittedTwoTier:
    theta_: float
    abstain_bound_: float = math.inf
    risk_scale_: RiskScale = field(default_factory=RiskScale)
    gate_: Tier2Gate | None = None
    cutpoints_: tuple[float, float] | None = None
    conformal_q_: Mapping[str, float] = field(default_factory=dict)
    conformal_alpha_: float = math.nan
    baseline_hazard_: BaselineHazard | None = None
    routing_score_: str = "risk-sd"

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            v = getattr(self, name)
            try:
                return float(v)
            except (TypeError, ValueError):
                raise _fail(name, f"{v!r} is not a number", "pass the fitted value as a float") from None
        theta, bound, alpha = number("theta_"), number("abstain_bound_"), number("conformal_alpha_")
        if math.isnan(theta):
            raise _fail("theta_", "NaN routes no one and says nothing", "calibrate theta on the sites' validation "
                        "histograms (a finite quantile), or pass inf to refer no patient")
        if math.isnan(bound):
            raise _fail("abstain_bound_", "NaN", "calibrate it on Tier 2's uncertainty, or pass inf (never abstain)")
        if not (math.isnan(alpha) or 0.0 < alpha < 1.0):
            raise _fail("conformal_alpha_", f"{alpha} is not in (0, 1)", "pass the run's conformal-alpha, or NaN "
                        "when no conformal phase ran")
        s = self.risk_scale_
        if not isinstance(s, RiskScale) or not all(math.isfinite(v) for v in vars(s).values()) or \
                not (s.tier1_std > 0 and s.tier2_std > 0):
            raise _fail("risk_scale_", f"{s!r} is not a RiskScale of finite means and positive SDs",
                        "build it with RiskScale.from_sums from the sites' risk sums, or use RiskScale()")
        if self.gate_ is not None and not isinstance(self.gate_, Tier2Gate):
            raise _fail("gate_", f"{self.gate_!r} is not a Tier2Gate", "decide it with core/tier2/tier2_gate.decide, "
                        "or pass None (no Tier 2 phase)")
        cuts = None
        if self.cutpoints_ is not None:
            cuts = tuple(float(c) for c in self.cutpoints_)
            if len(cuts) != 2 or not all(math.isfinite(c) for c in cuts) or not cuts[0] <= cuts[1]:
                raise _fail("cutpoints_", f"{list(cuts)} are not two increasing finite numbers",
                            "pass the risk groups' tertile cut points (core/survival/risk_groups.py), or None")
        q = {}
        for tier, v in dict(self.conformal_q_).items():
            v = float(v)
            if tier not in TIERS or v < 0:
                raise _fail("conformal_q_", f"{tier!r}: {v} is not a tier's non-negative q-hat",
                            f"key the q-hats by {' or '.join(TIERS)}, each >= 0 (inf: no finite q-hat covers)")
            if not math.isnan(v):  # NaN: the tier was not calibrated, the same as absent
                q[tier] = v
        if self.baseline_hazard_ is not None and not isinstance(self.baseline_hazard_, BaselineHazard):
            raise _fail("baseline_hazard_", f"{type(self.baseline_hazard_).__name__} is not a BaselineHazard",
                        "wrap (times, cumhaz) in core/survival/baseline_hazard.BaselineHazard, or pass None")
        if self.routing_score_ not in SCORES:
            raise _fail("routing_score_", f"{self.routing_score_!r} is not a routing score",
                        f"use one of {', '.join(SCORES)} (the run's routing-score)")
        for name, v in (("theta_", theta), ("abstain_bound_", bound), ("conformal_alpha_", alpha),
                        ("cutpoints_", cuts), ("conformal_q_", q)):
            object.__setattr__(self, name, v)

    # ---- views -------------------------------------------------------------------------------------
    @property
    def tier2_used(self) -> bool:
        """False when the gate keeps Tier 1's risk for the referred."""
        return self.gate_ is None or bool(self.gate_.open)

    @property
    def conformal_pair(self) -> tuple[float, float]:
        """(Tier 1's q-hat, Tier 2's q-hat), NaN where a tier has none."""
        return self.conformal_q_.get("tier1", math.nan), self.conformal_q_.get("tier2", math.nan)

    def replace(self, **changes: Any) -> "FittedTwoTier":
        """A copy with ``changes`` (fitted attributes, validated again)."""
        return replace(self, **changes)

    def for_sites(self) -> "FittedTwoTier":
        """What a site is told: everything, the gate reduced to its decision (:meth:`from_records` of
        :meth:`to_records` gives exactly this)."""
        return self.replace(gate_=Tier2Gate(self.tier2_used, SITE_GATE_REASON))

    # ---- the protocol's records (server -> site) ---------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The scalars (a request's CONFIG record): theta, the bound, the gate's decision, the scale."""
        return {"theta": self.theta_, "bound": self.abstain_bound_, M.TIER2_USED: self.tier2_used,
                "routing-score": self.routing_score_, "conformal-alpha": self.conformal_alpha_,
                **dict(zip(_SCALE, map(float, vars(self.risk_scale_).values())))}

    def to_records(self) -> Records:
        """CONFIG (:meth:`to_config`), PLAN_RECORD (q-hats, cut points) and, with a baseline, SURVIVAL_RECORD."""
        out: Records = {CONFIG: self.to_config(),
                        PLAN_RECORD: {"conformal-q": np.asarray(self.conformal_pair, np.float64),
                                      "cutpoints": np.asarray(self.cutpoints_ or (), np.float64)}}
        if self.baseline_hazard_ is not None:
            out[SURVIVAL_RECORD] = {"grid": np.asarray(self.baseline_hazard_.times, np.float64),
                                    "cumhaz": np.asarray(self.baseline_hazard_.cumhaz, np.float64)}
        return out

    @classmethod
    def from_records(cls, r: Records) -> "FittedTwoTier":
        """A site's view from a request's records (only CONFIG is needed; the others may be absent)."""
        c, plan, surv = r[CONFIG], r.get(PLAN_RECORD) or {}, r.get(SURVIVAL_RECORD) or {}
        try:
            scale = RiskScale(*(float(c[k]) for k in _SCALE))
            theta, bound = float(c["theta"]), float(c["bound"])
        except KeyError as exc:
            raise _fail(str(exc.args[0]), "missing from the request", "send the fitted two-tier decision with "
                        "FittedTwoTier.to_records") from None
        q = np.concatenate([np.asarray(plan.get("conformal-q", []), np.float64).ravel(), [np.nan, np.nan]])[:2]
        cuts = tuple(float(v) for v in np.asarray(plan.get("cutpoints", []), np.float64).ravel())
        baseline = (BaselineHazard(np.asarray(surv["grid"], np.float64), np.asarray(surv["cumhaz"], np.float64))
                    if {"grid", "cumhaz"} <= set(surv) else None)
        return cls(theta, bound, scale, Tier2Gate(bool(c.get(M.TIER2_USED, True)), SITE_GATE_REASON),
                   cuts or None, dict(zip(TIERS, map(float, q))), float(c.get("conformal-alpha", math.nan)),
                   baseline, str(c.get("routing-score", "risk-sd")))

    # ---- the model bundle's keys (core/outputs/bundle.py) --------------------------------------------------
    def to_bundle(self) -> dict[str, Any]:
        """The bundle's keys: theta, abstain_bound, risk_scale, tier2_gate, risk_cutpoints, conformal,
        baseline_hazard (plain containers and tensors). The routing score is the bundle config's."""
        return {"theta": self.theta_, "abstain_bound": self.abstain_bound_,
                "risk_scale": {k: float(v) for k, v in vars(self.risk_scale_).items()},
                "tier2_gate": None if self.gate_ is None else plain(self.gate_.to_dict()),
                "risk_cutpoints": None if self.cutpoints_ is None else list(self.cutpoints_),
                "conformal": None if math.isnan(self.conformal_alpha_) else
                {"alpha": self.conformal_alpha_, "q_hat": dict(self.conformal_q_)},
                "baseline_hazard": None if self.baseline_hazard_ is None else self.baseline_hazard_.to_plain()}

    @classmethod
    def from_bundle(cls, raw: Mapping[str, Any]) -> "FittedTwoTier":
        """From a bundle's keys (:meth:`to_bundle`; an older bundle's missing gate, cut points, conformal
        q-hats and baseline read as None/absent, and a q-hat stored as null as absent)."""
        rs = raw.get("risk_scale")
        scale = RiskScale(**{k: float(v) for k, v in dict(rs).items()}) if isinstance(rs, Mapping) else RiskScale()
        conf = raw.get("conformal") or {}
        q = {str(t): float(v) for t, v in dict(conf.get("q_hat") or {}).items() if v is not None}
        gate = raw.get("tier2_gate")
        hz = raw.get("baseline_hazard")
        return cls(raw["theta"], raw.get("abstain_bound", math.inf), scale,
                   None if gate is None else Tier2Gate.from_dict(dict(gate)), raw.get("risk_cutpoints"), q,
                   float(conf["alpha"]) if conf.get("alpha") is not None else math.nan,
                   None if hz is None else BaselineHazard.from_plain(hz),
                   str(dict(raw.get("config") or {}).get("routing-score", "risk-sd")))
