"""How far a patient's risk could move with what is missing: the risk interval of a prediction.

The interval covers the uncertainty that comes from missing modalities only (not the model's own
estimation error, nor the patient's outcome): the central 95% of the risks the answering tier gives
across its own draws of the missing features, widened where needed to contain the reported risk
(which is read at a point estimate: Tier 1 with dropout off, Tier 2 at its posterior mean).

* Tier 1 answered: T draws of the missing features, f_phi's MC-dropout estimates plus its predicted
  (aleatoric) variance (:func:`tier1_risk_draws`), each read through Tier 1's head (observed modalities
  from their bags). A patient with nothing missing gets a zero-width interval.
* Tier 2 answered: its S diffusion draws, each read through the same head (core/tier2_scoring.py).
* Referred but the gate kept Tier 1's risk (core/tier2_gate.py): the hull of both intervals and of
  Tier 2's own answer. Neither tier was shown to be better for this patient, so the interval covers
  what either says.
"""

from __future__ import annotations

import numpy as np
import torch

from .tensors import SiteTensors, patients_per_batch
from .tier1 import Tier1Model
from .tier2_context import bag_encodings, data_means
from .tier2_scoring import risk_of_draws

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
def tier1_risk_draws(tier1: Tier1Model, data: SiteTensors, *, seed: int, samples: int | None = None,
                     batch: int = 4096, observed: torch.Tensor | None = None) -> np.ndarray:
    """[N, T] Tier 1's risk distribution over what it does not know about the missing modalities: the
    one definition (rmm-predict's intervals, the risk SD of every run's evaluation). Draw t of a missing
    modality k is f_phi's MC-dropout estimate t plus, with the variance head (``model.uncertainty``
    total or aleatoric), Gaussian noise of its predicted variance exp(logvar_t,k) on every feature;
    each draw is read through Tier 1's head (observed modalities from their bags). Seeded; every column
    is the deterministic risk for a patient with nothing missing. ``observed`` [N, K]: the modalities
    the model may look at (default: the present ones; a subset masks the others)."""
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
                passes = tier1.mc_passes(list(sub.x), list(sub.inst_mask), obs, samples=samples)
                dims = [e.shape[2] for e in passes.x_hat]
                est = list(passes.x_hat)
                if passes.logvar is not None:  # the aleatoric part: f_phi's predicted variance per modality
                    est = [e + torch.exp(0.5 * passes.logvar[:, :, k : k + 1]) * torch.randn_like(e)
                           for k, e in enumerate(est)]
                draws = torch.cat(est, dim=2)  # [T, B, sum D]
                out.append(risk_of_draws(tier1, bag_encodings(tier1, sub), obs, draws, dims, data_means(sub)).T.cpu())
    finally:
        tier1.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, samples or tier1.cfg.mc_samples))
