"""Which exam to order: for each missing modality of a patient, what doing that exam would change.

For modality k missing from a patient, Tier 1 draws k's features (f_phi's MC-dropout estimates plus
its predicted variance) while every other missing modality stays at its estimate, and reads each draw
as if the exam had found it (core/routing/risk_interval.tier1_risk_draws with ``only = k``). Against the risk
Tier 1 reports now, on the system scale (z-score of the training risk):

* ``expected_change``: the mean |draw's risk - reported risk|;
* ``p_group_change``: the share of draws whose risk group (the run's tertile cut points) differs from
  the reported one (None without cut points);
* the missing modalities ranked by expected change, largest first.

What the draws know is what Tier 1 learned about how the modalities go together; a modality Tier 1
cannot predict from the others gets a wide spread, which is the point: its exam is the informative one.
Evaluated in every run as the capture ratio (core/routing/risk_uncertainty_evaluation.py).
"""

from __future__ import annotations

import numpy as np

from .risk_interval import tier1_risk_draws
from ..data.tensors import SiteTensors
from ..model.tier1 import Tier1Model
from ..model.train import predict_risk


def exam_values(tier1: Tier1Model, data: SiteTensors, *, seed: int, mean: float, sd: float,
                cutpoints: list[float] | None) -> list[list[dict]]:
    """Per patient of ``data``: one dict per missing modality (``modality``, ``expected_change``,
    ``p_group_change``), ranked by expected change; an empty list when nothing is missing."""
    reported = (predict_risk(tier1, data) - mean) / sd
    cuts = None if cutpoints is None else np.asarray(cutpoints, dtype=np.float64)
    present = data.present.cpu().numpy()
    per_k = []
    for k in range(len(data.modalities)):
        if present[:, k].all():
            per_k.append(None)
            continue
        z = (tier1_risk_draws(tier1, data, seed=seed + 101 * k, only=k) - mean) / sd
        change = np.abs(z - reported[:, None]).mean(axis=1)
        flips = None
        if cuts is not None:
            flips = (np.searchsorted(cuts, z, side="right") != np.searchsorted(cuts, reported, side="right")[:, None]).mean(axis=1)
        per_k.append((change, flips))
    out = []
    for i in range(len(data)):
        rows = [{"modality": data.modalities[k], "expected_change": float(v[0][i]),
                 "p_group_change": None if v[1] is None else float(v[1][i])}
                for k, v in enumerate(per_k) if v is not None and not present[i, k]]
        out.append(sorted(rows, key=lambda r: -r["expected_change"]))
    return out
