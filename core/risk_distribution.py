"""The spread of a patient's risk over what Tier 1 does not know about its missing modalities.

For a patient with modalities hidden or absent, Tier 1's estimator gives each missing modality's
features as x_hat_k (the mean of its MC-dropout estimates) with the per-modality uncertainty
sigma^2_k (epistemic + aleatoric, core/uncertainty.py). Draws x_k = x_hat_k + sigma_k eps (eps standard
normal, one per feature) go through the frozen Tier 1 head (core/tier2_scoring.risk_of_draws: observed
modalities through their own bags); the draws' risks give the risk's mean and standard deviation. The
SD is in the unit that matters to a clinician: how much the prognosis could move if the missing exam
were done, where sigma^2 measures the features, whatever their weight in the risk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tier1 import Tier1Model
from .tier2_scoring import risk_of_draws

DRAWS = 32  # draws per patient: the SD's relative standard error is about 1 / sqrt(2 (DRAWS - 1)) = 13%


@dataclass(frozen=True)
class RiskDistribution:
    mean: torch.Tensor  # [B]
    sd: torch.Tensor  # [B]; 0 for a patient with nothing missing


@torch.no_grad()
def risk_distribution(tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor, x_hat: torch.Tensor,
                      sigma2: torch.Tensor, means: list[torch.Tensor], *, generator: torch.Generator,
                      draws: int = DRAWS) -> RiskDistribution:
    """``x_hat`` [B, sum D] and ``sigma2`` [B, K] as :func:`~rmmfed.core.tier2_train.tier2_inputs` gives
    them for the mask ``observed`` [B, K]; ``zs`` the bags' encodings, ``means`` their means."""
    dims = [z.shape[1] for z in means]
    sd_k = sigma2.clamp_min(0).sqrt()  # [B, K]
    sd = torch.cat([sd_k[:, k : k + 1].expand(-1, d) for k, d in enumerate(dims)], dim=1)  # [B, sum D]
    eps = torch.randn((draws, *x_hat.shape), generator=generator, device=x_hat.device, dtype=x_hat.dtype)
    risks = risk_of_draws(tier1, zs, observed, x_hat.unsqueeze(0) + sd.unsqueeze(0) * eps, dims, means)  # [S, B]
    return RiskDistribution(risks.mean(dim=0), risks.std(dim=0))
