"""The pooled test split of a finished federation, patient by patient (simulation only).

A deployment's server never sees a patient row; the simulation holds every site's data, so after
the federation it recomputes, with the final weights and the run's seeds, what the sites computed:
- each test patient's Tier 1 risk (the pooled C-index), the two-tier system risk and route (the
  risk groups of the Kaplan-Meier plot, with the run's federated tertile cut points), its
  missingness pattern (C-index by pattern);
- on masked complete test cases, Tier 1's sigma^2 and its recovery error per (patient, pattern)
  (the uncertainty-vs-error plot; the same seeds as the sites' evaluation, so the per-site Spearman
  in metrics.json is computed from these very values);
- the held-out calibration values behind theta (the exact pooled percentile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.survival.concordance import c_index
from ..core.config import RunConfig
from ..core.survival.cox_core import LINEAR
from ..core.site.site_cox import cox_design
from ..core.model.train import predict_risk
from ..core.site.site_session import SiteSession
from ..core.routing.two_tier import predict_two_tier, recovery_errors
from ..server.federation import FederationResult


@dataclass
class PooledTest:
    modalities: list[str]
    site: np.ndarray  # [N] site of each test patient
    patient_ids: list[list[str]]  # per site, in site order
    time: np.ndarray
    event: np.ndarray
    tier1_risk: np.ndarray
    system_risk: np.ndarray  # NaN when abstained
    route: np.ndarray  # tier1 / tier2 / abstain
    present: np.ndarray  # [N, K] bool
    masked_sigma2: np.ndarray  # per (masked complete test case, pattern)
    masked_error: np.ndarray  # Tier 1 recovery MSE of the hidden modalities, same rows
    masked_site: np.ndarray
    calibration_values: np.ndarray  # the validation values behind theta
    tier2_risk: np.ndarray | None = None  # [N] Tier 2's own risk, NaN where it did not run
    cox_risk: np.ndarray | None = None  # [N] the Cox core's risk alone (runs with model.cox-core)
    residual_risk: np.ndarray | None = None  # [N] Cox core + the kept round's network, before the residual decision

    def referred_figures(self) -> dict:
        """C-index on the referred test patients pooled over sites (simulation only: a deployment
        sees per-site counts, suppressed below each site's floor): Tier 1, Tier 2's own risk, and
        what the two-tier system answered (the referred it did not abstain on)."""
        if self.tier2_risk is None:
            return {}
        ref = np.isfinite(self.tier2_risk)
        covered = ref & np.isfinite(self.system_risk)

        def c(mask, risk):
            try:
                return c_index(self.time[mask], risk[mask], self.event[mask])
            except Exception:  # no comparable pair in a tiny group
                return None
        return {"n": int(ref.sum()), "n_covered": int(covered.sum()), "tier1": c(ref, self.tier1_risk),
                "tier2": c(ref, self.tier2_risk), "tier1_covered": c(covered, self.tier1_risk),
                "two_tier_covered": c(covered, self.system_risk), "method": "pooled test split (simulation only)"}

    def c_index(self, risk: np.ndarray | None = None) -> float:
        """Pooled test C-index of Tier 1's risk (or of ``risk``, one per test patient)."""
        return c_index(self.time, self.tier1_risk if risk is None else risk, self.event)

    def theta_exact(self, quantile: float) -> float:
        return float(np.percentile(self.calibration_values, 100 * quantile))


def pooled_test_split(res: FederationResult, paths: list[Path], cfg: RunConfig) -> PooledTest:
    """Recompute every site's test split with the federation's final weights (no training)."""
    parts: dict[str, list] = {k: [] for k in ("site", "time", "event", "r1", "r2", "sys", "route", "present",
                                              "s2", "err", "msite", "calib", "cox", "resid")}
    ids = []
    for p in paths:
        s = SiteSession(p, device=cfg.device)
        s.bind_schema(res.handshake.dims)
        s.setup(cfg, res.stats)
        risk, time, event, pid = s.test_predictions(res.weights)
        test = s.tensors.subset(s.data.indices("test"))
        tier1 = s.model(res.weights)
        tier2 = s.tier2_model(res.tier2_weights) if res.tier2_weights is not None else None
        pred = predict_two_tier(tier1, tier2, test, cfg, fitted=res.fitted, seed=cfg.seed)
        rec = recovery_errors(tier1, None, test, cfg, seed=cfg.seed + 1)  # as SiteSession.evaluate
        n = len(risk)
        parts["site"].append(np.full(n, s.data.site, dtype=object))
        parts["time"].append(time), parts["event"].append(event), parts["r1"].append(risk)
        parts["sys"].append(pred.system_risk), parts["route"].append(pred.route_names)
        parts["r2"].append(pred.tier2_risk)
        parts["present"].append(test.present.cpu().numpy().astype(bool))
        parts["s2"].append(rec["sigma2"]), parts["err"].append(rec["err1"])
        parts["msite"].append(np.full(len(rec["sigma2"]), s.data.site, dtype=object))
        parts["calib"].append(s.calibration_values(res.weights))
        if cfg.model.cox_core:
            parts["cox"].append(cox_design(tier1, test) @ res.weights[LINEAR].astype(np.float64).ravel())
            if res.residual_weights is not None:  # the kept round with its residual, whatever was decided
                parts["resid"].append(predict_risk(s.model(res.residual_weights), test))
        ids.append(pid)
    cat = {k: np.concatenate(v) for k, v in parts.items() if v}
    return PooledTest(list(res.handshake.dims), cat["site"], ids, cat["time"].astype(float), cat["event"].astype(int),
                      cat["r1"], cat["sys"].astype(float), cat["route"], cat["present"], cat["s2"], cat["err"],
                      cat["msite"], cat["calib"], cat["r2"].astype(float), cat.get("cox"), cat.get("resid"))
