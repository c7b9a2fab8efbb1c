"""Tier 2 of seed 000 (eq. 6-8): conditional diffusion recovery and a multi-branch survival head.

Tier 2 recovers missing modalities in Tier 1's target space (standardised mean-pooled features),
for all modalities at once, over the concatenated vector x = [x_1; ...; x_K] (length sum_k D_k):

* :class:`ConditionalDenoiser` is eps_psi(x_t, t, c) of eq. 6 with the condition
  c = [x_avail (observed features, 0 where hidden) ; x_hat (Tier 1's estimate of every modality) ;
  log(1 + sigma^2_k) (Tier 1's MC-dropout variance, K values) ; observed mask (K values)],
  i.e. the paper's c = [x_avail, z_hat, sigma^2] plus the mask. It is an inpainting denoiser: on
  observed coordinates the noised input is replaced by the observed values, so only hidden
  coordinates are denoised. Sinusoidal time embedding, MLP with pre-LayerNorm residual blocks (SiLU).
  ``parametrisation``: "x0-residual" (default) reads the MLP's output r as a correction of Tier 1's
  estimate, x0 = x_hat + r, and eps_psi = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) (a = alpha_bar): an
  untrained Tier 2 recovers exactly what Tier 1 estimated, and training can only move it where the
  data say so. "v" reads it as a velocity v (Salimans & Ho 2022), eps_psi = sqrt(1 - a_t) x_t +
  sqrt(a_t) v. Both keep DDIM's x0 estimate bounded (no 1/sqrt(a_t) amplification of the error,
  about 160 at t = 999 of the default schedule).
* :meth:`Tier2Model.recover` draws S DDIM samples per patient (one batched sampler call), averages
  them on hidden coordinates, copies observed ones through, and reports Tier 2's own uncertainty
  per modality, (1/S) sum_s ||x^s_k - mean_k||^2 / D_k on hidden modalities (0 on observed ones).
* :meth:`Tier2Model.risk` is the :class:`~rmmfed.core.tier2.branches.MultiBranchHead` (eq. 7) on features.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .branches import MultiBranchHead
from ..config import Tier1Config
from .diffusion import LinearSchedule, ddim_sample
from .tier2_config import Tier2Config
from ..routing.uncertainty import patient_uncertainty


# ---- per-modality <-> concatenated -------------------------------------------------------------
def concat_modalities(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, D_k] per modality -> [B, sum D_k]."""
    return torch.cat(list(xs), dim=1)


def split_modalities(x: torch.Tensor, dims: Sequence[int]) -> list[torch.Tensor]:
    """[B, sum D_k] -> [B, D_k] per modality."""
    return list(torch.split(x, list(dims), dim=1))


