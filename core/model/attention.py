"""Attention pooling over a variable-length bag (seed 000 eq. 1; Ilse et al. 2018).

a_j = softmax_j( w^T [tanh(V F_j) * sigmoid(U F_j)] ),   z = sum_j a_j F_j

With ``gated=False`` the sigmoid gate is dropped and this is eq. 1 verbatim. Padded instances
(mask False) get zero weight; an empty bag pools to the zero vector with all-zero weights.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionPool(nn.Module):
    def __init__(self, dim: int, attn_dim: int, *, gated: bool = True) -> None:
        super().__init__()
        self.V = nn.Linear(dim, attn_dim, bias=False)
        self.U = nn.Linear(dim, attn_dim, bias=False) if gated else None
        self.w = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, N, d], mask [B, N] bool -> (z [B, d], attention [B, N])."""
        h = torch.tanh(self.V(feats))
        if self.U is not None:
            h = h * torch.sigmoid(self.U(feats))
        scores = self.w(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        any_inst = mask.any(dim=1, keepdim=True)
        scores = torch.where(any_inst, scores, torch.zeros_like(scores))
        attn = torch.softmax(scores, dim=1) * any_inst
        z = torch.einsum("bn,bnd->bd", attn, feats)
        return z, attn
