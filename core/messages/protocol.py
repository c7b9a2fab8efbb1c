"""The rmm protocol, defined once: every phase's message type, the records its request and reply may
carry, and typed payloads for them (plain numpy and scalars; no Flower).

Only weights, sums, histogram counts, Breslow sums and scalar metrics ever leave a site (what each
phase sends and in which form: docs/privacy.md section 2). The ServerApp encodes requests and decodes
replies with these classes (server/), the ClientApp the other way round (client/client_app.py), and
the egress guard (client/egress.py) checks every reply against its phase's definition here. A payload travels as *record dicts*: ``{record name: {key: value}}``, where
the record named :data:`CONFIG` or :data:`METRICS` holds scalars and every other record holds numpy
arrays; flower/records.py turns them into Flower records for both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from . import metric_names as M
from ..routing.fitted_two_tier import FittedTwoTier  # noqa: F401 - travels in risk-group and evaluation requests
from ..survival.survival_metrics import SURVIVAL_METRICS
from ..data.schema import decode_schema, encode_schema  # noqa: F401 - the protocol's schema strings
from ..tier2.tier2_gate import VALIDATION_KEYS
from ..tier2.tier2_train import LOSS_KEYS

# ---- record names (core/messages/record_names.py) ---------------------------------------------------------
from .record_names import (
    ARRAYS, CONFIG, COUNTS, COX_RECORD, HAZARD_RECORD, METRICS, PLAN_RECORD, SCALAR_RECORDS, STATS_RECORD, SUMS,
    SURVIVAL_RECORD, Records,
)


# ---- the scalar metrics each reply may carry (names: core/messages/metric_names.py) -----------------------
TRAIN_METRICS = (M.NUM_EXAMPLES, M.TRAIN_LOSS, M.TRAIN_TASK, M.TRAIN_REC, M.TRAIN_ANAT, M.TRAIN_NLL,
                 M.DP_EPSILON_ROUND, M.DP_EPSILON, M.DP_DELTA, M.DP_NOISE_MULTIPLIER)
VALIDATION_METRICS = (M.NUM_EXAMPLES, M.N_VAL, *M.PAIRS.counts, M.VAL_PLL, M.VAL_EVENTS)
TIER2_TRAIN_METRICS = (M.NUM_EXAMPLES, *(f"{M.TIER2_PREFIX}{k}" for k in (*LOSS_KEYS, "steps")),
                       M.DP_EPSILON, M.DP_DELTA)  # a DP round sends only num-examples and the accountant's figures
TIER2_VALIDATION_METRICS = (M.NUM_EXAMPLES, M.TIER2_VAL_CASES, *VALIDATION_KEYS)
RISK_SUMS = M.RISK_SUMS
EVALUATION_METRICS = (
    M.NUM_EXAMPLES, M.N_TEST, M.N_EVENTS_TEST, *(k for g in M.GROUPS for k in g.all), *M.ROUTED.values(),
    M.REFERRED, M.REFERRAL_RATE, M.TIER1_SECONDS, M.TIER2_SECONDS, M.TIER2_USED, M.HIGH_RISK_KEPT_TIER1, M.MASKED_N,
    M.MASKED_REFERRED, M.RECOVERY_N, M.RECOVERY_SSE_TIER1, M.RECOVERY_SSE_TIER2,
    *(M.uncertainty(t, k) for t in M.UNCERTAINTY_TARGETS for k in M.UNCERTAINTY_STATS),
    M.UNCERTAINTY_N_PATIENTS, M.UNCERTAINTY_N_ROWS, *SURVIVAL_METRICS, *M.EXTRA_EVALUATION)


@dataclass(frozen=True)
class Phase:
    """One kind of message: its Flower message type, the site policy's switch for it, and its records."""

    name: str  # as logs, the ledger summary and participation call it
    message_type: str  # "<category>" or "<category>.<action>" (Flower: train / evaluate / query)
    policy_phase: str | None  # the site policy's phase key (core/privacy/site_policy.py); None: always allowed
    request: tuple[str, ...]  # record names a request carries
    reply: tuple[str, ...]  # record names a reply may carry (nothing else passes the egress guard)
    metrics: tuple[str, ...] = ()  # the scalar metrics its reply may carry (the egress guard's list)

    @property
    def category(self) -> str:
        return self.message_type.partition(".")[0]

    @property
    def action(self) -> str | None:
        return self.message_type.partition(".")[2] or None


