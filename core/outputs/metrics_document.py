"""The layout of a run's ``metrics.json``, as one pydantic model.

The server builds it (server/outputs.build_metrics), a simulation adds its sections (pooled test
split, oracle, cohort, pooled reference), and the model card (core/outputs/model_card.py) reads it through
this model, so a section renamed on one side fails validation instead of leaving a card half empty.
The sections every run has are typed; the larger free-form ones (the privacy floor's cost, the
two-tier figures, uncertainty quality, the per-round history) are JSON objects whose own layout is
documented where they are built. Numbers that could not be computed are ``null`` (NaN never
reaches the file).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Json = dict[str, Any]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteCIndex(_Section):
    c_index: float | None
    n_test: int
    n_events_test: int


class Federated(_Section):
    c_index: float | None
    c_index_method: str
    c_index_combined_pairs: float | None
    per_site: dict[str, SiteCIndex]


class Calibration(_Section):
    quantile: float
    theta: float | None
    theta_exact_pooled: float | None = None  # simulation only
    n_values: int


class Routing(_Section):
    referral_rate_per_site: dict[str, float | None]
    route_counts_per_site: dict[str, dict[str, int | None]]
    masked_complete_referral_rate: float | None
    masked_complete_n_per_site: dict[str, int]
    masked_complete_referral_rate_per_site: dict[str, float | None]
    high_risk_contexts: list[str]


class Sites(_Section):
    accepted: list[str]
    refused: dict[str, str]
    modalities: dict[str, int]
    model_dims: dict[str, int]
    reduced: list[str]


class RiskGroups(_Section):
    cutpoints: list[float] | None
    n_values: int
    basis: str


class RunMetrics(_Section):
    """metrics.json."""

    rmm_version: str
    federated: Federated
    pooled_reference: Json | None = None  # simulation only (trained on pooled data)
    oracle: Json | None = None  # simulation only (the generator's true risk)
    cohort: Json | None = None  # simulation only (what the generator measured)
    failed_steps: dict[str, str] | None = None  # simulation steps after training that failed
    cox_core: Json | None = None  # Tier 1's Cox core: its fit, the residual decision, its own C-index
    survival: Json | None = None  # Tier 1's integrated Brier score, td-AUC and calibration (site sums)
    risk_uncertainty: Json | None = None  # the risk SD against the risk change (core/routing/uncertainty_quality.py)
    conformal: Json | None = None  # federated split-conformal risk intervals (core/routing/conformal.py)
    value_of_information: Json | None = None  # which exam: the capture ratio (core/routing/risk_uncertainty_evaluation.py)
    risk_coverage: Json | None = None  # Tier 1's C-index on the patients kept as the referral rate grows
    calibration: Calibration
    privacy_floor: Json = Field(default_factory=dict)
    routing: Routing
    two_tier: Json
    uncertainty: Json
    sites: Sites
    risk_groups: RiskGroups
    participation: dict[str, list[str]]
    cautions: list[str] = Field(default_factory=list)  # what a reader of the figures must know (e.g. DP-SGD at tiny sites)
    history: list[Json]
    selected_round: int | None
    selected_by: str = "validation"  # or "last round": no site's policy answers per-round validation (opt-in)
    timing_s: dict[str, float | None]

    def to_json(self) -> Json:
        """The document as written (optional sections left out when absent)."""
        return self.model_dump(mode="json", exclude_none=False,
                               exclude={k for k in ("pooled_reference", "oracle", "cohort", "failed_steps", "cox_core", "survival",
                                                     "risk_uncertainty", "conformal", "value_of_information",
                                                     "risk_coverage")
                                        if getattr(self, k) is None})
