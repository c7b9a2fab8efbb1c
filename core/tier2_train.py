"""Local Tier 2 training and inference (seed 000 eq. 6-8), with Tier 1 frozen.

Eq. 8 as trained here:

    L_Tier2 = L_DDPM + alpha L_cons + beta L_div + lambda_task L_task

* L_DDPM (eq. 6): each batch hides one present modality at random (patients with >= 2 present,
  :func:`~rmmfed.core.augment.hide_one`); the condition c is built from the remaining observed
  modalities plus Tier 1's MC-dropout mean estimate x_hat and variance sigma^2 under that same
  observed mask; the noise-prediction error is taken on the hidden coordinates only.
* L_task: Cox partial likelihood (Efron) of the multi-branch head on the REAL features of every
  present modality.
* L_cons: the paper's L_cons compares a segmentation computed from recovered modalities with the one
  from real ones. This project has no segmentation output, so the consistency is enforced on the
  downstream quantity instead: MSE between the head's risk on [observed ; one-step denoised estimate
  of the hidden part] and its risk on the real features (detached target). The one-step estimate is
  the x0 prediction of the SAME forward pass that L_DDPM uses (one random t, clamped), so the term
  costs one extra head pass and stays differentiable through eps_psi.
* L_div (eq. 7): diversity of the head's branch outputs on the real features; skipped when
  ``cfg.diversity`` is off or there is a single branch.

Tier 1 is frozen throughout: its parameters get ``requires_grad=False`` and eval mode for the
duration (both restored afterwards), no optimiser sees them, and its MC estimates are computed under
``torch.no_grad`` inside a seeded ``fork_rng``, so the global RNG stream is left untouched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import hide_one
from .branches import diversity_loss
from .cox import cox_loss
from .diffusion import ddpm_step
from .tensors import SiteTensors
from .tier1 import Tier1Model
from .tier2 import Tier2Model, concat_modalities, coord_mask
from .tier2_config import Tier2Config
from .uncertainty import estimate_and_sigma2

LOSS_KEYS = ("loss", "ddpm", "cons", "div", "task")


def _rng_devices(device: torch.device) -> list:
    return [] if device.type == "cpu" else [device]


@torch.no_grad()
def tier2_inputs(tier1: Tier1Model, data: SiteTensors, observed: torch.Tensor, *, seed: int,
                 mc_samples: int | None = None, batch: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tier 2's condition inputs for ``data`` under the ``observed`` mask [N, K].

    Returns (x_obs [N, sum D] = real targets on observed modalities, 0 elsewhere;
    x_hat [N, sum D] = mean of Tier 1's T MC-dropout estimates; sigma^2 [N, K] = Tier 1's per-modality
    uncertainty, :func:`~rmmfed.core.uncertainty.modality_sigma2`). ``mc_samples`` None = Tier 1's T.
    """
    device = data.present.device
    observed = observed.bool()
    dims = [t.shape[1] for t in data.target]
    x_obs = concat_modalities(data.target) * coord_mask(observed, dims).to(data.target[0].dtype)
    was_training = tier1.training
    tier1.eval()
    x_hat, var = [], []
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(seed)
            for s in range(0, len(data), batch):
                sl = slice(s, s + batch)
                mean, var_k = estimate_and_sigma2(tier1, [x[sl] for x in data.x], [m[sl] for m in data.inst_mask],
                                                  observed[sl], samples=mc_samples)
                x_hat.append(torch.cat(mean, dim=1))
                var.append(var_k)
    finally:
        tier1.train(was_training)
    if not x_hat:
        k = len(dims)
        return x_obs, x_obs.clone(), x_obs.new_zeros((0, k))
    return x_obs, torch.cat(x_hat).to(x_obs.dtype), torch.cat(var).to(x_obs.dtype)


def train_tier2(tier2: Tier2Model, tier1: Tier1Model, data: SiteTensors, cfg: Tier2Config, *, epochs: int,
                lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4,
                mc_samples: int | None = None) -> dict[str, float]:
    """Mini-batch Adam on eq. 8 over ``data`` (on the models' device), seeded; Tier 1 frozen.

    Returns the mean of each term over the steps taken: keys ``loss, ddpm, cons, div, task``.
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
    n = len(data)
    sums = np.zeros(len(LOSS_KEYS))
    steps = 0
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                if len(idx) < 2:
                    continue
                b = data.subset(idx)
                observed = hide_one(b.present, dgen)
                hidden = b.present & ~observed
                mc_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                x_obs, x_hat, sigma2 = tier2_inputs(tier1, b, observed, seed=mc_seed, mc_samples=mc_samples)
                x0 = concat_modalities(b.target)
                cond = tier2.condition(x_obs, observed, x_hat, sigma2)
                hid_c = tier2.coord_mask(hidden)
                step = ddpm_step(tier2.denoiser, x0, hid_c, cond, dgen)
                risk_real, o, _ = tier2.head_outputs(x0, b.present)
                l_task = cox_loss(risk_real, b.time, b.event)
                rows = hidden.any(dim=1)
                if bool(rows.any()):
                    x_cons = torch.where(hid_c, step.x0_pred, x_obs)
                    l_cons = F.mse_loss(tier2.risk(x_cons[rows], b.present[rows]), risk_real[rows].detach())
                else:
                    l_cons = risk_real.sum() * 0.0
                l_div = diversity_loss(o) if cfg.use_diversity else risk_real.sum() * 0.0
                loss = step.loss + cfg.alpha_cons * l_cons + cfg.beta_div * l_div + cfg.lambda_task * l_task
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += [loss.item(), step.loss.item(), l_cons.item(), l_div.item(), l_task.item()]
                steps += 1
    finally:
        for p, f in zip(tier1.parameters(), flags):
            p.requires_grad_(f)
        tier1.train(was_training)
    avg = sums / max(steps, 1)
    return {k: float(v) for k, v in zip(LOSS_KEYS, avg)}


@torch.no_grad()
def predict_tier2(tier2: Tier2Model, tier1: Tier1Model, data: SiteTensors, cfg: Tier2Config, *, seed: int,
                  mc_samples: int | None = None, batch: int = 1024
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Patients as they are: recover what is missing (eq. 6, DDIM), then the head's risk on
    observed + recovered features (every modality available).

    Returns (risk [N], Tier 2 uncertainty per patient [N] = mean over missing modalities of the
    sample spread, 0 when nothing is missing, x_rec per modality [N, D_k]). Deterministic for a seed.
    """
    device = data.present.device
    tier2.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    risks, uncs, recs = [], [], []
    for i, s in enumerate(range(0, len(data), batch)):
        sub = data.subset(torch.arange(s, min(s + batch, len(data))))
        obs = sub.present.bool()
        x_obs, x_hat, sigma2 = tier2_inputs(tier1, sub, obs, seed=seed + 1 + i, mc_samples=mc_samples)
        x_rec, var_k = tier2.recover(x_obs, obs, x_hat, sigma2, samples=cfg.samples, steps=cfg.sample_steps,
                                     generator=gen)
        risks.append(tier2.risk(x_rec, torch.ones_like(obs)).cpu())
        uncs.append(tier2.patient_uncertainty(var_k, obs).cpu())
        recs.append(x_rec.cpu())
    if not risks:
        return np.zeros(0), np.zeros(0), [np.zeros((0, t.shape[1]), dtype=np.float32) for t in data.target]
    x_all = torch.cat(recs)
    return (torch.cat(risks).numpy(), torch.cat(uncs).numpy(),
            [x.numpy() for x in tier2.split(x_all)])
