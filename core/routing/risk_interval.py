"""How far a patient's risk could move with what is missing: the risk interval of a prediction.

The interval covers the uncertainty that comes from missing modalities only (not the model's own
estimation error, nor the patient's outcome): the central 95% of the risks the answering tier gives
across its own draws of the missing features, widened where needed to contain the reported risk
(which is read at a point estimate: Tier 1 with dropout off, Tier 2 at its posterior mean).

* Tier 1 answered: T draws of the missing features, f_phi's MC-dropout estimates plus its predicted
  (aleatoric) variance (:func:`tier1_risk_draws`), each read through Tier 1's head as if the exam had
  found it (:func:`risk_if_acquired`; observed modalities from their bags). A patient with nothing
  missing gets a zero-width interval.
* Tier 2 answered: its S diffusion draws, read the same way (core/tier2/tier2_train.predict_tier2).
* Referred but the gate kept Tier 1's risk (core/tier2/tier2_gate.py): the hull of both intervals and of
  Tier 2's own answer. Neither tier was shown to be better for this patient, so the interval covers
  what either says.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.tensors import SiteTensors, patients_per_batch
from ..model.tier1 import Tier1Model
from ..tier2.tier2_context import bag_encodings, data_means

LEVEL = 0.95
BASIS_TIER1, BASIS_TIER2, BASIS_HULL, BASIS_COMPLETE = (
    "tier1 draws (MC dropout + predicted variance)", "tier2 diffusion draws",
    "hull of tier1 and tier2 draws (Tier 2 not used)", "nothing missing")


def central(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``draws`` [N, S]: the central ``level`` range (quantiles (1 -+ level) / 2)."""
    if draws.size == 0:
        return np.zeros(len(draws)), np.zeros(len(draws))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return lo, hi


@torch.no_grad()
def risk_if_acquired(tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor, acquire: torch.Tensor,
                     fill: list[torch.Tensor], means: list[torch.Tensor]) -> torch.Tensor:
    """Tier 1's risk [B] as if the modalities in ``acquire`` [B, K] had been examined and found to be
    ``fill``: each such modality is read as observed (its encoder on the values as a one-instance
    bag, the 'present' prompt, its linear-path mean and flag 1), the observed ones from their bags
    (``zs``, ``means``), and any other hidden modality as Tier 1 reads an absent one, from ``fill``
    (its point estimate there). Read at the real bag mean of a hidden modality, this is (up to the bag
    versus its mean) the risk Tier 1 gives once the exam is done, which is what the draws stand in for."""
    obs, acq = observed.bool(), acquire.bool() & ~observed.bool()
    seen = obs | acq
    base = tier1.head_slots(zs, obs, fill, tier1.slots(zs, obs))
    parts = []
    for j, part in enumerate(base):
        a = acq[:, j : j + 1]
        got = tier1.with_prompts(tier1.encoders[j](fill[j]), j, torch.ones_like(a))
        parts.append(torch.where(a, got, part))
    lin = tier1.linear_input([torch.where(acq[:, j : j + 1], f, m) for j, (f, m) in enumerate(zip(fill, means))],
                             seen, fill)
    return tier1.risk_from(parts, lin)


@torch.no_grad()
def risks_of_draws(tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor, acquire: torch.Tensor,
                   draws: torch.Tensor, dims: list[int] | tuple[int, ...], means: list[torch.Tensor]) -> torch.Tensor:
    """:func:`risk_if_acquired` of each of S draws [S, B, sum D] -> [S, B] (one batched pass)."""
    s, b = draws.shape[0], draws.shape[1]
    fill = list(torch.split(draws.reshape(s * b, -1), list(dims), dim=1))
    return risk_if_acquired(tier1, [z.repeat(s, 1) for z in zs], observed.repeat(s, 1), acquire.repeat(s, 1),
                            fill, [m.repeat(s, 1) for m in means]).view(s, b)


