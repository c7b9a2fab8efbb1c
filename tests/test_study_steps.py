"""rmm-simulate after the federation: outputs on disk first, later steps that fail keep them, the
visual report, and the quiet console. The Flower run is replaced by the same phases computed with
SiteSession directly (no training: initial weights), so these tests stay fast; the real run through
Flower is the slow test in test_console.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmmfed import __version__
from rmmfed.core.outputs.bundle import load_bundle, load_model
from rmmfed.core.config import RunConfig
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.data.schema import merge_schemas
from rmmfed.core.aggregates.histogram import HistogramGrid, quantile_from_counts
from rmmfed.core.site.site_session import SiteSession
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.weights import get_weights
from rmmfed.server.federation import FederationResult
from rmmfed.server.handshake import Handshake, SiteInfo
from rmmfed.simulations import run as run_mod
from rmmfed.simulations.cohort import CohortConfig, generate_cohort
from rmmfed.simulations.simulate import main

SMALL = ["--seed", "2", "--no-pooled", "--set", "rounds=2", "--set", "tier2.rounds=0", "--set", "model.mc-samples=3",
         "--set", "model.hidden-dim=16", "--set", "model.embed-dim=8"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("steps") / "cohort"
    generate_cohort(CohortConfig(n_patients=160, seed=2), folder)
    return folder


def federation_without_flower(cfg: RunConfig, paths: list[Path]) -> FederationResult:
    """The phases of run_federation on SiteSessions in-process: statistics, calibration, evaluation."""
    sessions = [SiteSession(p, device="cpu") for p in paths]
    dims = merge_schemas([s.data.schema() for s in sessions])
    for s in sessions:
        s.bind_schema(dims)
    stats = FeatureStats.from_sums(add_sums([s.feature_sums(cfg.min_stat_count) for s in sessions]), dims,
                                   cfg.model.anat_partitions)
    weights = get_weights(build_model(dims, cfg.model, cfg.seed))
    grid = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    counts = 0
    for s in sessions:
        s.setup(cfg, stats)
        s.freeze(weights)
        counts = counts + s.histogram(grid)[0]
    theta = quantile_from_counts(grid, counts, cfg.quantile)
    per_site = {s.data.site: s.evaluate(None, FittedTwoTier(theta)) for s in sessions}
    infos = [SiteInfo(i, s.data.site, dict(dims), __version__, {}) for i, s in enumerate(sessions)]
    return FederationResult(cfg, Handshake(dims, infos), stats, weights, grid, np.asarray(counts), FittedTwoTier(theta),
                            per_site)


@pytest.fixture
def no_flower(monkeypatch):
    def fake(cfg, paths, out, resume=False, fault=None, *, progress=None, ray_init=None, policy=None):
        progress.phase("handshake: (test) federation computed without Flower")
        return federation_without_flower(cfg, paths)

    monkeypatch.setattr(run_mod, "run_flower", fake)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rmm-simulate: error:")]


def test_a_failing_oracle_step_keeps_metrics_and_model_and_exits_nonzero_with_one_line(cohort, tmp_path, no_flower,
                                                                                       monkeypatch, capfd):
    def broken(*args, **kwargs):
        raise KeyError("true_risk")

    monkeypatch.setattr(run_mod, "oracle_figures", broken)
    out = tmp_path / "out"
    code = main(["--data", str(cohort), "--out", str(out), *SMALL])
    captured = capfd.readouterr()
    assert code == 1
    errors = _error_lines(captured.err)
    assert len(errors) == 1 and "oracle: KeyError: 'true_risk'" in errors[0] and str(out) in errors[0]
    assert "Traceback" not in captured.err + captured.out
    assert (out / "model.pt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["failed_steps"] == {"oracle": "KeyError: 'true_risk'"}
    assert m["federated"]["c_index_method"].startswith("pooled test split")  # the step before it ran
    raw = load_bundle(out / "model.pt")  # the run's model file is the bundle (read with weights_only=True)
    run = load_model(out)  # as a run folder, its card follows metrics.json, which later steps extended
    assert raw.model_card["c_index_method"].startswith("comparable-pair")
    assert run.model_card["c_index_method"].startswith("pooled test split") and run.model_card["source"]
    assert (out / "report.html").is_file() and "oracle: KeyError" in (out / "report.md").read_text()
    assert "KeyError: 'true_risk'" in (out / "flower.log").read_text()  # the traceback went to the log


def test_a_failing_report_step_keeps_metrics_and_model_and_exits_nonzero(cohort, tmp_path, no_flower, monkeypatch, capfd):
    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(run_mod, "simulation_figures", broken)
    out = tmp_path / "out"
    assert main(["--data", str(cohort), "--out", str(out), *SMALL]) == 1
    errors = _error_lines(capfd.readouterr().err)
    assert len(errors) == 1 and "report: RuntimeError: no display" in errors[0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["oracle"]["c_index"] > 0.5 and m["failed_steps"] == {"report": "RuntimeError: no display"}
    assert (out / "model.pt").is_file() and (out / "report.md").is_file()  # the tables-only report from the first write


def test_a_study_writes_the_visual_report_with_figures_and_a_short_console(cohort, tmp_path, no_flower, capfd):
    out = tmp_path / "out"
    assert main(["--data", str(cohort), "--out", str(out), *SMALL]) == 0
    captured = capfd.readouterr()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"km_risk_groups.png", "uncertainty_vs_error.png", "uncertainty_histogram.png", "routes_per_site.png",
            "cindex_by_pattern.png"} <= set(pngs)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for png in pngs:
        assert f"]({png})" in md and f'src="{png}"' in html
    assert "log-rank p" in md and "## Uncertainty quality" in md
    assert "=== rmm summary ===" in captured.out and "oracle" in captured.out and "flower.log" in captured.out
    assert len((captured.out + captured.err).splitlines()) <= 40


def test_a_cohort_section_in_metrics_is_shown_and_its_absence_is_silent():
    from rmmfed.server.run_report import report_markdown
    from rmmfed.server.summary import summary_lines

    base = {"rmm_version": "x", "federated": {"c_index": 0.7, "c_index_method": "m", "c_index_combined_pairs": 0.7,
                                               "per_site": {"A": {"n_test": 10, "n_events_test": 5, "c_index": 0.7}}},
            "sites": {"accepted": ["A"], "refused": {}},
            "routing": {"route_counts_per_site": {"A": {"tier1": 9, "tier2": 1, "abstain": 0}},
                        "referral_rate_per_site": {"A": 0.1}, "masked_complete_referral_rate": 0.05,
                        "masked_complete_referral_rate_per_site": {"A": 0.05}},
            "calibration": {"theta": 0.01, "quantile": 0.95, "n_values": 10}, "timing_s": {"total": 1.0}}
    plain = "\n".join(summary_lines(base, Path("o")))
    assert "cohort" not in plain.lower() and "## Cohort" not in report_markdown(base, [])
    with_cohort = {**base, "cohort": {"cross_modal_r2": {"pathology": 0.12, "report": 0.31},
                                      "oracle_c_index_all": 0.84, "oracle_c_index_observed": 0.8}}
    text = "\n".join(summary_lines(with_cohort, Path("o")))
    assert "cross-modal R^2: pathology 0.12, report 0.31" in text and "E[risk | observed] 0.800" in text
    assert "## Cohort" in report_markdown(with_cohort, [])
    assert "## Cautions" not in report_markdown(base, [])
    caution = "DP-SGD: 2 site(s) hold fewer than 10 training events each"
    assert f"## Cautions\n\n- {caution}" in report_markdown({**base, "cautions": [caution]}, [])


def test_the_uncertainty_plot_uses_the_values_behind_the_sites_spearman(cohort, tmp_path, no_flower):
    from scipy.stats import spearmanr

    from rmmfed.simulations.simulate import build_config, parse_args, validate_cohort

    out = tmp_path / "out"
    cfg = build_config(parse_args(["--data", str(cohort), *SMALL]))
    paths, sites, dims = validate_cohort(cohort)
    st = run_mod.run_study(cfg, cohort, paths, sites, dims, out, pooled=False)
    per_site = st.metrics["two_tier"]["uncertainty_error_spearman_per_site"]
    unc = st.metrics["uncertainty"]
    for site, rho in per_site.items():
        sel = st.test.masked_site == site
        assert float(spearmanr(st.test.masked_sigma2[sel], st.test.masked_error[sel]).statistic) == pytest.approx(rho)
        assert unc["per_site"][site]["spearman_error"]["rho"] == pytest.approx(rho)
        assert unc["per_site"][site]["n_rows"] == sel.sum()
    assert unc["definition"] == cfg.model.uncertainty
    weighted = [v["n_patients"] for v in unc["per_site"].values() if v["n_patients"] > 3]  # n - 3 > 0
    assert (unc["spearman_error"]["n_sites"], unc["spearman_error"]["n_patients"]) == (len(weighted), sum(weighted))
    assert unc["spearman_error"]["ci_low"] <= unc["spearman_error"]["rho"] <= unc["spearman_error"]["ci_high"]
    assert st.metrics["federated"]["c_index"] == pytest.approx(st.test.c_index())
