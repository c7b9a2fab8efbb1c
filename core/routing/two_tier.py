"""The whole two-tier prediction for a set of patients: Tier 1, routing (eq. 5), Tier 2, abstention.

For each patient: Tier 1 risk, sigma^2 and the routing score (core/routing/routing_score.py: the risk SD, or
sigma^2); the route (abstain when nothing is present; Tier 2 when the score > theta or the context is
high-risk; Tier 1 otherwise); for the referred, Tier 2 recovers
what is missing, gives its own risk and uncertainty, and the patient abstains when that uncertainty
exceeds the calibrated bound. Every prediction carries its route, the reason and its flags. When the
run's gate (:mod:`rmmfed.core.tier2.tier2_gate`) found that Tier 2 does not beat Tier 1 on federated masked
validation, the referred keep Tier 1's risk, flagged.

The system risk is a z-score with the federated mean and standard deviation of the answering head's
risk on the training split (``RiskScale``, core/routing/risk_scale.py). By default Tier 2 is scored through Tier 1's own head
(:mod:`rmmfed.core.tier2.tier2_scoring`), so both tiers share Tier 1's scale; with the multi-branch head
(``tier2.risk-head = branches``) each head has its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from ..errors import FittedTwoTierError
from .fitted_two_tier import FittedTwoTier
from .routing import ABSTAIN, TIER2, TIER2_NOT_USED, Route, route_all
from ..data.tensors import SiteTensors
from ..model.tier1 import Tier1Model
from ..tier2.tier2 import Tier2Model
from ..tier2.tier2_train import predict_tier2
from .risk_scale import RiskScale
from .routing_score import patient_scores


@dataclass
class TwoTierPrediction:
    tier1_risk: np.ndarray  # [N]
    sigma2: np.ndarray  # [N] Tier 1 uncertainty
    tier2_risk: np.ndarray  # [N], NaN where Tier 2 did not run
    tier2_uncertainty: np.ndarray  # [N], NaN where Tier 2 did not run
    system_risk: np.ndarray  # [N] on the common scale, NaN when abstained
    routes: list[Route]
    tier1_seconds: float
    tier2_seconds: float
    tier2_used: bool = True  # False: the gate kept Tier 1's risk for the referred (core/tier2/tier2_gate.py)
    risk_low: np.ndarray | None = None  # [N] system-scale interval (core/routing/risk_interval.py), with_interval only
    risk_high: np.ndarray | None = None
    interval_basis: list[str] | None = None
    score: np.ndarray | None = None  # [N] what routing compared with theta (core/routing/routing_score.py)
    draw_mean: np.ndarray | None = None  # [N] system-scale mean and SD of the answering tier's risk draws,
    draw_sd: np.ndarray | None = None  # with_interval only (core/routing/conformal.py turns them into an interval)
    draw_tier: np.ndarray | None = None  # [N] "tier1" or "tier2": whose draws

    @property
    def route_names(self) -> np.ndarray:
        return np.array([r.route for r in self.routes])


def predict_two_tier(tier1: Tier1Model, tier2: Tier2Model | None, data: SiteTensors, cfg: RunConfig, *,
                     fitted: FittedTwoTier, seed: int, with_interval: bool = False) -> TwoTierPrediction:
    """The two-tier answer for ``data`` under the run's ``fitted`` decision (theta, abstention bound,
    risk scale, gate). A closed gate (Tier 2 did not beat Tier 1 on federated masked validation) still
    routes and runs Tier 2 (its figures are measured), but the referred keep Tier 1's risk, flagged
    ``tier2-not-used``, and are not abstained on Tier 2's uncertainty. ``with_interval`` adds each
    answer's risk interval (core/routing/risk_interval.py, on the system scale)."""
    if fitted.routing_score_ != cfg.routing_score:
        raise FittedTwoTierError(f"fitted two-tier field 'routing_score_': theta was fitted on "
                                 f"{fitted.routing_score_!r}, but the run config routes on {cfg.routing_score!r}. "
                                 "Fix: predict with the config the decision was fitted under")
    theta, bound, scale, use_tier2 = fitted.theta_, fitted.abstain_bound_, fitted.risk_scale_, fitted.tier2_used
    t0 = time.perf_counter()
    r1, s2, score = patient_scores(tier1, data, cfg, seed=seed)
    t1 = time.perf_counter() - t0
    any_present = data.present.any(dim=1).cpu().numpy()
    all_present = data.present.all(dim=1).cpu().numpy()
    routes = route_all(score, data.context, any_present, theta, cfg.high_risk, all_present)
    n = len(data)
    r2, u2 = np.full(n, np.nan), np.full(n, np.nan)
    referred = np.array([r.route == TIER2 for r in routes], dtype=bool)
    t2 = 0.0
    draws2 = None
    if tier2 is not None and referred.any():
        t0 = time.perf_counter()
        sub = data.subset(np.flatnonzero(referred))
        pred2 = predict_tier2(tier2, tier1, sub, cfg.tier2, seed=seed, mc_samples=cfg.model.mc_samples)
        t2 = time.perf_counter() - t0
        r2[referred], u2[referred] = pred2.risk, pred2.uncertainty
        draws2 = pred2.risk_draws
        for i, u in zip(np.flatnonzero(referred), pred2.uncertainty):
            r = routes[i]
            if not use_tier2:
                routes[i] = Route(r.route, f"{r.reason}; Tier 2 did not beat Tier 1 on federated validation: "
                                  "Tier 1's risk", r.flags + (TIER2_NOT_USED,))
            elif u > bound:
                routes[i] = Route(ABSTAIN, f"Tier 2 uncertainty {u:.3g} > bound {bound:.3g} ({r.reason})", r.flags)
    system = (r1 - scale.tier1_mean) / scale.tier1_std
    if tier2 is not None and use_tier2:
        system = np.where(referred, (r2 - scale.tier2_mean) / scale.tier2_std, system)
    abstained = np.array([r.route == ABSTAIN for r in routes], dtype=bool)
    system = np.where(abstained, np.nan, system)
    out = TwoTierPrediction(r1, s2, r2, u2, system, routes, t1, t2, tier2_used=use_tier2 or tier2 is None,
                            score=score)
    if with_interval:
        _add_intervals(out, tier1, data, scale, seed, referred, abstained, draws2, use_tier2 and tier2 is not None)
    return out


