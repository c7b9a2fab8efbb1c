"""The local Tier 1 training loop a site runs each round (and the pooled reference reuses)."""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch

from ..messages import metric_names as M
from .augment import hide_one, modality_dropout
from ..config import RunConfig
from ..aggregates.feature_stats import FeatureStats
from ..data.tensors import SiteTensors, patients_per_batch
from .tier1 import Tier1Model
from .tier1_loss import anatomical_loss, reconstruction_loss, task_loss, variance_nll


@dataclass(frozen=True)
class TrainResult:
    n_examples: int
    loss: float
    task: float
    rec: float  # L_rec: MSE of the hidden modalities (the same quantity with or without the variance head)
    anat: float
    nll: float | None = None  # L_nll of the variance head; None when the model has none

    def metrics(self) -> dict[str, float]:
        out = {M.TRAIN_LOSS: self.loss, M.TRAIN_TASK: self.task, M.TRAIN_REC: self.rec, M.TRAIN_ANAT: self.anat}
        if self.nll is not None:
            out[M.TRAIN_NLL] = self.nll
        return out


def round_lr(cfg: RunConfig, server_round: int, peak: float | None = None) -> float:
    """Tier 1's learning rate in round ``server_round`` (1-based) of ``cfg.rounds``: constant, or cosine
    from lr (round 1) to lr-min-ratio x lr (the last round). ``peak``: another lr than ``cfg.lr`` (DP-SGD's)."""
    lr = cfg.lr if peak is None else float(peak)
    if cfg.lr_schedule == "constant" or cfg.rounds <= 1:
        return lr
    t = min(max(server_round - 1, 0), cfg.rounds - 1) / (cfg.rounds - 1)
    low = lr * cfg.lr_min_ratio
    return low + 0.5 * (lr - low) * (1.0 + math.cos(math.pi * t))


def local_epoch_count(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """``epochs``, raised until an epoch of ``n`` patients in batches of ``batch_size`` (a last batch of
    one patient is skipped) gives at least ``min_steps`` steps in all."""
    per_epoch = n // batch_size + (1 if n % batch_size >= 2 else 0)
    if min_steps <= 0 or per_epoch == 0:
        return epochs
    return max(epochs, math.ceil(min_steps / per_epoch))


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 weight decay), per ``cfg.optimizer``,
    over the model's parameters that require a gradient."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)


def train_tier1(model: Tier1Model, data: SiteTensors, stats: FeatureStats, cfg: RunConfig, *, epochs: int,
                seed: int, proximal_mu: float = 0.0, lr: float | None = None) -> TrainResult:
    """Mini-batch Adam(W) on L_Tier1 over ``data`` (already on the model's device), seeded, at ``lr``
    (default ``cfg.lr``; a federated round passes :func:`round_lr`).

    Each epoch draws a fresh subsample of at most ``model.max-instances`` instances per bag
    (:meth:`SiteTensors.sample_instances`; bags that short are used whole). Each batch builds two views: the task view (modality dropout with p when on) feeds L_task; the
    reconstruction view hides one present modality per patient, so f_phi learns to recover it
    (L_rec, L_anat) whether or not augmentation is on. With the variance head (``model.uncertainty``
    not "epistemic") L_nll of the same view is added (core/model/tier1_loss.variance_nll). With
    ``proximal_mu`` > 0 (FedProx) the proximal term mu/2 ||w - w_global||^2 is added, and with the
    linear path its ridge penalty (``model.linear-l2``).
    """
    device = data.present.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    igen = torch.Generator(device="cpu").manual_seed(seed + 3)  # each epoch's instance subsample
    dgen = torch.Generator(device=device).manual_seed(seed + 1)
    mc = cfg.model
    model.train()
    opt = make_optimizer(model, cfg, cfg.lr if lr is None else lr)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    n = len(data)
    epochs = local_epoch_count(n, cfg.batch_size, epochs, cfg.min_local_steps)
    with_nll = model.est_logvar is not None
    sums = np.zeros(5)
    steps = 0
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed + 2)  # dropout inside the model
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            epoch_data = data.sample_instances(mc.max_instances, igen)  # fresh per epoch (no-op for short bags)
            for s in range(0, n, cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                b = epoch_data.subset(idx)
                x, masks = list(b.x), list(b.inst_mask)
                observed = modality_dropout(b.present, mc.modality_dropout, dgen)
                out = model(x, masks, observed)
                l_task = task_loss(out.risk, b.time, b.event)
                if mc.modality_dropout > 0:
                    hidden, rec = b.present & ~observed, out
                else:
                    rec_obs = hide_one(b.present, dgen)
                    hidden, rec = b.present & ~rec_obs, model(x, masks, rec_obs)
                x_hat = rec.x_hat
                l_rec = reconstruction_loss(x_hat, b.target, hidden)
                l_anat = anatomical_loss(x_hat, hidden, stats, model.modalities, mc.anat_kappa)
                loss = l_rec + mc.lambda_anat * l_anat + mc.lambda_task * l_task + model.linear_penalty()
                l_nll = variance_nll(x_hat, rec.logvar, b.target, hidden) if with_nll else None
                if l_nll is not None:
                    loss = loss + l_nll
                if anchor is not None:
                    loss = loss + 0.5 * proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += [loss.item(), l_task.item(), l_rec.item(), l_anat.item(),
                         l_nll.item() if l_nll is not None else 0.0]
                steps += 1
    avg = sums / max(steps, 1)
    return TrainResult(n, *map(float, avg[:4]), nll=float(avg[4]) if with_nll else None)


@torch.no_grad()
def predict_risk(model: Tier1Model, data: SiteTensors, observed: torch.Tensor | None = None,
                 batch: int = 4096) -> np.ndarray:
    """Deterministic risk (dropout off) for every patient of ``data``."""
    model.eval()
    observed = data.present if observed is None else observed
    out = []
    batch = patients_per_batch(data, batch)
    for s in range(0, len(data), batch):
        sl = slice(s, s + batch)
        out.append(model([x[sl] for x in data.x], [m[sl] for m in data.inst_mask], observed[sl]).risk.cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