@torch.no_grad()
def tier1_risk_draws(tier1: Tier1Model, data: SiteTensors, *, seed: int, samples: int | None = None,
                     batch: int = 4096, observed: torch.Tensor | None = None, only: int | None = None,
                     point: list | None = None) -> np.ndarray:
    """[N, T] Tier 1's risk distribution over what it does not know about the missing modalities: the
    one definition (rmm-predict's intervals, the risk SD of routing and of every run's evaluation, the
    conformal intervals, the value of each exam). Draw t of a missing modality k is f_phi's MC-dropout
    estimate t plus, with the variance head (``model.uncertainty`` total or aleatoric), Gaussian noise
    of its predicted variance exp(logvar_t,k) on every feature; each draw is read by
    :func:`risk_if_acquired`: the risk Tier 1 would give had the exam found those values. Seeded;
    every column is the deterministic risk for a patient with nothing missing. ``observed`` [N, K]:
    the modalities the model may look at (default: the present ones; a subset masks the others).
    ``only`` = k: only modality k is drawn (and read as acquired); the other hidden ones stay hidden at
    f_phi's MC-mean estimate (the value of examining k alone). ``point``: a list that receives, per
    batch, Tier 1's deterministic risk and sigma^2 from the same encoding of the bags (routing reads
    all three at the cost of one pass over the instances)."""
    was = tier1.training
    tier1.eval()
    out = []
    batch = patients_per_batch(data, batch)
    try:
        with torch.random.fork_rng(devices=[] if data.present.device.type == "cpu" else [data.present.device]):
            torch.manual_seed(seed)
            for s in range(0, len(data), batch):
                rows = torch.arange(s, min(s + batch, len(data)))
                sub = data.subset(rows)
                obs = sub.present.bool() if observed is None else observed[rows.to(observed.device)].bool()
                zs = bag_encodings(tier1, sub)
                passes = tier1.mc_passes(list(sub.x), list(sub.inst_mask), obs, samples=samples, zs=zs)
                if point is not None:
                    point.append(_point(tier1, zs, obs, data_means(sub), passes))
                dims = [e.shape[2] for e in passes.x_hat]
                est = list(passes.x_hat)
                if passes.logvar is not None:  # the aleatoric part: f_phi's predicted variance per modality
                    est = [e + torch.exp(0.5 * passes.logvar[:, :, k : k + 1]) * torch.randn_like(e)
                           for k, e in enumerate(est)]
                acquire = ~obs
                if only is not None:
                    est = [e if k == only else p.mean(dim=0, keepdim=True).expand_as(p)
                           for k, (e, p) in enumerate(zip(est, passes.x_hat))]
                    acquire = acquire & (torch.arange(len(dims), device=obs.device) == only)[None, :]
                draws = torch.cat(est, dim=2)  # [T, B, sum D]
                r = risks_of_draws(tier1, zs, obs, acquire, draws, dims, data_means(sub)).T
                nothing = ~acquire.any(dim=1)  # nothing drawn: one risk, not T copies that differ in the last bit
                out.append(torch.where(nothing[:, None], r[:, :1].expand_as(r), r).cpu())
    finally:
        tier1.train(was)
    return torch.cat(out).double().numpy() if out else np.zeros((0, samples or tier1.cfg.mc_samples))  # float64: the SD of equal draws is 0


def _point(tier1: Tier1Model, zs: list[torch.Tensor], obs: torch.Tensor, means: list[torch.Tensor], passes
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tier 1's deterministic risk (dropout off, as :meth:`Tier1Model.infer`) and sigma^2 (of ``passes``)
    from encodings already computed."""
    from .uncertainty import modality_sigma2, patient_uncertainty

    slots = tier1.slots(zs, obs)
    x_hat = tier1.estimate(torch.cat(slots, dim=1))
    lin = tier1.linear_input(means, obs, x_hat) if tier1.linear is not None else None
    risk = tier1.risk_from(tier1.head_slots(zs, obs, x_hat, slots), lin)
    return risk.cpu(), patient_uncertainty(modality_sigma2(passes, tier1.cfg.uncertainty), obs).cpu()
