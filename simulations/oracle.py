"""Simulation-only oracle figures from a generated cohort's ``truth.csv`` and ``cohort.json``.

The generator knows each patient's true risk and E[true risk | observed modalities]; with the test
patients' outcomes (and which of them Tier 1 referred to Tier 2) the simulation reports how well an
oracle ranks them: with every modality, and from the observed modalities only. The pipeline never
reads these files; a cohort folder without them (real data) simply has no oracle.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.concordance import c_index

TRUTH_COLUMNS = ("site", "patient_id", "true_risk")


def read_truth(truth_file: Path) -> pd.DataFrame | None:
    """The truth table, or None (with a warning) when it is absent or lacks the expected columns."""
    if not truth_file.is_file():
        return None
    truth = pd.read_csv(truth_file, dtype={"patient_id": str, "site": str})
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        warnings.warn(f"{truth_file}: no column(s) {', '.join(missing)}; the file is not a generator truth "
                      "table and is ignored (no oracle figures)", stacklevel=2)
        return None
    return truth


def _lookup(truth: pd.DataFrame, column: str, site_names: list[str], test_ids: list[list[str]]) -> np.ndarray | None:
    key = {(str(s), str(p)): float(r) for s, p, r in zip(truth["site"], truth["patient_id"], truth[column])}
    out = []
    for site, ids in zip(site_names, test_ids):
        short = site.removeprefix("site-")
        for pid in ids:
            r = key.get((site, pid), key.get((short, pid)))
            if r is None:
                return None
            out.append(r)
    return np.asarray(out)


def _safe(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float | None:
    if len(time) < 2 or event.sum() == 0:
        return None
    try:
        return c_index(time, risk, event)
    except Exception:  # no comparable pair in a tiny group
        return None


def oracle_figures(cohort: Path, site_names: list[str], test_ids: list[list[str]], time: np.ndarray,
                   event: np.ndarray, referred: np.ndarray | None = None) -> dict:
    """``{"oracle": ..., "cohort": ...}`` for the metrics document (each key only when its file exists).

    ``oracle``: C-index of the true risk on the pooled test split (``c_index``) and, where the truth has
    them, of E[risk | observed] (``c_index_observed``), both also on the referred test patients.
    ``cohort``: what the generator measured (``cohort.json``: cross-modal R^2 and its own oracles).
    """
    out: dict = {}
    truth = read_truth(cohort / "truth.csv")
    if truth is not None:
        risk = _lookup(truth, "true_risk", site_names, test_ids)
        if risk is not None:
            o = {"c_index": c_index(time, risk, event), "note": "true risk from the generator's truth file"}
            obs = _lookup(truth, "observed_risk", site_names, test_ids) if "observed_risk" in truth else None
            if obs is not None:
                o["c_index_observed"] = c_index(time, obs, event)
            if referred is not None:
                r = np.asarray(referred, dtype=bool)
                o["referred_n"] = int(r.sum())
                o["c_index_referred"] = _safe(time[r], risk[r], event[r])
                if obs is not None:
                    o["c_index_observed_referred"] = _safe(time[r], obs[r], event[r])
            out["oracle"] = o
    meta = cohort / "cohort.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        out["cohort"] = {k: doc[k] for k in ("cross_modal_r2", "oracle_c_index_all", "oracle_c_index_observed",
                                             "oracle_c_index_no_recovery", "oracle_incomplete", "complete_fraction") if k in doc}
        if "config" in doc:
            out["cohort"]["cross_modal_strength"] = doc["config"].get("cross_modal_strength")
    return out
