"""The Cox core of Tier 1: an exact site-stratified ridge Cox model, fitted across sites, that the network
can only add to.

The design is what Tier 1's linear term reads with ``model.cox-core`` (:meth:`Tier1Model.linear_input`):
per modality, the mean of the bag's standardised (reduced) instance features, 0 where the modality is
absent (mean imputation), and its presence flag. Each site computes the Efron log partial likelihood,
gradient and Hessian of its own training patients (one stratum) at the coefficients the server sends
(:func:`rmmfed.core.survival.cox_newton.stratum_sums`), plus the design's column sums and sums of squares; the
server adds them. So the fit equals lifelines' ``CoxPHFitter(penalizer=..., strata=[site])`` on the
pooled design, to the digit, without a row leaving a site:

* the columns are standardised by the pooled mean and sample sd (from the sums); a column constant over
  the pooled training patients is left out (coefficient 0), as no model can use it;
* each penalizer of ``model.cox-penalizers`` is fitted by Newton-Raphson, from the strongest down, each
  started at the previous solution (a warm path: a few round trips each);
* the penalizer kept is the one with the highest site-stratified validation log partial likelihood
  (summed over the sites' validation splits at the fitted coefficients; ties keep the stronger penalty).

Sites compute on the raw design at ``beta / sd``; the partial likelihood ignores a shift of a column, so
the standardised gradient and Hessian are the raw ones divided by ``sd`` (chain rule through
``coef = beta / sd``: :func:`standardised`).

The releases are exact sums over a site's whole split (>= its floor of patients): that is why the
``cox`` phase is not in the default site policy (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import math

import numpy as np

from .cox_newton import CoxFitError, CoxSums, newton_fit, pooled_standardisation
from ..privacy.dp import zero_risk_head

LINEAR = "linear.weight"  # the Tier 1 weight that holds the Cox core's coefficients

__all__ = ["CoxMoments", "CoxCore", "PathPoint", "standardised", "fit_cox_core", "with_cox", "keep_residual"]


@dataclass(frozen=True)
class CoxMoments:
    """Count, column sums and sums of squares of the (pooled) training design."""

    n: int
    total: np.ndarray
    total_sq: np.ndarray

    def __add__(self, other: "CoxMoments") -> "CoxMoments":
        return CoxMoments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)


@dataclass(frozen=True)
class PathPoint:
    penalizer: float
    iterations: int
    train_loglik: float  # penalised, at the fit (standardised scale)
    val_loglik: float  # site-stratified validation log partial likelihood (nan when the fit failed)
    error: str = ""


@dataclass
class CoxCore:
    """The fitted Cox core: ``coef`` on the raw design (what ``Tier1Model.linear.weight`` holds)."""

    coef: np.ndarray
    penalizer: float
    mean: np.ndarray
    sd: np.ndarray
    kept_columns: np.ndarray  # bool [p]: columns that vary over the pooled training design
    val_loglik: float
    val_events: int
    n_train: int
    path: list[PathPoint] = field(default_factory=list)
    queries: int = 0  # round trips to the sites (training sums and validation likelihoods)

    @property
    def val_pll_per_event(self) -> float:
        """The validation log partial likelihood per event: Tier 1's model-selection score, comparable."""
        return self.val_loglik / self.val_events if self.val_events else float("nan")

    def to_doc(self) -> dict:
        return {"coef": [float(c) for c in self.coef], "penalizer": self.penalizer, "val_pll_per_event": self.val_pll_per_event,
                "val_events": self.val_events, "n_train": self.n_train, "queries": self.queries,
                "columns": int(self.coef.shape[0]), "columns_used": int(self.kept_columns.sum()),
                "path": [{"penalizer": p.penalizer, "iterations": p.iterations, "val_loglik": p.val_loglik,
                          **({"error": p.error} if p.error else {})} for p in self.path]}


def standardised(raw: CoxSums, sd: np.ndarray, keep: np.ndarray) -> CoxSums:
    """Sums at ``beta / sd`` on the raw design -> the sums in the standardised columns ``keep``."""
    s = sd[keep]
    return CoxSums(raw.loglik, raw.grad[keep] / s, raw.hess[np.ix_(keep, keep)] / np.outer(s, s), raw.n, raw.events)


