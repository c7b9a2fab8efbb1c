"""Tier 1 training with patient-level differential privacy: DP-SGD via Opacus.

Opacus' :class:`~opacus.PrivacyEngine` does Poisson sampling, RDP accounting, per-sample clipping to
``max_grad_norm`` and Gaussian noise (its ``DPOptimizer``). Its hook-based per-sample gradients need
layers fed one batch tensor; Tier 1 takes lists of bags and owns raw parameters (prompts,
pseudo-embeddings), so per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over
:class:`PerSampleTier1Loss`, a wrapper whose forward takes flat batch tensors) and reach Opacus
through ``grad_sample_mode="no_op"``. Per-patient loss: L_rec + lambda_a L_anat (averaged over the
patient's hidden modalities) + lambda_t x discrete-time NLL (:mod:`rmmfed.core.survival.discrete_time`,
replacing Cox, whose risk sets couple patients), + L_nll of the variance head when the model has one
(core/model/tier1_loss.variance_nll, per patient; its weights are clipped and noised like every other).

Accounting: sigma is calibrated once for the run's planned epochs (``total_epochs_budget`` = rounds
x local epochs), so epsilon grows round by round up to ``target_epsilon`` at the end of the plan.
:class:`SiteAccountant` keeps the (sigma, sample rate, steps) history as plain numbers between rounds.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from opacus.validators import ModuleValidator
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from ..messages import metric_names as M
from ..model.augment import hide_one, modality_dropout
from ..config import DPConfig, RunConfig
from ..survival.discrete_time import DiscreteTimeBaseline, discrete_time_nll
from . import rdp_accounting
from .dp_noise import privacy_engine, fresh_seed, harden_optimizer, noise_generator
from ..errors import RmmError
from ..aggregates.feature_stats import FeatureStats, partition_slices
from ..data.tensors import SiteTensors
from ..model.tier1 import Tier1Model
from ..model.tier1_loss import gaussian_nll
from ..model.train import TrainResult, make_optimizer


class DPError(RmmError):
    """Differential-privacy training cannot run as configured."""


class DPModelError(DPError):
    """The model has layers DP-SGD cannot handle (e.g. BatchNorm mixes patients of a batch)."""


class PrivacyBudgetExhausted(DPError):
    """Another round would spend more than the site's target epsilon."""


@lru_cache(maxsize=256)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    return rdp_accounting.epsilon(history, delta)  # Opacus' RDP figure, each step's curve computed once


def tier_budgets(cfg: RunConfig) -> tuple[float, float]:
    """(Tier 1, Tier 2) shares of the run's ``dp.target-epsilon``; they add up to it (basic composition).
    A run without Tier 2 rounds gives Tier 1 the whole budget."""
    total = cfg.dp.target_epsilon
    tier2 = total * cfg.dp.tier2_share if cfg.tier2.rounds > 0 else 0.0
    return total - tier2, tier2


def check_delta(delta: float, n: int) -> None:
    """delta must stay <= 1/(10 N): a larger one lets a mechanism publish a patient outright."""
    if not 0.0 < delta <= 1.0 / (10 * max(n, 1)):
        raise DPError(f"target-delta={delta:g} is above 1/(10 N) = 1/{10 * n}. Fix: lower dp.target-delta.")


def check_round_budget(accountant: "SiteAccountant", this_round: tuple[float, float, int], delta: float,
                       target: float, tier: str) -> None:
    """Raise :class:`PrivacyBudgetExhausted`, before training, when ``this_round`` (sigma, q, steps) would
    take the accountant past ``target`` epsilon at ``delta``."""
    after = SiteAccountant(accountant.history + [this_round]).epsilon(delta)
    if after > target * 1.001:
        raise PrivacyBudgetExhausted(
            f"this {tier} round would raise epsilon to {after:.3f} > target {target:g} (spent so far: "
            f"{accountant.epsilon(delta):.3f}). Fix: stop {tier} training at this site, or plan a larger "
            "dp.target-epsilon or a larger total budget of steps for the run.")


