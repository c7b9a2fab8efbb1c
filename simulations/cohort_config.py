"""The synthetic cohort's configuration: every knob of the generator (simulations/cohort.py), with the
defaults the FUSCC-style study uses and the checks a config must pass."""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import BaseModel, Field, model_validator

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

    n_patients: int = Field(1679, description="total number of synthetic patients over all sites, shared "
                            "among the sites by site_fractions (largest remainder); at least 10 per site")
    site_names: list[str] = Field(["A", "B", "C", "D"], description="the centers, unique alphanumeric names; "
                                  "each is written to site-<name>/ and prefixes its patient ids (A0001, ...)")
    site_fractions: Optional[list[float]] = Field(None, description="share of the patients at each site, in "
                                                  "site_names order, positive and summing to 1; None = the paper's "
                                                  "center sizes 700/450/330/199 of 1,679 for four sites, otherwise "
                                                  "weights 0.75^i normalised")
    dims: dict[str, int] = Field({"pathology": 64, "radiology": 32, "report": 24}, description="modality -> "
                                 "feature width (columns of each instance); the keys are the modalities and "
                                 "their folder names")
    instances: Optional[dict[str, tuple[int, int]]] = Field(None, description="modality -> (min, max) instances "
                                                            "per bag, both inclusive, drawn uniformly per patient; "
                                                            "None = pathology (8, 48), radiology (4, 16), report "
                                                            "(2, 6), any other modality (4, 16)")
    seed: int = Field(0, description="seed of every random draw: the same config and seed give the same cohort")
    # latent state and risk
    n_shared_factors: int = Field(4, description="S: shared disease factors per patient, N(0, 1), seen by every "
                                  "modality (stage, grade, tumour burden, immune state; extra ones have linear "
                                  "risk weight 0.4); >= 1 (with fewer than 3 there is no burden factor, so bag "
                                  "composition no longer varies with the patient)")
    n_specific_factors: int = Field(2, description="q: N(0, 1) factors per modality that only that modality "
                                    "sees; they carry the specific part of the risk; >= 1")
    cross_modal_strength: float = Field(0.75, description="c in [0, 1]: correlation between two modalities' views "
                                        "of the same shared factor (l_k = sqrt(c) s + sqrt(1 - c) e_k); 0 = "
                                        "independent modalities, nothing recoverable (the null setting), 1 = "
                                        "every modality sees the same state")
    shared_risk_share: float = Field(0.65, description="rho in [0, 1]: share of the true risk's variance carried "
                                     "by the views of the shared factors; the rest comes from the "
                                     "modality-specific factors")
    risk_nonlinearity: float = Field(0.3, description="eta in [0, 1]: share of each view's risk term's variance "
                                     "from its nonlinear part (stage x grade interaction and squared burden); "
                                     "0 = a risk linear in the latents")
    risk_sd: float = Field(1.7, description="SD of the true risk (log-hazard units), > 0; larger spreads the "
                           "patients' hazards further and raises the oracle C-index")
    specific_weights: Optional[dict[str, float]] = Field(None, description="modality -> weight w_k >= 0 of its "
                                                         "own factors in the specific risk (normalised over "
                                                         "modalities; at least one > 0); None = pathology 0.7, "
                                                         "radiology 0.5, report 0.4, any other 0.5")
    # how modalities show it
    map_hidden: int = Field(6, description="H: outputs of each modality's fixed random map phi_k of its shared "
                            "view, i.e. how many latent coordinates (besides the specific factors) the tumour "
                            "instances express; >= 1")
    map_nonlinearity: float = Field(0.25, description="nu in [0, 1]: share of phi_k from its tanh part rather "
                                    "than its linear part; 0 = features linear in the latents")
    specific_expression: float = Field(0.5, description="multiplier of the modality-specific factors in the code "
                                       "the tumour instances express; 0 = those factors drive the risk but never "
                                       "show in the features")
    burden_effect: float = Field(0.5, description="log-odds increase of a bag's tumour-instance share per unit "
                                 "(SD) of the modality's view of tumour burden; 0 = share independent of burden")
    signal: Optional[dict[str, float]] = Field(None, description="modality -> multiplier of the latent code added "
                                               "to its tumour instances (how far the latents stand out of the "
                                               "noise); None = pathology 6.0, radiology 5.0, report 5.0, any "
                                               "other 5.0")
    informative_fraction: Optional[dict[str, float]] = Field(None, description="modality -> share in (0, 1] of "
                                                             "tumour instances in a bag at average burden (every "
                                                             "bag keeps at least one); None = pathology 0.25, "
                                                             "radiology 0.40, report 0.60, any other 0.4")
    patient_noise: float = Field(0.15, description="SD of a Gaussian offset drawn per patient and modality and "
                                 "added to every instance of the bag (feature units, before the site's shift)")
    instance_noise: float = Field(0.5, description="SD of the independent Gaussian noise on each feature of "
                                  "each instance")
    background_scale: float = Field(0.7, description="SD of the entries of each modality's background "
                                    "prototypes: how far background instances lie from one another and "
                                    "from the origin")
    n_background_prototypes: int = Field(4, description="background prototypes per modality; each background "
                                         "instance is one of them, picked uniformly, plus noise; >= 1")
    # centers
    missing_rates: Optional[dict[str, dict[str, float]]] = Field(None, description="site -> modality -> "
                                                                 "marginal probability in [0, 1) that the "
                                                                 "modality is absent for a patient of that site "
                                                                 "(before the all-missing cases); None = a "
                                                                 "built-in table, 0.10-0.45, repeating every "
                                                                 "four sites")
    mnar: Optional[dict[str, dict[str, float]]] = Field(None, description="site -> modality -> log-odds increase "
                                                        "of that modality's missingness per SD of the patient's "
                                                        "sickness (a noisy reading of the true risk), times "
                                                        "mnar_strength; omitted entries are 0 (missing at "
                                                        "random); None = per-site 0.5, 1.5, 1.0, 0.75 (cycled) "
                                                        "times per-modality pathology 0.5, radiology 1.0, "
                                                        "report 0.8 (others 0.8)")
    mnar_strength: float = Field(1.0, description="multiplier >= 0 of every mnar value; 0 = missingness at "
                                 "random (the marginal missing_rates are kept either way)")
    all_missing_fraction: float = Field(0.005, description="share in [0, 1) of each site's patients (at least "
                                        "one when > 0) who lose every modality, on top of the per-modality "
                                        "masks: the cases the pipeline must abstain on")
    shift_strength: float = Field(0.5, description="SD of the per-site offset drawn per modality and feature "
                                  "column and added to every written instance (scanner/protocol batch effect)")
    scale_jitter: float = Field(0.2, description="SD of the log of the per-site scale drawn per modality and "
                                "feature column, applied before the offset; 0 = same scale at every site")
    # survival and splits
    weibull_shape: float = Field(1.3, description="shape k > 0 of the Weibull proportional-hazards event times; "
                                 "k > 1: hazard rising with time, k = 1: exponential times")
    median_time: float = Field(60.0, description="median true event time, in the cohort's time unit (months), "
                               "to which the event times are rescaled; > 0")
    event_rate: float = Field(0.5, description="target fraction of patients with an observed event; the random "
                              "censoring rate is solved to hit it; 0 < event_rate < admin_quantile")
    admin_quantile: float = Field(0.8, description="administrative censoring at this quantile of the true event "
                                  "times (end of follow-up); in (event_rate, 1], 1 = censored only at the "
                                  "longest time")
    split_fractions: tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="(train, val, test) "
                                                        "shares within each site, stratified by event status, "
                                                        ">= 0 and summing to 1 (the split column)")
    high_risk_fraction: float = Field(0.05, description="share in [0, 1) of each site's patients, picked at "
                                      "random regardless of risk, whose context is 'oncology-staging' instead "
                                      "of 'routine' in patients.csv")

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
