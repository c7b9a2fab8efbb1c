"""Harrell's C-index and its pair counts, so sites can be combined without sharing risks.

Conventions (identical to ``lifelines.utils.concordance_index(time, -risk, event)``):

* HIGHER risk = SHORTER survival.
* A pair (i, j) is *comparable* iff patient i has an event and either ``time_i < time_j``, or
  ``time_i == time_j`` and j is censored (a death before/at a censoring time). Two events at the
  same time are NOT comparable; two censored patients never are.
* A comparable pair is *concordant* iff ``risk_i > risk_j``; *tied_risk* iff ``risk_i == risk_j``
  (counted 0.5).
* C = (concordant + 0.5 * tied_risk) / comparable.

A site sends its :class:`ConcordanceCounts` (three scalars). The server adds them; the combined
index only scores within-site pairs, so it is NOT the C-index of the pooled data in general.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from rmmfed.core.errors import NoComparablePairsError, SurvivalInputError

__all__ = ["ConcordanceCounts", "concordance_counts", "c_index", "combined_c_index"]

_CHUNK_ELEMENTS = 4_000_000      # rows per chunk = this // n  (bounds the [rows, n] masks)


@dataclass(frozen=True)
class ConcordanceCounts:
    """Pair counts: ``concordant`` excludes risk ties, which are in ``tied_risk``."""

    concordant: float = 0.0
    tied_risk: float = 0.0
    comparable: float = 0.0

    def c_index(self) -> float:
        """(concordant + 0.5 * tied_risk) / comparable; ``nan`` when comparable == 0."""
        if self.comparable == 0:
            return math.nan
        return (self.concordant + 0.5 * self.tied_risk) / self.comparable

    def __add__(self, other: "ConcordanceCounts") -> "ConcordanceCounts":
        if not isinstance(other, ConcordanceCounts):
            return NotImplemented
        return ConcordanceCounts(self.concordant + other.concordant,
                                 self.tied_risk + other.tied_risk,
                                 self.comparable + other.comparable)


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):                       # torch tensor on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise SurvivalInputError(f"{name} must be 1-D, got shape {arr.shape}. Fix: flatten it.")
    if np.isnan(arr).any():
        raise SurvivalInputError(f"{name} contains NaN. Fix: drop or impute those patients.")
    return arr


def _validate(time, risk, event) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, r, e = _as_numpy(time, "time"), _as_numpy(risk, "risk"), _as_numpy(event, "event")
    if not (t.shape == r.shape == e.shape):
        raise SurvivalInputError(f"lengths disagree: time {t.shape}, risk {r.shape}, event "
                                 f"{e.shape}. Fix: pass one value per patient in each array.")
    if not np.isin(e, (0.0, 1.0)).all():
        raise SurvivalInputError("event must contain only 0 (censored) and 1 (event). "
                                 "Fix: recode the event indicator.")
    return t, r, e.astype(bool)


def concordance_counts(time, risk, event) -> ConcordanceCounts:
    """Comparable / concordant / tied-risk pair counts (rules in the module docstring).

    Vectorised O(n^2) over rows chunked to ~4M pair cells; fine for n up to several thousand.
    Data without events gives all-zero counts (no error), so such a site can still be added.
    """
    t, r, e = _validate(time, risk, event)
    ti, ri = t[e], r[e]                           # only patients with an event can be "i"
    n = t.shape[0]
    conc = tied = comp = 0
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, ti.shape[0], step):
        a_t, a_r = ti[s:s + step, None], ri[s:s + step, None]
        cmp = (a_t < t[None, :]) | ((a_t == t[None, :]) & ~e[None, :])
        comp += int(cmp.sum())
        conc += int((cmp & (a_r > r[None, :])).sum())
        tied += int((cmp & (a_r == r[None, :])).sum())
    return ConcordanceCounts(float(conc), float(tied), float(comp))


def c_index(time, risk, event) -> float:
    """Harrell's C via ``lifelines.utils.concordance_index(time, -risk, event)``.

    Raises :class:`NoComparablePairsError` when there is no event or no comparable pair.
    """
    from lifelines.utils import concordance_index

    t, r, e = _validate(time, risk, event)
    if not e.any():
        raise NoComparablePairsError(
            f"C-index undefined: none of the {t.shape[0]} patients has an event, so no pair is "
            "comparable. Fix: evaluate on data with at least one event, or aggregate "
            "concordance_counts across sites with combined_c_index.")
    try:
        return float(concordance_index(t, -r, e.astype(float)))
    except ZeroDivisionError as exc:
        raise NoComparablePairsError(
            "C-index undefined: no comparable pair (every event is tied in time with the other "
            "events and no one is followed longer). Fix: evaluate on more patients, or aggregate "
            "concordance_counts across sites with combined_c_index.") from exc


def combined_c_index(counts: Iterable[ConcordanceCounts]) -> float:
    """Comparable-pair-weighted C over sites: sum(conc + 0.5 tied) / sum(comparable).

    Equals the C-index over within-site pairs only. Returns ``nan`` when the total number of
    comparable pairs is 0 (including an empty iterable) instead of raising, so server
    aggregation never crashes; check ``math.isnan`` if that matters.
    """
    total = ConcordanceCounts()
    for c in counts:
        total = total + c
    return total.c_index()
