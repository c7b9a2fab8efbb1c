"""What a generated cohort can show: cross-modal predictability and the oracle C-indices.

- ``cross_modal_r2[m]``: within each site, a ridge regression of modality m's mean-pooled features
  from the other modalities' mean-pooled features, fitted on the site's training complete cases
  (features standardised with the training mean and SD, ridge penalty chosen on the training
  cases by 5-fold cross-validation) and scored on its val + test complete cases; R^2 = 1 - SSE / SST summed over
  the held-out cases of every site and every feature, SST about the site's training mean. 0 means
  nothing about m can be read from the others; 1 means m is a linear function of them.
- ``oracle_c_index_all``: C-index of the true risk on the test split (every modality, no noise).
- ``oracle_c_index_observed``: C-index of E[true risk | latents of the observed modalities].
- ``oracle_c_index_no_recovery``: the same with each absent modality at its prior mean.
  observed - no_recovery is the most cross-modal recovery can add; all - observed is lost for good.
  ``oracle_incomplete`` gives the three on the test patients who lack some but not every modality.
"""

from __future__ import annotations

import numpy as np
from lifelines.utils import concordance_index

_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 1e4, 1e5)


def _ridge_cv(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """The ridge penalty in ``_ALPHAS`` with the smallest ``folds``-fold cross-validated error."""
    order = np.arange(len(y)) % folds  # rows are in patient order, which is random within a site
    best, best_err = _ALPHAS[0], np.inf
    for a in _ALPHAS:
        err = 0.0
        for f in range(folds):
            fit, out = order != f, order == f
            coef = np.linalg.solve(x[fit].T @ x[fit] + a * np.eye(x.shape[1]), x[fit].T @ y[fit])
            err += float(((y[out] - x[out] @ coef) ** 2).sum())
        if err < best_err:
            best, best_err = a, err
    return best


def _site_sse(feats: dict[str, np.ndarray], target: str, train: np.ndarray, held: np.ndarray):
    """(SSE, SST) of ridge-predicting ``target`` from the other modalities at one site."""
    others = [m for m in feats if m != target]
    xs = np.concatenate([feats[m] for m in others], axis=1)
    y = feats[target]
    mx, sx = xs[train].mean(0), xs[train].std(0) + 1e-8
    my, sy = y[train].mean(0), y[train].std(0) + 1e-8
    x_tr, x_ho = (xs[train] - mx) / sx, (xs[held] - mx) / sx
    y_tr, y_ho = (y[train] - my) / sy, (y[held] - my) / sy
    alpha = _ridge_cv(x_tr, y_tr)
    coef = np.linalg.solve(x_tr.T @ x_tr + alpha * np.eye(x_tr.shape[1]), x_tr.T @ y_tr)
    return float(((y_ho - x_ho @ coef) ** 2).sum()), float((y_ho**2).sum())


def cross_modal_r2(site_feats: list[dict[str, np.ndarray]], site_present: list[dict[str, np.ndarray]],
                   site_split: list[np.ndarray], min_train: int = 10) -> dict[str, float]:
    """Held-out within-site ridge R^2 of each modality's mean-pooled features from the others.

    ``site_feats[i][m]``: [n_i, d_m] mean-pooled features of every patient of site i (rows of
    absent modalities are ignored); ``site_present[i][m]``: bool [n_i]; ``site_split[i]``: labels.
    Sites with fewer than ``min_train`` training complete cases are skipped; NaN if none is left.
    """
    mods = list(site_feats[0]) if site_feats else []
    out: dict[str, float] = {}
    if len(mods) < 2:
        return {m: float("nan") for m in mods}
    for target in mods:
        sse = sst = 0.0
        for feats, present, split in zip(site_feats, site_present, site_split):
            complete = np.logical_and.reduce([present[m] for m in mods])
            train = complete & (split == "train")
            held = complete & (split != "train")
            if train.sum() < min_train or held.sum() < 2:
                continue
            a, b = _site_sse(feats, target, train, held)
            sse, sst = sse + a, sst + b
        out[target] = 1.0 - sse / sst if sst > 0 else float("nan")
    return out


def c_index_or_nan(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """lifelines' C-index (higher risk = shorter survival); NaN without a comparable pair."""
    if len(time) < 2 or event.sum() == 0:
        return float("nan")
    try:
        return float(concordance_index(time, -np.asarray(risk, dtype=float), event))
    except ZeroDivisionError:
        return float("nan")


def oracle_c_indices(time: np.ndarray, event: np.ndarray, test: np.ndarray, observed: np.ndarray, risk: np.ndarray,
                     observed_risk: np.ndarray, no_recovery_risk: np.ndarray) -> dict:
    """The oracle figures of the module docstring on the ``test`` patients (and on those among them who
    lack some but not every modality, ``oracle_incomplete``); ``observed`` is the bool [n, K] mask."""
    part = test & observed.any(axis=1) & ~observed.all(axis=1)
    return {"oracle_c_index_all": c_index_or_nan(time[test], risk[test], event[test]),
            "oracle_c_index_observed": c_index_or_nan(time[test], observed_risk[test], event[test]),
            "oracle_c_index_no_recovery": c_index_or_nan(time[test], no_recovery_risk[test], event[test]),
            "complete_fraction": float(observed.all(axis=1).mean()),
            "oracle_incomplete": {"n": int(part.sum()), "all": c_index_or_nan(time[part], risk[part], event[part]),
                                  "observed": c_index_or_nan(time[part], observed_risk[part], event[part]),
                                  "no_recovery": c_index_or_nan(time[part], no_recovery_risk[part], event[part])}}
