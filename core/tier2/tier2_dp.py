"""Tier 2 training with patient-level differential privacy: DP-SGD (DP-Adam) via Opacus, Tier 1 frozen.

The loss is eq. 8 as :func:`~rmmfed.core.tier2.tier2_train.train_tier2` trains it with ``risk_head = tier1``
(the default), written per patient so that per-sample gradients exist:

    l_i = L_DDPM,i + alpha L_cons,i

* L_DDPM,i: the (Min-SNR weighted x0-, or eps-) squared error on the patient's hidden coordinates,
  averaged over those coordinates (train_tier2 averages over all hidden coordinates of the batch,
  which couples patients; the per-patient mean is the decomposable version of the same term).
* L_cons,i: (Tier 1's frozen-head risk on [observed ; one-step x0 estimate of the hidden part] -
  Tier 1's risk on everything the patient has)^2, as in train_tier2.

``risk_head = branches`` is refused (:class:`Tier2DPConfigError`): its Cox task loss couples the
patients of a batch through the risk sets, so it has no per-patient gradient.

Per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over :class:`PerSampleTier2Loss`,
whose forward takes flat batch tensors) and reach Opacus' DPOptimizer through
``grad_sample_mode="no_op"``, as for Tier 1 (:mod:`rmmfed.core.privacy.dp`). Everything random that concerns
a patient (masking pattern, diffusion timestep t, diffusion noise) is drawn outside the vmapped
function from generators seeded by ``seed``, for the WHOLE trainable pool at every step and then
indexed by the sampled patients: a patient's draws never depend on who else was sampled, so adding or
removing one patient changes only that patient's (clipped) contribution, as DP-SGD's analysis assumes.

Poisson sampling (rate q = min(1, batch_size / n_pool) over the patients with >= 2 modalities) and
the Gaussian noise (Opacus' secure-mode recipe, :func:`~rmmfed.core.privacy.dp_noise.harden_optimizer`) come
from :func:`~rmmfed.core.privacy.dp_noise.noise_generator`: OS entropy unless ``noise_seed`` is given (a
simulation's explicit switch). Secret sampling is what privacy amplification by subsampling needs, so
it is never drawn from the coordinator-known ``seed``. sigma is calibrated (RDP) for
``target_epsilon`` over the run's planned ``total_steps_budget`` steps; the site's
:class:`~rmmfed.core.privacy.dp.SiteAccountant` keeps the history. The weights returned are the EMA of the
steps' weights (post-processing of DP releases).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from ..config import DPConfig
from .diffusion import predict_x0, q_sample, snr
from ..privacy.dp import DPError, SiteAccountant, check_round_budget, validate_for_dp
from ..privacy.dp_noise import privacy_engine, harden_optimizer, noise_generator
from ..privacy.rdp_accounting import noise_multiplier
from ..data.tensors import SiteTensors
from ..model.tier1 import Tier1Model
from .tier2 import Tier2Model, concat_modalities, coord_mask, split_modalities
from .tier2_config import Tier2Config
from .tier2_context import PatternBank, tier1_slots
from .tier2_scoring import tier1_head_risk
from .tier2_train import LOSS_KEYS, _patterns_for


class Tier2DPConfigError(DPError):
    """The Tier 2 configuration has a loss term without a per-patient gradient (DP-SGD needs one)."""


@lru_cache(maxsize=64)
def planned_tier2_noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float,
                                   steps: int) -> float:
    """Opacus' RDP calibration of sigma for ``steps`` planned steps at ``sample_rate`` (cached)."""
    try:
        return float(noise_multiplier(target_epsilon, target_delta, sample_rate, steps))
    except ValueError as exc:  # "The privacy budget is too low."
        raise DPError(f"no noise multiplier reaches epsilon={target_epsilon:g} at delta={target_delta:g} over "
                      f"{steps} steps at q={sample_rate:.4g} ({exc}). Fix: raise the Tier 2 target epsilon or plan "
                      "fewer Tier 2 steps.") from exc


