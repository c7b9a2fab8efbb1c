"""Per-modality attributions of Tier 1's risk (integrated gradients) and top instances (attention).

Input and baseline
------------------
Tier 1 sees modality k through its token: the pooled representation z_k and the "observed"
indicator p_k (eq. 2: h_k = [z_k ; phi_mod^(k) ; p_k]). For integrated gradients (Sundararajan et
al. 2017) the input of modality k is v_k = [z_k ; p_k = 1] for a present modality, and its baseline
is what the model uses when the modality is absent: b_k = [e_pseudo^(k) ; 0] (zero-fill when
``pseudo_embeddings`` is off). The modality prompt is the same in both, so it carries no
attribution. Along the straight path v(a) = b + a (v - b), the risk is computed with the model's
own pieces (``_with_prompts``, ``estimate``, ``encoders``, ``head``):

* estimator input: h_k(a) = [z_k(a) ; phi_mod^(k) ; flag_k(a)], flag = p_k(a) (0 if missing
  prompts are off), for every k (absent modalities sit at their baseline);
* head input: [p_k(a) z_k(a) + (1 - p_k(a)) g~_k(x_hat_k(a)) ; phi_mod^(k) ; flag_k(a)], i.e. the
  observed slot at p = 1 and the estimator-recovered slot at p = 0 (g~_k = ``absent_encoding``: g_k, plus the
  pseudo-embedding with ``pseudo_in_head``; estimator off: h_k(a));
* linear path (``linear_path``): the bag's instance mean m_k is a third part of the input (baseline
  0) and enters as p_k(a) m_k(a) + (1 - p_k(a)) x_hat_k(a) with the flag p_k(a).

At a = 1 this is exactly ``Tier1Model.forward`` on the patient; at a = 0 it is the forward with
every modality unobserved. The attribution of modality k is the sum over its token's dims (z
dims and p) of (v - b) * mean gradient along the path (midpoint rule with ``steps`` points, all
batched into one backward pass per chunk of patients), and completeness holds up to the
quadrature error:

    sum_k attribution_k  ~=  risk(patient) - risk(all modalities absent)

Absent modalities get exactly 0 (input = baseline). Attributions explain TIER 1's risk; a patient
routed to Tier 2 gets Tier 2's risk, whose attributions are not computed here.

Top instances: the gated-attention weights of each present modality's bag (``Tier1Output.attention``),
largest first, as indices into the patient's ``.npy`` file rows (``build_tensors`` keeps every
instance; where it was asked to subsample, :func:`bag_row_indices` replays that seeded subsample so
the indices still point at file rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.site_data import SiteData
from ..data.tensors import SiteTensors
from .tier1 import Tier1Model, bag_means


@dataclass
class Attributions:
    modalities: tuple[str, ...]
    values: np.ndarray  # [B, K] IG attribution per modality (0 where absent)
    risk: np.ndarray  # [B] Tier 1 risk of the patient (path end, a = 1)
    baseline_risk: np.ndarray  # [B] risk with every modality at its absent baseline (a = 0)
    present: np.ndarray  # [B, K] bool
    attention: list[np.ndarray]  # per modality [B, L_k]
    inst_mask: list[np.ndarray]  # per modality [B, L_k] bool
    steps: int

    @property
    def completeness_gap(self) -> np.ndarray:
        """[B] sum of attributions - (risk - baseline risk): quadrature error of IG."""
        return self.values.sum(axis=1) - (self.risk - self.baseline_risk)


def _fill(model: Tier1Model, j: int, like: torch.Tensor) -> torch.Tensor:
    b = like.shape[0]
    return model.pseudo[j].detach().expand(b, -1) if model.cfg.pseudo_embeddings else torch.zeros_like(like)


def path_risk(model: Tier1Model, z: list[torch.Tensor], p: list[torch.Tensor],
              m: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Tier 1 risk from per-modality tokens: z[k] [N, d] pooled representation, p[k] [N, 1] in [0, 1]
    the observed indicator (1 = observed, 0 = absent; values between on an IG path), m[k] [N, D_k] the
    bag's instance mean (the linear path's input; needed only with ``linear_path``). See the module
    docstring; at p in {0, 1} with z = pooled bag (p = 1) or the pseudo-embedding (p = 0), this equals
    ``model(x, inst_mask, observed).risk``."""
    slots = [model.with_prompts(z[j], j, p[j]) for j in range(len(z))]
    H = torch.cat(slots, dim=1)
    x_hat = model.estimate(H) if model.cfg.estimator or model.linear is not None else None
    lin = model.linear_input(m, torch.cat(p, dim=1), x_hat) if model.linear is not None else None
    if not model.cfg.estimator:
        return model.risk_from(slots, lin)
    parts = []
    for j in range(len(z)):
        z_hat = model.absent_encoding(j, x_hat[j])
        parts.append(model.with_prompts(p[j] * z[j] + (1.0 - p[j]) * z_hat, j, p[j]))
    return model.risk_from(parts, lin)


