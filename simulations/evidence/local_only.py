"""rmm's Tier 1 trained at one site alone, in-process (no Flower): the site's own feature statistics,
the same model, loop, rounds and validation-based round selection as the federation, without peers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.messages import metric_names as M
from ...core.survival.concordance import ConcordanceCounts
from ...core.config import RunConfig
from ...core.aggregates.feature_stats import FeatureStats
from ...core.site.site_session import SiteSession
from ...core.model.train import predict_risk
from ...core.model.weights import get_weights
from .common import SplitRisks


def train_local(path: Path, dims: dict[str, int], cfg: RunConfig) -> dict[str, SplitRisks]:
    """Train Tier 1 on one site; returns its risks on the site's train and test splits."""
    s = SiteSession(path, device="cpu")
    s.bind_schema(dims)
    cfg = cfg.resolve_widths(len(s.data.indices("train")))
    sums = s.feature_sums(cfg.min_stat_count, reduce_above=cfg.model.reduce_above, reduce_dim=cfg.model.reduce_dim)
    s.setup(cfg, FeatureStats.from_sums(sums, dims, cfg.model.anat_partitions, cfg.model.reduce_dim))
    weights = get_weights(s.model())
    best, best_score = weights, float("-inf")
    for rnd in range(1, cfg.rounds + 1):
        weights, _ = s.train(weights, rnd)
        v = s.validate(weights)
        score = (v[M.VAL_PLL] / v[M.VAL_EVENTS] if v[M.VAL_EVENTS] > 0 else float("nan")) \
            if cfg.select_metric == "partial-likelihood" else \
            ConcordanceCounts(*(v[k] for k in M.PAIRS.counts)).c_index()
        if not cfg.select_best or (np.isfinite(score) and score > best_score):
            best, best_score = weights, score if np.isfinite(score) else best_score
    model = s.model(best)
    out = {}
    for split in ("train", "test"):
        data = s.tensors.subset(s.data.indices(split))
        out[split] = SplitRisks(data.time.numpy().astype(float), data.event.numpy().astype(int),
                                predict_risk(model, data), np.asarray([s.data.site] * len(data)))
    return out
