"""Mean-pooled per-modality features of a whole cohort, for the pooled (centralised) baselines.

Each patient's bag is averaged over instances (``core.aggregates.feature_stats.pooled_features``). ``Featurizer``
is fitted on the training rows only: per modality, standardise with the mean/sd of training patients
that have it; a modality wider than ``max_dim`` (default 64) is reduced to its first ``n_pcs``
(default 16) principal components fitted on those standardised training rows, and the component
scores are standardised again. Absent modalities are 0 (= the training mean, i.e. mean imputation),
optionally with one missing indicator per modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...core.aggregates.feature_stats import pooled_features
from ...core.data.site_data import SiteData


@dataclass
class PooledCohort:
    """Every patient of a cohort in one place (simulation only): features per modality and outcomes."""

    modalities: tuple[str, ...]
    site: np.ndarray
    patient_id: np.ndarray
    time: np.ndarray
    event: np.ndarray
    split: np.ndarray
    feats: dict[str, np.ndarray]  # [N, D_m], zeros where absent
    present: np.ndarray  # [N, K] bool

    def __len__(self) -> int:
        return len(self.time)

    def rows(self, split: str, sites: list[str] | None = None) -> np.ndarray:
        keep = self.split == split
        if sites is not None:
            keep &= np.isin(self.site, sites)
        return np.flatnonzero(keep)


def pool_sites(sites: list[SiteData]) -> PooledCohort:
    mods = tuple(sites[0].modalities)
    feats, present = {m: [] for m in mods}, []
    for s in sites:
        cols = []
        for m in mods:
            f, p = pooled_features(s, m)
            feats[m].append(f)
            cols.append(p)
        present.append(np.stack(cols, axis=1))
    return PooledCohort(
        mods,
        np.concatenate([[s.site] * len(s) for s in sites]),
        np.concatenate([s.patient_ids for s in sites]),
        np.concatenate([s.time for s in sites]).astype(float),
        np.concatenate([s.event for s in sites]).astype(int),
        np.concatenate([s.split for s in sites]).astype(str),
        {m: np.concatenate(v) for m, v in feats.items()},
        np.concatenate(present),
    )


class Featurizer:
    """Standardisation (+ PCA for wide modalities) fitted on training rows; see the module docstring."""

    def __init__(self, max_dim: int = 64, n_pcs: int = 16) -> None:
        self.max_dim, self.n_pcs = max_dim, n_pcs
        self.params: dict[str, tuple] = {}

    def fit(self, data: PooledCohort, rows: np.ndarray) -> "Featurizer":
        for k, m in enumerate(data.modalities):
            r = rows[data.present[rows, k]]
            x = data.feats[m][r]
            if len(r) < 2:
                d = x.shape[1]
                self.params[m] = (np.zeros(d), np.ones(d), None, None, None)
                continue
            mean, sd = x.mean(0), x.std(0)
            sd = np.where(sd > 1e-8, sd, 1.0)
            z = (x - mean) / sd
            comps = score_mean = score_sd = None
            if z.shape[1] > self.max_dim:
                _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
                comps = vt[: self.n_pcs].T  # [D, n_pcs]
                s = z @ comps
                score_mean, score_sd = s.mean(0), np.where(s.std(0) > 1e-8, s.std(0), 1.0)
            self.params[m] = (mean, sd, comps, score_mean, score_sd)
        return self

    def describe(self) -> str:
        wide = [m for m, p in self.params.items() if p[2] is not None]
        base = f"per-modality standardisation fitted on training patients; modalities wider than {self.max_dim} dims"
        return base + (f" ({', '.join(wide)}) reduced to their first {self.n_pcs} PCs fitted on the training split"
                       if wide else f" would be reduced to {self.n_pcs} PCs (none here)")

    def block(self, data: PooledCohort, m: str, rows: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Standardised (reduced) features of modality ``m`` for ``rows``; 0 where absent."""
        k = data.modalities.index(m)
        pres = (data.present if present is None else present)[rows, k]
        mean, sd, comps, smean, ssd = self.params[m]
        z = (data.feats[m][rows] - mean) / sd
        if comps is not None:
            z = (z @ comps - smean) / ssd
        return np.where(pres[:, None], z, 0.0)

    def width(self, m: str) -> int:
        mean, _, comps, _, _ = self.params[m]
        return len(mean) if comps is None else comps.shape[1]

    def design(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None,
               indicators: bool = True, modalities: tuple[str, ...] | None = None) -> pd.DataFrame:
        """Design matrix: every modality's block (mean-imputed = 0 when absent) + missing indicators."""
        pres = data.present if present is None else present
        parts, names = [], []
        for m in modalities or data.modalities:
            parts.append(self.block(data, m, rows, pres))
            names += [f"{m}_{j}" for j in range(parts[-1].shape[1])]
            if indicators:
                parts.append((~pres[rows, data.modalities.index(m)]).astype(float)[:, None])
                names.append(f"missing_{m}")
        return pd.DataFrame(np.concatenate(parts, axis=1), columns=names)