def integrated_gradients(model: Tier1Model, x: list[torch.Tensor], inst_mask: list[torch.Tensor],
                         present: torch.Tensor, *, steps: int = 32, chunk: int = 256) -> Attributions:
    """IG attributions per modality for a batch of patients (see the module docstring).

    ``present`` [B, K] bool: the modalities to explain (the rest sit at their baseline). Runs in eval
    mode (restored afterwards); ``steps`` path points per patient, batched ``chunk`` patients at a time.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    was_training = model.training
    model.eval()
    k = len(x)
    b = int(present.shape[0])
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    values, risks, base, attns = [], [], [], [[] for _ in range(k)]
    try:
        for s in range(0, b, chunk):
            sl = slice(s, min(s + chunk, b))
            obs = present[sl].bool()
            n = obs.shape[0]
            with torch.no_grad():
                xs, ms = [t[sl] for t in x], [m[sl] for m in inst_mask]
                zs, att = model.encode(xs, ms)
                z_in = [torch.where(obs[:, j : j + 1], zs[j], _fill(model, j, zs[j])) for j in range(k)]
                z_0 = [_fill(model, j, zs[j]) for j in range(k)]
                p_in = [obs[:, j : j + 1].to(zs[j].dtype) for j in range(k)]
                m_in = [mean * obs[:, j : j + 1].to(mean.dtype) for j, mean in enumerate(bag_means(xs, ms))]
                ends = path_risk(model, z_in, p_in, m_in)
                starts = path_risk(model, z_0, [torch.zeros_like(q) for q in p_in], [torch.zeros_like(v) for v in m_in])
            a = alphas.to(zs[0].device).view(steps, 1, 1)
            with torch.enable_grad():
                z_path = [(z_0[j] + a * (z_in[j] - z_0[j])).reshape(steps * n, -1).requires_grad_(True)
                          for j in range(k)]
                p_path = [(a * p_in[j]).reshape(steps * n, 1).requires_grad_(True) for j in range(k)]
                m_path = [(a * m_in[j]).reshape(steps * n, -1).requires_grad_(True) for j in range(k)]
                out = path_risk(model, z_path, p_path, m_path)
                grads = torch.autograd.grad(out.sum(), z_path + p_path + m_path, allow_unused=True)
            gz, gp, gm = grads[:k], grads[k:2 * k], grads[2 * k:]
            ig = []
            for j in range(k):
                mz = gz[j].view(steps, n, -1).mean(dim=0)
                mp = gp[j].view(steps, n, 1).mean(dim=0)
                term = ((z_in[j] - z_0[j]) * mz).sum(dim=1) + (p_in[j] * mp).sum(dim=1)
                if gm[j] is not None:
                    term = term + (m_in[j] * gm[j].view(steps, n, -1).mean(dim=0)).sum(dim=1)
                ig.append(term)
            values.append(torch.stack(ig, dim=1).detach().cpu())
            risks.append(ends.cpu())
            base.append(starts.cpu())
            for j in range(k):
                attns[j].append(att[j].cpu())
    finally:
        model.train(was_training)
    mods = getattr(model, "modalities", tuple(str(j) for j in range(k)))
    if not values:
        return Attributions(mods, np.zeros((0, k)), np.zeros(0), np.zeros(0), np.zeros((0, k), dtype=bool),
                            [np.zeros((0, m.shape[1])) for m in inst_mask],
                            [np.zeros((0, m.shape[1]), dtype=bool) for m in inst_mask], steps)
    vals = torch.cat(values).numpy().astype(np.float64)
    pres = present.bool().cpu().numpy()
    vals[~pres] = 0.0  # exactly: input == baseline
    return Attributions(mods, vals, torch.cat(risks).numpy().astype(np.float64),
                        torch.cat(base).numpy().astype(np.float64), pres,
                        [torch.cat(a).numpy() for a in attns], [m.cpu().numpy().astype(bool) for m in inst_mask],
                        steps)


def attribute(model: Tier1Model, data: SiteTensors, *, steps: int = 32, chunk: int = 256) -> Attributions:
    """IG attributions for every patient of ``data`` (their present modalities)."""
    return integrated_gradients(model, list(data.x), list(data.inst_mask), data.present, steps=steps, chunk=chunk)


@torch.no_grad()
def masked_risk(model: Tier1Model, data: SiteTensors, observed: torch.Tensor) -> np.ndarray:
    """Tier 1 risk (dropout off) with only ``observed`` [N, K] modalities visible."""
    was = model.training
    model.eval()
    try:
        return model(list(data.x), list(data.inst_mask), observed.bool()).risk.cpu().numpy().astype(np.float64)
    finally:
        model.train(was)


def top_instances(attention: np.ndarray, mask: np.ndarray, k: int, rows: np.ndarray | None = None
                  ) -> list[tuple[int, float]]:
    """The ``k`` largest attention weights of one bag as (index, weight), largest first.

    ``attention``/``mask`` [L] for one patient and modality; ``rows`` [n_real] maps bag positions to
    rows of the patient's file (default: position = row). Ties keep the lower index first.
    """
    att = np.asarray(attention, dtype=np.float64)
    real = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(real) == 0 or k <= 0:
        return []
    order = real[np.argsort(-att[real], kind="stable")][:k]
    idx = order if rows is None else np.asarray(rows)[order]
    return [(int(i), float(att[o])) for i, o in zip(idx, order)]


def bag_row_indices(site: SiteData, modalities: tuple[str, ...] | list[str], *, max_instances: int | None = None,
                    seed: int = 0) -> dict[str, list[np.ndarray | None]]:
    """Per modality and patient, the file rows that :func:`~rmmfed.core.data.tensors.build_tensors` kept
    (in bag order): all of them by default, else replaying its seeded subsample of bags longer than
    ``max_instances``.

    Must be called with the same site, modality order, ``max_instances`` and ``seed`` as build_tensors.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray | None]] = {}
    for m in modalities:
        bags = site.bags.get(m, [None] * len(site.patient_ids))
        rows: list[np.ndarray | None] = []
        for bag in bags:
            if bag is None:
                rows.append(None)
            elif max_instances and len(bag) > max_instances:
                rows.append(np.sort(rng.choice(len(bag), max_instances, replace=False)))
            else:
                rows.append(np.arange(len(bag)))
        out[m] = rows
    return out
