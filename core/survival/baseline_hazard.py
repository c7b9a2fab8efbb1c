"""Breslow baseline cumulative hazard on a fixed time grid, estimable from per-site aggregates.

With risk eta_i (a model's log-hazard) and a grid g_0 < g_1 < ... < g_{G-1}, interval j is
(g_{j-1}, g_j] (g_{-1} = -inf, so interval 0 is everything up to g_0). Each site sends, per interval,

    d_j = number of events with time in (g_{j-1}, g_j]
    R_j = sum of exp(eta_i) over the patients still at risk at the START of the interval
          (time > g_{j-1}; every patient for j = 0)

and the server adds them over sites. The baseline cumulative hazard at the grid points is

    H0(g_j) = sum_{l <= j} d_l / R_l        (0 contribution where R_l = 0)

which is Breslow's estimator with every event of an interval given the interval's opening risk
set. It equals Breslow exactly when the grid holds every distinct observed time (then the patients
"at risk at the start" of the interval ending at t are exactly those with time >= t); on a uniform
grid the difference is the few patients censored or dying inside an interval, which vanishes as the
grid gets finer. Events after the last grid point are not counted: H0 is defined up to g_{G-1} only.

Survival of a patient with risk eta: S(t) = exp(-H0(t) exp(eta)), a step function over the grid
(S = 1 before g_0, value at the last grid point <= t afterwards, unknown beyond g_{G-1}).

Aggregates only: counts of events per interval and sums of exp(risk) per interval. A coarse grid
(e.g. 64-256 points) keeps per-interval counts from singling out patients; sites may also apply the
run's ``min-stat-count`` rule before sending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import FittedTwoTierError, SurvivalInputError

__all__ = ["BaselineHazard", "time_grid", "local_hazard_sums", "add_hazard_sums", "baseline_from_sums", "breslow_baseline",
           "survival_curve", "median_survival", "survival_at", "cumhaz_at"]


def _check_grid(grid: np.ndarray) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64).reshape(-1)
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(np.diff(g) <= 0):
        raise SurvivalInputError("the time grid must be a non-empty, finite, strictly increasing 1-D array. "
                                 "Fix: build it with rmmfed.core.survival.baseline_hazard.time_grid(t_max, points)")
    return g


def time_grid(t_max: float, points: int = 128) -> np.ndarray:
    """``points`` equally spaced grid times in (0, t_max] (the grid every site must share)."""
    if not (t_max > 0 and np.isfinite(t_max)) or points < 1:
        raise SurvivalInputError(f"time_grid needs t_max > 0 and points >= 1 (got {t_max}, {points}). "
                                 "Fix: pass the longest follow-up of interest, e.g. 120 (months)")
    return np.linspace(t_max / points, t_max, points)


def local_hazard_sums(time: np.ndarray, event: np.ndarray, risk: np.ndarray, grid: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One site's aggregates: (events per interval [G], sum of exp(risk) at risk at each interval's start [G])."""
    g = _check_grid(grid)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1) != 0
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not (t.shape == e.shape == r.shape):
        raise SurvivalInputError(f"time {t.shape}, event {e.shape} and risk {r.shape} must have one value per "
                                 "patient. Fix: pass three 1-D arrays of the same length")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise SurvivalInputError("time or risk contains NaN/Inf. Fix: drop those patients (e.g. abstained ones)")
    # interval of each time: first j with t <= g_j (searchsorted left); G = after the grid
    j = np.searchsorted(g, t, side="left")
    events = np.bincount(j[e & (j < len(g))], minlength=len(g))[: len(g)].astype(np.float64)
    # at risk at the start of interval j: t > g_{j-1}  <=>  interval(t) >= j; cumulative sum from the right
    w = np.exp(r)
    per_interval = np.bincount(np.minimum(j, len(g)), weights=w, minlength=len(g) + 1)
    risk_sums = np.cumsum(per_interval[::-1])[::-1][: len(g)]
    return events, risk_sums


