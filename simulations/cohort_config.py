"""The synthetic cohort's configuration: every knob of the generator (simulations/cohort.py), with the
defaults the FUSCC-style study uses and the checks a config must pass."""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import BaseModel, model_validator

from rmmfed.core.errors import ConfigError

from .cohort_latent import LatentModel

_FUSCC_FRACTIONS = [700 / 1679, 450 / 1679, 330 / 1679, 199 / 1679]  # the paper's centers
_RATE_TABLE = [  # default missing rate per site (row) and modality
    {"pathology": 0.10, "radiology": 0.20, "report": 0.30},
    {"pathology": 0.15, "radiology": 0.40, "report": 0.20},
    {"pathology": 0.25, "radiology": 0.30, "report": 0.45},
    {"pathology": 0.35, "radiology": 0.15, "report": 0.25},
]
_MNAR_SITE = [0.5, 1.5, 1.0, 0.75]  # default MNAR strength per center (log-odds per SD of sickness)
_MNAR_MOD = {"pathology": 0.5, "radiology": 1.0, "report": 0.8}  # a biopsy is skipped least often
_MOD_DEFAULTS = {  # modality -> (instances, specific risk weight, signal, informative fraction)
    "pathology": ((8, 48), 0.7, 6.0, 0.25),
    "radiology": ((4, 16), 0.5, 5.0, 0.40),
    "report": ((2, 6), 0.4, 5.0, 0.60),
}
_FALLBACK = ((4, 16), 0.5, 5.0, 0.4)


