"""Survival evaluation as a statistician reads it, from sums each site computes on its own test split.

With the run's federated Breslow baseline H0 (Tier 1's, ``core/survival/baseline_hazard.py``), each test
patient's predicted survival is S_i(t) = exp(-H0(t) exp(r_i)). Censoring is handled by inverse
probability of censoring weights from each site's own Kaplan-Meier estimate G of its censoring
distribution (site-stratified IPCW: censoring differs between hospitals, and G never leaves a site).
Times are fractions of the baseline's last grid point t_end (the pooled 95th percentile of follow-up):
horizons at :data:`HORIZONS` x t_end, the Brier score integrated over [0.1, 0.8] x t_end.

Per site (scalars over the whole test split, >= the site's floor of patients):

* integrated Brier score: sum_i of the trapezoidal integral over the grid of
  BS_i(t) = S_i(t)^2 1{T_i <= t, d_i} / G(T_i-) + (1 - S_i(t))^2 1{T_i > t} / G(t)
  (Graf et al. 1999); the server divides by the patients and the grid's length;
* cumulative/dynamic AUC at each horizon tau: cases T_i <= tau with an event, weighted 1/G(T_i-),
  against controls T_j > tau of the same site (both sent as 0 when the cases or the controls, or
  what either leaves out, would be 1..k-1 patients); numerator sum_cases w_i (#controls with lower risk + half
  the ties), denominator sum_cases w_i #controls (within-site pairs, as the combined C-index);
* calibration at the middle horizon: predicted event probability 1 - S_i(tau) against the IPCW
  observed one, 1{T_i <= tau, d_i} / G(T_i-), summed per group of :data:`CALIBRATION_BINS` fixed
  probability bins; a site whose bins (or their complements) would hold 1..k-1 patients sends the
  coarser nested bins (2, then 1 = calibration-in-the-large), so no group stands for fewer than k.

The server adds the sites' sums (:func:`combine`): the IBS, the AUC per horizon, and the calibration
groups with their binned calibration error, sum_g n_g |predicted_g - observed_g| / N (the binned
counterpart of the integrated calibration index, ICI).
"""

from __future__ import annotations

import numpy as np

from ..messages import metric_names as M
from .baseline_hazard import survival_at
from ..errors import RmmError

HORIZONS = (0.25, 0.5, 0.75)  # x t_end
IBS_SPAN = (0.1, 0.8)  # x t_end
IBS_POINTS = 50
CALIBRATION_BINS = (4, 2, 1)  # equal-width probability bins, nested: the first level every group allows
SURVIVAL_METRICS = (M.IBS_SUM, M.IBS_N, *(M.td_auc(j, p) for j in range(len(HORIZONS)) for p in ("num", "den")),
                    *(M.calibration(b, p) for b in range(max(CALIBRATION_BINS)) for p in ("n", "pred", "obs")))


class BaselineError(RmmError):
    """The baseline an evaluation request carries is not a cumulative hazard on an increasing grid."""


def check_baseline(grid: np.ndarray, cumhaz: np.ndarray) -> None:
    g, h = np.asarray(grid, float), np.asarray(cumhaz, float)
    if g.ndim != 1 or g.shape != h.shape or g.size < 2 or not (np.isfinite(g).all() and np.isfinite(h).all()) \
            or g[0] <= 0 or (np.diff(g) <= 0).any() or h[0] < 0 or (np.diff(h) < 0).any():
        raise BaselineError("the evaluation's baseline must be a non-decreasing cumulative hazard >= 0 on an "
                            "increasing grid of positive times, one value per point. Fix: send the run's "
                            "federated Breslow baseline")


def censoring_km(time: np.ndarray, event: np.ndarray):
    """(G(t), G(t-)) as functions: Kaplan-Meier of the censoring times (lifelines, event = 1 - event)."""
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(np.asarray(time, float), 1 - np.asarray(event, int))
    t = km.survival_function_.index.to_numpy(float)
    s = km.survival_function_.iloc[:, 0].to_numpy(float)

    def at(x, side):
        idx = np.searchsorted(t, np.asarray(x, float), side=side) - 1
        return np.maximum(np.where(idx >= 0, s[np.clip(idx, 0, None)], 1.0), 1e-12)

    return (lambda x: at(x, "right")), (lambda x: at(x, "left"))


