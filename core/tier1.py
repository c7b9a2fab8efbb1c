"""Tier 1 of seed 000 (eq. 1-3): prompt-enhanced, missing-aware, uncertainty-aware.

For each modality k (bags standardised by the federated feature statistics):

1. g_k encodes instances, :class:`GatedAttentionPool` pools them into z_k (eq. 1).
2. h_k = [z_k ; phi_mod^(k) ; 1] when observed, [e_pseudo^(k) ; phi_mod^(k) ; 0] when absent (eq. 2).
   Switches: ``modality_prompts`` (off: phi_mod = 0), ``missing_prompts`` (off: flag = 0),
   ``pseudo_embeddings`` (off: zero-fill).
3. f_phi maps H = [h_1; ...; h_K] to an estimate x_hat_k of every modality's mean-pooled standardised
   features (eq. 3 estimates in this feature space, so reconstruction targets stay fixed while
   encoders train, L_anat statistics are aggregated once, and Tier 2 recovers real features).
   MC dropout over T passes, run as one batched forward, gives sigma^2_k.
4. The survival head reads [z~_k ; phi_mod^(k) ; flag_k] for all k, where z~_k = z_k when observed
   and g_k(x_hat_k) (a one-instance bag) when absent; with ``estimator`` off, the slot of eq. 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GatedAttentionPool
from .config import Tier1Config


@dataclass
class Tier1Output:
    risk: torch.Tensor  # [B] log-hazard
    x_hat: list[torch.Tensor]  # per modality [B, D_k] (estimator output, single pass)
    attention: list[torch.Tensor]  # per modality [B, L_k]


class Tier1Model(nn.Module):
    def __init__(self, dims: dict[str, int], cfg: Tier1Config) -> None:
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = tuple(dims.values())
        self.cfg = cfg
        d, dp, k = cfg.embed_dim, cfg.prompt_dim, len(dims)
        self.encoders = nn.ModuleList(nn.Sequential(nn.Linear(D, d), nn.ReLU()) for D in self.dims)
        self.pools = nn.ModuleList(GatedAttentionPool(d, cfg.attn_dim, gated=cfg.gated_attention) for _ in self.dims)
        self.modality_prompt = nn.Parameter(0.1 * torch.randn(k, dp))
        self.pseudo = nn.Parameter(0.1 * torch.randn(k, d))
        slot = d + dp + 1
        self.est_in = nn.Linear(k * slot, cfg.hidden_dim)
        self.est_mid = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self.est_out = nn.ModuleList(nn.Linear(cfg.hidden_dim, D) for D in self.dims)
        self.head = nn.Sequential(nn.Linear(k * slot, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden_dim, 1))

    # ---- pieces ------------------------------------------------------------------------
    def encode(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        zs, attns = [], []
        for j in range(len(self.dims)):
            z, a = self.pools[j](self.encoders[j](x[j]), inst_mask[j])
            zs.append(z)
            attns.append(a)
        return zs, attns

    def _slots(self, zs: list[torch.Tensor], observed: torch.Tensor) -> list[torch.Tensor]:
        """h_k of eq. 2 for every modality."""
        b = observed.shape[0]
        out = []
        for j, z in enumerate(zs):
            obs = observed[:, j : j + 1]
            fill = self.pseudo[j].expand(b, -1) if self.cfg.pseudo_embeddings else torch.zeros_like(z)
            out.append(self._with_prompts(torch.where(obs, z, fill), j, obs))
        return out

    def _with_prompts(self, z: torch.Tensor, j: int, obs: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        prompt = self.modality_prompt[j].expand(b, -1)
        if not self.cfg.modality_prompts:
            prompt = torch.zeros_like(prompt)
        flag = obs.to(z.dtype) if self.cfg.missing_prompts else torch.zeros(b, 1, dtype=z.dtype, device=z.device)
        return torch.cat([z, prompt, flag], dim=1)

    def estimate(self, H: torch.Tensor, *, mc: bool = False) -> list[torch.Tensor]:
        """f_phi: H [B, K*slot] -> per-modality estimates [B, D_k]; dropout active when ``mc`` or training."""
        active = self.training or mc
        h = F.dropout(F.relu(self.est_in(H)), self.cfg.dropout, active)
        h = F.dropout(F.relu(self.est_mid(h)), self.cfg.dropout, active)
        return [out(h) for out in self.est_out]

    def head_input(self, zs: list[torch.Tensor], observed: torch.Tensor, x_hat: list[torch.Tensor] | None,
                   slots: list[torch.Tensor]) -> torch.Tensor:
        if not self.cfg.estimator or x_hat is None:
            return torch.cat(slots, dim=1)
        parts = []
        for j, z in enumerate(zs):
            obs = observed[:, j : j + 1]
            z_hat = self.encoders[j](x_hat[j])  # a one-instance bag pools to itself
            parts.append(self._with_prompts(torch.where(obs, z, z_hat), j, obs))
        return torch.cat(parts, dim=1)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor) -> Tier1Output:
        """observed [B, K] bool: the modalities the model may look at (present, minus any masked)."""
        zs, attns = self.encode(x, inst_mask)
        slots = self._slots(zs, observed)
        H = torch.cat(slots, dim=1)
        x_hat = self.estimate(H)
        risk = self.head(self.head_input(zs, observed, x_hat, slots)).squeeze(-1)
        return Tier1Output(risk, x_hat, attns)

    @torch.no_grad()
    def infer(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
              samples: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Deterministic risk and the T MC-dropout estimates from ONE encoding of the bags.

        Call in eval mode. Returns (risk [B], per modality [T, B, D_k]).
        """
        t = samples or self.cfg.mc_samples
        zs, _ = self.encode(x, inst_mask)
        slots = self._slots(zs, observed)
        H = torch.cat(slots, dim=1)
        x_hat = self.estimate(H)
        risk = self.head(self.head_input(zs, observed, x_hat, slots)).squeeze(-1)
        b = H.shape[0]
        mc = [e.view(t, b, -1) for e in self.estimate(H.repeat(t, 1), mc=True)]
        return risk, mc

    @torch.no_grad()
    def mc_estimates(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
                     samples: int | None = None) -> list[torch.Tensor]:
        """T MC-dropout estimates in ONE batched forward of f_phi: per modality [T, B, D_k]."""
        t = samples or self.cfg.mc_samples
        zs, _ = self.encode(x, inst_mask)
        H = torch.cat(self._slots(zs, observed), dim=1)
        b = H.shape[0]
        est = self.estimate(H.repeat(t, 1), mc=True)
        return [e.view(t, b, -1) for e in est]


def build_model(dims: dict[str, int], cfg: Tier1Config, seed: int) -> Tier1Model:
    """A freshly initialised Tier 1 model; the seed fixes the initial weights without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tier1Model(dims, cfg)
