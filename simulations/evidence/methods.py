"""Centralised baselines on mean-pooled features (simulation only: they need every site's rows).

Every method has ``fit(data, train_rows, val_rows)`` and ``risk(data, rows, present=None)`` (higher =
shorter survival); ``present`` overrides which modalities each patient has (test-time masking).

- ``PooledCox``: lifelines Cox (penalizer 0.1) on every modality's features, mean imputation + missing
  indicators.
- ``PooledCoxTrainVal``: the same, fitted on train + val (the data README's recipe).
- ``CompleteCaseCox``: the same Cox trained only on complete training cases (no indicators: they are
  constant there), evaluated on everyone with mean imputation.
- ``EarlyFusion``: a small MLP with a Cox loss on the concatenated standardised features, zeros for
  missing (no indicators), trained pooled with early stopping on the validation C-index.
- ``LateFusion``: one lifelines Cox per modality on the training patients having it; each modality's
  risk is z-scored with its training mean/sd and the z-scores of the modalities present are averaged.
- ``RidgeImputedCox``: the conditional-mean imputer a statistician would use. Each modality's
  (standardised, reduced) features are regressed by ridge on the other modalities' features (0 where
  absent) and missing flags over the training patients having it; a patient's absent modalities are
  filled with that prediction, then the pooled Cox (penalizer 0.1, indicators kept) is fitted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...core.survival.cox import cox_loss
from .common import safe_c_index
from .features import Featurizer, PooledCohort


STRATUM = "_S"  # the strata column of a stratified fit


def fit_cox(x: pd.DataFrame, time: np.ndarray, event: np.ndarray, penalizer: float = 0.1,
            strata: np.ndarray | None = None):
    """lifelines CoxPHFitter on ``x`` (constant columns dropped), with one baseline per value of ``strata``
    when given; returns (fitter, kept columns)."""
    from lifelines import CoxPHFitter

    keep = [c for c in x.columns if x[c].std() > 1e-8]
    df = x[keep].copy()
    df["_T"], df["_E"] = time, event
    if strata is not None:
        df[STRATUM] = strata
    cph = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(df, duration_col="_T", event_col="_E", strata=[STRATUM] if strata is not None else None)
    return cph, keep


def cox_risk(cph, keep: list[str], x: pd.DataFrame, strata: np.ndarray | None = None) -> np.ndarray:
    """Linear predictor (log partial hazard) of a fitted lifelines Cox model (``strata``: the rows' strata,
    for a model fitted with them)."""
    x = x[keep] if strata is None else x[keep].assign(**{STRATUM: strata})
    return np.asarray(cph.predict_log_partial_hazard(x), dtype=float).ravel()


class PooledCox:
    name = "pooled Cox (mean imputation + indicators)"
    indicators = True

    def __init__(self, penalizer: float = 0.1, featurizer: Featurizer | None = None) -> None:
        self.penalizer, self.feat = penalizer, featurizer or Featurizer()

    def _train_rows(self, data: PooledCohort, rows: np.ndarray) -> np.ndarray:
        return rows

    def fit(self, data: PooledCohort, train: np.ndarray, val: np.ndarray | None = None) -> "PooledCox":
        self.feat.fit(data, train)
        rows = self._train_rows(data, train)
        x = self.feat.design(data, rows, indicators=self.indicators)
        self.cph, self.keep = fit_cox(x, data.time[rows], data.event[rows], self.penalizer)
        return self

    def risk(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        return cox_risk(self.cph, self.keep, self.feat.design(data, rows, present, indicators=self.indicators))


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of y [N, q] on x [N, p] with an unpenalised intercept: (coef [p, q], intercept [q])."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return coef, my - mx @ coef


class RidgeImputedCox(PooledCox):
    name = "Cox on ridge-imputed features (+ indicators)"

    def __init__(self, penalizer: float = 0.1, alpha: float = 1.0, featurizer: Featurizer | None = None) -> None:
        super().__init__(penalizer, featurizer)
        self.alpha = alpha
        self.imputers: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _inputs(self, data: PooledCohort, rows: np.ndarray, pres: np.ndarray, skip: str) -> np.ndarray:
        parts = []
        for m in data.modalities:
            if m != skip:
                parts += [self.feat.block(data, m, rows, pres), pres[rows, data.modalities.index(m)][:, None].astype(float)]
        return np.concatenate(parts, axis=1)

    def _imputed(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None) -> pd.DataFrame:
        pres = data.present if present is None else present
        x = self.feat.design(data, rows, pres, indicators=True)
        for k, m in enumerate(data.modalities):
            if m not in self.imputers:
                continue
            gone = ~pres[rows, k]
            if gone.any():
                coef, icpt = self.imputers[m]
                cols = [c for c in x.columns if c.startswith(f"{m}_")]
                x.loc[gone, cols] = self._inputs(data, rows[gone], pres, m) @ coef + icpt
        return x

    def fit(self, data: PooledCohort, train: np.ndarray, val: np.ndarray | None = None) -> "RidgeImputedCox":
        self.feat.fit(data, train)
        for k, m in enumerate(data.modalities):
            rows = train[data.present[train, k]]
            if len(data.modalities) > 1 and len(rows) >= 10:
                self.imputers[m] = ridge_fit(self._inputs(data, rows, data.present, m),
                                             self.feat.block(data, m, rows), self.alpha)
        x = self._imputed(data, train, None)
        self.cph, self.keep = fit_cox(x, data.time[train], data.event[train], self.penalizer)
        return self

    def risk(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        return cox_risk(self.cph, self.keep, self._imputed(data, rows, present))


class PooledCoxTrainVal(PooledCox):
    """The pooled Cox fitted on train + val (it selects nothing on val, so it may train on it): the recipe
    of the reference C-index in ../shared/data/tcga-gbmlgg/README.md (0.836 there)."""

    name = "pooled Cox, fitted on train + val"

    def fit(self, data: PooledCohort, train: np.ndarray, val: np.ndarray | None = None) -> "PooledCoxTrainVal":
        return super().fit(data, train if val is None else np.concatenate([train, val]))


class CompleteCaseCox(PooledCox):
    name = "complete-case Cox (trained on complete cases, imputed at test)"
    indicators = False

    def _train_rows(self, data: PooledCohort, rows: np.ndarray) -> np.ndarray:
        return rows[data.present[rows].all(axis=1)]


def late_fusion_combine(z: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Average of the per-modality z-scored risks over the modalities present; 0 when none is."""
    z = np.where(present, np.nan_to_num(z), 0.0)
    n = present.sum(axis=1)
    return np.where(n > 0, z.sum(axis=1) / np.maximum(n, 1), 0.0)