def site_sums(time: np.ndarray, event: np.ndarray, risk: np.ndarray, grid: np.ndarray, H0: np.ndarray,
              k: int) -> dict[str, float]:
    """This site's survival-evaluation sums (module docstring) for Tier 1's ``risk`` on its test split."""
    time, event, risk = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(risk, float)
    t_end = float(grid[-1])
    g_at, g_before = censoring_km(time, event)
    w_case = 1.0 / g_before(time)
    ts = np.linspace(IBS_SPAN[0] * t_end, IBS_SPAN[1] * t_end, IBS_POINTS)
    surv = survival_at(risk, ts, grid, H0)  # [N, T]
    died = (time[:, None] <= ts[None, :]) & event[:, None]
    alive = time[:, None] > ts[None, :]
    terms = np.where(died, surv ** 2 * w_case[:, None], 0.0) + np.where(alive, (1 - surv) ** 2 / g_at(ts)[None, :], 0.0)
    out = {M.IBS_SUM: float(np.trapezoid(terms, ts, axis=1).sum()), M.IBS_N: float(len(time))}
    total = len(time)

    def floored(*counts: int) -> bool:  # every group, and what it leaves out, 0 or >= k patients
        return all((c == 0 or c >= k) and (total - c == 0 or total - c >= k) for c in counts)

    for j, frac in enumerate(HORIZONS):
        tau = frac * t_end
        case = (time <= tau) & event
        control = time > tau
        if not floored(int(case.sum()), int(control.sum())):
            # the coordinator places tau (the baseline's grid is its own): a case or control group of
            # 1..k-1 patients would turn these sums into questions about single patients, so none is sent
            out[M.td_auc(j, "num")] = out[M.td_auc(j, "den")] = 0.0
            continue
        rc = np.sort(risk[control])
        lower = np.searchsorted(rc, risk[case], side="left")
        ties = np.searchsorted(rc, risk[case], side="right") - lower
        out[M.td_auc(j, "num")] = float((w_case[case] * (lower + 0.5 * ties)).sum())
        out[M.td_auc(j, "den")] = float(w_case[case].sum() * control.sum())
    tau = HORIZONS[1] * t_end
    pred = 1.0 - survival_at(risk, [tau], grid, H0)[:, 0]
    obs = np.where((time <= tau) & event, w_case, 0.0)
    for bins in CALIBRATION_BINS:
        group = np.minimum((pred * bins).astype(int), bins - 1)
        n = np.bincount(group, minlength=bins)
        if bins == 1 or floored(*(int(c) for c in n)):
            break
    for b in range(max(CALIBRATION_BINS)):
        sel = group == b if b < bins else np.zeros(len(time), bool)
        out[M.calibration(b, "n")] = float(sel.sum())
        out[M.calibration(b, "pred")] = float(pred[sel].sum())
        out[M.calibration(b, "obs")] = float(obs[sel].sum())
    return out


def combine(per_site: dict[str, dict[str, float]], t_end: float) -> dict:
    """The federation's figures from the sites' sums (module docstring)."""
    sites = [m for m in per_site.values() if m.get(M.IBS_N, 0) > 0]
    if not sites:
        return {}
    n = sum(m[M.IBS_N] for m in sites)
    span = (IBS_SPAN[1] - IBS_SPAN[0]) * t_end
    auc = {}
    for j, frac in enumerate(HORIZONS):
        den = sum(m[M.td_auc(j, "den")] for m in sites)
        auc[f"{frac:g}"] = sum(m[M.td_auc(j, "num")] for m in sites) / den if den > 0 else None
    groups = []
    for m in sites:
        for b in range(max(CALIBRATION_BINS)):
            c = m[M.calibration(b, "n")]
            if c > 0:
                groups.append({"n": int(c), "predicted": m[M.calibration(b, "pred")] / c,
                               "observed": m[M.calibration(b, "obs")] / c})
    m_cal = sum(g["n"] for g in groups)
    err = sum(g["n"] * abs(g["predicted"] - g["observed"]) for g in groups) / m_cal if m_cal else None
    return {"ibs": sum(m[M.IBS_SUM] for m in sites) / (n * span) if span > 0 else None,
            "ibs_span": [IBS_SPAN[0] * t_end, IBS_SPAN[1] * t_end],
            "td_auc": {"horizons": [h * t_end for h in HORIZONS], "auc": auc},
            "calibration": {"horizon": HORIZONS[1] * t_end, "groups": groups, "binned_error": err},
            "n_patients": int(n), "method": "site-stratified IPCW; Tier 1 risk with the federated Breslow baseline"}
