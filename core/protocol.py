"""What crosses the network: message types and record keys (the allowlist of issue #5 starts here).

Only model weights, feature sums over >= min-stat-count patients, histogram counts and scalar metrics
ever leave a site. Keys are fixed so an audit can check every reply against them.
"""

from __future__ import annotations

SCHEMA = "query.schema"  # site -> server: modality names/dims, counts, rmm version
STATS = "query.stats"  # site -> server: feature sums (counts, sums, sums of squares)
SETUP = "query.setup"  # server -> site: run config + federated feature statistics (ack only back)
TRAIN = "train"  # Tier 1 round: weights in, weights + scalar metrics out
TRAIN_TIER2 = "train.tier2"  # Tier 2 round: Tier 2 weights only (Tier 1 stays frozen at the site)
HISTOGRAM = "query.histogram"  # calibration (tier 1: theta; tier 2: abstain bound): histogram counts
HAZARD = "query.hazard"  # baseline hazard: follow-up histogram, then per-interval event counts and risk-set sums
EVALUATE = "evaluate"  # final evaluation: scalar metrics only

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SUMS = "sums"
COUNTS = "counts"
HAZARD_RECORD = "hazard"
STATS_RECORD = "feature-stats"


def encode_schema(modalities: dict[str, int | None]) -> str:
    """``{"a": 3, "b": None}`` -> ``"a:3,b:-1"`` (flat string for a ConfigRecord)."""
    return ",".join(f"{m}:{-1 if d is None else int(d)}" for m, d in modalities.items())


def decode_schema(text: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for part in filter(None, text.split(",")):
        name, _, dim = part.rpartition(":")
        out[name] = None if int(dim) < 0 else int(dim)
    return out
