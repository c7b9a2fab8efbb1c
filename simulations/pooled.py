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
import pandas as pd

from ..core.concordance import c_index
from ..core.config import RunConfig
from ..core.feature_stats import FeatureStats, add_sums, local_feature_sums
from ..core.site_data import SiteData
from ..core.tensors import SiteTensors, build_tensors
from ..core.tier1 import build_model
from ..core.train import predict_risk, train_tier1
from ..core.site_session import site_seed


def train_pooled_reference(sites: list[SiteData], dims: dict[str, int], cfg: RunConfig) -> dict[str, float]:
    """Train centrally for rounds x local-epochs epochs on the pooled train splits; C-index on pooled test."""
    sums = add_sums([local_feature_sums(s, s.indices("train"), 1) for s in sites])
    stats = FeatureStats.from_sums(sums, dims, cfg.model.anat_partitions)
    tensors = [build_tensors(s, stats, max_instances=cfg.model.max_instances, seed=site_seed(cfg.seed, s.site))
               for s in sites]
    train = SiteTensors.concat([t.subset(s.indices("train")) for t, s in zip(tensors, sites)])
    test = SiteTensors.concat([t.subset(s.indices("test")) for t, s in zip(tensors, sites)])
    model = build_model(dims, cfg.model, cfg.seed)
    train_tier1(model, train, stats, cfg, epochs=cfg.rounds * cfg.local_epochs, seed=cfg.seed)
    risk = predict_risk(model, test)
    return {"c_index": c_index(test.time.numpy(), risk, test.event.numpy()),
            "note": "simulation only: the same model trained centrally on the pooled training splits"}


def oracle_c_index(truth_file: Path, site_names: list[str], test_ids: list[list[str]],
                   time: np.ndarray, event: np.ndarray) -> float | None:
    """C-index of the generator's true risk on the pooled test split (None without a truth file)."""
    if not truth_file.is_file():
        return None
    truth = pd.read_csv(truth_file, dtype={"patient_id": str, "site": str})
    key = {(str(s), str(p)): float(r) for s, p, r in zip(truth["site"], truth["patient_id"], truth["true_risk"])}
    risks = []
    for site, ids in zip(site_names, test_ids):
        short = site.removeprefix("site-")
        for pid in ids:
            r = key.get((site, pid), key.get((short, pid)))
            if r is None:
                return None
            risks.append(r)
    return c_index(time, np.asarray(risks), event)
