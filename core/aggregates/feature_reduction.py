"""Federated PCA for wide modalities: the reduced space Tier 1 and Tier 2 work in.

Real cohorts have modalities of hundreds to thousands of columns for a few hundred patients (TCGA RNA:
1,554 columns, about 220 training patients). A first layer of that width fits noise. A statistician
reduces such a block to its leading principal components before a Cox model; rmm does the same, but
federated:

- each site sends, per wide modality, the count, sum and sum of outer products x x^T of its training
  patients' mean-pooled features (the ``pca`` block, beside the sums and sums of squares it already
  sends, over the same >= the floor of patients; core/aggregates/feature_stats.py). A site whose policy sets
  ``second-moments = false`` sends zeros there and the basis comes from the other sites;
- the server adds them, forms the covariance in the standardised space, and keeps its leading
  ``reduce_dim`` eigenvectors, each scaled by 1/sqrt(eigenvalue) so every component has unit variance
  over the training patients (the same whitened scores as the centralised 16-PC baseline of
  simulations/evidence/features.py, which this reproduces exactly on the same training rows);
- every site projects its standardised instances with that basis (a linear map, so mean pooling
  commutes with it): encoders, f_phi's estimates, L_rec and Tier 2's recovery all live in the reduced
  space.

What the sums of outer products disclose is stated in docs/privacy.md: over n patients they fix the
patients' vectors up to an n x n rotation, so the site's floor applies to them as to every sum.
"""

from __future__ import annotations

import numpy as np

OUTER = "outer"  # the sum key's last part: ``<modality>.pca.outer``, [D, D]


def is_wide(dim: int | None, reduce_above: int, reduce_dim: int) -> bool:
    """Whether a modality of ``dim`` columns is reduced (``reduce_dim`` = 0 switches the reduction off)."""
    return reduce_dim > 0 and dim is not None and dim > reduce_above and dim > reduce_dim


def outer_sum(x: np.ndarray) -> np.ndarray:
    """Sum over patients (rows) of x x^T, float64 [D, D]."""
    x = np.asarray(x, dtype=np.float64)
    return x.T @ x


def whitened_basis(n: float, total: np.ndarray, outer: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   k: int) -> np.ndarray:
    """The leading ``k`` principal directions of the standardised features, as a [D, k] basis whose
    scores have unit variance: basis = V_k / sqrt(lambda_k).

    ``n``, ``total`` (sum of x) and ``outer`` (sum of x x^T) are the federated ``pca`` block sums; ``mean`` and ``std`` are the run's standardisation (from the same
    sums). Directions with (numerically) zero variance are dropped, so k may shrink; each direction's
    sign is fixed (largest absolute loading positive) so the basis is deterministic.
    """
    if n < 2:
        raise ValueError("a reduced basis needs the sums of at least 2 patients")
    ex = total / n
    cov = outer / n - np.outer(ex, ex)  # population covariance of the raw features
    cov_z = cov / np.outer(std, std)  # ... of the standardised ones
    cov_z = 0.5 * (cov_z + cov_z.T)
    vals, vecs = np.linalg.eigh(cov_z)
    order = np.argsort(vals)[::-1][:k]
    vals, vecs = vals[order], vecs[:, order]
    keep = vals > 1e-10 * max(float(vals[0]) if len(vals) else 0.0, 1e-300)
    vals, vecs = vals[keep], vecs[:, keep]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return vecs / np.sqrt(vals)


def project(z: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Standardised features [..., D] -> reduced scores [..., k] (identity without a basis)."""
    return z if basis is None else z @ basis
