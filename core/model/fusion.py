"""Token fusion: the modalities' slots mixed by shared-weight attention (``model.fusion = attention``).

With today's concatenation (``fusion = concat``) the head reads [h_1; ...; h_K] through one linear
layer. There a modality prompt phi_mod^(k), the same vector for every patient, is a constant input:
it only adds a bias. With the missing flag on, a learnable pseudo-embedding in an absent slot is
again a per-(modality, flag) constant, i.e. a re-parametrisation of that bias.

Here every slot h_k = [z~_k ; phi_mod^(k) ; flag_k] is mapped by ONE shared linear map to a token
t_k, the K tokens attend to each other (one head, scaled dot product, shared weights), and the head
reads the mean of the mixed tokens. The map and the attention do not know which token is which
modality, so the prompt is what tells them apart (it changes every query-key product, not just a
bias), and an absent modality's token (pseudo-embedding or estimate) changes the attention weights
of the others, so it is treated differently from a zero token. All layers are plain Linear and
LayerNorm, which Opacus's per-sample gradients support.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TokenFusion(nn.Module):
    def __init__(self, slot_dim: int, dim: int) -> None:
        super().__init__()
        self.token = nn.Linear(slot_dim, dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, slots: list[torch.Tensor]) -> torch.Tensor:
        """K slots [B, slot_dim] -> fused representation [B, dim]."""
        t = torch.relu(self.token(torch.stack(slots, dim=1)))  # [B, K, d]
        att = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) * self.scale, dim=-1)  # [B, K, K]
        mixed = self.norm(t + att @ self.v(t))
        return mixed.mean(dim=1)