SCHEMA = Phase("handshake", "query.schema", None, (), (CONFIG,))
STATISTICS = Phase("statistics", "query.stats", "statistics", (CONFIG,), (SUMS,))
SETUP = Phase("setup", "query.setup", None, (CONFIG, STATS_RECORD), (METRICS,), (M.READY,))
TIER1_ROUND = Phase("tier1", "train", "tier1", (ARRAYS, CONFIG), (ARRAYS, METRICS), TRAIN_METRICS)
TIER1_VALIDATION = Phase("tier1_validation", "evaluate.tier1_validation", "tier1", (ARRAYS, CONFIG), (METRICS,),
                         VALIDATION_METRICS)
COX = Phase("cox", "query.cox", "cox", (COX_RECORD, CONFIG), (COX_RECORD, METRICS), (M.COX_LOGLIK, M.COX_N, M.COX_EVENTS))
FREEZE_TIER1 = Phase("freeze_tier1", "query.freeze_tier1", None, (ARRAYS,), (METRICS,), (M.FROZEN,))
CALIBRATION = Phase("calibration", "query.calibration", "calibration", (CONFIG,), (COUNTS, METRICS),
                    (M.N_VALUES, M.NOISED))
FOLLOWUP = Phase("followup", "query.followup", "baseline-hazard", (CONFIG,), (COUNTS, METRICS), (M.NOISED,))
HAZARD = Phase("baseline_hazard", "query.hazard", "baseline-hazard", (HAZARD_RECORD,), (HAZARD_RECORD,))
TIER2_ROUND = Phase("tier2", "train.tier2", "tier2", (ARRAYS, CONFIG), (ARRAYS, METRICS), TIER2_TRAIN_METRICS)
TIER2_VALIDATION = Phase("tier2_validation", "evaluate.tier2_validation", "tier2", (ARRAYS, CONFIG), (METRICS,),
                         TIER2_VALIDATION_METRICS)
TIER2_CALIBRATION = Phase("tier2_calibration", "query.tier2_calibration", "tier2", (ARRAYS, CONFIG),
                          (COUNTS, METRICS), (M.N_VALUES, *RISK_SUMS, M.NOISED))
CONFORMAL = Phase("conformal", "query.conformal", "calibration", (ARRAYS, CONFIG), (COUNTS, METRICS),
                  (M.N_VALUES, M.NOISED, M.CONFORMAL_SD_SUM, M.CONFORMAL_SD_N))
RISK_GROUPS = Phase("risk_groups", "query.risk_groups", "risk-groups", (ARRAYS, CONFIG), (COUNTS, METRICS), (M.NOISED,))
EVALUATION = Phase("evaluation", "evaluate", "evaluation", (ARRAYS, CONFIG, SURVIVAL_RECORD, PLAN_RECORD), (METRICS,),
                   EVALUATION_METRICS)

PHASES = (SCHEMA, STATISTICS, SETUP, COX, TIER1_ROUND, TIER1_VALIDATION, FREEZE_TIER1, CALIBRATION, FOLLOWUP, HAZARD,
          TIER2_ROUND, TIER2_VALIDATION, TIER2_CALIBRATION, CONFORMAL, RISK_GROUPS, EVALUATION)
BY_MESSAGE_TYPE = {p.message_type: p for p in PHASES}


def phase_of(message_type: str) -> Phase | None:
    return BY_MESSAGE_TYPE.get(message_type)


def _arrays(records: Records, name: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in (records.get(name) or {}).items()}


# ---- requests (server -> site): core/messages/protocol_requests.py ------------------------------------------
from .protocol_requests import (
    ConformalRequest, CoxRequest, EvaluateRequest, FreezeRequest, GridRequest, HazardRequest, RiskGroupsRequest,
    RoundRequest, SetupRequest, StatsRequest, Tier2CalibrationRequest,
)


