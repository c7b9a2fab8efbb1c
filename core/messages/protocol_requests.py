"""The requests of the rmm protocol (server -> site): typed payloads over record dicts (no Flower).
Each phase's record names and the replies: core/messages/protocol.py, which exports these under its own name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..aggregates.histogram import HistogramGrid
from ..routing.fitted_two_tier import FittedTwoTier
from ..data.schema import decode_schema, encode_schema

from .record_names import (
    ARRAYS, CONFIG, COX_RECORD, HAZARD_RECORD, PLAN_RECORD, STATS_RECORD, SURVIVAL_RECORD, Records,
)


def _dims(text: Any) -> dict[str, int]:
    return {k: int(v) for k, v in decode_schema(str(text)).items() if v is not None}


def _arrays(records: Records, name: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in (records.get(name) or {}).items()}


@dataclass
class StatsRequest:
    dims: dict[str, int]
    min_stat_count: int = 0
    reduce_above: int = 0
    reduce_dim: int = 0

    def to_records(self) -> Records:
        return {CONFIG: {"schema": encode_schema(self.dims), "min-stat-count": int(self.min_stat_count),
                         "reduce-above": int(self.reduce_above), "reduce-dim": int(self.reduce_dim)}}

    @classmethod
    def from_records(cls, r: Records) -> "StatsRequest":
        c = r[CONFIG]
        return cls(_dims(c["schema"]), int(c.get("min-stat-count", 0)), int(c.get("reduce-above", 0)),
                   int(c.get("reduce-dim", 0)))


@dataclass
class SetupRequest:
    config: dict[str, Any]  # the flat run config (RunConfig.to_flat)
    dims: dict[str, int]
    stats: dict[str, np.ndarray]  # FeatureStats.to_arrays

    def to_records(self) -> Records:
        return {CONFIG: {**self.config, "schema": encode_schema(self.dims)}, STATS_RECORD: dict(self.stats)}

    @classmethod
    def from_records(cls, r: Records) -> "SetupRequest":
        conf = dict(r[CONFIG])
        dims = _dims(conf.pop("schema"))
        return cls(conf, dims, _arrays(r, STATS_RECORD))


@dataclass
class RoundRequest:
    """A training or validation round (Tier 1 or 2). Flower's strategy builds it (weights + its config)."""

    weights: dict[str, np.ndarray]
    server_round: int = 0  # Flower's round within this submission
    round_offset: int = 0  # rounds completed before a resume
    proximal_mu: float = 0.0  # FedProx

    @property
    def run_round(self) -> int:
        """The run's round, across resumes."""
        return self.server_round + self.round_offset

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), CONFIG: {"server-round": self.server_round,
                                                     "round-offset": self.round_offset,
                                                     "proximal-mu": self.proximal_mu}}

    @classmethod
    def from_records(cls, r: Records) -> "RoundRequest":
        c = r.get(CONFIG) or {}
        return cls(_arrays(r, ARRAYS), int(c.get("server-round", 0)), int(c.get("round-offset", 0)),
                   float(c.get("proximal-mu", 0.0)))


@dataclass
class FreezeRequest:
    """The run's final Tier 1: the site keeps it (frozen) for calibration, Tier 2 and evaluation."""

    weights: dict[str, np.ndarray]

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights)}

    @classmethod
    def from_records(cls, r: Records) -> "FreezeRequest":
        return cls(_arrays(r, ARRAYS))


@dataclass
class GridRequest:
    """A histogram on a grid the server fixes: Tier 1 calibration or the follow-up times."""

    grid: HistogramGrid

    def to_records(self) -> Records:
        return {CONFIG: self.grid.to_config()}

    @classmethod
    def from_records(cls, r: Records) -> "GridRequest":
        return cls(HistogramGrid.from_config(dict(r[CONFIG])))


@dataclass
class Tier2CalibrationRequest:
    weights: dict[str, np.ndarray]  # Tier 2
    grid: HistogramGrid

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), CONFIG: self.grid.to_config()}

    @classmethod
    def from_records(cls, r: Records) -> "Tier2CalibrationRequest":
        return cls(_arrays(r, ARRAYS), HistogramGrid.from_config(dict(r[CONFIG])))


