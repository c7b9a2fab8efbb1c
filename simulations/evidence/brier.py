"""Survival calibration: IPCW Brier score and its integral (Graf et al. 1999), written out by hand.

- ``breslow``: cumulative baseline hazard H0(t) = sum over event times s <= t of d_s / sum_{j: T_j >= s}
  exp(r_j), fitted on the training split with a method's risk r.
- ``survival``: S(t | r) = exp(-H0(t) exp(r)).
- ``censoring_km``: Kaplan-Meier of the censoring distribution G (lifelines ``KaplanMeierFitter`` with
  event = 1 - event), evaluated as G(t) or its left limit G(t-).
- ``brier_score``: BS(t) = mean_i [ S_i(t)^2 1{T_i <= t, d_i = 1} / G(T_i-) + (1 - S_i(t))^2 1{T_i > t} / G(t) ];
  censored patients before t contribute 0.
- ``integrated_brier``: trapezoidal integral of BS over a time grid divided by its length.
- ``ibs_for_method``: the whole protocol for one method (see its docstring).
"""

from __future__ import annotations

import numpy as np


def breslow(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct event times, cumulative baseline hazard at each) from the training split."""
    time, event, w = np.asarray(time, float), np.asarray(event).astype(bool), np.exp(np.asarray(risk, float))
    times = np.unique(time[event])
    order = np.argsort(time)
    t_sorted, w_sorted = time[order], w[order]
    at_risk = np.cumsum(w_sorted[::-1])[::-1]  # sum of w over j with T_j >= t_sorted[i]
    first = np.searchsorted(t_sorted, times, side="left")
    deaths = np.array([np.sum(event & (time == t)) for t in times], dtype=float)
    return times, np.cumsum(deaths / at_risk[first])


def cumulative_hazard_at(grid: np.ndarray, times: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """Right-continuous step function H0 evaluated at ``grid`` (0 before the first event time)."""
    idx = np.searchsorted(times, grid, side="right") - 1
    return np.where(idx >= 0, h0[np.clip(idx, 0, None)] if len(h0) else 0.0, 0.0)


def survival(grid: np.ndarray, times: np.ndarray, h0: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """S(t | r) for every patient (rows) and grid time (columns)."""
    return np.exp(-np.outer(np.exp(np.asarray(risk, float)), cumulative_hazard_at(np.asarray(grid, float), times, h0)))


class CensoringKM:
    """G(t) = P(C > t) from a Kaplan-Meier fit on (time, 1 - event)."""

    def __init__(self, time: np.ndarray, event: np.ndarray) -> None:
        from lifelines import KaplanMeierFitter

        km = KaplanMeierFitter().fit(np.asarray(time, float), 1 - np.asarray(event, int))
        self.t = km.survival_function_.index.to_numpy(float)
        self.s = km.survival_function_.iloc[:, 0].to_numpy(float)

    def at(self, t: np.ndarray) -> np.ndarray:
        """G(t), right-continuous."""
        idx = np.searchsorted(self.t, np.asarray(t, float), side="right") - 1
        return np.where(idx >= 0, self.s[np.clip(idx, 0, None)], 1.0)

    def before(self, t: np.ndarray) -> np.ndarray:
        """G(t-), the left limit."""
        idx = np.searchsorted(self.t, np.asarray(t, float), side="left") - 1
        return np.where(idx >= 0, self.s[np.clip(idx, 0, None)], 1.0)


def brier_score(t: float, surv_t: np.ndarray, time: np.ndarray, event: np.ndarray, g: CensoringKM) -> float:
    """IPCW Brier score at time ``t`` given each patient's predicted S(t)."""
    time, event, surv_t = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(surv_t, float)
    died = (time <= t) & event
    alive = time > t
    g_before = np.maximum(g.before(time), 1e-12)
    g_t = max(float(g.at(np.array([t]))[0]), 1e-12)
    terms = np.where(died, surv_t**2 / g_before, 0.0) + np.where(alive, (1 - surv_t) ** 2 / g_t, 0.0)
    return float(terms.mean())


def integrated_brier(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray,
                     g: CensoringKM) -> float:
    """(1 / (t_max - t_min)) * integral of BS(t) over ``grid`` (trapezoidal)."""
    bs = np.array([brier_score(t, surv[:, j], time, event, g) for j, t in enumerate(grid)])
    if len(grid) < 2:
        return float(bs[0])
    return float(np.trapezoid(bs, grid) / (grid[-1] - grid[0]))


def default_grid(test_time: np.ndarray, n: int = 50, lo: float = 0.1, hi: float = 0.8) -> np.ndarray:
    """``n`` times between the ``lo`` and ``hi`` quantiles of the test split's observed times."""
    a, b = np.quantile(test_time, [lo, hi])
    return np.linspace(a, b, n)


def recalibration_slope(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """beta of a one-covariate Cox fit of the training risk (puts any risk score on a log-hazard scale)."""
    import pandas as pd
    from lifelines import CoxPHFitter

    sd = float(np.std(risk))
    if sd < 1e-12:
        return 0.0
    df = pd.DataFrame({"r": (risk - np.mean(risk)) / sd, "T": time, "E": event})
    try:
        return float(CoxPHFitter().fit(df, "T", "E").params_["r"]) / sd
    except Exception:
        return 1.0


def predicted_survival(train: tuple[np.ndarray, np.ndarray, np.ndarray], test_risk: np.ndarray,
                       grid: np.ndarray) -> np.ndarray:
    """S(t | r) [N_test, T] for one method: the risk is first put on a log-hazard scale by a
    one-covariate Cox slope fitted on the training split (a late-fusion average of z-scores is not a
    log-hazard), then the Breslow baseline is fitted on the training split with that scaled risk."""
    tr_t, tr_e, tr_r = (np.asarray(a, float) for a in train)
    beta = recalibration_slope(tr_t, tr_e, tr_r)
    centre = float(np.mean(tr_r))
    times, h0 = breslow(tr_t, tr_e, beta * (tr_r - centre))
    return survival(grid, times, h0, beta * (np.asarray(test_risk, float) - centre))


def ibs_for_method(train: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray, np.ndarray],
                   grid: np.ndarray | None = None, censoring: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Integrated Brier score of one method on the test split.

    ``train`` / ``test`` are (time, event, risk); survival curves from :func:`predicted_survival`; G is
    the censoring Kaplan-Meier of ``censoring`` (time, event; default the training split); the grid
    defaults to 50 times between the 10th and 80th percentiles of the test times.
    """
    te_t, te_e, te_r = (np.asarray(a, float) for a in test)
    grid = default_grid(te_t) if grid is None else grid
    g_t, g_e = censoring if censoring is not None else train[:2]
    return integrated_brier(grid, predicted_survival(train, te_r, grid), te_t, te_e, CensoringKM(g_t, g_e))
