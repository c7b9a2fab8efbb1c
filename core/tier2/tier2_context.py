"""What Tier 2 sees of the frozen Tier 1, per patient and masking pattern.

Tier 1 is frozen while Tier 2 trains, so everything Tier 2 reads from it is fixed for a round and is
computed once (:class:`PatternBank`) instead of at every step:

* the bag encodings z_k (eq. 1) of every present modality, in eval mode;
* for every observed pattern (each non-empty subset of the modalities, intersected with what the
  patient has), Tier 1's MC-dropout mean estimate x_hat and uncertainty sigma^2_k
  (:func:`tier2_inputs`, the one definition of sigma^2);
* Tier 1's risk on everything the patient has (the target of L_cons).

Training draws, per patient and step, one pattern among those that hide at least one present modality
and keep at least one observed (every pattern the patient's modalities allow, uniformly), so Tier 2
learns every masking it will meet at inference, not only "one modality hidden".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..data.tensors import SiteTensors, patients_per_batch
from ..model.tier1 import Tier1Model, bag_means
from .tier2 import concat_modalities, coord_mask
from .tier2_scoring import tier1_head_risk
from ..routing.uncertainty import estimate_and_sigma2


def observed_patterns(k: int) -> list[tuple[bool, ...]]:
    """Every non-empty observed subset of K modalities, in a fixed order (2^K - 1 of them)."""
    return [p for p in itertools.product((True, False), repeat=k) if any(p)]


@torch.no_grad()
def bag_encodings(tier1: Tier1Model, data: SiteTensors, batch: int = 4096) -> list[torch.Tensor]:
    """z_k [N, d] per modality (eval mode; a modality a patient lacks encodes its zero padding and is
    never read, the slots replace it)."""
    was = tier1.training
    tier1.eval()
    batch = patients_per_batch(data, batch)
    try:
        parts = [tier1.encode([x[s:s + batch] for x in data.x], [m[s:s + batch] for m in data.inst_mask])[0]
                 for s in range(0, len(data), batch)]
    finally:
        tier1.train(was)
    k = len(data.x)
    if not parts:
        return [data.present.new_zeros((0, tier1.cfg.embed_dim), dtype=torch.float32) for _ in range(k)]
    return [torch.cat([p[j] for p in parts]) for j in range(k)]


def data_means(data: SiteTensors) -> list[torch.Tensor]:
    """Each bag's instance mean per modality [N, D_k]: what Tier 1's linear path reads of an observed bag."""
    return bag_means(list(data.x), list(data.inst_mask))


def tier1_slots(tier1: Tier1Model, zs: list[torch.Tensor], observed: torch.Tensor) -> torch.Tensor:
    """Tier 1's eq. 2 slots H = [h_1; ...; h_K] [N, K (d + d_p + 1)] under ``observed``: the encodings
    of the observed bags, pseudo-embeddings elsewhere, with the prompts."""
    return torch.cat(tier1.slots(zs, observed.bool()), dim=1)


@dataclass
class PatternBank:
    """Tier 1's view of a site's patients under every observed pattern (see the module docstring)."""

    present: torch.Tensor  # [N, K] bool
    zs: list[torch.Tensor]  # per modality [N, d]
    means: list[torch.Tensor]  # per modality [N, D_k]: the bags' instance means (Tier 1's linear path)
    patterns: torch.Tensor  # [P, K] bool
    x_hat: torch.Tensor  # [P, N, sum D]
    sigma2: torch.Tensor  # [P, N, K]
    valid: torch.Tensor  # [N, P] bool: the pattern hides >= 1 present modality and leaves >= 1 observed
    risk_full: torch.Tensor  # [N] Tier 1's risk on everything the patient has

    @staticmethod
    @torch.no_grad()
    def build(tier1: Tier1Model, data: SiteTensors, *, seed: int, mc_samples: int | None = None) -> "PatternBank":
        device = data.present.device
        present = data.present.bool()
        k = present.shape[1]
        patterns = torch.tensor(observed_patterns(k), dtype=torch.bool, device=device)
        zs = bag_encodings(tier1, data)
        x_hats, sig = [], []
        for i, p in enumerate(patterns):
            _, x_hat, s2 = tier2_inputs(tier1, data, present & p, seed=seed + i, mc_samples=mc_samples, zs=zs)
            x_hats.append(x_hat)
            sig.append(s2)
        obs = present.unsqueeze(1) & patterns.unsqueeze(0)  # [N, P, K]
        hides = (present.unsqueeze(1) & ~patterns.unsqueeze(0)).any(dim=2)
        valid = obs.any(dim=2) & hides
        full = [i for i, p in enumerate(patterns) if bool(p.all())][0]
        dims = [t.shape[1] for t in data.target]
        tier1.eval()
        means = data_means(data)
        risk_full = tier1_head_risk(tier1, zs, present, list(torch.split(x_hats[full], dims, dim=1)), means)
        return PatternBank(present, zs, means, patterns, torch.stack(x_hats), torch.stack(sig), valid, risk_full)

    def trainable(self) -> torch.Tensor:
        """Indices of the patients with at least one valid pattern (>= 2 modalities present)."""
        return torch.nonzero(self.valid.any(dim=1)).squeeze(1)

    def draw(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One valid pattern per patient of ``idx`` (uniform over that patient's valid patterns) [B]."""
        v = self.valid[idx]
        scores = torch.rand(v.shape, generator=generator, device=v.device).masked_fill(~v, -1.0)
        return scores.argmax(dim=1)

    def gather(self, idx: torch.Tensor, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(observed [B, K], x_hat [B, sum D], sigma2 [B, K]) of patients ``idx`` under ``pattern`` [B]."""
        observed = self.present[idx] & self.patterns[pattern]
        return observed, self.x_hat[pattern, idx], self.sigma2[pattern, idx]


def _rng_devices(device: torch.device) -> list:
    return [] if device.type == "cpu" else [device]


@torch.no_grad()
def tier2_inputs(tier1: Tier1Model, data: SiteTensors, observed: torch.Tensor, *, seed: int,
                 mc_samples: int | None = None, batch: int = 4096, zs: list[torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tier 2's condition inputs for ``data`` under the ``observed`` mask [N, K].

    Returns (x_obs [N, sum D] = real targets on observed modalities, 0 elsewhere;
    x_hat [N, sum D] = mean of Tier 1's T MC-dropout estimates; sigma^2 [N, K] = Tier 1's per-modality
    uncertainty, :func:`~rmmfed.core.routing.uncertainty.modality_sigma2`). ``mc_samples`` None = Tier 1's T.
    ``zs``: Tier 1's bag encodings of ``data`` (:func:`~rmmfed.core.tier2.tier2_context.bag_encodings`) when
    the caller has them: the same result without encoding every instance again.
    """
    device = data.present.device
    observed = observed.bool()
    dims = [t.shape[1] for t in data.target]
    x_obs = concat_modalities(data.target) * coord_mask(observed, dims).to(data.target[0].dtype)
    was_training = tier1.training
    tier1.eval()
    x_hat, var = [], []
    batch = patients_per_batch(data, batch)
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(seed)
            for s in range(0, len(data), batch):
                sl = slice(s, s + batch)
                mean, var_k = estimate_and_sigma2(tier1, [x[sl] for x in data.x], [m[sl] for m in data.inst_mask],
                                                  observed[sl], samples=mc_samples,
                                                  zs=None if zs is None else [z[sl] for z in zs])
                x_hat.append(torch.cat(mean, dim=1))
                var.append(var_k)
    finally:
        tier1.train(was_training)
    if not x_hat:
        k = len(dims)
        return x_obs, x_obs.clone(), x_obs.new_zeros((0, k))
    return x_obs, torch.cat(x_hat).to(x_obs.dtype), torch.cat(var).to(x_obs.dtype)
