"""Modality-level masking: training augmentation and reconstruction views (seed 000, eq. 4 text)."""

from __future__ import annotations

import torch


def modality_dropout(present: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each present modality with probability ``p``; a patient keeps at least one.

    present [B, K] bool -> observed [B, K] bool. When every present modality of a patient is drawn
    for dropping, one of them (chosen uniformly) is kept. Patients with nothing present stay empty.
    """
    if p <= 0:
        return present.clone()
    drop = torch.rand(present.shape, generator=generator, device=present.device) < p
    observed = present & ~drop
    lost_all = present.any(dim=1) & ~observed.any(dim=1)
    if lost_all.any():
        keep = _one_of(present[lost_all], generator)
        observed[lost_all] = keep
    return observed


def hide_one(present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Hide one present modality (uniformly) for patients with at least two; others unchanged."""
    observed = present.clone()
    eligible = present.sum(dim=1) >= 2
    if eligible.any():
        observed[eligible] = present[eligible] & ~_one_of(present[eligible], generator)
    return observed


def _one_of(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One-hot choice of a True entry per row (rows must have at least one True)."""
    scores = torch.rand(mask.shape, generator=generator, device=mask.device).masked_fill(~mask, -1.0)
    return torch.nn.functional.one_hot(scores.argmax(dim=1), mask.shape[1]).bool()
