"""Simulation-only references that need every site's data in one place.

- the pooled reference: the same Tier 1 model and loop trained centrally on the pooled training
  splits, so the cost of federation is visible;
- pooled test-split metrics of the federated model (C-index over all sites' test patients, the
  exact percentile behind theta); the oracle figures live in ``oracle``.

A real federation cannot compute any of these; they are labelled as simulation-only wherever shown.
"""

from __future__ import annotations

import torch

from ..core.survival.concordance import c_index
from ..core.survival.cox import cox_partial_log_likelihood
from ..core.config import RunConfig
from ..core.survival.cox_core import CoxCore, CoxMoments, fit_cox_core, with_cox
from ..core.survival.cox_newton import add_cox_sums, stratum_sums
from ..core.site.site_cox import cox_design
from ..core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums
from ..core.data.site_data import SiteData
from ..core.data.tensors import SiteTensors, build_tensors
from ..core.model.tier1 import build_model
from ..core.model.train import predict_risk, round_lr, train_tier1
from ..core.privacy.dp import zero_risk_head
from ..core.model.weights import get_weights, set_weights
from ..core.site.site_seed import site_seed


def stratified_pll(model, parts: list[SiteTensors]) -> float:
    """The federation's selection criterion on pooled data: the sites' validation Cox partial
    log-likelihoods summed, per event (risk sets within each site)."""
    total, events = 0.0, 0.0
    for part in parts:
        risk = torch.as_tensor(predict_risk(model, part), dtype=torch.float64)
        total += float(cox_partial_log_likelihood(risk, part.time.double(), part.event.double()))
        events += float(part.event.sum())
    return total / events if events > 0 else float("nan")


def pooled_cox_core(model, trains: list[SiteTensors], vals: list[SiteTensors], penalizers) -> CoxCore:
    """core/survival/cox_core.py's fit with every site's stratum computed in one place (the federated fit's twin)."""
    xs = [cox_design(model, t) for t in trains]
    xv = [cox_design(model, v) for v in vals]
    moments = CoxMoments(sum(len(x) for x in xs), sum(x.sum(0) for x in xs), sum((x ** 2).sum(0) for x in xs))

    def train_at(coef):
        return add_cox_sums([stratum_sums(x, t.time.numpy(), t.event.numpy(), coef) for x, t in zip(xs, trains)])

    def val_at(coef):
        parts = [stratum_sums(x, v.time.numpy(), v.event.numpy(), coef) for x, v in zip(xv, vals)]
        return sum(p.loglik for p in parts), sum(p.events for p in parts)

    return fit_cox_core(train_at, val_at, moments, penalizers)


def train_pooled_reference(sites: list[SiteData], dims: dict[str, int], cfg: RunConfig) -> dict[str, float]:
    """Train centrally for rounds x local-epochs epochs on the pooled train splits; C-index on pooled test."""
    mc = cfg.model
    sums = add_sums([local_feature_sums(s, s.indices("train"), 1, reduce_above=mc.reduce_above,
                                        reduce_dim=mc.reduce_dim) for s in sites])
    stats = FeatureStats.from_sums(sums, dims, mc.anat_partitions, mc.reduce_dim)
    tensors = [build_tensors(s, stats, seed=site_seed(cfg.seed, s.site))
               for s in sites]
    cfg = cfg.resolve_widths(sum(len(s.indices("train")) for s in sites))
    train, test = (SiteTensors.concat([t.subset(s.indices(split)) for t, s in zip(tensors, sites)])
                   for split in ("train", "test"))
    vals = [t.subset(s.indices("val")) for t, s in zip(tensors, sites)]
    val = SiteTensors.concat(vals)
    model = build_model(stats.model_dims(dims), cfg.model, cfg.seed)
    core = None
    if cfg.model.cox_core:  # the same exact Cox core, fitted on the pooled splits (one stratum per site)
        core = pooled_cox_core(model, [t.subset(s.indices("train")) for t, s in zip(tensors, sites)], vals,
                               cfg.model.penalizers())
        set_weights(model, with_cox(get_weights(model), core))
    best, best_score, best_epoch = get_weights(model), float("-inf"), 0
    if core is not None:  # epoch 0 is the Cox model alone: the network must beat it on validation
        best_score = core.val_pll_per_event + cfg.model.residual_min_gain / max(core.val_events, 1)
    for epoch in range(1, cfg.rounds + 1):  # one pooled pass per federated round
        train_tier1(model, train, stats, cfg, epochs=cfg.local_epochs, seed=site_seed(cfg.seed, "pooled", epoch),
                    lr=round_lr(cfg, epoch))
        if cfg.select_best:
            score = (stratified_pll(model, vals) if cfg.select_metric == "partial-likelihood"
                     else c_index(val.time.numpy(), predict_risk(model, val), val.event.numpy()))
            if score > best_score:
                best, best_score, best_epoch = get_weights(model), score, epoch
    if cfg.select_best:
        set_weights(model, best if best_epoch or core is None else zero_risk_head(get_weights(model)))
    risk = predict_risk(model, test)
    return {"c_index": c_index(test.time.numpy(), risk, test.event.numpy()),
            "selected_epoch": best_epoch if cfg.select_best else cfg.rounds,
            **({"cox_penalizer": core.penalizer, "cox_val_pll_per_event": core.val_pll_per_event} if core else {}),
            "note": "simulation only: the same model and loop trained centrally on the pooled training splits, "
                    "selected on the validation splits by the federation's criterion (select-metric)"}
