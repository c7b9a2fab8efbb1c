"""Federated feature statistics: counts, sums and sums of squares, never patient rows.

Each site summarises the mean-pooled features of its training patients per modality, over all
patients who have the modality and over complete cases (every modality present). The server adds
the sums and derives:

- the standardisation (per-dimension mean and std) every site applies to its inputs, and
- the per-partition statistics (mu_r, sigma_r) of complete-case features for L_anat (seed 000 eq. 4),
  expressed in the standardised space.

A site with fewer than ``min_count`` patients in a block sends zeros for that block, and withholds the
complete-case block when the patients it leaves out of the other block are fewer than ``min_count``,
so neither a block nor the difference of two blocks reveals a handful of patients.

For wide modalities (core/aggregates/feature_reduction.py) a third block, ``pca``, carries the count, sum and sum
of outer products of the same patients (zeros below the floor, or when the site's policy withholds
second moments); the server derives the federated PCA basis from it, and the L_anat statistics are
then given in the reduced space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.bag_file import bag_mean
from .feature_reduction import OUTER, is_wide, outer_sum, project, whitened_basis
from ..data.site_data import SiteData

BLOCKS = ("all", "complete")


def pooled_features(site: SiteData, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over instances of each patient's bag: ([N, D] float64 with zeros where absent, present [N]).

    Bags on disk are streamed (one chunk in memory at a time); the result is cached on the site, so a
    site's bags are read once for all the phases that need their means."""
    cached = site.pooled_cache.get(modality)
    if cached is not None:
        return cached[0].copy(), cached[1].copy()
    dim = site.modalities[modality]
    bags = site.bags[modality]
    present = np.array([b is not None for b in bags], dtype=bool)
    out = np.zeros((len(bags), dim or 0), dtype=np.float64)
    for i, bag in enumerate(bags):
        if bag is not None:
            out[i] = bag_mean(bag)
    site.pooled_cache[modality] = (out, present)
    return out.copy(), present.copy()


def local_feature_sums(site: SiteData, indices: np.ndarray, min_count: int, *, reduce_above: int = 0,
                       reduce_dim: int = 0, second_moments: bool = True) -> dict[str, np.ndarray]:
    """Per-modality sums over the given patients; keys ``<modality>.<block>.{n,sum,sumsq}``, plus
    ``<modality>.pca.{n,sum,outer}`` ([1], [D], [D, D]) for the modalities :func:`is_wide` reduces
    (zeros when ``second_moments`` is False: the site's policy withholds them)."""
    indices = np.asarray(indices, dtype=int)
    complete = np.ones(len(site.patient_ids), dtype=bool)
    for m in site.modalities:
        complete &= site.present(m)
    out: dict[str, np.ndarray] = {}
    for m, dim in site.modalities.items():
        feats, present = pooled_features(site, m)
        masks = {"all": present, "complete": complete}
        n_all, n_complete = int(present[indices].sum()), int(complete[indices].sum())
        # The difference of the two blocks is a sum over the incomplete patients: it must not single
        # out a handful of them either, so the complete block is withheld when that group is small.
        gap_too_small = 0 < n_all - n_complete < min_count
        for block in BLOCKS:
            rows = indices[masks[block][indices]]
            n = len(rows)
            d = dim or 0
            if n < min_count or (block == "complete" and gap_too_small):
                out[f"{m}.{block}.n"] = np.zeros(1)
                out[f"{m}.{block}.sum"] = np.zeros(d)
                out[f"{m}.{block}.sumsq"] = np.zeros(d)
                x = None
            else:
                x = feats[rows]
                out[f"{m}.{block}.n"] = np.array([float(n)])
                out[f"{m}.{block}.sum"] = x.sum(axis=0)
                out[f"{m}.{block}.sumsq"] = (x * x).sum(axis=0)
            if block == "all" and is_wide(dim, reduce_above, reduce_dim):
                send = x is not None and second_moments
                out[f"{m}.pca.n"] = np.array([float(n)]) if send else np.zeros(1)
                out[f"{m}.pca.sum"] = x.sum(axis=0) if send else np.zeros(d)
                out[f"{m}.pca.{OUTER}"] = outer_sum(x) if send else np.zeros((d, d))
    return out