class PerSampleTier2Loss(nn.Module):
    """forward(x_t, t, noise, cond, x0, hidden_c, observed_c, observed, x_obs, risk_full, z_1..z_K,
    mean_1..mean_K) -> per-patient [B, 2] loss components (ddpm, cons).

    Tier 2 is the only registered submodule (its parameters are the only ones trained and noised);
    the frozen Tier 1 is held outside the module tree, read as constants."""

    def __init__(self, tier2: Tier2Model, tier1: Tier1Model, cfg: Tier2Config) -> None:
        super().__init__()
        self.tier2, self._frozen = tier2, (tier1,)
        self.k, self.weighting, self.gamma = len(tier2.dims), cfg.loss_weighting, cfg.snr_gamma

    def forward(self, *t: torch.Tensor) -> torch.Tensor:
        k, tier1 = self.k, self._frozen[0]
        x_t, ts, noise, cond, x0, hid_c, obs_c, observed, x_obs, risk_full = t[:10]
        zs, means = list(t[10:10 + k]), list(t[10 + k:10 + 2 * k])
        den = self.tier2.denoiser
        eps = den(x_t, ts, cond)
        if self.weighting == "eps":
            per = (eps - noise) ** 2
        else:  # min-snr: x0-MSE weighted by min(SNR + 1, gamma), as core/tier2/diffusion.ddpm_step
            w = torch.clamp(snr(den.schedule, ts) + 1.0, max=self.gamma).unsqueeze(-1).to(x0.dtype)
            per = w * (predict_x0(x_t, ts, eps, den.schedule, clip=None) - x0) ** 2
        m = hid_c.to(x0.dtype)
        ddpm = (per * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        x_cons = torch.where(obs_c, x_obs, predict_x0(x_t, ts, eps, den.schedule, 10.0))
        r_cons = tier1_head_risk(tier1, zs, observed, split_modalities(x_cons, self.tier2.dims), means)
        return torch.stack([ddpm, (r_cons - risk_full) ** 2], dim=1)


def per_sample_fn(net: PerSampleTier2Loss, weights: torch.Tensor):
    """``f(params, *batch) -> ({name: [B, *shape] gradient}, [B, 2] components)``: the gradient of each
    patient's own loss ``weights . components`` by ``vmap(grad(...))`` (randomness="different")."""

    def loss_one(p, *sample):
        comp = functional_call(net, p, tuple(s.unsqueeze(0) for s in sample))[0]
        return (comp * weights).sum(), comp

    batched = vmap(grad(loss_one, has_aux=True), in_dims=(None,) + (0,) * (10 + 2 * net.k), randomness="different")
    return lambda params, *batch: batched({k: v.detach() for k, v in params.items()}, *batch)


def trainable_count(data: SiteTensors) -> int:
    """Patients Tier 2 trains on (>= 2 modalities present, :meth:`PatternBank.trainable`)."""
    return int((data.present.bool().sum(dim=1) >= 2).sum())


def batch_inputs(tier2: Tier2Model, tier1: Tier1Model, bank: PatternBank, x0_all: torch.Tensor,
                  idx: torch.Tensor, pattern: torch.Tensor, ts: torch.Tensor, noise: torch.Tensor) -> tuple:
    """The flat tensors :class:`PerSampleTier2Loss` takes for patients ``idx`` (as train_tier2 builds them)."""
    dims = list(tier2.dims)
    observed, x_hat, sigma2 = bank.gather(idx, pattern)
    present = bank.present[idx]
    obs_c, hid_c = coord_mask(observed, dims), coord_mask(present & ~observed, dims)
    x0 = x0_all[idx]
    x_obs = x0 * obs_c.to(x0.dtype)
    x0_in = torch.where(coord_mask(present, dims), x0, x_hat)  # a modality never had: Tier 1's stand-in
    zs, means = [z[idx] for z in bank.zs], [m[idx] for m in bank.means]
    enc = tier1_slots(tier1, zs, observed) if tier2.enc_dim else None
    cond = tier2.condition(x_obs, observed, x_hat, sigma2, enc)
    noised = ~obs_c | hid_c  # ddpm_step's denoise | mask
    x_t = torch.where(noised, q_sample(x0_in, ts, noise, tier2.denoiser.schedule), noise)
    return (x_t, ts, noise, cond, x0_in, hid_c, obs_c, observed, x_obs, bank.risk_full[idx], *zs, *means)


def _release_grad_samples(params) -> None:
    """Drop Opacus' per-sample buffers from the parameters (the model leaves as a plain module)."""
    for p in params:
        for attr in ("grad_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


def train_tier2_dp(tier2: Tier2Model, tier1: Tier1Model, data: SiteTensors, cfg: Tier2Config, dp: DPConfig, *,
                   accountant: SiteAccountant, target_epsilon: float, steps: int, total_steps_budget: int,
                   lr: float, batch_size: int, seed: int, weight_decay: float = 1e-4, mc_samples: int | None = None,
                   noise_seed: int | None = None, rounds_before: int = 0) -> tuple[dict[str, float], float]:
    """One round of DP-Adam on Tier 2 (``steps`` steps): updates ``tier2`` and ``accountant`` in place.

    Returns (metrics with train_tier2's keys ``loss, ddpm, cons, div, task, steps``, cumulative epsilon
    of ``accountant`` at ``dp.target_delta``). The loss values are means over the non-empty Poisson
    batches; they are not differentially private and must stay at the site. Raises
    :class:`Tier2DPConfigError` (risk-head = branches), :class:`~rmmfed.core.privacy.dp.DPModelError` or
    :class:`~rmmfed.core.privacy.dp.PrivacyBudgetExhausted` before training. With fewer than two trainable
    patients nothing is trained or spent (NaN losses, ``steps`` 0, as train_tier2).
    ``rounds_before``: the run's Tier 2 rounds before this one; with an empty ``accountant`` (the site
    lost its state) each is counted as spent at this round's (sigma, q, steps), as train_tier1_dp does:
    epsilon is over-reported, never under-reported.
    """
    if cfg.uses_branches:
        raise Tier2DPConfigError(
            "tier2.risk-head='branches' trains a Cox task loss whose risk sets couple the patients of a batch: it "
            "has no per-patient gradient for DP-SGD. Fix: set tier2.risk-head='tier1' (the default) with dp.enabled.")
    if steps < 1 or total_steps_budget < steps:
        raise DPError(f"steps={steps} must be >= 1 and <= total_steps_budget={total_steps_budget}.")
    device, delta = data.present.device, dp.target_delta
    n_pool = trainable_count(data)
    if n_pool < 2:
        return {**{k: float("nan") for k in LOSS_KEYS}, "steps": 0.0}, accountant.epsilon(delta)
    if delta >= 1.0 / n_pool:
        raise DPError(f"target-delta={delta:g} is not below 1/N = 1/{n_pool} (Tier 2's trainable patients). "
                      "Fix: lower dp.target-delta.")
    validate_for_dp(tier2.train())
    q = min(1.0, batch_size / n_pool)
    sigma = dp.noise_multiplier or planned_tier2_noise_multiplier(float(target_epsilon), delta, q,
                                                                  int(total_steps_budget))
    this_round = (sigma, q, int(steps))
    if not accountant.history and rounds_before > 0:
        accountant.history = [this_round] * rounds_before
    check_round_budget(accountant, this_round, delta, float(target_epsilon), "Tier 2")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    dgen = torch.Generator(device=device).manual_seed(seed + 1)  # patterns, t, diffusion noise
    sample_gen = noise_generator("cpu", None if noise_seed is None else noise_seed + 1)  # Poisson sampling
    flags, was_training = [p.requires_grad for p in tier1.parameters()], tier1.training
    for p in tier1.parameters():
        p.requires_grad_(False)
    tier1.eval()
    net = PerSampleTier2Loss(tier2, tier1, cfg)
    params = dict(net.named_parameters())
    sums, batches = np.zeros(len(LOSS_KEYS)), 0
    try:
        bank = PatternBank.build(tier1, data, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
                                 mc_samples=mc_samples)
        pool = bank.trainable()
        assert len(pool) == n_pool, (len(pool), n_pool)
        ema = AveragedModel(tier2, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay > 0 else None
        engine = privacy_engine("rdp")
        loader = DataLoader(TensorDataset(torch.arange(n_pool)), batch_size=min(batch_size, n_pool))
        _, opt, _ = engine.make_private(
            module=net, optimizer=torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay),
            data_loader=loader, noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm, poisson_sampling=False,
            grad_sample_mode="no_op", noise_generator=noise_generator(device, noise_seed))
        harden_optimizer(opt)
        opt.expected_batch_size = q * n_pool  # the mean over a Poisson batch of expected size q N
        engine.accountant.history = list(accountant.history)  # sigma is calibrated from zero, for the plan
        opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=q))
        weights = torch.tensor([1.0, cfg.alpha_cons], device=device)
        per_sample, x0_all = per_sample_fn(net, weights), concat_modalities(data.target)
        total_d, timesteps = x0_all.shape[1], tier2.denoiser.schedule.timesteps
        for _ in range(steps):
            # per-patient draws for the whole pool (keyed by patient, never by who else is sampled)
            pattern = _patterns_for(bank, pool, cfg, dgen)
            ts = torch.randint(0, timesteps, (n_pool,), generator=dgen, device=device)
            noise = torch.randn((n_pool, total_d), generator=dgen, device=device, dtype=x0_all.dtype)
            sel = torch.nonzero(torch.rand(n_pool, generator=sample_gen) < q).squeeze(1).to(device)
            opt.zero_grad(set_to_none=True)
            if len(sel) == 0:  # an empty Poisson batch is still a (noise-only) step
                for p in params.values():
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            else:
                with torch.no_grad():
                    batch = batch_inputs(tier2, tier1, bank, x0_all, pool[sel], pattern[sel], ts[sel], noise[sel])
                grads, comp = per_sample(params, *batch)
                for name, p in params.items():
                    p.grad_sample = grads[name].detach()
                ddpm, cons = comp.detach().mean(dim=0).tolist()
                sums, batches = sums + [ddpm + cfg.alpha_cons * cons, ddpm, cons, 0.0, 0.0], batches + 1
            opt.step()
            if ema is not None:
                ema.update_parameters(tier2)
        if ema is not None:
            tier2.load_state_dict(ema.module.state_dict())
        accountant.history = [(float(s), float(r), int(k)) for s, r, k in engine.accountant.history]
    finally:
        _release_grad_samples(tier2.parameters())
        for p, f in zip(tier1.parameters(), flags):
            p.requires_grad_(f)
        tier1.train(was_training)
    avg = sums / max(batches, 1) if batches else np.full(len(LOSS_KEYS), np.nan)
    return {**{k: float(v) for k, v in zip(LOSS_KEYS, avg)}, "steps": float(steps)}, accountant.epsilon(delta)