def _add_intervals(pred: TwoTierPrediction, tier1: Tier1Model, data: SiteTensors, scale: RiskScale, seed: int,
                   referred: np.ndarray, abstained: np.ndarray, draws2: np.ndarray | None, used: bool) -> None:
    """Risk intervals on the system scale and their basis (core/routing/risk_interval.py)."""
    from .risk_interval import BASIS_COMPLETE, BASIS_HULL, BASIS_TIER1, BASIS_TIER2, central, tier1_risk_draws

    d1 = tier1_risk_draws(tier1, data, seed=seed + 7)
    lo1, hi1 = central(d1)
    lo, hi = (lo1 - scale.tier1_mean) / scale.tier1_std, (hi1 - scale.tier1_mean) / scale.tier1_std
    pred.draw_mean, pred.draw_sd = (d1.mean(axis=1) - scale.tier1_mean) / scale.tier1_std, d1.std(axis=1) / scale.tier1_std
    pred.draw_tier = np.full(len(d1), "tier1", dtype=object)
    complete = data.present.all(dim=1).cpu().numpy()
    basis = [BASIS_COMPLETE if c else BASIS_TIER1 for c in complete]
    if draws2 is not None:
        lo2, hi2 = central(draws2)
        lo2, hi2 = (lo2 - scale.tier2_mean) / scale.tier2_std, (hi2 - scale.tier2_mean) / scale.tier2_std
        rows = np.flatnonzero(referred)
        if used:
            lo[rows], hi[rows] = lo2, hi2
            pred.draw_mean[rows] = (draws2.mean(axis=1) - scale.tier2_mean) / scale.tier2_std
            pred.draw_sd[rows] = draws2.std(axis=1) / scale.tier2_std
            pred.draw_tier[rows] = "tier2"
        else:  # the hull of both tiers: their draws and Tier 2's own answer, so never narrower than Tier 2's
            t2 = (pred.tier2_risk[rows] - scale.tier2_mean) / scale.tier2_std
            lo[rows] = np.minimum(np.minimum(lo[rows], lo2), t2)
            hi[rows] = np.maximum(np.maximum(hi[rows], hi2), t2)
        for i in rows:
            basis[i] = BASIS_TIER2 if used else BASIS_HULL
    # the reported risk is read at a point estimate (dropout off, or Tier 2's posterior mean), which
    # need not fall inside the draws' central range: the interval is widened to contain it
    lo, hi = np.minimum(lo, pred.system_risk), np.maximum(hi, pred.system_risk)
    pred.risk_low = np.where(abstained, np.nan, lo)
    pred.risk_high = np.where(abstained, np.nan, hi)
    pred.interval_basis = [None if a else b for a, b in zip(abstained, basis)]


