"""Releases under differential privacy: what a site sends after training when its policy noises releases.

A merged histogram (:mod:`rmmfed.core.aggregates.merged_histogram`) is exact and its bin boundaries depend on
where patients fall: each merged bin's first and last fine bin is an order statistic, and a coordinator
that chooses the grid, the weights (hence the values) and the run can zoom onto one patient's value.
So under the default site policy (``dp.release-epsilon`` > 0) every release after training is a
differentially private one instead, on boundaries fixed before the data is seen:

* **Histograms** (:func:`noised_histogram`): one value per patient (a patient with several values, one
  per masking pattern, contributes one of them, chosen by a data-independent draw), counts on EVERY bin
  of the server's grid (no merging: the structure of the reply is the grid's), plus two-sided geometric
  noise of scale 1/epsilon (L1 sensitivity 1: one patient moves one count by one). Counts are sent
  unclipped; the server sums the sites and repairs the cumulative counts (``monotone_counts``).
* **Sums of risks** (:func:`noised_sums`): each patient's value clipped to a fixed bound [-B, B]
  first, then Laplace noise of scale (sensitivity / epsilon) per sum; the count is noised too.
* **Breslow sums** (:func:`noised_hazard`): per grid interval (no merging) the events and the sum of
  exp(clipped risk) of the patients leaving the risk set, plus the total: Laplace noise, epsilon split
  evenly between the event counts and the risk sums. The risk set at each interval start and after the
  grid are post-processing of these.

Noise comes from :func:`rmmfed.core.privacy.dp_noise.numpy_noise` (OS entropy unless the simulation's seeded
noise switch is on and the site allows it). Each release is epsilon-DP for the patients of the split
it covers; the ClientApp charges it to the site's lifetime budget (:mod:`rmmfed.core.privacy.privacy_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dp_noise import numpy_noise
from ..aggregates.histogram import HistogramGrid
from ..survival.merged_hazard import MergedHazard
from ..aggregates.merged_histogram import MergedBins
from .private_histogram import privatize_counts

RISK_BOUND = 5.0  # |risk| clipped here before a noised risk-scale sum
HAZARD_RISK_BOUND = 0.5  # default |risk - centre| clip of a noised Breslow sum (the site policy's dp.hazard-risk-bound)


@dataclass(frozen=True)
class ReleaseNoise:
    """The site's noise for one release: epsilon, and a seed only under the simulation's seeded-noise switch."""

    epsilon: float
    seed: int | None = None

    def rng(self) -> np.random.Generator:
        return numpy_noise(self.seed)


def one_value_per_patient(values: np.ndarray, patients: np.ndarray, seed: int) -> np.ndarray:
    """One of each patient's values, picked by a draw seeded by ``seed`` (a data-independent choice)."""
    values, patients = np.asarray(values, dtype=float), np.asarray(patients)
    if values.size == 0:
        return values
    order = np.random.default_rng(seed).permutation(values.size)
    _, first = np.unique(patients[order], return_index=True)
    return values[order[np.sort(first)]]


def noised_histogram(grid: HistogramGrid, values: np.ndarray, patients: np.ndarray, epsilon: float,
                     rng: np.random.Generator, *, seed: int = 0) -> MergedBins:
    """epsilon-DP counts of one value per patient on every bin of ``grid`` (module docstring)."""
    chosen = one_value_per_patient(values, patients, seed)
    noisy = privatize_counts(grid.counts(chosen), epsilon, rng, sensitivity=1.0, clip=False)
    every = np.arange(grid.n_bins, dtype=np.int64)
    return MergedBins(every, every.copy(), noisy, grid.n_bins)


def noised_sums(columns: list[np.ndarray], epsilon: float, rng: np.random.Generator,
                bound: float = RISK_BOUND) -> tuple[float, list[tuple[float, float]]]:
    """For per-patient value columns over the same patients: (noisy count, [(noisy sum, noisy sum of
    squares) per column]), values clipped to [-bound, bound], Laplace noise, epsilon split evenly over
    all the released numbers."""
    n = len(columns[0]) if columns else 0
    eps = epsilon / (1 + 2 * len(columns))  # :func:`sum_noise_var` reads the same split
    out = []
    for v in columns:
        c = np.clip(np.asarray(v, dtype=float), -bound, bound)
        out.append((float(c.sum() + rng.laplace(0.0, bound / eps)),
                    float((c ** 2).sum() + rng.laplace(0.0, bound ** 2 / eps))))
    return float(n + rng.laplace(0.0, 1.0 / eps)), out


def noised_hazard(time: np.ndarray, event: np.ndarray, risk: np.ndarray, grid: np.ndarray, epsilon: float,
                  rng: np.random.Generator, bound: float = HAZARD_RISK_BOUND) -> MergedHazard:
    """Breslow sums on every interval of ``grid`` (interval j = (grid[j-1], grid[j]], grid[-1] = 0),
    epsilon-DP: events and leaving risk sums noised, risk sets derived from them."""
    time, event = np.asarray(time, dtype=float), np.asarray(event).astype(bool)
    w = np.exp(np.clip(np.asarray(risk, dtype=float), -bound, bound))
    m = len(grid)
    slot = np.searchsorted(np.asarray(grid, dtype=float), time, side="left")  # m: after the grid
    events = np.bincount(slot[event & (slot < m)], minlength=m)[:m].astype(float)
    leaving = np.bincount(slot, weights=w, minlength=m + 1)[: m + 1]
    e_eps, r_eps = epsilon / 2.0, epsilon / 2.0
    events = events + rng.laplace(0.0, 1.0 / e_eps, size=m)
    # one patient sits in one leaving slot (L1 sensitivity e^B across the m + 1 slots)
    leaving = leaving + rng.laplace(0.0, float(np.exp(bound)) / r_eps, size=m + 1)
    total = leaving.sum()
    at_start = total - np.concatenate(([0.0], np.cumsum(leaving[:m])))[:m]
    return MergedHazard(np.arange(m, dtype=np.int64), events, at_start, float(leaving[m]), m)


def sum_noise_var(epsilon: float, n_columns: int, bound: float = RISK_BOUND) -> float:
    """The variance :func:`noised_sums` adds to each column's sum: Laplace of scale bound / (its share of
    ``epsilon``), which has variance 2 scale^2."""
    return 2.0 * (bound * (1 + 2 * n_columns) / epsilon) ** 2
