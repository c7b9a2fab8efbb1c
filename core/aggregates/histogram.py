"""Federated percentile from fixed-grid histograms: sites send bin counts, never values.

Grid (``HistogramGrid(low, high, n_bins)``): ``n_bins`` bins in total, ``n_bins + 1`` edges::

    edges[0] = 0,  edges[1:-1] = logspace(low, high, n_bins - 1),  edges[-1] = +inf

i.e. an underflow bin [0, low), ``n_bins - 2`` log-spaced bins between ``low`` and ``high``
(each ``ratio = (high/low) ** (1/(n_bins - 2))`` wide), and an overflow bin [high, inf).
Bin b is the half-open interval [edges[b], edges[b+1]): a value exactly on an edge goes to the
UPPER bin; +inf goes to the overflow bin. Default: low=1e-8, high=1e3, n_bins=512, ratio
10**(11/510) ~= 1.0509 (~5 % relative resolution).

Quantile (``quantile_from_counts``): numpy's default 'linear' rule on estimated order
statistics. The k-th (0-based) value lies in bin b with cum[b-1] <= k < cum[b]; it is estimated at
fraction f = (k - cum[b-1] + 0.5) / counts[b] of its bin: geometrically (lo * (hi/lo)**f) in
log-spaced bins, linearly (f * low) in the underflow bin, and as ``high`` in the overflow bin
(the overflow bin has no upper edge, so the answer is clamped to ``high``). With position
p = q * (N - 1), the result is v(floor p) + (p - floor p) * (v(floor p + 1) - v(floor p)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rmmfed.core.errors import ConfigError, HistogramError

__all__ = ["HistogramGrid", "quantile_from_counts", "DEFAULT_GRID"]


@dataclass(frozen=True)
class HistogramGrid:
    """Fixed bin grid shared by server and sites (see the module docstring for the layout)."""

    low: float = 1e-8
    high: float = 1e3
    n_bins: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.n_bins, bool) or int(self.n_bins) != self.n_bins or self.n_bins < 3:
            raise ConfigError(f"hist-bins={self.n_bins!r} must be an integer >= 3 (underflow, "
                              "overflow and at least one log bin). Fix: use e.g. 512.")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 < self.low < self.high):
            raise ConfigError(f"histogram range hist-low={self.low!r}, hist-high={self.high!r} "
                              "must satisfy 0 < low < high < inf. Fix: e.g. low=1e-8, high=1e3.")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        object.__setattr__(self, "n_bins", int(self.n_bins))

    @property
    def ratio(self) -> float:
        """Upper / lower edge of every log-spaced bin: (high/low) ** (1/(n_bins - 2))."""
        return (self.high / self.low) ** (1.0 / (self.n_bins - 2))

    def edges(self) -> np.ndarray:
        """``n_bins + 1`` increasing edges: [0, low, ..., high, inf] (inner ones log-spaced)."""
        inner = np.logspace(math.log10(self.low), math.log10(self.high), self.n_bins - 1)
        inner[0], inner[-1] = self.low, self.high           # exact end points
        return np.concatenate(([0.0], inner, [np.inf]))

    def counts(self, values) -> np.ndarray:
        """int64 counts per bin (length ``n_bins``); bins are [edges[b], edges[b+1])."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if np.isnan(v).any():
            raise HistogramError(f"{int(np.isnan(v).sum())} value(s) are NaN. Fix: drop "
                                 "non-finite values before binning.")
        if (v < 0).any():
            raise HistogramError(f"{int((v < 0).sum())} value(s) are negative (min {v.min():g}); "
                                 "the grid starts at 0. Fix: bin magnitudes (e.g. np.abs).")
        idx = np.searchsorted(self.edges(), v, side="right") - 1   # edge value -> upper bin
        idx = np.minimum(idx, self.n_bins - 1)                      # +inf -> overflow bin
        return np.bincount(idx, minlength=self.n_bins).astype(np.int64)

    def to_config(self) -> dict[str, Any]:
        """Flat scalars for transport: {"hist-low", "hist-high", "hist-bins"}."""
        return {"hist-low": self.low, "hist-high": self.high, "hist-bins": self.n_bins}

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> "HistogramGrid":
        """Inverse of :meth:`to_config` (extra keys are ignored)."""
        missing = [k for k in ("hist-low", "hist-high", "hist-bins") if k not in d]
        if missing:
            raise ConfigError(f"histogram config lacks {missing}. Fix: send "
                              "HistogramGrid.to_config() along with the request.")
        return cls(float(d["hist-low"]), float(d["hist-high"]), int(d["hist-bins"]))


DEFAULT_GRID = HistogramGrid()


def _validate_counts(grid: HistogramGrid, counts, fractional: bool = False) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.shape[0] != grid.n_bins:
        raise HistogramError(f"got {c.shape[0]} counts for a grid of {grid.n_bins} bins. Fix: "
                             "bin with the same HistogramGrid the server sent (hist-bins).")
    if not np.isfinite(c).all() or (c < 0).any() or (not fractional and (c != np.round(c)).any()):
        raise HistogramError("counts must be finite non-negative integers. Fix: send "
                             "HistogramGrid.counts(values) unchanged, summed over sites.")
    if c.sum() == 0:
        raise HistogramError("all counts are zero, so no quantile exists. Fix: make sure at "
                             "least one site binned at least one value.")
    return c if fractional else c.astype(np.int64)


def _order_stat(grid: HistogramGrid, edges: np.ndarray, cum: np.ndarray, c: np.ndarray,
                k: int) -> float:
    """Estimated k-th (0-based) smallest value (see the module docstring)."""
    b = min(int(np.searchsorted(cum, k, side="right")), len(c) - 1)  # first bin with cum[b] > k
    f = min(1.0, (k - (cum[b] - c[b]) + 0.5) / c[b])  # < 1 already for integer counts
    if b == 0:
        return f * grid.low
    if b == grid.n_bins - 1:
        return grid.high
    lo, hi = edges[b], edges[b + 1]
    return float(lo * (hi / lo) ** f)


def quantile_from_counts(grid: HistogramGrid, counts, q: float, *, fractional: bool = False) -> float:
    """Estimate the q-quantile (0 < q < 1) of the binned values, numpy 'linear' convention.

    ``fractional=True`` accepts non-integer counts (merged bins spread over the grid by the server,
    :mod:`rmmfed.core.aggregates.merged_histogram`); N is then the rounded total.

    Accuracy: within one bin of ``np.percentile(values, 100 q)`` (relative error < ratio - 1
    inside [low, high)); returns ``high`` when the rank falls in the overflow bin.
    """
    if not (isinstance(q, (int, float, np.floating)) and 0.0 < float(q) < 1.0):
        raise HistogramError(f"q={q!r} must lie strictly between 0 and 1. Fix: pass e.g. 0.95 "
                             "for the 95th percentile.")
    c = _validate_counts(grid, counts, fractional)
    cum = np.cumsum(c)
    n = int(round(cum[-1]))
    pos = float(q) * (n - 1)
    k = int(math.floor(pos))
    frac = pos - k
    edges = grid.edges()
    lo = _order_stat(grid, edges, cum, c, k)
    if frac == 0.0 or k + 1 >= n:
        return lo
    hi = _order_stat(grid, edges, cum, c, k + 1)
    return float(lo + frac * (hi - lo))