@torch.no_grad()
def recovery_errors(tier1: Tier1Model, tier2: Tier2Model | None, data: SiteTensors, cfg: RunConfig, *, seed: int,
                    point_only: bool = False) -> dict[str, np.ndarray]:
    """On complete cases under every masking pattern, per (patient, pattern) row, pattern-major: Tier 1
    sigma^2, the SD of Tier 1's risk over its draws of the hidden features (``risk_sd``,
    core/routing/risk_interval.tier1_risk_draws), the Tier 1 and Tier 2 squared recovery errors per dimension of the hidden modalities
    against the real features, Tier 2's own uncertainty (``unc2``, what its abstention bound is
    calibrated on), both tiers' risks under the mask (``risk1``: Tier 1's deterministic risk;
    ``risk2``: Tier 2's, as :func:`~rmmfed.core.tier2.tier2_train.predict_tier2` scores it), ``risk_gap`` =
    |risk1 - Tier 1's risk with every modality seen| (``risk_seen``), the mean of Tier 1's risk draws
    (``risk_mean``) and their mean |draw - risk1| (``change``: the expected change once the hidden exams
    are done; ``draws`` [rows, T]: the draws themselves), the mean and SD of the risks of Tier 2's diffusion draws (``risk2_mean``, ``risk2_sd``;
    empty with ``point_only``), and the row's ``patient`` (its complete case,
    0..n-1, so statistics can resample patients rather than rows) and ``pattern`` (index into
    :func:`masking_patterns`).

    ``point_only``: Tier 2 runs only the first DDIM step (its point recovery, the posterior-mean
    estimate, :meth:`Tier2Model.recover`), and no risk is drawn, so ``unc2``, ``risk_sd``, ``risk_mean``,
    ``change``, ``risk2_mean`` and ``risk2_sd`` are left empty: the cheap per-round validation."""
    from ..tier2.tier2_context import bag_encodings, data_means, tier1_slots
    from ..tier2.tier2_scoring import tier2_risk
    from ..model.train import predict_risk
    from .risk_interval import risks_of_draws, tier1_risk_draws
    from ..tier2.tier2_context import tier2_inputs
    from .uncertainty import complete_case_indices, masking_patterns, patient_uncertainty

    idx = complete_case_indices(data)
    keys = ("sigma2", "risk_sd", "risk_mean", "change", "draws", "err1", "err2", "unc2", "risk1", "risk2", "risk2_mean",
            "risk2_sd", "risk_seen", "risk_gap", "patient", "pattern")
    out: dict[str, list] = {k: [] for k in keys}
    if len(idx) == 0:
        return {k: np.zeros(0, dtype=int if k in ("patient", "pattern") else float) for k in out}
    sub = data.subset(idx)
    dims = [t.shape[1] for t in sub.target]
    real = torch.cat(list(sub.target), dim=1)
    risk_full = predict_risk(tier1, sub)
    gen = torch.Generator(device=sub.present.device).manual_seed(seed)
    was = tier1.training
    tier1.eval()
    zs, means = bag_encodings(tier1, sub), data_means(sub)
    for p_i, pattern in enumerate(masking_patterns(len(dims))):
        obs = torch.tensor(pattern, device=sub.present.device).expand(len(sub), -1)
        x_obs, x_hat, var_k = tier2_inputs(tier1, sub, obs, seed=seed + p_i, mc_samples=cfg.model.mc_samples, zs=zs)
        hidden = torch.cat([(~obs[:, k : k + 1]).expand(-1, d) for k, d in enumerate(dims)], dim=1).float()
        width = hidden.sum(dim=1)
        out["sigma2"].append(patient_uncertainty(var_k, obs).cpu().numpy())
        out["err1"].append((((x_hat - real) ** 2) * hidden).sum(dim=1).div(width).cpu().numpy())
        risk1 = predict_risk(tier1, sub, obs)
        out["risk1"].append(risk1)
        out["risk_gap"].append(np.abs(risk1 - risk_full))
        out["risk_seen"].append(risk_full)
        if not point_only:
            draws1 = tier1_risk_draws(tier1, sub, seed=seed + 7919 + p_i, observed=obs)
            out["risk_sd"].append(draws1.std(axis=1))
            out["risk_mean"].append(draws1.mean(axis=1))
            out["change"].append(np.abs(draws1 - risk1[:, None]).mean(axis=1))
            out["draws"].append(draws1)
        out["patient"].append(np.arange(len(sub)))
        out["pattern"].append(np.full(len(sub), p_i))
        if tier2 is not None:
            enc = tier1_slots(tier1, zs, obs) if tier2.enc_dim else None
            got = tier2.recover(x_obs, obs, x_hat, var_k, samples=cfg.tier2.samples,
                                steps=1 if point_only else cfg.tier2.sample_steps, generator=gen, enc=enc,
                                return_draws=not point_only)
            x_rec, var2 = got[0], got[1]
            if not point_only:
                out["unc2"].append(tier2.patient_uncertainty(var2, obs).cpu().numpy())
                if cfg.tier2.uses_branches:
                    everything = torch.ones_like(obs)
                    d2 = torch.stack([tier2.risk(d, everything) for d in got[2]])
                else:
                    d2 = risks_of_draws(tier1, zs, obs, ~obs, got[2], dims, means)
                out["risk2_sd"].append(d2.std(dim=0, unbiased=False).cpu().numpy())
                out["risk2_mean"].append(d2.mean(dim=0).cpu().numpy())
            out["err2"].append((((x_rec - real) ** 2) * hidden).sum(dim=1).div(width).cpu().numpy())
            out["risk2"].append(tier2_risk(tier2, tier1, zs, obs, x_rec, means).cpu().numpy())
    tier1.train(was)
    return {k: np.concatenate(v) if v else np.zeros((0, 0) if k == "draws" else 0) for k, v in out.items()}
