"""Histograms that respect a site's floor: bins merged until each non-empty bin holds >= k patients.

Site side (:func:`merge_bins`). The site bins its values on the server's grid, then walks the
non-empty bins left to right, adding bins to the current merged bin until the values in it come
from at least ``k`` distinct patients (a patient may contribute several values, e.g. one per
masking pattern). Then it closes that merged bin and starts the next at the next non-empty bin. A
last merged bin with fewer than ``k`` patients is joined to its left neighbour. Each merged bin is
released as (first fine bin, last fine bin, count): first and last are its lowest and highest
non-empty fine bins, so the empty stretches between merged bins stay visible as zeros. Fewer than
``k`` patients in all: nothing can be released (None).

What a merged bin reveals: that at least ``k`` patients' values lie between the lower edge of its
first fine bin and the upper edge of its last; and, through its first and last bins, where the
lowest and highest of those values lie to within one fine bin (order statistics, never which
patient). The site policy's ``max-bins`` and ``min-bin-ratio`` bound that resolution.

Server side (:func:`pooled_counts`, :func:`merged_quantile`). The server turns the sites' merged
bins into one histogram on the common grid with fractional counts, whose quantile keeps its meaning
(the q-quantile of the pooled values). A merged count is an interval-censored observation: its
values lie somewhere in its span. The pooled counts are their nonparametric maximum-likelihood
estimate (Turnbull's self-consistency iteration): start from every merged count spread evenly over
its span, then repeatedly share each merged count out over its span in proportion to the current
pooled counts, so that one site's narrow bins shape where another site's wide bin puts its mass.
Without merging nothing is spread and the result is the plain summed histogram. The error is
bounded: putting every merged count at its first fine bin, and then at its last, gives the lowest
and highest place the exact pooled quantile can be; :func:`merged_quantile` returns that bracket
with the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HistogramError
from .histogram import HistogramGrid, quantile_from_counts

__all__ = ["MergedBins", "merge_bins", "spread", "pooled_counts", "merged_quantile", "QuantileBracket"]


@dataclass(frozen=True)
class MergedBins:
    """One site's released histogram: merged bin i spans fine bins first[i]..last[i] and holds counts[i]."""

    first: np.ndarray  # int64 [m]
    last: np.ndarray  # int64 [m]
    counts: np.ndarray  # int64 [m] (or noisy integers under histogram DP)
    n_bins: int

    def __post_init__(self) -> None:
        f, l, c = (np.asarray(a).reshape(-1) for a in (self.first, self.last, self.counts))
        if not (f.shape == l.shape == c.shape) or f.size > self.n_bins:
            raise HistogramError(f"merged bins: first {f.shape}, last {l.shape} and counts {c.shape} must have one "
                                 f"entry per merged bin (at most {self.n_bins}). Fix: send merge_bins(...) unchanged")
        if f.size and (f.min() < 0 or l.max() >= self.n_bins or (l < f).any() or (f[1:] <= l[:-1]).any()):
            raise HistogramError("merged bins must be ordered, non-overlapping fine-bin ranges inside the grid. "
                                 "Fix: send merge_bins(...) unchanged")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": np.asarray(self.counts, dtype=np.int64), "first": np.asarray(self.first, dtype=np.int64),
                "last": np.asarray(self.last, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_bins: int) -> "MergedBins":
        return cls(np.asarray(arrays["first"], dtype=np.int64), np.asarray(arrays["last"], dtype=np.int64),
                   np.asarray(arrays["counts"]), int(n_bins))

    def widest(self) -> int:
        """Fine bins spanned by the widest merged bin (1 = nothing was merged)."""
        return int((self.last - self.first).max() + 1) if self.first.size else 0