class CohortConfig(BaseModel):
    """All knobs of the synthetic cohort; the defaults give the FUSCC-like cohort (module docstring).

    Per-modality dicts left as ``None`` are filled from built-in defaults for the modalities in
    ``dims``; ``missing_rates[site][modality]`` is the marginal probability that the modality is
    absent at that site; ``mnar[site][modality]`` is the log-odds increase of its missingness per SD
    of the patient's sickness (a noisy reading of the true risk), multiplied by ``mnar_strength``.
    """

    n_patients: int = 1679
    site_names: list[str] = ["A", "B", "C", "D"]
    site_fractions: Optional[list[float]] = None
    dims: dict[str, int] = {"pathology": 64, "radiology": 32, "report": 24}
    instances: Optional[dict[str, tuple[int, int]]] = None
    seed: int = 0
    # latent state and risk
    n_shared_factors: int = 4
    n_specific_factors: int = 2
    cross_modal_strength: float = 0.75
    shared_risk_share: float = 0.65
    risk_nonlinearity: float = 0.3
    risk_sd: float = 1.7
    specific_weights: Optional[dict[str, float]] = None
    # how modalities show it
    map_hidden: int = 6
    map_nonlinearity: float = 0.25
    specific_expression: float = 0.5
    burden_effect: float = 0.5
    signal: Optional[dict[str, float]] = None
    informative_fraction: Optional[dict[str, float]] = None
    patient_noise: float = 0.15
    instance_noise: float = 0.5
    background_scale: float = 0.7
    n_background_prototypes: int = 4
    # centers
    missing_rates: Optional[dict[str, dict[str, float]]] = None
    mnar: Optional[dict[str, dict[str, float]]] = None
    mnar_strength: float = 1.0
    all_missing_fraction: float = 0.005
    shift_strength: float = 0.5
    scale_jitter: float = 0.2
    # survival and splits
    weibull_shape: float = 1.3
    median_time: float = 60.0
    event_rate: float = 0.5
    admin_quantile: float = 0.8
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    high_risk_fraction: float = 0.05

    @model_validator(mode="after")
    def _fill_and_check(self) -> "CohortConfig":
        """Fill per-site/per-modality defaults, then validate every value."""
        sites, mods = self.site_names, list(self.dims)
        if not sites or len(set(sites)) != len(sites) or not all(s.isalnum() for s in sites):
            raise ConfigError(f"site_names must be unique non-empty alphanumeric names, got {sites}")
        if not mods or not all(m.replace("_", "").isalnum() and d > 0 for m, d in self.dims.items()):
            raise ConfigError(f"dims must map folder-safe modality names to positive ints: {self.dims}")
        if self.site_fractions is None:
            w = _FUSCC_FRACTIONS if len(sites) == 4 else [0.75**i for i in range(len(sites))]
            self.site_fractions = [x / sum(w) for x in w]
        fr = self.site_fractions
        if len(fr) != len(sites) or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"site_fractions must be {len(sites)} positive numbers summing to 1: {fr}")
        if self.n_patients < 10 * len(sites):
            raise ConfigError(f"n_patients={self.n_patients} too small: need >= 10 per site")
        for name, idx in (("instances", 0), ("specific_weights", 1), ("signal", 2),
                          ("informative_fraction", 3)):
            val = getattr(self, name)
            if val is None:
                val = {m: _MOD_DEFAULTS.get(m, _FALLBACK)[idx] for m in mods}
                setattr(self, name, val)
            if set(val) != set(mods):
                raise ConfigError(f"{name} keys {sorted(val)} must equal modalities {sorted(mods)}")
        for m, (lo, hi) in self.instances.items():
            if not 1 <= lo <= hi:
                raise ConfigError(f"instances[{m}]=({lo}, {hi}) needs 1 <= min <= max")
        if not all(0 < f <= 1 for f in self.informative_fraction.values()):
            raise ConfigError("informative_fraction values must be in (0, 1]")
        if not all(w >= 0 for w in self.specific_weights.values()) or not any(self.specific_weights.values()):
            raise ConfigError("specific_weights must be >= 0 with at least one > 0")
        for name in ("cross_modal_strength", "shared_risk_share", "risk_nonlinearity", "map_nonlinearity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.n_shared_factors < 1 or self.n_specific_factors < 1 or self.map_hidden < 1:
            raise ConfigError("n_shared_factors, n_specific_factors and map_hidden must be >= 1")
        if self.risk_sd <= 0 or self.mnar_strength < 0:
            raise ConfigError("risk_sd must be > 0 and mnar_strength >= 0")
        if self.missing_rates is None:
            self.missing_rates = {s: {m: _RATE_TABLE[i % 4].get(m, 0.1 + 0.07 * ((2 * i + j) % 5))
                                      for j, m in enumerate(mods)} for i, s in enumerate(sites)}
        if set(self.missing_rates) != set(sites) or any(
                set(r) != set(mods) for r in self.missing_rates.values()):
            raise ConfigError("missing_rates must give a rate for every site and every modality")
        if not all(0 <= r < 1 for rs in self.missing_rates.values() for r in rs.values()):
            raise ConfigError("missing_rates must lie in [0, 1)")
        if self.mnar is None:
            self.mnar = {s: {m: round(_MNAR_SITE[i % 4] * _MNAR_MOD.get(m, 0.8), 4) for m in mods}
                         for i, s in enumerate(sites)}
        if any(s not in sites or not set(v) <= set(mods) for s, v in self.mnar.items()):
            raise ConfigError(f"mnar refers to unknown sites/modalities: {self.mnar}")
        for name in ("all_missing_fraction", "high_risk_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1)")
        if not 0 < self.event_rate < self.admin_quantile <= 1:
            raise ConfigError("need 0 < event_rate < admin_quantile <= 1")
        sf = self.split_fractions
        if min(sf) < 0 or abs(sum(sf) - 1) > 1e-6:
            raise ConfigError(f"split_fractions must be non-negative and sum to 1: {sf}")
        if self.weibull_shape <= 0 or self.median_time <= 0 or self.n_background_prototypes < 1:
            raise ConfigError("weibull_shape, median_time and n_background_prototypes must be > 0")
        return self

    def latent_model(self) -> LatentModel:
        """The latent model these knobs define."""
        return LatentModel(n_factors=self.n_shared_factors, n_specific=self.n_specific_factors,
                           cross_modal=self.cross_modal_strength, shared_share=self.shared_risk_share,
                           nonlinearity=self.risk_nonlinearity, risk_sd=self.risk_sd,
                           specific_weights=np.array([self.specific_weights[m] for m in self.dims], dtype=float))
