"""Privatized calibration histograms: noisy counts (epsilon-DP) and small-bin suppression.

Sensitivity. A site bins one uncertainty value per (patient, masking pattern) of its held-out
complete cases (:mod:`rmmfed.core.routing.uncertainty`). Adding or removing one patient changes P bins by 1
each, P being the number of masking patterns a patient contributes, so the L1 sensitivity of the
count vector is P (``sensitivity=P``), not 1. Noise per bin is Laplace with scale ``sensitivity /
epsilon``, or its integer version (two-sided geometric = discrete Laplace, Ghosh et al. 2009), which
needs no floating-point care and is the default. Negative noisy counts are clipped to 0 and counts
rounded: post-processing, so the guarantee holds. Clipping adds a positive bias on empty bins
(about ``scale / 2`` each), which pulls a high percentile toward the sparse upper end of the grid
(the 512-bin default grid is mostly empty bins). Two levers: a coarse grid over the plausible range
under DP (tens of bins), and ``clip=False`` at the sites with :func:`monotone_counts` applied by the
server to the SUM (zero-mean noise cancels in the cumulative counts instead of piling up as
positive bias). :func:`theta_error` measures the cost of each choice.

Suppression (:func:`suppress_small_bins`) is a k-anonymity-style rule, not DP: no bin may hold
between 1 and ``min_count - 1`` values. Small bins are MERGED toward the median bin (their counts
move to the next bin toward the median until the carried mass reaches ``min_count``), so the total
is kept and upper-tail mass only moves down: a high quantile can only decrease, i.e. theta errs
toward referring MORE patients to Tier 2 (the safe side). Apply it after the noise (post-processing);
applying it before would change the sensitivity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import HistogramError
from ..aggregates.histogram import HistogramGrid, quantile_from_counts

__all__ = ["privatize_counts", "monotone_counts", "suppress_small_bins", "noise_std", "theta_error"]

Mechanism = Literal["geometric", "laplace"]


def _check(counts, epsilon: float, sensitivity: float) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1 or not np.isfinite(c).all() or (c < 0).any():
        raise HistogramError("counts must be a 1-D array of finite non-negative numbers. Fix: pass "
                             "HistogramGrid.counts(values) for one site.")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise HistogramError(f"epsilon={epsilon!r} must be > 0. Fix: e.g. 1.0 (0.1 is very noisy).")
    if not (np.isfinite(sensitivity) and sensitivity >= 1):
        raise HistogramError(f"sensitivity={sensitivity!r} must be >= 1. Fix: pass the number of values one "
                             "patient contributes (masking patterns per patient).")
    return c.astype(np.int64)


def noise_std(epsilon: float, sensitivity: float = 1.0, mechanism: Mechanism = "geometric") -> float:
    """Standard deviation of the per-bin noise: sqrt(2) b (Laplace, b = sensitivity/epsilon) or
    sqrt(2 a) / (1 - a) with a = exp(-epsilon/sensitivity) (two-sided geometric)."""
    if mechanism == "laplace":
        return float(np.sqrt(2.0) * sensitivity / epsilon)
    a = np.exp(-epsilon / sensitivity)
    return float(np.sqrt(2.0 * a) / (1.0 - a))


def privatize_counts(counts, epsilon: float, rng: np.random.Generator, *, sensitivity: float = 1.0,
                     mechanism: Mechanism = "geometric", clip: bool = True) -> np.ndarray:
    """``counts`` + per-bin noise calibrated to (``epsilon``, L1 ``sensitivity``); int64, clipped at 0.

    ``clip=False`` keeps negative counts (an unbiased sum across sites; clip after summing at the server).
    """
    c = _check(counts, epsilon, sensitivity)
    if mechanism == "laplace":
        noise = np.rint(rng.laplace(0.0, sensitivity / epsilon, size=c.shape)).astype(np.int64)
    elif mechanism == "geometric":
        p = 1.0 - np.exp(-epsilon / sensitivity)  # numpy's geometric counts trials (>= 1): subtract 1
        noise = (rng.geometric(p, size=c.shape) - rng.geometric(p, size=c.shape)).astype(np.int64)
    else:
        raise HistogramError(f"mechanism={mechanism!r}. Fix: use 'geometric' or 'laplace'.")
    out = c + noise
    return np.maximum(out, 0) if clip else out


def monotone_counts(noisy) -> np.ndarray:
    """Non-negative counts whose cumulative sums are the running maximum of the (clipped at 0) noisy
    cumulative sums: server-side post-processing of summed, unclipped noisy histograms."""
    c = np.asarray(noisy, dtype=np.int64)
    cdf = np.maximum.accumulate(np.clip(np.cumsum(c), 0, None))
    return np.diff(np.concatenate(([0], cdf))).astype(np.int64)


def suppress_small_bins(counts, min_count: int) -> np.ndarray:
    """Merge bins holding 1..min_count-1 values toward the median bin (module docstring); total kept."""
    c = np.asarray(counts, dtype=np.int64).copy()
    if c.ndim != 1 or (c < 0).any():
        raise HistogramError("counts must be a 1-D array of non-negative integers. Fix: clip noisy counts first.")
    if min_count <= 1 or c.sum() == 0:
        return c
    median_bin = int(np.searchsorted(np.cumsum(c), c.sum() / 2.0, side="left"))
    for order in (range(0, median_bin), range(len(c) - 1, median_bin, -1)):
        carry = 0
        for b in order:
            carry += int(c[b])
            c[b] = carry if carry >= min_count else 0
            carry = 0 if carry >= min_count else carry
        c[median_bin] += carry
    return c


def theta_error(grid: HistogramGrid, counts, q: float, epsilon: float, sensitivity: float = 1.0,
                trials: int = 200, seed: int = 0, *, mechanism: Mechanism = "geometric",
                min_count: int = 0, postprocess: Literal["clip", "monotone"] = "clip") -> float:
    """Mean relative error |theta_noisy - theta| / theta of the q-quantile under histogram noise.

    theta is :func:`quantile_from_counts` of the exact ``counts``; each trial privatizes them
    (``postprocess``: "clip" = clipped at 0 per bin, "monotone" = unclipped then
    :func:`monotone_counts`), then suppresses bins below ``min_count`` when > 1, with its own draw
    of a generator seeded by ``seed``.
    """
    exact = quantile_from_counts(grid, counts, q)
    if exact <= 0:
        raise HistogramError("the exact quantile is 0, so a relative error is undefined. Fix: pick a larger q.")
    rng = np.random.default_rng(seed)
    errs = []
    for _ in range(int(trials)):
        noisy = privatize_counts(counts, epsilon, rng, sensitivity=sensitivity, mechanism=mechanism,
                                 clip=postprocess == "clip")
        noisy = noisy if postprocess == "clip" else monotone_counts(noisy)
        noisy = suppress_small_bins(noisy, min_count) if min_count > 1 else noisy
        if noisy.sum() == 0:
            noisy[0] = 1  # nothing survived the noise: the estimate degenerates to the lowest bin
        errs.append(abs(quantile_from_counts(grid, noisy, q) - exact) / exact)
    return float(np.mean(errs))