def add_sums(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise sum of several sites' sums (keys must agree)."""
    total = {k: v.astype(np.float64).copy() for k, v in parts[0].items()}
    for p in parts[1:]:
        if set(p) != set(total):
            raise ValueError("feature-sum keys differ between sites; every site must share the run's schema")
        for k, v in p.items():
            total[k] += v
    return total


@dataclass(frozen=True)
class FeatureStats:
    """Standardisation and L_anat statistics for every modality of the run."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    anat_mu: dict[str, np.ndarray]  # [D] in standardised space
    anat_sigma: dict[str, np.ndarray]  # [P] one scalar per partition (norm units)
    partitions: int
    anat_source: dict[str, str]  # "complete" or "all" (fallback when no complete cases)
    basis: dict[str, np.ndarray] = field(default_factory=dict)  # [D, k] federated PCA of wide modalities

    def model_dims(self, dims: dict[str, int]) -> dict[str, int]:
        """The widths the models see: k for a reduced modality, its own dim otherwise."""
        return {m: int(self.basis[m].shape[1]) if m in self.basis else int(d) for m, d in dims.items()}

    def input_dims(self) -> dict[str, int]:
        """The modalities' widths on disk (the schema), in the run's order."""
        return {m: int(len(v)) for m, v in self.mean.items()}

    def transform(self, m: str, x: np.ndarray) -> np.ndarray:
        """Raw features [..., D] of modality ``m`` -> what the models see (standardised, then reduced)."""
        return project((x - self.mean[m]) / self.std[m], self.basis.get(m))

    @classmethod
    def from_sums(cls, sums: dict[str, np.ndarray], dims: dict[str, int], partitions: int,
                  reduce_dim: int = 0) -> "FeatureStats":
        """Standardisation, L_anat statistics and (where the sums carry outer products and
        ``reduce_dim`` > 0) the federated PCA basis (from the ``pca`` blocks the sites sent). In a reduced modality L_anat's mu is the complete
        cases' mean score and each partition's sigma is sqrt(its width): the scores have unit variance
        over the training patients having the modality (the complete block's second moments are not
        sent, so the "all" block stands in for them)."""
        mean, std, mu, sigma, source, basis = {}, {}, {}, {}, {}, {}
        for m, d in dims.items():
            n = float(sums[f"{m}.all.n"][0])
            if n > 0:
                mean[m] = sums[f"{m}.all.sum"] / n
                var = np.maximum(sums[f"{m}.all.sumsq"] / n - mean[m] ** 2, 0.0)
                sd = np.sqrt(var)
                std[m] = np.where(sd > 1e-6, sd, 1.0)
            else:  # no site could share statistics for this modality: identity transform
                mean[m], std[m] = np.zeros(d), np.ones(d)
            block = "complete" if float(sums[f"{m}.complete.n"][0]) > 0 else "all"
            source[m] = block
            nb = max(float(sums[f"{m}.{block}.n"][0]), 1.0)
            ex = sums[f"{m}.{block}.sum"] / nb
            exx = sums[f"{m}.{block}.sumsq"] / nb
            mu_std = (ex - mean[m]) / std[m]
            exx_std = (exx - 2 * mean[m] * ex + mean[m] ** 2) / std[m] ** 2
            var_std = np.maximum(exx_std - mu_std**2, 0.0)
            outer, n_pca = sums.get(f"{m}.pca.{OUTER}"), float(sums.get(f"{m}.pca.n", np.zeros(1))[0])
            if reduce_dim > 0 and outer is not None and n_pca >= 2:
                basis[m] = whitened_basis(n_pca, sums[f"{m}.pca.sum"], outer, mean[m], std[m], reduce_dim)
                k = basis[m].shape[1]
                mu[m] = mu_std @ basis[m]
                sigma[m] = np.array([np.sqrt(float(c.stop - c.start)) for c in partition_slices(k, partitions)])
                continue
            mu[m] = mu_std
            sigma[m] = np.array([np.sqrt(var_std[c].sum()) for c in partition_slices(d, partitions)])
        return cls(mean, std, mu, sigma, partitions, source, basis)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for m in self.mean:
            out[f"{m}.mean"], out[f"{m}.std"] = self.mean[m], self.std[m]
            out[f"{m}.anat-mu"], out[f"{m}.anat-sigma"] = self.anat_mu[m], self.anat_sigma[m]
            if m in self.basis:
                out[f"{m}.basis"] = self.basis[m]
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], partitions: int) -> "FeatureStats":
        names = sorted({k.rsplit(".", 1)[0] for k in arrays})
        return cls(
            {m: arrays[f"{m}.mean"] for m in names},
            {m: arrays[f"{m}.std"] for m in names},
            {m: arrays[f"{m}.anat-mu"] for m in names},
            {m: arrays[f"{m}.anat-sigma"] for m in names},
            partitions,
            {m: "transported" for m in names},
            {m: arrays[f"{m}.basis"] for m in names if f"{m}.basis" in arrays},
        )


def partition_slices(dim: int, partitions: int) -> list[slice]:
    """Contiguous, near-equal partitions R of a modality's feature vector (at most ``dim`` of them)."""
    p = max(1, min(partitions, dim))
    bounds = np.linspace(0, dim, p + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