def fit_cox_core(train_at: Callable[[np.ndarray], CoxSums], val_at: Callable[[np.ndarray], tuple[float, int]],
                 moments: CoxMoments, penalizers: tuple[float, ...]) -> CoxCore:
    """The penalised path and its selection (module docstring).

    ``train_at(coef)``: the sites' summed training sums at raw-design coefficients ``coef`` (one round
    trip); ``val_at(coef)``: the summed validation log partial likelihood and events. Raises
    :class:`CoxFitError` when no penalizer can be fitted."""
    p = moments.total.shape[0]
    mean, sd = pooled_standardisation(moments.n, moments.total, moments.total_sq)
    var = (moments.total_sq - moments.n * mean ** 2) / max(moments.n - 1, 1)
    keep = var > 1e-12 * np.maximum(1.0, np.abs(mean) ** 2)
    if not keep.any():
        raise CoxFitError("every column of the Cox design is constant over the training patients. Fix: give the "
                          "sites features that vary (or set model.cox-core = false)")
    queries = 0

    def raw(beta_std: np.ndarray) -> np.ndarray:
        coef = np.zeros(p)
        coef[keep] = beta_std / sd[keep]
        return coef

    def sums_at(beta_std: np.ndarray) -> CoxSums:
        nonlocal queries
        queries += 1
        return standardised(train_at(raw(beta_std)), sd, keep)

    path: list[PathPoint] = []
    best: tuple[float, np.ndarray, float, int] | None = None  # (val loglik, coef, penalizer, events)
    start = None
    for pen in sorted(penalizers, reverse=True):
        try:
            fit = newton_fit(sums_at, int(keep.sum()), pen, moments.n, start=start)
        except CoxFitError as err:
            path.append(PathPoint(pen, 0, float("nan"), float("nan"), str(err).split(". Fix")[0]))
            continue
        start = fit.beta
        coef = raw(fit.beta)
        queries += 1
        val, events = val_at(coef)
        path.append(PathPoint(pen, fit.iterations, fit.loglik, val))
        if best is None or val > best[0]:
            best = (val, coef, pen, events)
    if best is None:
        raise CoxFitError("the Cox core could not be fitted at any penalizer of model.cox-penalizers "
                          f"({', '.join(f'{q:g}' for q in penalizers)}): {path[-1].error}. Fix: add a larger penalizer")
    val, coef, pen, events = best
    return CoxCore(coef, pen, mean, sd, keep, val, events, moments.n, path, queries)


def with_cox(weights: dict[str, np.ndarray], core: CoxCore) -> dict[str, np.ndarray]:
    """Tier 1's initial weights with the Cox core's coefficients and a zero network risk: round 0 is the
    Cox model exactly."""
    out = zero_risk_head(weights)
    out[LINEAR] = core.coef.astype(weights[LINEAR].dtype).reshape(weights[LINEAR].shape)
    return out


def keep_residual(weights: dict[str, np.ndarray], history: list[dict], kept_round: int, core: CoxCore,
                  min_gain: float = 0.0) -> tuple[dict[str, np.ndarray], dict]:
    """(Tier 1's weights, what was decided): the network residual is kept when the kept round's federated
    validation log partial likelihood beats the Cox core's alone by more than ``min_gain`` nats (summed
    over the validation events: the kept round is the best of many, so a tiny gain is noise); kept, too,
    when a run without validation gives nothing to judge by. Otherwise its risk head is zeroed."""
    entry = next((h for h in history if h.get("round") == kept_round and "val-pll" in h), None)
    net = float(entry["val-pll"]) if entry is not None else float("nan")
    cox = core.val_pll_per_event
    gain = (net - cox) * core.val_events
    kept = not (math.isfinite(net) and math.isfinite(cox)) or gain > min_gain
    doc = {"residual_kept": kept, "val_pll_per_event_cox": cox, "val_pll_per_event_tier1": net,
           "val_gain_nats": gain if math.isfinite(gain) else None, "residual_min_gain": min_gain,
           "round": kept_round}
    return (weights if kept else zero_risk_head(weights)), doc