def coord_mask(mask: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Per-modality mask [B, K] -> per-coordinate mask [B, sum D_k]."""
    reps = torch.as_tensor(list(dims), device=mask.device)
    return torch.repeat_interleave(mask, reps, dim=1)


def make_condition(x_obs: torch.Tensor, observed: torch.Tensor, x_hat: torch.Tensor, sigma2: torch.Tensor,
                   dims: Sequence[int], enc: torch.Tensor | None = None) -> torch.Tensor:
    """c = [x_avail ; x_hat ; log1p(sigma^2) ; observed (; enc)] -> [B, 2 sum D_k + 2K (+ E)].

    x_obs is zeroed where hidden; ``enc`` [B, E] is Tier 1's view of the observed bags (its eq. 2
    slots, :func:`rmmfed.core.tier2.tier2_context.tier1_slots`), appended last when given."""
    obs = observed.bool()
    x_avail = x_obs * coord_mask(obs, dims).to(x_obs.dtype)
    parts = [x_avail, x_hat, torch.log1p(sigma2.clamp(min=0)).to(x_obs.dtype), obs.to(x_obs.dtype)]
    if enc is not None:
        parts.append(enc.to(x_obs.dtype))
    return torch.cat(parts, dim=1)


def encoding_dim(tier1: Tier1Config, k: int) -> int:
    """Width of Tier 1's eq. 2 slots for K modalities: K (d + d_p + 1)."""
    return k * (tier1.embed_dim + tier1.prompt_dim + 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        u = F.silu(self.fc1(self.norm(h)) + self.time(temb))
        return h + self.fc2(u)


class ConditionalDenoiser(nn.Module):
    """eps_psi(x_t, t, c) over the concatenated features (eq. 6); see the module docstring."""

    def __init__(self, dims: Sequence[int], *, hidden_dim: int = 128, time_dim: int = 32,
                 timesteps: int = 1000, blocks: int = 3, enc_dim: int = 0,
                 parametrisation: str = "x0-residual") -> None:
        super().__init__()
        if parametrisation not in ("x0-residual", "v"):
            raise ValueError(f"parametrisation must be x0-residual or v, got {parametrisation!r}")
        self.parametrisation = parametrisation
        self.dims = tuple(int(d) for d in dims)
        self.total = sum(self.dims)
        k = len(self.dims)
        self.enc_dim = int(enc_dim)
        self.cond_dim = 2 * self.total + 2 * k + self.enc_dim
        self.time_dim = time_dim
        self.schedule = LinearSchedule(timesteps)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.inp = nn.Linear(self.total + self.cond_dim, hidden_dim)
        self.blocks = nn.ModuleList(_ResBlock(hidden_dim) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden_dim)
        self.outp = nn.Linear(hidden_dim, self.total)
        if parametrisation == "x0-residual":  # start as Tier 1's estimate exactly (the correction is 0)
            nn.init.zeros_(self.outp.weight)
            nn.init.zeros_(self.outp.bias)

    def observed_part(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_avail [B, sum D], observed coordinates [B, sum D] bool) read back from c."""
        k = len(self.dims)
        observed = c[:, 2 * self.total + k: 2 * self.total + 2 * k] > 0.5
        return c[:, : self.total], coord_mask(observed, self.dims)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        known, obs = self.observed_part(c)
        x_in = torch.where(obs, known, x_t)  # inpainting: observed coordinates are not noised
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x_t.dtype))
        h = self.inp(torch.cat([x_in, c], dim=1)) + temb
        for block in self.blocks:
            h = block(h, temb)
        out = self.outp(F.silu(self.norm(h)))
        a = self.schedule.alpha_bars[t].unsqueeze(-1).to(x_t.dtype)
        if self.parametrisation == "v":
            return (1.0 - a).sqrt() * x_in + a.sqrt() * out  # eps through the velocity head (docstring)
        x0 = c[:, self.total: 2 * self.total] + out  # Tier 1's estimate x_hat plus a learned correction
        return (x_in - a.sqrt() * x0) / (1.0 - a).sqrt()


class Tier2Model(nn.Module):
    """Denoiser eps_psi (+ the multi-branch head when ``cfg.risk_head`` is "branches").

    ``dims`` maps modality name -> D_k (the run's order); ``enc_dim`` > 0 conditions the denoiser on
    Tier 1's encodings of the observed bags as well (:func:`encoding_dim`)."""

    def __init__(self, dims: Mapping[str, int], cfg: Tier2Config, enc_dim: int = 0) -> None:
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = tuple(int(d) for d in dims.values())
        self.cfg = cfg
        self.enc_dim = int(enc_dim)
        self.denoiser = ConditionalDenoiser(self.dims, hidden_dim=cfg.hidden_dim, time_dim=cfg.time_dim,
                                            timesteps=cfg.timesteps, enc_dim=self.enc_dim,
                                            parametrisation=cfg.parametrisation)
        self.head = MultiBranchHead(self.dims, cfg.branch_dim, cfg.n_branches) if cfg.uses_branches else None

    # ---- helpers -------------------------------------------------------------------------
    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return split_modalities(x, self.dims)

    def concat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return concat_modalities(xs)

    def coord_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return coord_mask(mask.bool(), self.dims)

    def condition(self, x_obs: torch.Tensor, observed: torch.Tensor, x_hat: torch.Tensor,
                  sigma2: torch.Tensor, enc: torch.Tensor | None = None) -> torch.Tensor:
        if self.enc_dim and (enc is None or enc.shape[1] != self.enc_dim):
            raise ValueError(f"this Tier 2 is conditioned on Tier 1 encodings of width {self.enc_dim}; "
                             f"got {None if enc is None else enc.shape[1]}")
        return make_condition(x_obs, observed, x_hat, sigma2, self.dims, enc if self.enc_dim else None)

    # ---- eq. 6 inference -----------------------------------------------------------------------
    @torch.no_grad()
    def recover(self, x_obs: torch.Tensor, observed: torch.Tensor, x_hat: torch.Tensor, sigma2: torch.Tensor,
                *, samples: int, steps: int, generator: torch.Generator, enc: torch.Tensor | None = None,
                return_draws: bool = False):
        """Recover the unobserved modalities: (x_rec [B, sum D], Tier 2 uncertainty per modality [B, K])
        (and the draws [S, B, sum D], observed coordinates copied through, with ``return_draws``).

        S = ``samples`` DDIM runs per patient in one batched call (rows repeated sample-major). x_rec,
        the point recovery, is the posterior-mean estimate E[x | c]: the x0 prediction of the first,
        noisiest step, averaged over the S runs (with the x0-MSE objective this is the model's
        regression of the hidden features on the condition; the mean of S finished draws would add
        their spread / S to the error). The draws themselves carry the uncertainty: (1/S) sum_s
        ||x^s_k - mean_k||^2 / D_k on hidden modalities (0 on observed ones), and their risks.
        Observed coordinates are copied from ``x_obs``.
        """
        b, s = x_obs.shape[0], max(1, int(samples))
        obs = observed.bool()
        cond = self.condition(x_obs, obs, x_hat, sigma2, enc)
        hidden = ~self.coord_mask(obs)
        known = torch.where(hidden, torch.zeros_like(x_obs), x_obs)
        draws, first = ddim_sample(self.denoiser, cond.repeat(s, 1), (s * b, x_obs.shape[1]), steps, generator,
                                   hidden=hidden.repeat(s, 1), known=known.repeat(s, 1), return_first_x0=True)
        draws, first = draws.view(s, b, -1), first.view(s, b, -1)
        mean = draws.mean(dim=0)
        x_rec = torch.where(hidden, first.mean(dim=0), x_obs)
        var = torch.stack([((d - m) ** 2).sum(dim=2).mean(dim=0) / d.shape[2]
                           for d, m in zip(torch.split(draws, list(self.dims), dim=2), self.split(mean))], dim=1)
        var = torch.where(obs, torch.zeros_like(var), var)
        if return_draws:
            return x_rec, var, torch.where(hidden, draws, x_obs)
        return x_rec, var

    @staticmethod
    def patient_uncertainty(var_k: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Patient-level Tier 2 uncertainty: mean of var_k over hidden modalities (0 if none hidden)."""
        return patient_uncertainty(var_k, observed.bool())

    # ---- head ----------------------------------------------------------------------------------
    def head_outputs(self, x: torch.Tensor, available: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(risk [B], branch outputs [B, M, d], attention [B, M, K]) of the head on x [B, sum D]."""
        if self.head is None:
            raise ValueError("this Tier 2 has no multi-branch head (risk-head = tier1): score it through Tier 1's "
                             "head (rmmfed.core.tier2.tier2_scoring)")
        return self.head(self.split(x), available.bool())

    def risk(self, x: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Log-hazard [B] from concatenated features and the modalities present or recovered [B, K]."""
        return self.head_outputs(x, available)[0]


def build_tier2(dims: Mapping[str, int], cfg: Tier2Config, seed: int, *, tier1: Tier1Config | None = None
                ) -> Tier2Model:
    """A freshly initialised Tier 2 model; the seed fixes the weights without touching global RNG.

    ``tier1`` (the run's Tier 1 config) sizes the encoding part of the condition when
    ``cfg.condition_on_encodings`` is on; without it the denoiser is conditioned on features only."""
    enc = encoding_dim(tier1, len(dims)) if (tier1 is not None and cfg.condition_on_encodings) else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tier2Model(dims, cfg, enc)
