"""Tier 1 uncertainty sigma^2 (seed 000 eq. 3, plus an aleatoric part) and the masking protocol used to
calibrate it.

Choices (one function each, used everywhere):
- Per modality, :func:`modality_sigma2` is THE definition, from the T MC-dropout passes of f_phi:
  * epistemic_k = (1/T) sum_t ||x_hat^(k,t) - mean_t x_hat^(k,t)||^2 / D_k (:func:`modality_variance`):
    eq. 3 divided by the modality's width, so modalities of different widths are comparable;
  * aleatoric_k = (1/T) sum_t exp(logvar^(k,t)) (:func:`aleatoric_variance`): f_phi's predicted
    per-dimension variance (one per modality, see core/model/tier1.py), averaged over the passes;
  * ``Tier1Config.uncertainty``: "total" (default) = epistemic + aleatoric, the per-dimension variance
    of the MC-dropout predictive mixture (law of total variance); "epistemic" = eq. 3 alone (no
    variance head is built); "aleatoric" = the predicted variance alone.
- Per patient, :func:`patient_uncertainty`: sigma^2 = the MEAN of sigma^2_k over the modalities the
  model could not see. A patient with nothing missing has sigma^2 = 0 (nothing was estimated). The
  mean, not the sum, keeps a patient with three missing modalities on the scale that calibration
  measured.
- Calibration: every held-out complete case is evaluated under every masking pattern that leaves at
  least one modality observed and hides at least one (2^K - 2 patterns), so theta is the quantile of
  the uncertainty Tier 1 shows when it has to estimate something.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import ConfigError
from ..data.tensors import SiteTensors, patients_per_batch
from ..model.tier1 import McPasses, Tier1Model

DEFINITIONS = ("total", "epistemic", "aleatoric")


def modality_variance(mc: list[torch.Tensor]) -> torch.Tensor:
    """[T, B, D_k] per modality -> [B, K] per-dimension MC-dropout variance (the epistemic part)."""
    return torch.stack([((e - e.mean(dim=0)) ** 2).sum(dim=2).mean(dim=0) / e.shape[2] for e in mc], dim=1)


def aleatoric_variance(logvar: torch.Tensor) -> torch.Tensor:
    """[T, B, K] predicted log-variances -> [B, K] predicted variance averaged over the passes."""
    return logvar.exp().mean(dim=0)


def modality_sigma2(passes: McPasses, definition: str) -> torch.Tensor:
    """sigma^2_k [B, K] of the T passes under ``definition`` ("total", "epistemic" or "aleatoric")."""
    if definition not in DEFINITIONS:
        raise ConfigError(f"uncertainty definition {definition!r} is not one of {', '.join(DEFINITIONS)}. "
                          "Fix: set model.uncertainty to one of them")
    if definition == "epistemic":
        return modality_variance(passes.x_hat)
    if passes.logvar is None:
        raise ConfigError(f"sigma^2 '{definition}' needs f_phi's variance head, and this Tier 1 model has none "
                          "(it was built with model.uncertainty = 'epistemic'). Fix: use the run's own config "
                          "for the model, or model.uncertainty = 'epistemic'")
    aleatoric = aleatoric_variance(passes.logvar).to(passes.x_hat[0].dtype)
    return aleatoric if definition == "aleatoric" else modality_variance(passes.x_hat) + aleatoric


@torch.no_grad()
def estimate_and_sigma2(model: Tier1Model, x: list[torch.Tensor], inst_mask: list[torch.Tensor],
                        observed: torch.Tensor, samples: int | None = None, zs: list[torch.Tensor] | None = None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One batched MC forward: (MC mean estimate per modality [B, D_k], sigma^2_k [B, K] under the
    model's own ``cfg.uncertainty``). Tier 2's inputs come from here (core/tier2/tier2_context.tier2_inputs)."""
    passes = model.mc_passes(x, inst_mask, observed, samples=samples, zs=zs)
    return passes.mean(), modality_sigma2(passes, model.cfg.uncertainty)


