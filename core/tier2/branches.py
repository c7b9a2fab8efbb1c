"""Multi-branch attention survival head of Tier 2 and its diversity loss (seed 000 eq. 7).

Each modality k becomes a token tok_k = ReLU(W_k x_k + b_k) + e_k (e_k a learnable modality
embedding). Branch m scores the available tokens with its own scorer

    s_{m,k} = w_m^T tanh(V_m tok_k),   a_{m,k} = softmax over available k,   o^(m) = sum_k a_{m,k} tok_k,

absent tokens get exactly zero weight (and are zeroed before pooling, so their input cannot leak).
A patient with no available token gets o^(m) = 0. The risk is a linear map of [o^(1); ...; o^(M)].

Eq. 7 (branch diversity), with P the set of unordered branch pairs:

    L_div = -(1/|P|) sum_{(m,n) in P} (1 - cos(o^(m), o^(n))),   averaged over the batch;

minimising it pushes branch outputs apart. With one branch, P is empty and L_div = 0.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MultiBranchHead(nn.Module):
    def __init__(self, dims: Sequence[int], branch_dim: int, branches: int) -> None:
        super().__init__()
        if branches < 1:
            raise ValueError("branches must be >= 1")
        self.dims = tuple(int(d) for d in dims)
        self.branch_dim = int(branch_dim)
        self.branches = int(branches)
        k, d, m = len(self.dims), self.branch_dim, self.branches
        self.token = nn.ModuleList(nn.Linear(D, d) for D in self.dims)
        self.modality_embedding = nn.Parameter(0.1 * torch.randn(k, d))
        self.V = nn.Parameter(torch.randn(m, d, d) / d**0.5)  # V_m: [d_attn = d, d]
        self.w = nn.Parameter(torch.randn(m, d) / d**0.5)  # w_m
        self.out = nn.Linear(m * d, 1)

    def tokens(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-modality features [B, D_k] -> tokens [B, K, d]."""
        toks = [F.relu(enc(x)) for enc, x in zip(self.token, xs)]
        return torch.stack(toks, dim=1) + self.modality_embedding

    def forward(self, xs: Sequence[torch.Tensor], available: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xs: per-modality [B, D_k]; available [B, K] bool.

        Returns (risk [B], branch outputs o [B, M, d], attention [B, M, K]).
        """
        if len(xs) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} modalities, got {len(xs)}")
        avail = available.bool()
        tok = self.tokens(xs) * avail.unsqueeze(-1).to(xs[0].dtype)  # absent tokens -> 0
        h = torch.tanh(torch.einsum("mae,bke->bmka", self.V, tok))  # [B, M, K, d]
        scores = torch.einsum("bmka,ma->bmk", h, self.w)
        mask = avail.unsqueeze(1)  # [B, 1, K]
        scores = scores.masked_fill(~mask, float("-inf"))
        any_tok = avail.any(dim=1).view(-1, 1, 1)
        scores = torch.where(any_tok, scores, torch.zeros_like(scores))
        attn = torch.softmax(scores, dim=-1) * any_tok.to(tok.dtype)
        o = torch.einsum("bmk,bkd->bmd", attn, tok)
        risk = self.out(o.flatten(1)).squeeze(-1)
        return risk, o, attn


def diversity_loss(o: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7 on branch outputs o [B, M, d]; 0 (attached to the graph) for a single branch."""
    m = o.shape[1]
    if m < 2:
        return o.sum() * 0.0
    pairs = list(itertools.combinations(range(m), 2))
    a = torch.tensor([p[0] for p in pairs], device=o.device)
    b = torch.tensor([p[1] for p in pairs], device=o.device)
    cos = F.cosine_similarity(o[:, a], o[:, b], dim=-1, eps=eps)  # [B, |P|]
    return -(1.0 - cos).mean(dim=1).mean()
