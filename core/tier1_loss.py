"""L_Tier1 = L_rec + lambda_a L_anat + lambda_t L_task (seed 000 eq. 4)."""

from __future__ import annotations

import torch

from .cox import cox_loss
from .feature_stats import FeatureStats, partition_slices


def reconstruction_loss(x_hat: list[torch.Tensor], target: tuple[torch.Tensor, ...], hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error (per dimension) on modalities that are present but hidden from the model."""
    total = x_hat[0].new_zeros(())
    count = 0
    for j, est in enumerate(x_hat):
        rows = hidden[:, j]
        if rows.any():
            total = total + ((est[rows] - target[j][rows]) ** 2).mean(dim=1).sum()
            count += int(rows.sum())
    return total / max(count, 1)


def anatomical_loss(x_hat: list[torch.Tensor], hidden: torch.Tensor, stats: FeatureStats,
                    modalities: tuple[str, ...], kappa: float) -> torch.Tensor:
    """Hinge sum_r max(0, ||x_hat_r - mu_r|| - kappa sigma_r) over partitions r, averaged over estimates.

    (mu_r, sigma_r) come from complete-case features aggregated across sites (FeatureStats).
    """
    total = x_hat[0].new_zeros(())
    count = 0
    for j, (m, est) in enumerate(zip(modalities, x_hat)):
        rows = hidden[:, j]
        if not rows.any():
            continue
        mu = torch.as_tensor(stats.anat_mu[m], dtype=est.dtype, device=est.device)
        sigma = torch.as_tensor(stats.anat_sigma[m], dtype=est.dtype, device=est.device)
        e = est[rows]
        for r, sl in enumerate(partition_slices(est.shape[1], stats.partitions)):
            dist = torch.linalg.vector_norm(e[:, sl] - mu[sl], dim=1)
            total = total + torch.relu(dist - kappa * sigma[r]).sum()
        count += int(rows.sum())
    return total / max(count, 1)


def task_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Cox partial likelihood (Efron ties), per event."""
    return cox_loss(risk, time, event)