def patient_uncertainty(var_k: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per patient: mean of sigma^2_k [B, K] over the unobserved modalities; 0 when every modality is
    observed (the per-patient reduction of :func:`modality_sigma2` that routing and calibration use)."""
    missing = (~observed).to(var_k.dtype)
    n = missing.sum(dim=1)
    return torch.where(n > 0, (var_k * missing).sum(dim=1) / n.clamp(min=1), torch.zeros_like(n))


def masking_patterns(k: int) -> list[tuple[bool, ...]]:
    """Observed-modality patterns with >= 1 observed and >= 1 hidden (all of them, fixed order)."""
    return [p for p in itertools.product((True, False), repeat=k) if any(p) and not all(p)]


@torch.no_grad()
def uncertainty(model: Tier1Model, data: SiteTensors, observed: torch.Tensor | None = None, *,
                seed: int = 0, batch: int = 4096) -> np.ndarray:
    """sigma^2 per patient for the given observed pattern (default: what is present)."""
    model.eval()
    out = []
    for sl, obs in seeded_batches(data, observed, seed=seed, batch=batch):
        _, var_k = estimate_and_sigma2(model, [x[sl] for x in data.x], [m[sl] for m in data.inst_mask], obs)
        out.append(patient_uncertainty(var_k, obs).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def seeded_batches(data: SiteTensors, observed: torch.Tensor | None, *, seed: int, batch: int = 4096):
    """(patient slice, its rows of ``observed``) over ``data`` in batches that fit memory, under torch's
    random generator seeded with ``seed`` (and restored once the batches are done): MC dropout draws the
    same masks whatever ran before. ``observed`` None: what each patient has."""
    observed = data.present if observed is None else observed
    step = patients_per_batch(data, batch)
    with torch.random.fork_rng(devices=[] if data.present.device.type == "cpu" else [data.present.device]):
        torch.manual_seed(seed)
        for s in range(0, len(data), step):
            sl = slice(s, s + step)
            yield sl, observed[sl]


def complete_case_indices(data: SiteTensors) -> np.ndarray:
    return np.flatnonzero(data.present.all(dim=1).cpu().numpy())


def over_masking_patterns(data: SiteTensors, score, *, seed: int) -> np.ndarray:
    """``score(complete cases, observed [n, K], seed + pattern index)`` for the complete cases of ``data``
    under every masking pattern, pattern-major (flattened): the calibration population."""
    idx = complete_case_indices(data)
    if len(idx) == 0:
        return np.zeros(0)
    sub = data.subset(idx)
    values = []
    for p_i, pattern in enumerate(masking_patterns(len(data.modalities))):
        obs = torch.tensor(pattern, device=sub.present.device).expand(len(sub), -1)
        values.append(score(sub, obs, seed + p_i))
    return np.concatenate(values)


def calibration_uncertainties(model: Tier1Model, data: SiteTensors, *, seed: int = 0) -> np.ndarray:
    """sigma^2 of the complete cases in ``data`` under every masking pattern (flattened)."""
    return over_masking_patterns(data, lambda sub, obs, s: uncertainty(model, sub, obs, seed=s), seed=seed)


@torch.no_grad()
def risk_and_uncertainty(model: Tier1Model, data: SiteTensors, observed: torch.Tensor | None = None, *,
                         seed: int = 0, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Tier 1 risk (dropout off) and sigma^2 per patient from one encoding of each bag (inference path)."""
    model.eval()
    risks, sig = [], []
    for sl, obs in seeded_batches(data, observed, seed=seed, batch=batch):
        risk, passes = model.infer([x[sl] for x in data.x], [m[sl] for m in data.inst_mask], obs)
        risks.append(risk.cpu())
        sig.append(patient_uncertainty(modality_sigma2(passes, model.cfg.uncertainty), obs).cpu())
    if not risks:
        return np.zeros(0), np.zeros(0)
    return torch.cat(risks).numpy(), torch.cat(sig).numpy()
