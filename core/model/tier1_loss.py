"""L_Tier1 = L_rec + lambda_a L_anat + lambda_t L_task (seed 000 eq. 4), + L_nll with the variance head."""

from __future__ import annotations

import math

import torch

from ..survival.cox import cox_loss
from ..aggregates.feature_stats import FeatureStats, partition_slices


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


def gaussian_nll(mean_sq_error: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL per dimension for a variance exp(logvar) shared by the dimensions whose mean squared
    error is ``mean_sq_error`` (elementwise): 0.5 (logvar + mse / exp(logvar) + log 2 pi)."""
    return 0.5 * (logvar + mean_sq_error * torch.exp(-logvar) + math.log(2 * math.pi))


def variance_nll(x_hat: list[torch.Tensor], logvar: torch.Tensor, target: tuple[torch.Tensor, ...],
                 hidden: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood per dimension of f_phi's predicted variance, on modalities that
    are present but hidden: 0.5 (log v + ||x_hat - x||^2 / (D_k v) + log 2 pi), v = exp(logvar[:, k]),
    averaged over the (patient, hidden modality) pairs like :func:`reconstruction_loss`.

    It is added ALONGSIDE L_rec, with the estimate detached: it trains the variance (its head and the
    shared layers of f_phi it reads), never the mean. The mean keeps eq. 4's MSE, so recovery, Tier 2's
    inputs and ``train-rec`` mean what they meant; a full NLL would let f_phi buy a lower loss by
    declaring hard patients noisy and fitting them less (the gradient on the mean is divided by v),
    degrading x_hat exactly where Tier 2 needs it. With the mean fixed, the optimum of v is the
    expected squared error of that mean given what was observed: what sigma^2 should rank.
    """
    total = logvar.new_zeros(())
    count = 0
    for j, est in enumerate(x_hat):
        rows = hidden[:, j]
        if rows.any():
            sq = ((est[rows].detach() - target[j][rows]) ** 2).mean(dim=1)
            total = total + gaussian_nll(sq, logvar[rows, j]).sum()
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