@dataclass
class ConformalRequest:
    """Histogram of one tier's conformal scores (core/routing/conformal.py) on the masked complete val cases."""

    tier: str  # "tier1" or "tier2"
    grid: HistogramGrid
    tier2_weights: dict[str, np.ndarray] | None = None  # with tier = "tier2"

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.tier2_weights or {}), CONFIG: {**self.grid.to_config(), "tier": self.tier}}

    @classmethod
    def from_records(cls, r: Records) -> "ConformalRequest":
        c = r[CONFIG]
        return cls(str(c.get("tier", "")), HistogramGrid.from_config(dict(c)), _arrays(r, ARRAYS) or None)


@dataclass
class RiskGroupsRequest:
    """The training patients' two-tier system risk on ``grid`` (for the risk groups' tertiles)."""

    tier2_weights: dict[str, np.ndarray] | None
    grid: HistogramGrid
    fitted: FittedTwoTier  # its scalars travel (FittedTwoTier.to_config): the cut points are what this asks for

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.tier2_weights or {}), CONFIG: {**self.grid.to_config(), **self.fitted.to_config()}}

    @classmethod
    def from_records(cls, r: Records) -> "RiskGroupsRequest":
        c = r[CONFIG]
        return cls(_arrays(r, ARRAYS) or None, HistogramGrid.from_config(dict(c)), FittedTwoTier.from_records({CONFIG: c}))


@dataclass
class HazardRequest:
    grid: np.ndarray  # time points of the Breslow sums

    def to_records(self) -> Records:
        return {HAZARD_RECORD: {"grid": np.asarray(self.grid, dtype=np.float64)}}

    @classmethod
    def from_records(cls, r: Records) -> "HazardRequest":
        return cls(np.asarray(r[HAZARD_RECORD]["grid"], dtype=np.float64))


@dataclass
class CoxRequest:
    """The Cox core's sums (core/site/site_cox.py) at raw-design coefficients ``coef`` on ``split``."""

    coef: np.ndarray
    split: str = "train"
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")

    def to_records(self) -> Records:
        return {COX_RECORD: {"coef": np.asarray(self.coef, dtype=np.float64)}, CONFIG: {"split": self.split}}

    @classmethod
    def from_records(cls, r: Records) -> "CoxRequest":
        split = str((r.get(CONFIG) or {}).get("split", "train"))
        return cls(np.asarray(r[COX_RECORD]["coef"], dtype=np.float64).reshape(-1), split)


@dataclass
class EvaluateRequest:
    """The evaluation: Tier 2's weights, the whole fitted decision (its baseline hazard gives the survival
    metrics, its q-hats and cut points the coverage and which-exam sums), and the routing-score
    ``thresholds`` of the risk-coverage curve (at most metric_names.KEPT_LEVELS)."""

    tier2_weights: dict[str, np.ndarray] | None
    fitted: FittedTwoTier
    thresholds: tuple[float, ...] = ()

    def to_records(self) -> Records:
        r = self.fitted.to_records()
        r[CONFIG] = {**r[CONFIG], "has-tier2": self.tier2_weights is not None}
        r[PLAN_RECORD] = {**r[PLAN_RECORD], "thresholds": np.asarray(self.thresholds, np.float64)}
        return {ARRAYS: dict(self.tier2_weights or {}), **r}

    @classmethod
    def from_records(cls, r: Records) -> "EvaluateRequest":
        c, plan = r[CONFIG], _arrays(r, PLAN_RECORD)
        fitted = FittedTwoTier.from_records({CONFIG: c, PLAN_RECORD: plan, SURVIVAL_RECORD: _arrays(r, SURVIVAL_RECORD)})
        return cls(_arrays(r, ARRAYS) if bool(c["has-tier2"]) else None, fitted,
                   tuple(float(v) for v in np.asarray(plan.get("thresholds", []), np.float64).ravel()))
