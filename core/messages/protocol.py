"""The rmm protocol's registry: every phase (one module each in core/phases/: its message type, records,
typed request, request checks and the site's answer), the record names, and the shared payloads, under
one name for the ClientApp, the coordinator and the egress guard.

Only weights, sums, histogram counts, Breslow sums and scalar metrics ever leave a site (what each
phase sends and in which form: docs/privacy.md section 2). The ServerApp encodes requests and decodes
replies with these classes (server/), the ClientApp serves every phase with one generic handler
(client/client_app.py), and the egress guard (client/egress.py) checks every reply against its phase's
definition here. A payload travels as *record dicts*: ``{record name: {key: value}}``, where the record
named :data:`CONFIG` or :data:`METRICS` holds scalars and every other record holds numpy arrays;
flower/records.py turns them into Flower records for both sides.
"""

from __future__ import annotations

from ..data.schema import decode_schema, encode_schema  # noqa: F401 - the protocol's schema strings
from ..phases.calibration import CALIBRATION, GridRequest
from ..phases.conformal import CONFORMAL, ConformalRequest
from ..phases.cox import COX, CoxReply, CoxRequest
from ..phases.evaluation import EVALUATION, EVALUATION_METRICS, EvaluateRequest
from ..phases.followup import FOLLOWUP
from ..phases.freeze_tier1 import FREEZE_TIER1, FreezeRequest
from ..phases.hazard import HAZARD, HazardReply, HazardRequest
from ..phases.phase import Phase
from ..phases.risk_groups import RISK_GROUPS, RiskGroupsRequest
from ..phases.schema import SCHEMA, SCHEMA_KEYS, SchemaReply
from ..phases.setup import SETUP, SetupRequest
from ..phases.statistics import STATISTICS, StatsRequest, SumsReply
from ..phases.tier1_round import TIER1_ROUND, TRAIN_METRICS
from ..phases.tier1_validation import TIER1_VALIDATION, VALIDATION_METRICS
from ..phases.tier2_calibration import TIER2_CALIBRATION, Tier2CalibrationRequest
from ..phases.tier2_gate import TIER2_GATE, Tier2GateRequest
from ..phases.tier2_round import TIER2_ROUND, TIER2_TRAIN_METRICS
from ..phases.tier2_validation import TIER2_VALIDATION, TIER2_VALIDATION_METRICS
from ..routing.fitted_two_tier import FittedTwoTier  # noqa: F401 - travels in risk-group and evaluation requests
from . import metric_names as M
from .record_names import (  # noqa: F401 - the protocol's record names, under one name
    ARRAYS, CONFIG, COUNTS, COX_RECORD, HAZARD_RECORD, METRICS, PLAN_RECORD, SCALAR_RECORDS, STATS_RECORD, SUMS,
    SURVIVAL_RECORD, Records,
)
from .replies import HistogramReply, MetricsReply, RoundReply  # noqa: F401
from .round_request import RoundRequest  # noqa: F401

RISK_SUMS = M.RISK_SUMS

PHASES: tuple[Phase, ...] = (SCHEMA, STATISTICS, SETUP, COX, TIER1_ROUND, TIER1_VALIDATION, FREEZE_TIER1, CALIBRATION,
                             FOLLOWUP, HAZARD, TIER2_ROUND, TIER2_VALIDATION, TIER2_GATE, TIER2_CALIBRATION, CONFORMAL,
                             RISK_GROUPS, EVALUATION)
BY_MESSAGE_TYPE = {p.message_type: p for p in PHASES}

__all__ = [  # the protocol's one name for every phase, payload and record name
    "ARRAYS", "CALIBRATION", "CONFIG", "CONFORMAL", "COUNTS", "COX", "COX_RECORD", "ConformalRequest",
    "CoxReply", "CoxRequest", "EVALUATION", "EVALUATION_METRICS", "EvaluateRequest", "FOLLOWUP", "FREEZE_TIER1",
    "FittedTwoTier", "FreezeRequest", "GridRequest", "HAZARD", "HAZARD_RECORD", "HazardReply", "HazardRequest",
    "HistogramReply", "METRICS", "MetricsReply", "PLAN_RECORD", "Phase", "RISK_GROUPS", "Records",
    "RiskGroupsRequest", "RoundReply", "RoundRequest", "SCALAR_RECORDS", "SCHEMA", "SCHEMA_KEYS", "SETUP",
    "STATISTICS", "STATS_RECORD", "SUMS", "SURVIVAL_RECORD", "SchemaReply", "SetupRequest", "StatsRequest",
    "SumsReply", "TIER1_ROUND", "TIER1_VALIDATION", "TIER2_CALIBRATION", "TIER2_ROUND", "TIER2_TRAIN_METRICS",
    "TIER2_GATE", "TIER2_VALIDATION", "TIER2_VALIDATION_METRICS", "Tier2GateRequest", "TRAIN_METRICS", "Tier2CalibrationRequest",
    "VALIDATION_METRICS", "M", "decode_schema", "encode_schema", "PHASES", "BY_MESSAGE_TYPE", "RISK_SUMS", "phase_of",
]


def phase_of(message_type: str) -> Phase | None:
    return BY_MESSAGE_TYPE.get(message_type)