@lru_cache(maxsize=64)
def planned_noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float, epochs: int) -> float:
    """Opacus' RDP calibration of sigma for the whole planned run (cached: same at every round), by the
    search of its ``get_noise_multiplier`` over ``int(epochs / sample_rate)`` steps (core/privacy/rdp_accounting.py)."""
    return float(rdp_accounting.noise_multiplier(target_epsilon, target_delta, sample_rate,
                                                 int(epochs / sample_rate)))


def validate_for_dp(module: nn.Module) -> None:
    """Raise :class:`DPModelError` listing every Opacus validation problem, with the fix."""
    problems = "; ".join(str(p) for p in ModuleValidator.validate(module, strict=False))
    if problems:
        raise DPModelError(f"model cannot be trained with DP-SGD: {problems}. Fix: call model.train() "
                           "before training, and replace unsupported layers (e.g. BatchNorm -> GroupNorm) "
                           "with opacus.validators.ModuleValidator.fix(model) before the first round.")


@dataclass
class SiteAccountant:
    """RDP history of one site across rounds: rows (noise_multiplier, sample_rate, steps)."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def epsilon(self, delta: float) -> float:
        return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in self.history), float(delta))

    def to_arrays(self) -> dict[str, np.ndarray]:  # plain arrays, e.g. for Flower's context.state
        return {"dp-history": np.asarray(self.history, dtype=np.float64).reshape(-1, 3)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "SiteAccountant":
        rows = np.asarray(arrays.get("dp-history", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
        return cls([(float(s), float(q), int(n)) for s, q, n in rows])


@dataclass(frozen=True)
class DPTrainResult:
    train: TrainResult
    epsilon_round: float
    epsilon_total: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    baseline: np.ndarray  # discrete-time baseline logits, kept at the site
    weights: dict[str, np.ndarray]  # the Tier 1 weights to send: unwrapped, the model's own keys

    n_examples = property(lambda self: self.train.n_examples)

    def metrics(self) -> dict[str, float]:
        """What a DP round may send: the accountant's figures (functions of sigma, q and the steps, not of
        the data). The training losses stay at the site: exact losses would be a release outside the
        accountant (a coordinator bisects a patient's value from them over rounds)."""
        return {M.DP_EPSILON_ROUND: self.epsilon_round, M.DP_EPSILON: self.epsilon_total,
                M.DP_DELTA: self.delta, M.DP_NOISE_MULTIPLIER: self.noise_multiplier}


def unwrap_state_dict(sd: dict) -> dict[str, np.ndarray]:
    """Strip Opacus' ``_module.`` and this module's ``tier1.`` wrapper prefixes; numpy copies."""
    keys = {key: re.sub(r"^(_module\.)+", "", key) for key in sd}
    return {k.removeprefix("tier1."): sd[key].detach().cpu().numpy().copy()
            for key, k in keys.items() if not k.startswith("baseline.")}


class PerSampleTier1Loss(nn.Module):
    """forward(x_1..x_K, mask_1..mask_K, target_1..target_K, observed, rec_observed, present, time, event)
    -> per-patient [B, 4] loss components (rec, anat, task, nll); nll = 0 without the variance head."""

    def __init__(self, tier1: Tier1Model, baseline: DiscreteTimeBaseline, cuts: torch.Tensor,
                 stats: FeatureStats, kappa: float, *, separate_rec_view: bool) -> None:
        super().__init__()
        self.tier1, self.baseline, self.k = tier1, baseline, len(tier1.modalities)
        self.cuts, self.kappa, self.separate = cuts, kappa, separate_rec_view
        self.anat = [(torch.as_tensor(stats.anat_mu[m], dtype=torch.float32),
                      torch.as_tensor(stats.anat_sigma[m], dtype=torch.float32),
                      partition_slices(d, stats.partitions)) for m, d in zip(tier1.modalities, tier1.dims)]

    def forward(self, *t: torch.Tensor) -> torch.Tensor:
        k = self.k
        x, masks, target = list(t[:k]), list(t[k:2 * k]), t[2 * k:3 * k]
        observed, rec_obs, present, time, event = t[3 * k:]
        out = self.tier1(x, masks, observed)
        rec_out = self.tier1(x, masks, rec_obs) if self.separate else out
        x_hat, logvar = rec_out.x_hat, rec_out.logvar
        hidden = (present & ~rec_obs).to(out.risk.dtype)                        # [B, K]
        n_hidden = hidden.sum(dim=1).clamp(min=1.0)
        rec = sum(hidden[:, j] * ((x_hat[j] - target[j]) ** 2).mean(dim=1) for j in range(k)) / n_hidden
        nll = (torch.zeros_like(rec) if logvar is None else  # the estimate detached: L_nll trains the variance
               sum(hidden[:, j] * gaussian_nll(((x_hat[j].detach() - target[j]) ** 2).mean(dim=1), logvar[:, j])
                   for j in range(k)) / n_hidden)
        anat = sum(hidden[:, j] * sum(torch.relu(torch.linalg.vector_norm(x_hat[j][:, sl] - mu[sl].to(x_hat[j]), dim=1)
                                                  - self.kappa * sigma[r]) for r, sl in enumerate(slices))
                   for j, (mu, sigma, slices) in enumerate(self.anat))
        task = discrete_time_nll(out.risk, time, event, self.cuts, self.baseline)
        return torch.stack([rec, anat / n_hidden, task, nll], dim=1)


def trainable_names(net: PerSampleTier1Loss, parts: str) -> list[str]:
    """The parameters DP-SGD trains (``dp.train-parts``): every one, or with 'linear' only the linear path
    and the site's discrete-time baseline (:class:`~rmmfed.core.config.DPConfig`)."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]  # never the fixed Cox core
    if parts == "all":
        return names
    if net.tier1.linear is None:
        raise DPError("dp.train-parts = 'linear' needs Tier 1's linear path. Fix: set model.linear-path = true, "
                      "or dp.train-parts = 'all'.")
    return [n for n in names if n.startswith(("tier1.linear.", "baseline."))]


@contextmanager
def frozen_except(net: nn.Module, keep: set[str]):
    """Parameters outside ``keep`` take no gradient inside the block (the optimiser and the noise skip them),
    and get it back afterwards, also when the round fails."""
    frozen = [p for n, p in net.named_parameters() if n not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def zero_risk_head(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tier 1 weights whose network risk head outputs 0 (its last layer zeroed): the starting point of a run
    with ``dp.train-parts = 'linear'``, where the frozen network must add nothing to the linear risk."""
    last = max(int(k.split(".")[1]) for k in weights if k.startswith("head.") and k.endswith(".weight"))
    return {k: (np.zeros_like(v) if k in (f"head.{last}.weight", f"head.{last}.bias") else v)
            for k, v in weights.items()}


def per_sample_fn(net: PerSampleTier1Loss, weights: torch.Tensor):
    """``f(params, *batch) -> ({name: [B, *shape] gradient}, [B, 4] components)``: the gradient of each
    patient's own loss ``weights . components``, by ``vmap(grad(...))`` (dropout differs per patient)."""

    def loss_one(p, *sample):
        comp = functional_call(net, p, tuple(s.unsqueeze(0) for s in sample))[0]
        return (comp * weights).sum(), comp

    batched = vmap(grad(loss_one, has_aux=True), in_dims=(None,) + (0,) * (3 * net.k + 5), randomness="different")
    return lambda params, *batch: batched({k: v.detach() for k, v in params.items()}, *batch)


def train_tier1_dp(model: Tier1Model, data: SiteTensors, stats: FeatureStats, cfg: RunConfig, dp: DPConfig, *,
                   accountant: SiteAccountant, epochs: int, seed: int, total_epochs_budget: int,
                   cuts: torch.Tensor | None = None, baseline: DiscreteTimeBaseline | None = None,
                   rounds_before: int = 0, target_epsilon: float | None = None,
                   noise_seed: int | None = None, lr: float | None = None) -> tuple[DPTrainResult, float]:
    """One round of DP-SGD (DP-Adam): updates ``model``, ``baseline`` and ``accountant`` in place.

    ``cuts`` default to ``dp.cuts()``. Returns (result, cumulative epsilon at ``dp.target_delta``).
    Raises :class:`DPModelError` (validator) or :class:`PrivacyBudgetExhausted` before training.
    ``rounds_before``: the run's rounds before this one. When the accountant is empty although rounds
    came before (the site lost its state: a resumed run, a restarted site), each of them is counted as
    spent at this round's (sigma, q, steps), so epsilon is over-reported, never under-reported.
    ``target_epsilon``: Tier 1's share of the run's budget (:func:`tier_budgets`; default the whole
    ``dp.target_epsilon``). ``noise_seed``: None draws the noise from OS entropy
    (:mod:`rmmfed.core.privacy.dp_noise`); a seed only where the site's policy allows seeded noise. ``lr``: this
    round's learning rate (default ``cfg.lr``); the optimiser is the run's (``cfg.optimizer``), the DP
    noise added to its gradients before it steps, so its weight decay is post-processing.
    """
    eps_target = dp.target_epsilon if target_epsilon is None else float(target_epsilon)
    validate_for_dp(model.train())
    n, mc, device = len(data), cfg.model, data.present.device
    check_delta(dp.target_delta, n)
    cuts = torch.tensor(dp.cuts()) if cuts is None else cuts
    baseline = baseline if baseline is not None else DiscreteTimeBaseline(len(cuts) + 1)
    net = PerSampleTier1Loss(model, baseline, cuts.to(device), stats, mc.anat_kappa,
                             separate_rec_view=mc.modality_dropout <= 0).to(device)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=min(dp.batch_size or cfg.batch_size, n))
    q = 1.0 / len(loader)  # Opacus' sample rate for this loader
    sigma = dp.noise_multiplier or planned_noise_multiplier(eps_target, dp.target_delta, q, total_epochs_budget)
    this_round = (sigma, q, epochs * len(loader))
    if not accountant.history and rounds_before > 0:
        accountant.history = [this_round] * rounds_before
    check_round_budget(accountant, this_round, dp.target_delta, eps_target, "Tier 1")
    with_nll = model.est_logvar is not None
    engine = privacy_engine("rdp")
    weights = torch.tensor([1.0, mc.lambda_anat, mc.lambda_task, 1.0 if with_nll else 0.0], device=device)
    keep = set(trainable_names(net, dp.train_parts))
    params = {n: p for n, p in net.named_parameters() if n in keep}
    sums, steps = np.zeros(5), 0
    with frozen_except(net, keep), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        # Poisson sampling and dropout: who is sampled must stay unknown to the coordinator (the
        # subsampling amplification assumes it), so not from its seed unless noise is seeded too
        torch.manual_seed(seed + 2 if noise_seed is not None else fresh_seed())
        private, opt, loader = engine.make_private(
            module=net, optimizer=make_optimizer(net, cfg, cfg.lr if lr is None else lr),
            data_loader=loader, noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
            grad_sample_mode="no_op", noise_generator=noise_generator(device, noise_seed))
        harden_optimizer(opt)
        engine.accountant.history = list(accountant.history)  # sigma is calibrated from zero, for the plan
        dgen, per_sample = torch.Generator(device=device).manual_seed(seed + 1), per_sample_fn(net, weights)
        for _ in range(epochs):
            for (idx,) in loader:
                opt.zero_grad(set_to_none=True)
                if len(idx) == 0:  # an empty Poisson batch is still a (noise-only) step
                    for p in params.values():
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device)
                else:
                    b = data.subset(idx)
                    observed = modality_dropout(b.present, mc.modality_dropout, dgen)
                    rec_obs = observed if mc.modality_dropout > 0 else hide_one(b.present, dgen)
                    grads, comp = per_sample(params, *b.x, *b.inst_mask, *b.target, observed, rec_obs,
                                             b.present, b.time, b.event)
                    for name, p in params.items():
                        p.grad_sample = grads[name].detach()
                    c = comp.detach().mean(dim=0)
                    sums, steps = sums + [float((c * weights).sum()), *c[[2, 0, 1, 3]].tolist()], steps + 1
                opt.step()
    accountant.history = [(float(s), float(r), int(k)) for s, r, k in engine.accountant.history]
    total = accountant.epsilon(dp.target_delta)
    avg = sums / max(steps, 1)
    train = TrainResult(n, *map(float, avg[:4]), nll=float(avg[4]) if with_nll else None)
    result = DPTrainResult(train, SiteAccountant([this_round]).epsilon(
        dp.target_delta), total, dp.target_delta, sigma, q, this_round[2], baseline.logit.detach().cpu().numpy().copy(),
        unwrap_state_dict(private.state_dict()))
    return result, total