# ---- replies (site -> server) ---------------------------------------------------------------
@dataclass
class SchemaReply:
    site: str
    dims: dict[str, int | None]
    rmm_version: str
    n_patients: int
    n_events: int
    n_train: int
    n_val: int
    n_test: int
    release_epsilon: float = 0.0  # the site policy's dp.release-epsilon: > 0 when its releases are noised
    cox: bool = False  # the site policy takes part in the cox phase (exact Cox core sums)
    COUNTS: ClassVar[tuple[str, ...]] = (M.N_PATIENTS, M.N_EVENTS, M.N_TRAIN, M.N_VAL, M.N_TEST)

    def to_records(self) -> Records:
        return {CONFIG: {"site": self.site, "schema": encode_schema(self.dims), "rmm-version": self.rmm_version,
                         **dict(zip(self.COUNTS, (self.n_patients, self.n_events, self.n_train, self.n_val,
                                                  self.n_test))),
                         "release-epsilon": float(self.release_epsilon), "cox": bool(self.cox)}}

    @classmethod
    def from_records(cls, r: Records) -> "SchemaReply":
        c = r[CONFIG]
        return cls(str(c["site"]), decode_schema(str(c["schema"])), str(c["rmm-version"]),
                   *(int(c[k]) for k in cls.COUNTS), float(c.get("release-epsilon", 0.0)), bool(c.get("cox", False)))

    @property
    def counts(self) -> dict[str, int]:
        return dict(zip(self.COUNTS, (self.n_patients, self.n_events, self.n_train, self.n_val, self.n_test)))


SCHEMA_KEYS = frozenset({"site", "schema", "rmm-version", *SchemaReply.COUNTS, "release-epsilon", "cox"})  # the only config a reply carries


@dataclass
class SumsReply:
    sums: dict[str, np.ndarray]

    def to_records(self) -> Records:
        return {SUMS: dict(self.sums)}

    @classmethod
    def from_records(cls, r: Records) -> "SumsReply":
        return cls(_arrays(r, SUMS))


@dataclass
class HistogramReply:
    """Bins (core/aggregates/merged_histogram.MergedBins.to_arrays; every bin when noised) and, for some phases,
    scalar sums and the release's epsilon (``noised``)."""

    counts: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_records(self) -> Records:
        return {COUNTS: dict(self.counts), **({METRICS: dict(self.metrics)} if self.metrics else {})}

    @classmethod
    def from_records(cls, r: Records) -> "HistogramReply":
        return cls(_arrays(r, COUNTS), {k: float(v) for k, v in (r.get(METRICS) or {}).items()})


@dataclass
class HazardReply:
    sums: dict[str, np.ndarray]  # core/survival/merged_hazard.MergedHazard.to_arrays

    def to_records(self) -> Records:
        return {HAZARD_RECORD: dict(self.sums)}

    @classmethod
    def from_records(cls, r: Records) -> "HazardReply":
        return cls(_arrays(r, HAZARD_RECORD))


@dataclass
class CoxReply:
    """One site's stratum: arrays (training split only) and scalars (core/site/site_cox.py)."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    KEYS: ClassVar[tuple[str, ...]] = ("grad", "hess", "sum", "sumsq")

    def to_records(self) -> Records:
        return {**({COX_RECORD: dict(self.arrays)} if self.arrays else {}), METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "CoxReply":
        return cls(_arrays(r, COX_RECORD), {k: float(v) for k, v in (r.get(METRICS) or {}).items()})


@dataclass
class MetricsReply:
    """Scalar metrics only (setup, freeze, validation, evaluation)."""

    metrics: dict[str, float]

    def to_records(self) -> Records:
        return {METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "MetricsReply":
        return cls({k: float(v) for k, v in (r.get(METRICS) or {}).items()})


@dataclass
class RoundReply:
    weights: dict[str, np.ndarray]
    metrics: dict[str, float]

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "RoundReply":
        return cls(_arrays(r, ARRAYS), {k: float(v) for k, v in (r.get(METRICS) or {}).items()})

