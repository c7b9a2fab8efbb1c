"""Federated split-conformal risk intervals for patients with a modality missing.

A tier's risk distribution for a patient (core/routing/risk_interval.py: Tier 1's draws of the hidden
features from f_phi, Tier 2's diffusion draws, each read through the frozen head) gives a centre (the
risk the tier reports) and a spread (the SD of the draws' risks). Split conformal turns that spread
into an interval with a coverage guarantee:

* **Score.** On complete validation cases with modalities masked (every masking pattern), the
  nonconformity score of a row is s = |risk with every modality seen - the tier's risk under the mask|
  / max(the tier's risk SD, :data:`SD_FLOOR`).
* **Calibration, federated.** Each site sends a histogram of its scores on :data:`SCORE_GRID` (merged to
  its floor, or noised: the same release rules as theta's histogram). The coordinator sums them and takes
  the finite-sample corrected quantile: level ceil((n + 1)(1 - alpha)) / n of the n pooled scores
  (:func:`corrected_level`), q-hat, read inside its bin (interpolated): one grid, :data:`SCORE_GRID`.
* **Interval.** risk +- q-hat x risk SD. When validation and test rows are exchangeable (pooled over
  the sites), P(risk seen inside) >= 1 - alpha, marginally: over patients and masking patterns, not
  for every site or every patient. Rows of one patient (its patterns) are not independent, so the
  guarantee holds for a row drawn the way the calibration rows were; with a merged or noised histogram
  q-hat is read inside a bin, so coverage is measured on the test split (:func:`coverage_sums`).

What the interval says: where this patient's risk would lie once the missing exams are done, not
the spread of the outcome.
"""

from __future__ import annotations

import math

import numpy as np

from ..aggregates.histogram import HistogramGrid

SD_FLOOR = 1e-6  # a zero SD (nothing to draw) makes the score huge: such a row is never covered by luck
# Scores: 10 log bins of ratio 2 from 0.1 to 100, an underflow and an overflow bin, asked once (no zoom).
# Noised at the default epsilon, few wide bins resolve an upper-tail quantile of ~170 scores better than
# many narrow ones (each bin adds its own noise): on the default cohort's seed-0 run (40 noise draws,
# python -m rmmfed.simulations.evidence.conformal_grid) test coverage 0.920 +- 0.022, against 0.889 +-
# 0.056 for theta's coarse-then-zoom grids (exact split conformal: 0.890).
SCORE_GRID = HistogramGrid(0.1, 100.0, 12)
ALPHA = 0.1


def scores(risk_seen: np.ndarray, centre: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Nonconformity |risk_seen - centre| / max(sd, SD_FLOOR), per row."""
    seen, c, s = (np.asarray(a, dtype=np.float64) for a in (risk_seen, centre, sd))
    return np.abs(seen - c) / np.maximum(s, SD_FLOOR)


def corrected_level(n: float, alpha: float) -> float:
    """The quantile level of split conformal for ``n`` calibration scores: ceil((n + 1)(1 - alpha)) / n,
    capped at 1 (with fewer than 1/alpha - 1 scores the interval is unbounded: level 1, the largest
    score, still misses the guarantee, so :func:`q_hat_from` returns inf then)."""
    if not n > 0:
        return math.nan
    return min(1.0, math.ceil((n + 1) * (1.0 - alpha)) / n)


def needs_infinite(n: float, alpha: float) -> bool:
    """True when (n + 1)(1 - alpha) > n: no finite score gives the guarantee."""
    return not n > 0 or (n + 1) * (1.0 - alpha) > n


def coverage_sums(risk_seen: np.ndarray, centre: np.ndarray, sd: np.ndarray, q_hat: float) -> tuple[int, float]:
    """(rows whose seen risk lies in centre +- q_hat x sd, sum of the interval widths 2 q_hat sd)."""
    if not np.isfinite(q_hat) or len(centre) == 0:
        return 0, float("nan") if len(centre) else 0.0
    s = np.maximum(np.asarray(sd, dtype=np.float64), SD_FLOOR)
    inside = np.abs(np.asarray(risk_seen, np.float64) - np.asarray(centre, np.float64)) <= q_hat * s
    return int(inside.sum()), float((2.0 * q_hat * s).sum())


def site_scores(tier1, tier2, val, cfg, tier: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, risk SDs) of one tier on the masked complete cases of ``val`` (every masking pattern,
    pattern-major): Tier 1's draws, or Tier 2's (``tier2`` given) diffusion draws
    (core/routing/two_tier.recovery_errors)."""
    from ..errors import ConfigError
    from .two_tier import recovery_errors

    if tier not in ("tier1", "tier2") or (tier == "tier2") != (tier2 is not None):
        raise ConfigError(f"conformal scores of {tier!r} with{'' if tier2 is not None else 'out'} Tier 2 weights. "
                          "Fix (coordinator): tier = tier1 without weights, or tier2 with the run's Tier 2 weights")
    rec = recovery_errors(tier1, tier2, val, cfg, seed=cfg.seed + 3)
    centre, sd = ("risk_mean", "risk_sd") if tier == "tier1" else ("risk2_mean", "risk2_sd")
    return scores(rec["risk_seen"], rec[centre], rec[sd]), rec[sd]


def patient_mean_sd(sd: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each patient's mean risk SD over its rows (one value per patient: what a release may sum)."""
    if len(sd) == 0:
        return np.zeros(0)
    idx = np.unique(patients, return_inverse=True)[1]
    return np.bincount(idx, weights=np.asarray(sd, np.float64)) / np.bincount(idx)


def sd_sums(sd: np.ndarray, patients: np.ndarray) -> dict[str, float]:
    """Beside an exact (merged) score histogram: the sum of the patients' mean risk SDs and their number,
    over >= k patients (the histogram's own floor). A noised release sends none: at the default epsilon,
    Laplace noise on a sum of SDs clipped to any useful bound is larger than the sum."""
    from ..messages import metric_names as M

    per_patient = patient_mean_sd(sd, patients)
    return {M.CONFORMAL_SD_SUM: float(per_patient.sum()), M.CONFORMAL_SD_N: float(len(per_patient))}
