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
   (``est_logvar``, trained by a Gaussian NLL, core/model/tier1_loss.py): the aleatoric part. How the two
   parts make sigma^2 is core/routing/uncertainty.py (:func:`~rmmfed.core.routing.uncertainty.modality_sigma2`).
4. The survival head reads [z~_k ; phi_mod^(k) ; flag_k] for all k, where z~_k = z_k when observed
   and g_k(x_hat_k) (a one-instance bag) when absent (plus e_pseudo^(k) with ``pseudo_in_head``); with
   ``estimator`` off, the slot of eq. 2.
   ``fusion`` "concat" reads the slots concatenated; "attention" mixes them as tokens by shared-weight
   attention first (core/model/fusion.py), so the prompts and pseudo-embeddings act beyond a bias.
5. With ``cox_core`` (the default where site policies allow it) the risk adds a FIXED Cox term
   beta^T [p_1 m_1; p_1; ...; p_K m_K; p_K] (mean imputation and a missing flag per modality): the exact
   federated site-stratified ridge Cox fit (core/survival/cox_core.py), set by the server before round 1 and never
   trained, so the network is a residual on top of it. Otherwise, with ``linear_path``, the risk adds a linear Cox term beta^T [m~_1; flag_1; ...; m~_K; flag_K], where
   m~_k is the mean of the bag's (standardised, reduced) instances when observed and x_hat_k when absent
   (0 with the estimator off), under a ridge penalty (``linear_l2``): the model contains the penalised
   linear Cox model, so it need not lose to it on additive signal. Its weights start at zero.

