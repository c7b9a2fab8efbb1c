"""Simulation-only references that need every site's data in one place.

- the pooled reference: the same Tier 1 model and loop trained centrally on the pooled training
  splits, so the cost of federation is visible;
- pooled test-split metrics of the federated model (C-index over all sites' test patients, the
  exact percentile behind theta) and the oracle C-index from the generator's truth file.

A real federation cannot compute any of these; they are labelled as simulation-only wherever shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.concordance import c_index
from ..core.config import RunConfig
from ..core.feature_stats import FeatureStats, add_sums, local_feature_sums
from ..core.site_data import SiteData
from ..core.tensors import SiteTensors, build_tensors
from ..core.tier1 import build_model
from ..core.train import predict_risk, train_tier1
from ..core.weights import get_weights, set_weights
from ..core.site_session import site_seed
from .optional_inputs import Truth


def train_pooled_reference(sites: list[SiteData], dims: dict[str, int], cfg: RunConfig) -> dict[str, float]:
    """Train centrally for rounds x local-epochs epochs on the pooled train splits; C-index on pooled test."""
    sums = add_sums([local_feature_sums(s, s.indices("train"), 1) for s in sites])
    stats = FeatureStats.from_sums(sums, dims, cfg.model.anat_partitions)
    tensors = [build_tensors(s, stats, max_instances=cfg.model.max_instances, seed=site_seed(cfg.seed, s.site))
               for s in sites]
    train, val, test = (SiteTensors.concat([t.subset(s.indices(split)) for t, s in zip(tensors, sites)])
                        for split in ("train", "val", "test"))
    model = build_model(dims, cfg.model, cfg.seed)
    best, best_score, best_epoch = get_weights(model), float("-inf"), 0
    for epoch in range(1, cfg.rounds + 1):  # one pooled pass per federated round
        train_tier1(model, train, stats, cfg, epochs=cfg.local_epochs, seed=site_seed(cfg.seed, "pooled", epoch))
        if cfg.select_best:
            score = c_index(val.time.numpy(), predict_risk(model, val), val.event.numpy())
            if score > best_score:
                best, best_score, best_epoch = get_weights(model), score, epoch
    if cfg.select_best:
        set_weights(model, best)
    risk = predict_risk(model, test)
    return {"c_index": c_index(test.time.numpy(), risk, test.event.numpy()),
            "selected_epoch": best_epoch if cfg.select_best else cfg.rounds,
            "note": "simulation only: the same model and loop trained centrally on the pooled training splits, "
                    "selected on the pooled validation split like the federation selects its round"}


def oracle_c_index(truth: Truth, site_names: list[str], test_ids: list[list[str]],
                   time: np.ndarray, event: np.ndarray) -> float:
    """C-index of the generator's true risk on the pooled test split (``truth`` checked before training
    by :func:`~rmmfed.simulations.optional_inputs.load_truth`, so every test patient has a row)."""
    return c_index(time, truth.test_risks(site_names, test_ids), event)
