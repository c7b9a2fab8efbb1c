"""Tier 1 of seed 000 (eq. 1-3): prompt-enhanced, missing-aware, uncertainty-aware.

For each modality k (bags standardised by the federated feature statistics):

1. g_k encodes instances, :class:`GatedAttentionPool` pools them into z_k (eq. 1).
2. h_k = [z_k ; phi_mod^(k) ; 1] when observed, [e_pseudo^(k) ; phi_mod^(k) ; 0] when absent (eq. 2).
   Switches: ``modality_prompts`` (off: phi_mod = 0), ``missing_prompts`` (off: flag = 0),
   ``pseudo_embeddings`` (off: zero-fill).
3. f_phi maps H = [h_1; ...; h_K] to an estimate x_hat_k of every modality's mean-pooled standardised
   features (eq. 3 estimates in this feature space, so reconstruction targets stay fixed while
   encoders train, L_anat statistics are aggregated once, and Tier 2 recovers real features).
   MC dropout over T passes, run as one batched forward, gives the epistemic part of sigma^2_k.
   With ``uncertainty`` "total" or "aleatoric", f_phi also predicts one log-variance per modality
   (``est_logvar``, trained by a Gaussian NLL, core/tier1_loss.py): the aleatoric part. How the two
   parts make sigma^2 is core/uncertainty.py (:func:`~rmmfed.core.uncertainty.modality_sigma2`).
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

# Bounds of f_phi's log-variance (standardised features): exp(-10) = 4.5e-5 to exp(5) = 148, inside
# the calibration histogram's default grid (hist-low 1e-8, hist-high 1e3) with room for the epistemic part.
LOGVAR_MIN, LOGVAR_MAX = -10.0, 5.0


def bounded_logvar(raw: torch.Tensor) -> torch.Tensor:
    """A smooth clamp of ``raw`` to [LOGVAR_MIN, LOGVAR_MAX] (within 1e-6): the identity well inside the
    range, and never a zero gradient (a hard clamp would freeze a head that overshoots)."""
    upper = LOGVAR_MAX - F.softplus(LOGVAR_MAX - raw)
    return LOGVAR_MIN + F.softplus(upper - LOGVAR_MIN)


@dataclass
class Tier1Output:
    risk: torch.Tensor  # [B] log-hazard
    x_hat: list[torch.Tensor]  # per modality [B, D_k] (estimator output, single pass)
    attention: list[torch.Tensor]  # per modality [B, L_k]
    logvar: torch.Tensor | None = None  # [B, K] f_phi's predicted log-variance; None without the head


@dataclass(frozen=True)
class McPasses:
    """T MC-dropout passes of f_phi, from one batched forward."""

    x_hat: list[torch.Tensor]  # per modality [T, B, D_k]
    logvar: torch.Tensor | None  # [T, B, K] predicted log-variance per modality; None without the head

    def mean(self) -> list[torch.Tensor]:
        """The MC mean estimate per modality [B, D_k]."""
        return [e.mean(dim=0) for e in self.x_hat]


class Tier1Model(nn.Module):
    """Tier 1 (eq. 1-3). The aleatoric head ``est_logvar`` (when ``cfg.uncertainty`` is not "epistemic")
    predicts ONE log-variance per modality, shared by its D_k dimensions, rather than one per dimension:
    for a variance shared by the dimensions the Gaussian NLL is minimised by the patient's expected
    mean squared error over them, which is exactly the recovery error sigma^2 is meant to rank (and the
    per-dimension scale of eq. 3's sigma^2_k); on standardised features a per-dimension variance would
    be averaged over the dimensions anyway; and it costs hidden + 1 weights per modality instead of
    (hidden + 1) D_k (fewer weights to exchange and to noise under DP-SGD). With "epistemic" the head
    does not exist, so the model, its weights and its training are those of eq. 1-4 unchanged.
    """

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
        # Created last, so every other weight is initialised as in a model without it (same seed).
        self.est_logvar = (nn.ModuleList(nn.Linear(cfg.hidden_dim, 1) for _ in self.dims)
                           if cfg.uncertainty != "epistemic" else None)

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
        return self.estimate_with_logvar(H, mc=mc)[0]

    def estimate_with_logvar(self, H: torch.Tensor, *, mc: bool = False
                             ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """f_phi's estimates [B, D_k] per modality and, with the aleatoric head, its bounded
        log-variance [B, K] (None without the head). One pass: both read the same dropout mask."""
        active = self.training or mc
        h = F.dropout(F.relu(self.est_in(H)), self.cfg.dropout, active)
        h = F.dropout(F.relu(self.est_mid(h)), self.cfg.dropout, active)
        x_hat = [out(h) for out in self.est_out]
        if self.est_logvar is None:
            return x_hat, None
        return x_hat, bounded_logvar(torch.cat([lv(h) for lv in self.est_logvar], dim=1))

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
        x_hat, logvar = self.estimate_with_logvar(H)
        risk = self.head(self.head_input(zs, observed, x_hat, slots)).squeeze(-1)
        return Tier1Output(risk, x_hat, attns, logvar)

    @torch.no_grad()
    def infer(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
              samples: int | None = None) -> tuple[torch.Tensor, McPasses]:
        """Deterministic risk and the T MC-dropout passes from ONE encoding of the bags.

        Call in eval mode. Returns (risk [B], the passes).
        """
        zs, _ = self.encode(x, inst_mask)
        slots = self._slots(zs, observed)
        H = torch.cat(slots, dim=1)
        x_hat = self.estimate(H)
        risk = self.head(self.head_input(zs, observed, x_hat, slots)).squeeze(-1)
        return risk, self._mc(H, samples)

    @torch.no_grad()
    def mc_passes(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
                  samples: int | None = None) -> McPasses:
        """T MC-dropout passes (estimates and, with the head, log-variances) in ONE batched forward."""
        zs, _ = self.encode(x, inst_mask)
        return self._mc(torch.cat(self._slots(zs, observed), dim=1), samples)

    @torch.no_grad()
    def mc_estimates(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
                     samples: int | None = None) -> list[torch.Tensor]:
        """T MC-dropout estimates in ONE batched forward of f_phi: per modality [T, B, D_k]."""
        return self.mc_passes(x, inst_mask, observed, samples).x_hat

    def _mc(self, H: torch.Tensor, samples: int | None) -> McPasses:
        t, b = samples or self.cfg.mc_samples, H.shape[0]
        est, logvar = self.estimate_with_logvar(H.repeat(t, 1), mc=True)  # rows sample-major
        return McPasses([e.view(t, b, -1) for e in est], None if logvar is None else logvar.view(t, b, -1))


def build_model(dims: dict[str, int], cfg: Tier1Config, seed: int) -> Tier1Model:
    """A freshly initialised Tier 1 model; the seed fixes the initial weights without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tier1Model(dims, cfg)
