"""Simulation-only oracle figures from a generated cohort's ``truth.csv`` and ``cohort.json``.

The generator knows each patient's true risk and E[true risk | observed modalities]; with the test
patients' outcomes and routes the simulation reports how well an oracle ranks them: with every
modality and from the observed modalities only, on the whole test split and on the patients the
system referred to Tier 2. The pipeline never reads these files; a cohort folder without them
(real data) has no oracle. ``truth.csv`` is checked before training
(:func:`~rmmfed.simulations.optional_inputs.load_truth`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.survival.concordance import c_index
from .optional_inputs import Truth
from .pooled_test import PooledTest
from ..core.routing.routing import TIER2

COHORT_KEYS = ("cross_modal_r2", "oracle_c_index_all", "oracle_c_index_observed", "oracle_c_index_no_recovery",
               "oracle_incomplete", "complete_fraction")


def _safe(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float | None:
    if len(time) < 2 or event.sum() == 0:
        return None
    try:
        return c_index(time, risk, event)
    except Exception:  # no comparable pair in a tiny group
        return None


def oracle_figures(truth: Truth, site_names: list[str], test: PooledTest) -> dict:
    """C-index of the true risk on the pooled test split (``c_index``), of E[risk | observed]
    (``c_index_observed``, when the truth has it), and both on the referred test patients."""
    risk = truth.test_risks(site_names, test.patient_ids)
    out: dict = {"c_index": c_index(test.time, risk, test.event), "note": "true risk from the generator's truth file"}
    obs = truth.test_observed(site_names, test.patient_ids)
    if obs is not None:
        out["c_index_observed"] = c_index(test.time, obs, test.event)
    ref = np.asarray(test.route) == TIER2
    out["referred_n"] = int(ref.sum())
    out["c_index_referred"] = _safe(test.time[ref], risk[ref], test.event[ref])
    if obs is not None:
        out["c_index_observed_referred"] = _safe(test.time[ref], obs[ref], test.event[ref])
    return out


def cohort_figures(cohort: Path) -> dict:
    """What the generator measured on the cohort (``cohort.json``), or {} for a folder without one."""
    meta = Path(cohort) / "cohort.json"
    if not meta.is_file():
        return {}
    doc = json.loads(meta.read_text())
    figures = {k: doc[k] for k in COHORT_KEYS if k in doc}
    if "config" in doc:
        figures["cross_modal_strength"] = doc["config"].get("cross_modal_strength")
    return figures