class LateFusion:
    name = "late fusion (per-modality Cox, mean of z-scored risks)"

    def __init__(self, penalizer: float = 0.1, featurizer: Featurizer | None = None) -> None:
        self.penalizer, self.feat = penalizer, featurizer or Featurizer()
        self.models: dict[str, tuple] = {}

    def fit(self, data: PooledCohort, train: np.ndarray, val: np.ndarray | None = None) -> "LateFusion":
        self.feat.fit(data, train)
        for k, m in enumerate(data.modalities):
            rows = train[data.present[train, k]]
            if len(rows) < 10 or data.event[rows].sum() < 2:
                continue
            x = self.feat.design(data, rows, indicators=False, modalities=(m,))
            cph, keep = fit_cox(x, data.time[rows], data.event[rows], self.penalizer)
            r = cox_risk(cph, keep, x)
            self.models[m] = (cph, keep, r.mean(), max(r.std(), 1e-8))
        return self

    def risk(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        pres = (data.present if present is None else present)[rows].copy()
        z = np.zeros(pres.shape)
        for k, m in enumerate(data.modalities):
            if m not in self.models:
                pres[:, k] = False
                continue
            cph, keep, mu, sd = self.models[m]
            x = self.feat.design(data, rows, present, indicators=False, modalities=(m,))
            z[:, k] = (cox_risk(cph, keep, x) - mu) / sd
        return late_fusion_combine(z, pres)


class EarlyFusion:
    name = "early fusion MLP (zero-fill)"

    def __init__(self, hidden: int = 32, epochs: int = 300, lr: float = 1e-3, weight_decay: float = 1e-3,
                 dropout: float = 0.2, seed: int = 0, featurizer: Featurizer | None = None) -> None:
        self.hidden, self.epochs, self.lr, self.wd, self.dropout, self.seed = hidden, epochs, lr, weight_decay, dropout, seed
        self.feat = featurizer or Featurizer()

    def _x(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None) -> torch.Tensor:
        return torch.tensor(self.feat.design(data, rows, present, indicators=False).to_numpy(), dtype=torch.float32)

    def fit(self, data: PooledCohort, train: np.ndarray, val: np.ndarray | None = None) -> "EarlyFusion":
        self.feat.fit(data, train)
        x = self._x(data, train)
        t, e = torch.tensor(data.time[train]), torch.tensor(data.event[train])
        torch.manual_seed(self.seed)
        self.net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
                                 nn.Linear(self.hidden, 1))
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.wd)
        best, best_state = -np.inf, None
        for epoch in range(self.epochs):  # full batch: the pooled training split fits in one batch
            self.net.train()
            loss = cox_loss(self.net(x).squeeze(-1), t, e)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if val is not None and len(val) and (epoch + 1) % 10 == 0:
                score = safe_c_index(data.time[val], self.risk(data, val), data.event[val])
                if score > best:
                    best, best_state = score, {k: v.clone() for k, v in self.net.state_dict().items()}
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return self

    @torch.no_grad()
    def risk(self, data: PooledCohort, rows: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        self.net.eval()
        return self.net(self._x(data, rows, present)).squeeze(-1).numpy().astype(float)
