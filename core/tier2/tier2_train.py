"""Local Tier 2 training and inference (seed 000 eq. 6-8), with Tier 1 frozen.

Eq. 8 as trained here:

    L_Tier2 = L_DDPM + alpha L_cons + beta L_div + lambda_task L_task

* L_DDPM (eq. 6): every step draws, per patient with >= 2 modalities present, one masking pattern
  among all those its modalities allow (``masking = all-patterns``; ``one`` hides a single present
  modality); the condition c holds the observed features, Tier 1's MC-dropout mean estimate x_hat and
  sigma^2 under that same mask, and Tier 1's encodings of the observed bags
  (:class:`~rmmfed.core.tier2.tier2_context.PatternBank`, computed once per round: Tier 1 is frozen). The
  error is taken on the hidden coordinates only, as the x0-MSE with Min-SNR weights by default
  (``loss_weighting``, :func:`~rmmfed.core.tier2.diffusion.ddpm_step`).
* L_cons: the paper's L_cons compares a segmentation computed from recovered modalities with the one
  from real ones. This project has no segmentation output, so the consistency is enforced on the
  downstream quantity instead: MSE between the risk on [observed ; one-step denoised estimate of the
  hidden part] and the risk on the real features (detached target). With ``risk_head = tier1`` (the
  default) both risks come from Tier 1's frozen head, the one that scores Tier 2 at inference
  (:mod:`~rmmfed.core.tier2.tier2_scoring`), and L_task / L_div are off (there is no second head). The
  one-step estimate is the x0 prediction of the SAME forward pass that L_DDPM uses.
* L_task, L_div (``risk_head = branches`` only): Cox partial likelihood (Efron) of the multi-branch
  head (eq. 7) on the real features, and the diversity of its branch outputs.
* The weights a site sends are the EMA of its local steps (``ema_decay``), over at least
  ``local_steps`` steps a round.

Tier 1 is frozen throughout: its parameters get ``requires_grad=False`` and eval mode for the
duration (both restored afterwards), no optimiser sees them, and its MC estimates are computed under
``torch.no_grad`` inside a seeded ``fork_rng``, so the global RNG stream is left untouched.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..model.augment import hide_one
from .branches import diversity_loss
from ..survival.cox import cox_loss
from .diffusion import ddpm_step
from ..data.tensors import SiteTensors, patients_per_batch
from ..model.tier1 import Tier1Model
from .tier2 import Tier2Model, concat_modalities, coord_mask
from .tier2_context import PatternBank, bag_encodings, data_means, tier1_slots, tier2_inputs
from ..routing.risk_interval import risks_of_draws
from .tier2_scoring import tier1_head_risk, tier2_risk
from .tier2_config import Tier2Config

LOSS_KEYS = ("loss", "ddpm", "cons", "div", "task")


def train_tier2(tier2: Tier2Model, tier1: Tier1Model, data: SiteTensors, cfg: Tier2Config, *, epochs: int,
                lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4,
                mc_samples: int | None = None) -> dict[str, float]:
    """Mini-batch Adam on eq. 8 over ``data`` (on the models' device), seeded; Tier 1 frozen.

    At least ``cfg.local_steps`` steps (``epochs`` passes when that is more) over the patients with
    two or more modalities present, each step under a freshly drawn masking pattern per patient
    (:class:`~rmmfed.core.tier2.tier2_context.PatternBank`); with ``cfg.ema_decay`` > 0 the model ends with
    the exponential moving average of its weights over the steps (``torch.optim.swa_utils``).
    Returns the mean of each term over the steps taken: keys ``loss, ddpm, cons, div, task``
    (plus ``steps``).
    """
    device = data.present.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dgen = torch.Generator(device=device).manual_seed(seed + 1)
    flags = [p.requires_grad for p in tier1.parameters()]
    was_training = tier1.training
    for p in tier1.parameters():
        p.requires_grad_(False)
    tier1.eval()
    tier2.train()
    opt = torch.optim.Adam(tier2.parameters(), lr=lr, weight_decay=weight_decay)
    sums = np.zeros(len(LOSS_KEYS))
    steps = 0
    try:
        bank = PatternBank.build(tier1, data, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                                 mc_samples=mc_samples)
        pool = bank.trainable()
        if len(pool) < 2:
            return {**{k: float("nan") for k in LOSS_KEYS}, "steps": 0.0}
        bs = min(batch_size, len(pool))
        total = max(epochs * -(-len(pool) // bs), cfg.local_steps)
        ema = (AveragedModel(tier2, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
               if cfg.ema_decay > 0 else None)
        x0_all = concat_modalities(data.target)
        dims = list(tier2.dims)
        order, pos = pool[torch.randperm(len(pool), generator=gen).to(device)], 0
        for _ in range(total):
            if pos + bs > len(order):
                order, pos = pool[torch.randperm(len(pool), generator=gen).to(device)], 0
            idx = order[pos : pos + bs]
            pos += bs
            pattern = _patterns_for(bank, idx, cfg, dgen)
            observed, x_hat, sigma2 = bank.gather(idx, pattern)
            present = bank.present[idx]
            hidden = present & ~observed
            obs_c, hid_c = coord_mask(observed, dims), coord_mask(hidden, dims)
            x0 = x0_all[idx]
            x_obs = x0 * obs_c.to(x0.dtype)
            x0_in = torch.where(coord_mask(present, dims), x0, x_hat)  # a modality never had: Tier 1's stand-in
            zs = [z[idx] for z in bank.zs]
            means = [m[idx] for m in bank.means]
            enc = tier1_slots(tier1, zs, observed) if tier2.enc_dim else None
            cond = tier2.condition(x_obs, observed, x_hat, sigma2, enc)
            step = ddpm_step(tier2.denoiser, x0_in, hid_c, cond, dgen, denoise=~obs_c,
                             weighting=cfg.loss_weighting, snr_gamma=cfg.snr_gamma)
            x_cons = torch.where(obs_c, x_obs, step.x0_pred)
            zero = step.loss * 0.0
            if cfg.uses_branches:
                risk_real, o, _ = tier2.head_outputs(x0_in, present)
                l_task = cox_loss(risk_real, data.time[idx], data.event[idx])
                l_cons = F.mse_loss(tier2.risk(x_cons, present), risk_real.detach())
                l_div = diversity_loss(o) if cfg.use_diversity else zero
            else:  # one head for both tiers: consistency of Tier 1's risk on recovered vs real features
                r_cons = tier1_head_risk(tier1, zs, observed, list(torch.split(x_cons, dims, dim=1)), means)
                l_cons = F.mse_loss(r_cons, bank.risk_full[idx])
                l_task = l_div = zero
            loss = step.loss + cfg.alpha_cons * l_cons + cfg.beta_div * l_div + cfg.lambda_task * l_task
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(tier2)
            sums += [loss.item(), step.loss.item(), l_cons.item(), l_div.item(), l_task.item()]
            steps += 1
        if ema is not None:
            tier2.load_state_dict(ema.module.state_dict())
    finally:
        for p, f in zip(tier1.parameters(), flags):
            p.requires_grad_(f)
        tier1.train(was_training)
    avg = sums / max(steps, 1)
    return {**{k: float(v) for k, v in zip(LOSS_KEYS, avg)}, "steps": float(steps)}


def _patterns_for(bank: PatternBank, idx: torch.Tensor, cfg: Tier2Config, generator: torch.Generator) -> torch.Tensor:
    """The pattern index per patient: any valid one (all-patterns) or the one that hides a single
    present modality (one)."""
    if cfg.masking == "all-patterns":
        return bank.draw(idx, generator)
    observed = hide_one(bank.present[idx], generator)
    k = observed.shape[1]
    weights = (2 ** torch.arange(k - 1, -1, -1, device=observed.device))
    return ((~observed).long() * weights).sum(dim=1)  # the row of observed_patterns' product order


class Tier2Prediction(NamedTuple):
    risk: np.ndarray  # [N] at the point recovery
    uncertainty: np.ndarray  # [N] Tier 2's own (spread of the draws over missing modalities), 0 if none missing
    recovered: list[np.ndarray]  # per modality [N, D_k]: observed copied, missing = the draws' mean
    risk_draws: np.ndarray  # [N, S] the risk of each draw


@torch.no_grad()
def predict_tier2(tier2: Tier2Model, tier1: Tier1Model, data: SiteTensors, cfg: Tier2Config, *, seed: int,
                  mc_samples: int | None = None, batch: int = 1024) -> Tier2Prediction:
    """Patients as they are: recover what is missing (eq. 6, DDIM, S draws), then the risk at the point
    recovery through Tier 1's head (risk-head = tier1: observed modalities from their bags,
    :mod:`rmmfed.core.tier2.tier2_scoring`) or the multi-branch head (risk-head = branches); the risk of
    every draw as well (``risk_draws``, the spread of the risk: each draw read as if the exam had found
    it, core/routing/risk_interval.risk_if_acquired).

    Deterministic for a seed."""
    device = data.present.device
    tier2.eval()
    was = tier1.training
    tier1.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    risks, uncs, recs, draws_r = [], [], [], []
    dims = list(tier2.dims)
    batch = patients_per_batch(data, batch)
    for i, s in enumerate(range(0, len(data), batch)):
        sub = data.subset(torch.arange(s, min(s + batch, len(data))))
        obs = sub.present.bool()
        zs, means = bag_encodings(tier1, sub), data_means(sub)
        x_obs, x_hat, sigma2 = tier2_inputs(tier1, sub, obs, seed=seed + 1 + i, mc_samples=mc_samples, zs=zs)
        enc = tier1_slots(tier1, zs, obs) if tier2.enc_dim else None
        x_rec, var_k, draws = tier2.recover(x_obs, obs, x_hat, sigma2, samples=cfg.samples, steps=cfg.sample_steps,
                                            generator=gen, enc=enc, return_draws=True)
        if cfg.uses_branches:
            everything = torch.ones_like(obs)
            r = torch.stack([tier2.risk(d, everything) for d in draws])
        else:
            r = risks_of_draws(tier1, zs, obs, ~obs, draws, dims, means)  # each draw read as the exam's result
        risks.append(tier2_risk(tier2, tier1, zs, obs, x_rec, means).cpu())
        draws_r.append(r.T.cpu())
        uncs.append(tier2.patient_uncertainty(var_k, obs).cpu())
        recs.append(x_rec.cpu())
    tier1.train(was)
    if not risks:
        return Tier2Prediction(np.zeros(0), np.zeros(0),
                               [np.zeros((0, t.shape[1]), dtype=np.float32) for t in data.target],
                               np.zeros((0, max(1, cfg.samples))))
    x_all = torch.cat(recs)
    return Tier2Prediction(torch.cat(risks).numpy(), torch.cat(uncs).numpy(),
                           [x.numpy() for x in tier2.split(x_all)], torch.cat(draws_r).numpy())
