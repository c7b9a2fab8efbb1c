"""How a site measures a model on its own patients and sends only counts and sums: per-round
validation (pair counts and partial likelihood for model selection), and the final evaluation on the
test split, every subgroup floored. Part of :class:`~rmmfed.core.site.site_session.SiteSession`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..messages import metric_names as M
from ..survival.concordance import concordance_counts
from ..survival.cox import cox_partial_log_likelihood
from ..routing.fitted_two_tier import FittedTwoTier
from ..routing.risk_uncertainty_evaluation import conformal_sums, floored as _floored, kept_sums, voi_sums
from ..routing.routing import ABSTAIN, HIGH_RISK_CONTEXT, TIER1, TIER2, route_counts
from .site_cox import cox_design
from ..survival.survival_metrics import site_sums as survival_sums
from ..model.train import predict_risk
from ..routing.two_tier import predict_two_tier, recovery_errors
from ..routing.uncertainty import masking_patterns
from ..routing.uncertainty_quality import site_quality


class SiteEvaluation:
    """A site's validation and evaluation (a mixin of SiteSession)."""

    def validate(self, weights: dict[str, np.ndarray]) -> dict[str, float]:
        """Comparable-pair counts of the validation split (the server combines them across sites)."""
        val = self._split("val")
        risk = predict_risk(self.model(weights), val)
        counts = concordance_counts(val.time.cpu().numpy(), risk, val.event.cpu().numpy())
        pll = cox_partial_log_likelihood(torch.as_tensor(risk, dtype=torch.float64), val.time.cpu().double(),
                                         val.event.cpu().double())
        return {M.N_VAL: float(len(val)), **dict(zip(M.PAIRS.counts, (counts.concordant, counts.tied_risk,
                                                                     counts.comparable))),
                M.VAL_PLL: float(pll), M.VAL_EVENTS: float(val.event.sum())}

    def evaluate(self, tier2_weights: dict[str, np.ndarray] | None, fitted: FittedTwoTier, k: int = 1,
                 thresholds: tuple[float, ...] | None = None) -> dict[str, float]:
        """Scalar metrics on the test split: C-index counts of Tier 1 and of the two-tier system (all,
        covered, referred), routes, recovery errors of both tiers, per-patient cost of each tier, and
        the quality of Tier 1's sigma^2 on masked complete cases (core/routing/uncertainty_quality.site_quality:
        Spearman with the recovery error and with the risk gap, patient-bootstrap intervals, counts).

        Floor ``k`` (the site policy's min-patients): a subgroup (covered, referred, masked complete
        cases) of fewer than k patients sends zero counts and sums (NaN C-index / correlation), as
        if it were empty, so no pair count or error sum stands for fewer than k patients."""
        assert self.cfg is not None
        tier1 = self._tier1()
        tier2 = self.tier2_model(tier2_weights) if tier2_weights is not None else None
        test = self._split("test")
        time, event = test.time.cpu().numpy(), test.event.cpu().numpy()
        pred = predict_two_tier(tier1, tier2, test, self.cfg, fitted=fitted, seed=self.cfg.seed)
        names = pred.route_names
        covered, referred = names != ABSTAIN, np.isfinite(pred.tier2_risk)
        out: dict[str, float] = {M.N_TEST: float(len(test)), M.N_EVENTS_TEST: float(event.sum())}
        out.update(_counts(M.PAIRS, concordance_counts(time, pred.tier1_risk, event)))
        if self.cfg.model.cox_core:  # the Cox core's risk alone, for comparison
            cox = cox_design(tier1, test) @ tier1.linear.weight.detach().double().cpu().numpy().ravel()
            out.update(_counts(M.COX_CORE, concordance_counts(time, cox, event)))
        for names, risk, group in ((M.TIER1_COVERED, pred.tier1_risk, covered), (M.SYSTEM_COVERED, pred.system_risk, covered),
                                   (M.TIER1_REFERRED, pred.tier1_risk, referred), (M.TIER2_REFERRED, pred.tier2_risk, referred),
                                   (M.SYSTEM_REFERRED, pred.system_risk, referred & covered)):
            shown = group if _floored([int(group.sum())], len(group), k)[0] else np.zeros_like(group)  # and complement
            out.update(_counts(names, concordance_counts(time[shown], risk[shown], event[shown])))
        rc = route_counts(pred.routes)
        n = len(test)
        routes = _floored([rc[r] for r in (TIER1, TIER2, ABSTAIN)], n, k)  # no route group below the floor
        ref = _floored([int(referred.sum())], n, k)[0]
        kept = _floored([sum(1 for r in pred.routes if HIGH_RISK_CONTEXT in r.flags and r.route == "tier1")], n, k)[0]
        out.update({**{M.ROUTED[r]: float(c) for r, c in zip((TIER1, TIER2, ABSTAIN), routes)}, M.REFERRED: float(ref),
                    M.REFERRAL_RATE: float(ref) / n if n and ref else (0.0 if n else float("nan")),
                    M.TIER1_SECONDS: pred.tier1_seconds, M.TIER2_SECONDS: pred.tier2_seconds,
                    M.TIER2_USED: float(pred.tier2_used), M.HIGH_RISK_KEPT_TIER1: float(kept)})
        rec = recovery_errors(tier1, tier2, test, self.cfg, seed=self.cfg.seed + 1)
        if len(rec["sigma2"]) // max(len(masking_patterns(len(self.dims))), 1) < k:  # complete test cases
            rec = {key: np.zeros(0) for key in rec}
        m = len(rec["sigma2"])
        masked_score = rec["risk_sd"] if self.cfg.routing_score == "risk-sd" else rec["sigma2"]
        out.update({M.MASKED_N: float(m), M.MASKED_REFERRED: float(_floored([int((masked_score > fitted.theta_).sum())], m, k)[0]),
                    M.RECOVERY_N: float(m), M.RECOVERY_SSE_TIER1: float(rec["err1"].sum()),
                    M.RECOVERY_SSE_TIER2: float(rec["err2"].sum()) if tier2 is not None else float("nan")})
        out.update(site_quality(rec, seed=self.cfg.seed))  # includes uncertainty-error-spearman
        hz = fitted.baseline_hazard_
        if hz is not None and np.all(np.isfinite(hz.cumhaz)):  # IBS, td-AUC, calibration (Tier 1)
            out.update(survival_sums(time, event, pred.tier1_risk, hz.times, hz.cumhaz, k))
        if thresholds is not None:  # conformal coverage, value of information, risk-coverage (core/routing/risk_uncertainty_evaluation.py)
            sc = fitted.risk_scale_
            out.update(conformal_sums(rec, fitted.conformal_pair, k))
            out.update(voi_sums(rec, fitted.cutpoints_ or (), sc.tier1_mean, sc.tier1_std, k))
            out.update(kept_sums(time, event, pred.tier1_risk, pred.score, thresholds, k))
        return out

    def test_predictions(self, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(risk, time, event, patient_ids) on the test split. Never sent: simulation-only pooled metrics."""
        test = self._split("test")
        risk = predict_risk(self.model(weights), test)
        ids = [self.data.patient_ids[i] for i in self.data.indices("test")]
        return risk, test.time.cpu().numpy(), test.event.cpu().numpy(), ids


def _counts(names: M.Pairs, c) -> dict[str, float]:
    return dict(zip(names.all, (c.c_index(), c.concordant, c.tied_risk, c.comparable)))