def merge_bins(grid: HistogramGrid, values, patients, k: int) -> MergedBins | None:
    """Bin ``values`` (patient ``patients[i]`` gave ``values[i]``) on ``grid`` and merge (module docstring)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    who = np.asarray(patients).reshape(-1)
    if v.shape != who.shape:
        raise HistogramError(f"{v.size} values but {who.size} patient labels. Fix: one label per value")
    if len(np.unique(who)) < k:
        return None
    counts = grid.counts(v)
    fine = np.minimum(np.searchsorted(grid.edges(), v, side="right") - 1, grid.n_bins - 1)
    order = np.argsort(fine, kind="stable")
    fine, who = fine[order], who[order]
    firsts, lasts, seen_sets = [], [], []
    current: set = set()
    start = None
    for b in np.flatnonzero(counts):
        if start is None:
            start = int(b)
        lo, hi = np.searchsorted(fine, b, side="left"), np.searchsorted(fine, b, side="right")
        current.update(who[lo:hi].tolist())
        if len(current) >= k:
            firsts.append(start), lasts.append(int(b)), seen_sets.append(current)
            current, start = set(), None
    if start is not None:  # a short remainder joins its left neighbour
        lasts[-1] = int(np.flatnonzero(counts)[-1])
    first, last = np.asarray(firsts, dtype=np.int64), np.asarray(lasts, dtype=np.int64)
    merged = np.array([counts[a:b + 1].sum() for a, b in zip(first, last)], dtype=np.int64)
    return MergedBins(first, last, merged, grid.n_bins)


def spread(parts: list[MergedBins], n_bins: int, where: str = "even") -> np.ndarray:
    """Sum of the sites' merged counts on the fine grid: each spread evenly over its span ('even'),
    or put whole at its first ('first') or last ('last') fine bin. Negative (noisy) counts are kept."""
    out = np.zeros(n_bins, dtype=np.float64)
    for p in parts:
        if p.n_bins != n_bins:
            raise HistogramError(f"a site merged on {p.n_bins} bins, the grid has {n_bins}. Fix: every site bins "
                                 "on the grid the server sent")
        for a, b, c in zip(p.first, p.last, np.asarray(p.counts, dtype=np.float64)):
            if where == "even":
                out[a:b + 1] += c / (b - a + 1)
            else:
                out[a if where == "first" else b] += c
    return out


def pooled_counts(parts: list[MergedBins], n_bins: int, iterations: int = 200) -> np.ndarray:
    """Fractional pooled counts on the fine grid: Turnbull's self-consistency iteration (module docstring).

    The sites' parts are put in a canonical order first, so the float sums (and theta) do not depend on
    the order in which the sites happened to answer."""
    parts = sorted(parts, key=lambda p: (np.asarray(p.first).tobytes(), np.asarray(p.last).tobytes(),
                                         np.asarray(p.counts, dtype=float).tobytes()))
    pooled = np.clip(spread(parts, n_bins, "even"), 0.0, None)
    spans = [(int(a), int(b) + 1, max(float(c), 0.0)) for p in parts for a, b, c in zip(p.first, p.last, p.counts)
             if b > a]
    fixed = np.zeros(n_bins)  # merged bins of one fine bin are exact
    for p in parts:
        for a, b, c in zip(p.first, p.last, p.counts):
            if a == b:
                fixed[a] += max(float(c), 0.0)
    for _ in range(iterations if spans else 0):
        new = fixed.copy()
        for a, b, c in spans:
            w = pooled[a:b]
            total = w.sum()
            new[a:b] += c * w / total if total > 0 else c / (b - a)
        if np.abs(new - pooled).max() < 1e-9:
            return new
        pooled = new
    return pooled


@dataclass(frozen=True)
class QuantileBracket:
    estimate: float  # quantile of the evenly spread counts
    low: float  # the exact pooled quantile is >= low ...
    high: float  # ... and <= high (inf when it may lie in the overflow bin)

    @property
    def ratio(self) -> float:
        """high / low: the relative width of what the merged release leaves open (1 = exact)."""
        return float(self.high / self.low) if self.low > 0 else float("inf")


def _rank_bin(counts: np.ndarray, rank: int) -> int:
    return int(np.searchsorted(np.cumsum(counts), rank, side="right"))


def merged_quantile(grid: HistogramGrid, parts: list[MergedBins], q: float) -> QuantileBracket:
    """q-quantile of the pooled values from the sites' merged bins, with the bracket it must lie in."""
    even = pooled_counts(parts, grid.n_bins)
    estimate = quantile_from_counts(grid, even, q, fractional=True)
    at_first, at_last = (np.clip(spread(parts, grid.n_bins, w), 0, None).round() for w in ("first", "last"))
    n = int(round(even.sum()))
    k = int(np.floor(q * (n - 1)))
    edges = grid.edges()
    b_low = _rank_bin(at_first, k)  # mass pushed down: the lowest bin order statistic k can be in
    b_high = _rank_bin(at_last, min(k + 1, n - 1))  # mass pushed up: the highest bin order statistic k+1 can be in
    low = float(edges[min(b_low, grid.n_bins - 1)])
    high = float(edges[min(b_high, grid.n_bins - 1) + 1])
    return QuantileBracket(float(estimate), low, high)
