"""Test-time missingness: drop each present modality of each patient with probability r, keep >= 1.

A patient who would lose every modality keeps one of its present modalities, drawn uniformly; a
patient with no modality stays empty. For a patient with m present modalities the expected number
dropped is therefore m r - r^m (``expected_drop_fraction`` gives the share of present modalities).
"""

from __future__ import annotations

import numpy as np


def mask_present(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``present`` [N, K] bool with extra modalities hidden at ``rate`` (see module docstring)."""
    present = np.asarray(present, dtype=bool)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must lie in [0, 1), got {rate}")
    drop = rng.random(present.shape) < rate
    out = present & ~drop
    lost = present.any(axis=1) & ~out.any(axis=1)
    for i in np.flatnonzero(lost):
        out[i, rng.choice(np.flatnonzero(present[i]))] = True
    return out


def expected_drop_fraction(m: int, rate: float) -> float:
    """Expected share of a patient's m present modalities that ``mask_present`` hides."""
    return 0.0 if m == 0 else (m * rate - rate**m) / m


def realised_drop_fraction(before: np.ndarray, after: np.ndarray) -> float:
    """Share of present modalities that were hidden."""
    n = before.sum()
    return float((before & ~after).sum() / n) if n else 0.0
