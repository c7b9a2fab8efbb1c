"""The report figures only a simulation can draw: they need every test patient's predictions.

Kaplan-Meier curves by risk group (the groups rmm-predict gives: the run's federated tertile cut
points of the training system risk, applied to the test patients' system risk), Tier 1 uncertainty
against its actual recovery error on masked complete test cases, and the C-index within each
missingness pattern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.survival.concordance import c_index
from ..core.errors import SurvivalInputError
from ..server.federation import FederationResult
from ..server.plots import Figure, cindex_by_pattern, km_by_risk_group, uncertainty_vs_error
from .pooled_test import PooledTest

GROUPS = ["low", "intermediate", "high"]  # as rmm-predict names them
MIN_PATTERN = 5


def risk_groups(test: PooledTest, cutpoints: list[float] | None) -> tuple[np.ndarray, str]:
    """Group index per test patient (-1 = abstained) and where the cut points came from."""
    risk = test.system_risk
    ok = np.isfinite(risk)
    if cutpoints is not None:
        cuts, basis = np.asarray(cutpoints, float), "federated tertiles of the training system risk"
    else:  # no cut points in the run (too few values): tertiles of the test risks, said so
        cuts, basis = np.quantile(risk[ok], [1 / 3, 2 / 3]), "tertiles of the test split's own risk"
    group = np.where(ok, np.searchsorted(cuts, np.where(ok, risk, 0.0), side="right"), -1)
    return group, basis


def pattern_table(test: PooledTest) -> list[dict]:
    """One row per missingness pattern of the test split: label, n, events, Tier 1 C-index (NaN if small)."""
    labels = np.array(["+".join(m for m, p in zip(test.modalities, row) if p) or "none" for row in test.present])
    rows = []
    for lab in sorted(set(labels), key=lambda x: (x == "none", -x.count("+"), x)):
        sel = labels == lab
        ci = float("nan")
        if sel.sum() >= MIN_PATTERN:
            try:
                ci = c_index(test.time[sel], test.tier1_risk[sel], test.event[sel])
            except SurvivalInputError:
                pass
        rows.append({"pattern": lab, "n": int(sel.sum()), "events": int(test.event[sel].sum()), "c_index": ci})
    return rows


def simulation_figures(test: PooledTest, res: FederationResult, out: Path) -> list[Figure]:
    group, basis = risk_groups(test, None if res.fitted.cutpoints_ is None else list(res.fitted.cutpoints_))
    abstained = int((group < 0).sum())
    figs = [km_by_risk_group(test.time, test.event, group, GROUPS, out,
                             note=f" (two-tier system risk, {basis}"
                                  + (f"; {abstained} abstained left out" if abstained else "") + ")")]
    if len(test.masked_sigma2):
        figs.append(uncertainty_vs_error(test.masked_sigma2, test.masked_error, test.masked_site, res.fitted.theta_, out))
    rows = pattern_table(test)
    figs.append(cindex_by_pattern([r["pattern"] for r in rows], [r["n"] for r in rows], [r["c_index"] for r in rows], out))
    return figs
