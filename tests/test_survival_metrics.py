"""Survival evaluation from site sums (core/survival/survival_metrics.py): integrated Brier score, cumulative/dynamic
AUC and calibration, against independent pooled computations."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.core.messages import metric_names as M
from rmmfed.core.survival.baseline_hazard import BaselineHazard, breslow_baseline, survival_at, time_grid
from rmmfed.core.survival.survival_metrics import (CALIBRATION_BINS, HORIZONS, IBS_POINTS, IBS_SPAN, BaselineError,
                                          check_baseline, combine, site_sums)
from rmmfed.simulations.evidence.brier import CensoringKM, integrated_brier


def _site(seed: int, n: int = 120):
    rng = np.random.default_rng(seed)
    risk = rng.normal(0, 1, n)
    t = rng.exponential(np.exp(-risk) * 10)
    c = rng.exponential(15, n)
    return np.minimum(t, c).round(2) + 0.01, (t <= c).astype(int), risk


def _baseline(sites):
    time = np.concatenate([s[0] for s in sites])
    grid = time_grid(float(np.quantile(time, 0.95)), 64)
    return grid, breslow_baseline(time, np.concatenate([s[1] for s in sites]), np.concatenate([s[2] for s in sites]),
                                  grid)


def test_one_sites_integrated_brier_score_equals_the_pooled_ipcw_computation():
    site = _site(0)
    grid, H0 = _baseline([site])
    fed = combine({"A": site_sums(*site, grid, H0, k=10)}, float(grid[-1]))
    ts = np.linspace(IBS_SPAN[0] * grid[-1], IBS_SPAN[1] * grid[-1], IBS_POINTS)
    surv = survival_at(site[2], ts, grid, H0)
    ref = integrated_brier(ts, surv, site[0], site[1], CensoringKM(site[0], site[1]))
    assert fed["ibs"] == pytest.approx(ref, rel=1e-9)
    assert 0 < fed["ibs"] < 0.25  # better than a constant 0.5 prediction


def test_the_dynamic_auc_counts_case_control_pairs_with_ipcw_weights():
    time, event, risk = _site(1, 60)
    grid, H0 = _baseline([(time, event, risk)])
    sums = site_sums(time, event, risk, grid, H0, k=1)  # floor 1: every horizon's pairs are sent
    km = CensoringKM(time, event)
    for j, frac in enumerate(HORIZONS):
        tau = frac * grid[-1]
        num = den = 0.0
        for i in range(len(time)):
            if time[i] <= tau and event[i]:
                w = 1 / km.before(np.array([time[i]]))[0]
                for jj in range(len(time)):
                    if time[jj] > tau:
                        den += w
                        num += w * (1.0 if risk[i] > risk[jj] else 0.5 if risk[i] == risk[jj] else 0.0)
        assert sums[M.td_auc(j, "num")] == pytest.approx(num) and sums[M.td_auc(j, "den")] == pytest.approx(den)


def test_sites_combine_their_sums_and_small_calibration_groups_fall_back_to_coarser_bins():
    sites = {"A": _site(2, 150), "B": _site(3, 25)}
    grid, H0 = _baseline(list(sites.values()))
    per_site = {s: site_sums(*v, grid, H0, k=10) for s, v in sites.items()}
    for s, m in per_site.items():
        n = [m[M.calibration(b, "n")] for b in range(max(CALIBRATION_BINS))]
        assert sum(n) == len(sites[s][0])  # every test patient in one group
        assert all(c == 0 or (c >= 10 and len(sites[s][0]) - c in (0,) + tuple(range(10, 1000))) for c in n)
    fed = combine(per_site, float(grid[-1]))
    n_all = sum(len(v[0]) for v in sites.values())
    assert fed["n_patients"] == n_all and sum(g["n"] for g in fed["calibration"]["groups"]) == n_all
    assert 0 <= fed["calibration"]["binned_error"] < 0.2
    assert all(0.5 < a <= 1 for a in fed["td_auc"]["auc"].values())  # the risk is informative
    tiny = site_sums(*sites["B"], grid, H0, k=20)  # 25 patients, k = 20: only calibration-in-the-large
    assert tiny[M.calibration(0, "n")] == 25 and all(tiny[M.calibration(b, "n")] == 0 for b in range(1, 4))


def test_an_evaluation_baseline_that_is_not_a_cumulative_hazard_is_refused():
    grid = np.array([1.0, 2.0, 3.0])
    check_baseline(grid, np.array([0.0, 0.1, 0.3]))
    for g, h in ((grid, np.array([0.2, 0.1, 0.3])), (grid[::-1], np.array([0.0, 0.1, 0.3])),
                 (grid, np.array([0.0, np.inf, 0.3])), (grid, np.array([0.0, 0.1]))):
        with pytest.raises(BaselineError):
            check_baseline(g, h)


def test_the_report_draws_the_calibration_groups(tmp_path):
    from rmmfed.server.plots import survival_calibration

    sites = {"A": _site(4, 80), "B": _site(5, 60)}
    grid, H0 = _baseline(list(sites.values()))
    fed = combine({s: site_sums(*v, grid, H0, k=10) for s, v in sites.items()}, float(grid[-1]))
    fig = survival_calibration(fed, tmp_path)
    assert (tmp_path / fig.file).stat().st_size > 5000 and "Integrated Brier score" in fig.caption


def test_a_lying_coordinator_cannot_place_a_horizon_that_leaves_one_control(tmp_path):
    """The coordinator sends the baseline, so it places the horizons: with tau between the two latest test
    follow-ups, the AUC's controls would be one patient (its time bisected run after run). The site sends
    zeros for that horizon instead (through the real ClientApp, default policy)."""
    import pandas as pd
    from rmmfed.core.messages import protocol as P

    from flwr.supercore.task_identity import TaskIdentity
    from test_hostile_coordinator import Site

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    site = Site(tmp_path)
    site.join()
    site.freeze()
    rows = pd.read_csv(site.path / "patients.csv")
    last, second = np.sort(rows.loc[rows["split"] == "test", "time"].to_numpy(float))[::-1][:2]
    t_end = (last + second) / 2 / HORIZONS[-1]  # the last horizon falls between them: one control
    grid = np.linspace(t_end / 64, t_end, 64)
    reply = site.send(P.EVALUATION, P.EvaluateRequest(None, P.FittedTwoTier(1e-3, baseline_hazard_=BaselineHazard(grid, np.linspace(0, 1, 64)))))
    assert not reply.has_error(), reply.error.reason
    m = dict(reply.content[P.METRICS])
    j = len(HORIZONS) - 1
    assert m[M.td_auc(j, "num")] == 0.0 and m[M.td_auc(j, "den")] == 0.0
    assert m[M.IBS_N] == m["n-test"] > 0  # the rest of the survival sums still come back
