"""Breslow sums that respect a site's floor: time intervals merged until each has >= k events and
>= k patients leaving the risk set.

The plain sums (:func:`rmmfed.core.survival.baseline_hazard.local_hazard_sums`) give, per interval of the
server's grid, the events d_j and the risk-set sum R_j = sum of exp(risk) over the patients still at
risk at the interval's start. On a grid with one point per patient both single patients out: d_j is
one patient's event flag and R_j - R_{j+1} one patient's exp(risk).

Site side (:func:`merge_intervals`). Walk the intervals left to right and add them to the current
group until it holds >= k events and >= k patients whose time falls in it (they leave the risk set
there); then close it. A short remainder joins the last group. Patients after the last grid point
(the tail, who never leave within the grid) are released as one more sum, ``risk-after``, only when
they are >= k; otherwise 0 is sent and the server lets the last group's risk set run down to 0.
Released per group g: its first interval, its events D_g and the risk set at its start R_g. Every
released number is a sum over >= k patients, and so is every difference of two consecutive ones.
Fewer than k events or k patients in all: nothing is released (None).

Server side (:func:`fine_sums`). Each site's group is spread back over its intervals: D_g evenly,
and the risk set linearly from R_g to the next group's R (or ``risk-after``). The sums over sites
then feed :func:`~rmmfed.core.survival.baseline_hazard.baseline_from_sums` on the same grid, so H0 keeps its
meaning; its error is confined to the merged groups (exact at their boundaries up to the risk
sets' interpolation) and is reported as the widest group, in grid intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .baseline_hazard import _check_grid
from ..errors import SurvivalInputError

__all__ = ["MergedHazard", "merge_intervals", "fine_sums"]


@dataclass(frozen=True)
class MergedHazard:
    first: np.ndarray  # int64 [m]: first grid interval of each group (first[0] = 0)
    events: np.ndarray  # float64 [m]
    risk_sum: np.ndarray  # float64 [m]: risk set at each group's start
    risk_after: float  # sum of exp(risk) over the patients after the grid (0 when fewer than k)
    points: int  # grid size G

    def __post_init__(self) -> None:
        f = np.asarray(self.first).reshape(-1)
        if not (f.shape == np.shape(self.events) == np.shape(self.risk_sum)) or f.size == 0 or f.size > self.points \
                or f[0] != 0 or (np.diff(f) <= 0).any() or f[-1] >= self.points:
            raise SurvivalInputError("merged hazard groups must start at interval 0 and be increasing inside the "
                                     "grid, one events and risk sum each. Fix: send merge_intervals(...) unchanged")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"hazard.first": np.asarray(self.first, dtype=np.int64),
                "hazard.events": np.asarray(self.events, dtype=np.float64),
                "hazard.risk-sum": np.asarray(self.risk_sum, dtype=np.float64),
                "hazard.risk-after": np.array([float(self.risk_after)])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], points: int) -> "MergedHazard":
        return cls(np.asarray(a["hazard.first"], dtype=np.int64), np.asarray(a["hazard.events"], dtype=np.float64),
                   np.asarray(a["hazard.risk-sum"], dtype=np.float64), float(np.asarray(a["hazard.risk-after"])[0]),
                   int(points))

    def widest(self) -> int:
        """Grid intervals in the widest group (1 = nothing was merged)."""
        return int(np.diff(np.append(self.first, self.points)).max())

    def widest_time(self, grid: np.ndarray) -> float:
        """The longest time span of a group on ``grid`` (interval 0 starts at time 0)."""
        g = np.concatenate([[0.0], np.asarray(grid, dtype=np.float64).reshape(-1)])
        ends = np.append(self.first[1:], self.points)
        return float((g[ends] - g[self.first]).max())


def merge_intervals(time, event, risk, grid, k: int) -> MergedHazard | None:
    """One site's merged Breslow sums (module docstring); None when even one group cannot reach k."""
    g = _check_grid(grid)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1) != 0
    w = np.exp(np.asarray(risk, dtype=np.float64).reshape(-1))
    if not (t.shape == e.shape == w.shape) or not (np.isfinite(t).all() and np.isfinite(w).all()):
        raise SurvivalInputError("time, event and risk must be finite, one value per patient. Fix: drop "
                                 "abstained patients first")
    n = len(g)
    j = np.searchsorted(g, t, side="left")  # interval of each time; n = after the grid (the tail)
    inside = j < n
    d = np.bincount(j[e & inside], minlength=n)[:n].astype(np.float64)
    leave = np.bincount(j[inside], minlength=n)[:n]
    w_at = np.bincount(j, weights=w, minlength=n + 1)
    at_risk = np.cumsum(w_at[::-1])[::-1][:n]  # risk set at each interval's start
    firsts, ev, cur_d, cur_l, start = [], [], 0.0, 0, 0
    for i in range(n):
        cur_d, cur_l = cur_d + d[i], cur_l + int(leave[i])
        if cur_d >= k and cur_l >= k:
            firsts.append(start), ev.append(cur_d)
            start, cur_d, cur_l = i + 1, 0.0, 0
    if not firsts:
        return None
    ev[-1] += cur_d  # a short remainder joins the last group
    tail = int((~inside).sum())
    first = np.asarray(firsts, dtype=np.int64)
    return MergedHazard(first, np.asarray(ev), at_risk[first], float(w_at[n]) if tail >= k else 0.0, n)


def fine_sums(parts: list[MergedHazard], points: int) -> tuple[np.ndarray, np.ndarray]:
    """Server side: (events, risk sums) per grid interval, every site's groups spread back and summed."""
    events, sums = np.zeros(points), np.zeros(points)
    for p in parts:
        if p.points != points:
            raise SurvivalInputError(f"a site merged on a grid of {p.points} points, the server's has {points}. "
                                     "Fix: every site must use the grid the server sent")
        ends = np.append(p.first[1:], points)
        nxt = np.append(p.risk_sum[1:], p.risk_after)
        for a, b, dg, r0, r1 in zip(p.first, ends, p.events, p.risk_sum, nxt):
            width = b - a
            events[a:b] += dg / width
            sums[a:b] += r0 + (r1 - r0) * np.arange(width) / width
    return events, sums
