"""What routing compares with theta, defined once (``routing-score``).

* ``risk-sd`` (default): the SD of Tier 1's risk over its draws of the missing features, each read as
  if the exam had found it (core/routing/risk_interval.tier1_risk_draws). It asks what the clinician asks:
  would this patient's risk move if the missing exam were done?
* ``sigma2``: f_phi's feature-space uncertainty (core/routing/uncertainty.py), kept to compare
  with risk-sd.

Both are 0 for a patient with nothing missing. Theta is the ``quantile`` of the same score on the
complete validation cases under every masking pattern, from summed site histograms.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import RunConfig
from .risk_interval import tier1_risk_draws
from ..data.tensors import SiteTensors
from ..model.tier1 import Tier1Model
from .uncertainty import over_masking_patterns, risk_and_uncertainty, uncertainty

SCORES = ("risk-sd", "sigma2")


def patient_scores(tier1: Tier1Model, data: SiteTensors, cfg: RunConfig, *, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Tier 1 risk, sigma^2, routing score) of each patient as it is (its present modalities)."""
    if cfg.routing_score == "sigma2":
        risk, sigma2 = risk_and_uncertainty(tier1, data, seed=seed)
        return risk, sigma2, sigma2
    point: list = []  # one encoding of the bags for the risk, sigma^2 and the draws
    draws = tier1_risk_draws(tier1, data, seed=seed + 7, point=point)
    if not point:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return (torch.cat([p[0] for p in point]).numpy(), torch.cat([p[1] for p in point]).numpy(), draws.std(axis=1))


def masked_scores(tier1: Tier1Model, data: SiteTensors, cfg: RunConfig, observed: torch.Tensor, *,
                  seed: int) -> np.ndarray:
    """The routing score of every patient of ``data`` under the ``observed`` [N, K] mask."""
    if cfg.routing_score == "sigma2":
        return uncertainty(tier1, data, observed, seed=seed)
    return tier1_risk_draws(tier1, data, seed=seed, observed=observed).std(axis=1)


def calibration_scores(tier1: Tier1Model, data: SiteTensors, cfg: RunConfig, *, seed: int) -> np.ndarray:
    """The routing score of the complete cases of ``data`` under every masking pattern, pattern-major
    (flattened; what a site histograms for theta)."""
    return over_masking_patterns(data, lambda sub, obs, s: masked_scores(tier1, sub, cfg, obs, seed=s), seed=seed)