Inputs are the federated standardised features, reduced to federated principal components for wide
modalities (core/aggregates/feature_reduction.py); ``input_dropout`` drops instance features while training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GatedAttentionPool
from ..config import Tier1Config
from .fusion import TokenFusion

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
        head_in = k * slot if cfg.fusion == "concat" else d
        self.head = nn.Sequential(nn.Linear(head_in, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden_dim, 1))
        self.fusion = TokenFusion(slot, d) if cfg.fusion == "attention" else None
        self.linear: nn.Linear | None = None
        if cfg.linear_path or cfg.cox_core:  # one weight per feature and one per missing flag
            self.linear = nn.Linear(sum(self.dims) + k, 1, bias=False)
            nn.init.zeros_(self.linear.weight)
            if cfg.cox_core:  # the exact federated Cox fit (core/survival/cox_core.py), set by the server, never trained
                self.linear.weight.requires_grad_(False)
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

    def slots(self, zs: list[torch.Tensor], observed: torch.Tensor) -> list[torch.Tensor]:
        """h_k of eq. 2 for every modality: its encoding where ``observed`` [B, K], the learnable
        pseudo-embedding (or 0) where not, each with its prompts (:meth:`with_prompts`)."""
        b = observed.shape[0]
        out = []
        for j, z in enumerate(zs):
            obs = observed[:, j : j + 1]
            fill = self.pseudo[j].expand(b, -1) if self.cfg.pseudo_embeddings else torch.zeros_like(z)
            out.append(self.with_prompts(torch.where(obs, z, fill), j, obs))
        return out

    def with_prompts(self, z: torch.Tensor, j: int, obs: torch.Tensor) -> torch.Tensor:
        """[z, modality prompt of modality ``j``, missing flag ``obs``]: one slot of eq. 2 (a prompt that the
        config turns off is zeros, so every slot keeps its width)."""
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

    def head_slots(self, zs: list[torch.Tensor], observed: torch.Tensor, x_hat: list[torch.Tensor] | None,
                   slots: list[torch.Tensor]) -> list[torch.Tensor]:
        """The slots the head reads: observed encodings, and g_k(x_hat_k) for the absent (estimator on)."""
        if not self.cfg.estimator or x_hat is None:
            return slots
        parts = []
        for j, z in enumerate(zs):
            obs = observed[:, j : j + 1]
            z_hat = self.absent_encoding(j, x_hat[j])
            parts.append(self.with_prompts(torch.where(obs, z, z_hat), j, obs))
        return parts

    def absent_encoding(self, j: int, x_hat_j: torch.Tensor) -> torch.Tensor:
        """The head's encoding of an absent modality j from its estimate (or recovery): g_k(x_hat_k), a
        one-instance bag pooling to itself; with ``pseudo_in_head`` (token fusion, pseudo-embeddings on)
        plus the pseudo-embedding. There the offset changes the attention between the tokens, so the
        pseudo-embedding acts in the head even with the estimator on (with concatenation it would be a
        constant per missingness pattern, i.e. a bias, so it is never added). Off by default: on the
        real cohorts it lost C-index (evidence.tier1_ablation)."""
        z_hat = self.encoders[j](x_hat_j)
        if self.fusion is not None and self.cfg.pseudo_embeddings and self.cfg.pseudo_in_head:
            z_hat = z_hat + self.pseudo[j]
        return z_hat

    def linear_input(self, means: list[torch.Tensor], p: torch.Tensor, x_hat: list[torch.Tensor] | None, *,
                     fill_always: bool = False) -> torch.Tensor | None:
        """The linear path's input [B, sum D_k (+ K)]: p_k m_k + (1 - p_k) x_hat_k and the flag p_k per
        modality. ``p`` [B, K] is the observed indicator (bool, or values in [0, 1] on an IG path).
        ``x_hat`` fills the absent modalities with the estimator on, or always with ``fill_always``
        (Tier 2's recovery); otherwise they enter as 0 (mean imputation)."""
        if self.linear is None:
            return None
        p = p.to(means[0].dtype)
        cox = self.cfg.cox_core  # the Cox core's design: mean imputation and a flag per modality, as it was fitted
        cols = []
        for j, m in enumerate(means):
            pj = p[:, j : j + 1]
            use = x_hat is not None and (fill_always or (self.cfg.estimator and not cox))
            fill = x_hat[j] if use else torch.zeros_like(m)
            cols.append(pj * m + (1.0 - pj) * fill)
            cols.append(pj if (self.cfg.missing_prompts or cox) else torch.zeros_like(pj))
        return torch.cat(cols, dim=1)

    def risk_from(self, parts: list[torch.Tensor], lin: torch.Tensor | None) -> torch.Tensor:
        """The survival head on its slots (fused as configured) plus the linear path: risk [B]."""
        fused = torch.cat(parts, dim=1) if self.fusion is None else self.fusion(parts)
        risk = self.head(fused).squeeze(-1)
        if self.linear is not None:
            risk = risk + self.linear(lin).squeeze(-1)
        return risk

    def linear_penalty(self) -> torch.Tensor | float:
        """linear_l2 / 2 ||beta||^2 of the linear path (0 without it)."""
        if self.linear is None or self.cfg.linear_l2 == 0 or self.cfg.cox_core:
            return 0.0
        return 0.5 * self.cfg.linear_l2 * (self.linear.weight ** 2).sum()

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor) -> Tier1Output:
        """observed [B, K] bool: the modalities the model may look at (present, minus any masked)."""
        if self.training and self.cfg.input_dropout > 0:
            x = [F.dropout(t, self.cfg.input_dropout, True) for t in x]
        zs, attns = self.encode(x, inst_mask)
        slots = self.slots(zs, observed)
        H = torch.cat(slots, dim=1)
        x_hat, logvar = self.estimate_with_logvar(H)
        lin = self.linear_input(bag_means(x, inst_mask), observed, x_hat) if self.linear is not None else None
        risk = self.risk_from(self.head_slots(zs, observed, x_hat, slots), lin)
        return Tier1Output(risk, x_hat, attns, logvar)

    @torch.no_grad()
    def infer(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
              samples: int | None = None) -> tuple[torch.Tensor, McPasses]:
        """Deterministic risk and the T MC-dropout passes from ONE encoding of the bags.

        Call in eval mode. Returns (risk [B], the passes).
        """
        zs, _ = self.encode(x, inst_mask)
        slots = self.slots(zs, observed)
        H = torch.cat(slots, dim=1)
        x_hat = self.estimate(H)
        lin = self.linear_input(bag_means(x, inst_mask), observed, x_hat) if self.linear is not None else None
        risk = self.risk_from(self.head_slots(zs, observed, x_hat, slots), lin)
        return risk, self._mc(H, samples)

    @torch.no_grad()
    def mc_passes(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
                  samples: int | None = None, zs: list[torch.Tensor] | None = None) -> McPasses:
        """T MC-dropout passes (estimates and, with the head, log-variances) in ONE batched forward.
        ``zs``: the bags' encodings when the caller already has them (eval mode: encoding is
        deterministic, so reusing them gives the same passes without re-reading every instance)."""
        if zs is None:
            zs, _ = self.encode(x, inst_mask)
        return self._mc(torch.cat(self.slots(zs, observed), dim=1), samples)

    @torch.no_grad()
    def mc_estimates(self, x: list[torch.Tensor], inst_mask: list[torch.Tensor], observed: torch.Tensor,
                     samples: int | None = None) -> list[torch.Tensor]:
        """T MC-dropout estimates in ONE batched forward of f_phi: per modality [T, B, D_k]."""
        return self.mc_passes(x, inst_mask, observed, samples).x_hat

    def _mc(self, H: torch.Tensor, samples: int | None) -> McPasses:
        t, b = samples or self.cfg.mc_samples, H.shape[0]
        est, logvar = self.estimate_with_logvar(H.repeat(t, 1), mc=True)  # rows sample-major
        return McPasses([e.view(t, b, -1) for e in est], None if logvar is None else logvar.view(t, b, -1))


def bag_means(x: list[torch.Tensor], inst_mask: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean of each bag's instances per modality [B, D_k] (0 for an empty bag): the linear path's input."""
    out = []
    for t, m in zip(x, inst_mask):
        w = m.to(t.dtype).unsqueeze(-1)
        out.append((t * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0))
    return out


def build_model(dims: dict[str, int], cfg: Tier1Config, seed: int) -> Tier1Model:
    """A freshly initialised Tier 1 model; the seed fixes the initial weights without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Tier1Model(dims, cfg)
