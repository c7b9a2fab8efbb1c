"""Tier 2's risk through the frozen Tier 1 survival head.

A referred patient's Tier 2 risk is Tier 1's head read on [z~_k ; phi_mod^(k) ; flag_k] for every k
(as in Tier 1, module :mod:`rmmfed.core.model.tier1`, step 4), where z~_k is the encoding of the patient's
own bag for an observed modality, and g_k(x_k) of Tier 2's recovered features (a one-instance bag)
for a missing one. So Tier 2 never sees less than Tier 1: observed modalities enter through their
bags, not their mean-pooled features; only the recovered part differs. The risk is read at Tier 2's
point recovery (its posterior-mean estimate, :meth:`Tier2Model.recover`); the risks of its S
diffusion draws give the spread of that risk. (Reading the risk of every draw and averaging gave
the same masked C-index on the default cohort, seed 0: val 0.734 vs 0.732, test 0.716 vs 0.717.)

Both tiers then share one head and hence one risk scale.
"""

from __future__ import annotations

import torch

from ..model.tier1 import Tier1Model


def tier1_head_risk(tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor,
                    fill: list[torch.Tensor], means: list[torch.Tensor]) -> torch.Tensor:
    """Tier 1's head on observed encodings ``zs`` and g_k(``fill``_k) for the unobserved modalities [B];
    its linear path (if any) reads the observed bags' means ``means`` and ``fill`` for the rest.

    Differentiable in ``fill`` (L_cons trains Tier 2 through it); call with Tier 1 in eval mode."""
    parts = []
    obs_all = observed.bool()
    for j, z in enumerate(zs):
        obs = obs_all[:, j : j + 1]
        z_hat = tier1.absent_encoding(j, fill[j])
        parts.append(tier1.with_prompts(torch.where(obs, z, z_hat), j, obs))
    lin = tier1.linear_input(means, obs_all, fill, fill_always=True)
    return tier1.risk_from(parts, lin)


def tier2_risk(tier2, tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor,
               x_rec: torch.Tensor, means: list[torch.Tensor]) -> torch.Tensor:
    """Tier 2's risk [B] at its point recovery ``x_rec`` [B, sum D]: through Tier 1's head (risk-head =
    tier1) or the multi-branch head on every modality (risk-head = branches)."""
    if tier2.cfg.uses_branches:
        return tier2.risk(x_rec, torch.ones_like(observed, dtype=torch.bool))
    return tier1_head_risk(tier1, zs, observed, tier2.split(x_rec), means)