def add_hazard_sums(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Server side: element-wise sums of the sites' (events, risk_sums)."""
    events = np.sum([np.asarray(p[0], dtype=np.float64) for p in parts], axis=0)
    sums = np.sum([np.asarray(p[1], dtype=np.float64) for p in parts], axis=0)
    return events, sums


def baseline_from_sums(grid: np.ndarray, events: np.ndarray, risk_sums: np.ndarray) -> np.ndarray:
    """H0 at the grid points from (summed) aggregates."""
    g = _check_grid(grid)
    d = np.asarray(events, dtype=np.float64).reshape(-1)
    s = np.asarray(risk_sums, dtype=np.float64).reshape(-1)
    if d.shape != g.shape or s.shape != g.shape:
        raise SurvivalInputError(f"events {d.shape} and risk sums {s.shape} must match the grid {g.shape}. "
                                 "Fix: every site must use the same grid")
    inc = np.divide(d, s, out=np.zeros_like(d), where=s > 0)
    return np.cumsum(inc)


def breslow_baseline(time: np.ndarray, event: np.ndarray, risk: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Single-site convenience: H0 at the grid points."""
    return baseline_from_sums(grid, *local_hazard_sums(time, event, risk, grid))


def cumhaz_at(times: np.ndarray, grid: np.ndarray, H0: np.ndarray) -> np.ndarray:
    """Step-function H0 at arbitrary times: 0 before g_0, NaN after the last grid point."""
    g = _check_grid(grid)
    h = np.asarray(H0, dtype=np.float64).reshape(-1)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    idx = np.searchsorted(g, t, side="right") - 1
    out = np.where(idx >= 0, h[np.clip(idx, 0, len(g) - 1)], 0.0)
    return np.where(t > g[-1], np.nan, out)


def survival_curve(risk: np.ndarray | float, grid: np.ndarray, H0: np.ndarray) -> np.ndarray:
    """S(g_j | risk) = exp(-H0(g_j) exp(risk)): [G] for a scalar risk, [N, G] for N risks."""
    h = np.asarray(H0, dtype=np.float64).reshape(-1)
    _check_grid(grid)
    r = np.asarray(risk, dtype=np.float64)
    return np.exp(-np.multiply.outer(np.exp(r), h))


def median_survival(risk: np.ndarray | float, grid: np.ndarray, H0: np.ndarray) -> np.ndarray | float:
    """First grid time with S <= 0.5 (NaN when S stays above 0.5 over the whole grid: not reached)."""
    g = _check_grid(grid)
    s = np.atleast_2d(survival_curve(risk, g, H0))
    below = s <= 0.5
    first = np.argmax(below, axis=1)
    med = np.where(below.any(axis=1), g[first], np.nan)
    return float(med[0]) if np.ndim(risk) == 0 else med


def survival_at(risk: np.ndarray | float, horizons: np.ndarray | list[float], grid: np.ndarray,
                H0: np.ndarray) -> np.ndarray:
    """S(horizon | risk) from the step-function H0: [H] for a scalar risk, [N, H] for N risks.

    NaN for a horizon beyond the last grid point (the baseline says nothing there)."""
    h_at = cumhaz_at(np.asarray(horizons, dtype=np.float64), grid, H0)
    r = np.asarray(risk, dtype=np.float64)
    return np.exp(-np.multiply.outer(np.exp(r), h_at))


@dataclass(eq=False)
class BaselineHazard:
    """Breslow baseline cumulative hazard H0 at grid times, for the risk named by ``risk``."""

    times: np.ndarray  # [G] strictly increasing
    cumhaz: np.ndarray  # [G] non-decreasing
    risk: str = "tier1"  # which log-hazard it belongs to (Tier 1's raw risk)

    def to_plain(self) -> dict[str, Any]:
        return {"times": torch.as_tensor(np.asarray(self.times, dtype=np.float64)),
                "cumhaz": torch.as_tensor(np.asarray(self.cumhaz, dtype=np.float64)), "risk": self.risk}

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> "BaselineHazard":
        times, cumhaz = (np.asarray(d[k].detach().cpu().numpy() if isinstance(d[k], torch.Tensor) else d[k],
                                    dtype=np.float64) for k in ("times", "cumhaz"))
        if times.ndim != 1 or times.shape != cumhaz.shape or len(times) == 0 or np.any(np.diff(times) <= 0):
            raise FittedTwoTierError("baseline_hazard: 'times' must be a strictly increasing 1-D array with one "
                                     "'cumhaz' value each. Fix: re-estimate the baseline hazard (federated Breslow sums)")
        return cls(times, cumhaz, str(d.get("risk", "tier1")))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BaselineHazard) and self.risk == other.risk
                and np.array_equal(self.times, other.times) and np.array_equal(self.cumhaz, other.cumhaz))
