"""Tests of the FUSCC-style synthetic multi-center cohort generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmmfed.simulations.cohort import CohortConfig, generate_cohort, main

SMALL = dict(n_patients=200, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _patients(root: Path, cfg: CohortConfig) -> pd.DataFrame:
    frames = [pd.read_csv(root / f"site-{s}" / "patients.csv").assign(site=s) for s in cfg.site_names]
    return pd.concat(frames, ignore_index=True)


def _presence(root: Path, cfg: CohortConfig, df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({m: [(root / f"site-{s}" / m / f"{p}.npy").exists()
                             for s, p in zip(df.site, df.patient_id)] for m in cfg.dims})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = CohortConfig(**SMALL)
    root = tmp_path_factory.mktemp("small") / "cohort"
    return cfg, root, generate_cohort(cfg, root)


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    cfg = CohortConfig()
    root = tmp_path_factory.mktemp("default") / "cohort"
    return cfg, root, generate_cohort(cfg, root)


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path, small):
    cfg, root, _ = small
    generate_cohort(CohortConfig(**SMALL), tmp_path / "again")
    assert _files(tmp_path / "again") == _files(root)
    generate_cohort(CohortConfig(**{**SMALL, "seed": 8}), tmp_path / "other")
    assert _files(tmp_path / "other") != _files(root)


def test_default_cohort_has_1679_patients_in_four_unequal_centers(default):
    cfg, root, summary = default
    sizes = [summary["sites"][s]["patients"] for s in cfg.site_names]
    assert sum(sizes) == 1679 and len(sizes) == 4 and len(set(sizes)) == 4
    assert sizes == [700, 450, 330, 199]
    df = _patients(root, cfg)
    assert len(df) == 1679 and df.patient_id.is_unique and df.patient_id.iloc[0] == "A0001"
    assert not Path(str(root) + ".partial").exists()


def test_event_rate_lands_between_40_and_60_percent(small, default):
    for cfg, root, summary in (small, default):
        rate = _patients(root, cfg).event.mean()
        assert 0.4 <= rate <= 0.6
        assert summary["event_rate"] == pytest.approx(rate)


def test_every_site_misses_modalities_at_site_specific_rates(default):
    cfg, root, summary = default
    df = _patients(root, cfg)
    pres = _presence(root, cfg, df)
    for m in cfg.dims:
        rates = pres[m].groupby(df.site).apply(lambda x: 1 - x.mean())
        assert (rates > 0.05).all() and (rates < 0.6).all()
        assert rates.nunique() == len(cfg.site_names)  # every center has its own rate
        for s in cfg.site_names:
            assert summary["sites"][s]["present"][m] == int(pres[m][df.site == s].sum())
    assert len({tuple(r.values()) for r in cfg.missing_rates.values()}) == len(cfg.site_names)


def test_some_patients_have_every_modality_missing(small, default):
    for cfg, root, summary in (small, default):
        df = _patients(root, cfg)
        all_missing = ~_presence(root, cfg, df).any(axis=1)
        assert 0 < all_missing.mean() < 0.05
        assert sum(v["all_missing"] for v in summary["sites"].values()) == all_missing.sum()


def _risk_gap(root: Path, cfg: CohortConfig, site: str, m: str) -> float:
    df = _patients(root, cfg)
    pres = _presence(root, cfg, df)[m].to_numpy()
    truth = pd.read_csv(root / "truth.csv")
    at = (df.site == site).to_numpy()
    return truth.true_risk[at & ~pres].mean() - truth.true_risk[at & pres].mean()


def test_sicker_patients_skip_exams_at_every_center_with_its_own_strength(default):
    cfg, root, _ = default
    assert set(cfg.mnar) == set(cfg.site_names)  # MNAR at every center
    assert len({round(v["radiology"], 4) for v in cfg.mnar.values()}) == len(cfg.site_names)
    for site, mods in cfg.mnar.items():
        for m, beta in mods.items():
            if beta >= 0.75:
                assert _risk_gap(root, cfg, site, m) > 0.3, (site, m)


def test_mnar_strength_zero_makes_missingness_unrelated_to_risk(tmp_path):
    cfg = CohortConfig(n_patients=1200, seed=2, mnar_strength=0.0, site_names=["A", "B"],
                       site_fractions=[0.5, 0.5])
    generate_cohort(cfg, tmp_path / "c")
    for site in cfg.site_names:
        for m in ("radiology", "report"):
            assert abs(_risk_gap(tmp_path / "c", cfg, site, m)) < 0.3, (site, m)


def test_truth_file_lists_every_patient_with_latent_risks(small):
    cfg, root, _ = small
    truth = pd.read_csv(root / "truth.csv")
    df = _patients(root, cfg)
    assert list(truth.columns[:4]) == ["site", "patient_id", "true_risk", "shared_risk"]
    assert {f"{m}_risk" for m in cfg.dims} | {"observed_risk", "observed_risk_no_recovery"} <= set(truth.columns)
    assert sorted(truth.patient_id) == sorted(df.patient_id) and len(truth) == cfg.n_patients
    parts = truth[["shared_risk"] + [f"{m}_risk" for m in cfg.dims]].sum(axis=1)
    assert np.allclose(parts, truth.true_risk, atol=1e-5)


def test_center_shift_makes_site_feature_means_differ(default):
    cfg, root, _ = default
    means = {s: np.concatenate([np.load(p) for p in sorted((root / f"site-{s}" / "radiology")
                                                           .glob("*.npy"))]).mean(0)
             for s in cfg.site_names}
    for a in cfg.site_names:
        for b in cfg.site_names:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 0.3


def test_bags_are_float32_with_configured_dims_and_instance_counts(small):
    cfg, root, _ = small
    for s in cfg.site_names:
        for m, d in cfg.dims.items():
            lo, hi = cfg.instances[m]
            for path in (root / f"site-{s}" / m).glob("*.npy"):
                bag = np.load(path)
                assert bag.dtype == np.float32 and bag.ndim == 2 and bag.shape[1] == d
                assert lo <= bag.shape[0] <= hi and np.isfinite(bag).all()


def test_custom_sizes_dims_and_instances_are_honoured(tmp_path):
    cfg = CohortConfig(n_patients=120, site_names=["X", "Y"], site_fractions=[0.7, 0.3],
                       dims={"pathology": 8, "genomics": 5}, instances={"pathology": (3, 3),
                                                                         "genomics": (1, 2)})
    summary = generate_cohort(cfg, tmp_path / "c")
    assert [summary["sites"][s]["patients"] for s in "XY"] == [84, 36]
    bag = np.load(next((tmp_path / "c" / "site-X" / "pathology").glob("*.npy")))
    assert bag.shape == (3, 8)
    assert np.load(next((tmp_path / "c" / "site-Y" / "genomics").glob("*.npy"))).shape[1] == 5


def test_splits_are_stratified_and_context_mostly_routine(default):
    cfg, root, _ = default
    df = _patients(root, cfg)
    for _, g in df.groupby(["site", "event"]):
        assert g.split.value_counts(normalize=True)["train"] == pytest.approx(0.6, abs=0.03)
        assert g.split.value_counts(normalize=True)["test"] == pytest.approx(0.2, abs=0.03)
    assert set(df.context) == {"routine", "oncology-staging"}
    assert (df.context == "oncology-staging").mean() == pytest.approx(0.05, abs=0.01)
    assert (df.time > 0).all() and set(df.event) == {0, 1}


def test_oracle_c_index_is_high_and_each_modality_carries_shared_signal(default):
    cfg, root, summary = default
    assert 0.75 < summary["oracle_c_index_all"] < 0.9
    df = _patients(root, cfg)
    truth = pd.read_csv(root / "truth.csv")
    at_a = df.index[df.site == "A"]
    for m in cfg.dims:  # the shared part of the risk is linearly readable from every modality alone
        rows = [(np.load(root / "site-A" / m / f"{p}.npy").mean(0), truth.shared_risk[i])
                for i, p in zip(at_a, df.patient_id[at_a])
                if (root / "site-A" / m / f"{p}.npy").exists()]
        x, y = np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])
        half = len(y) // 2
        x = x - x[:half].mean(0)
        coef = np.linalg.solve(x[:half].T @ x[:half] + 10 * np.eye(x.shape[1]), x[:half].T @ y[:half])
        assert np.corrcoef(x[half:] @ coef, y[half:])[0, 1] > 0.25, m  # ridge, held-out half


def test_default_cohort_reports_cross_modal_r2_between_02_and_06_and_ordered_oracles(default):
    cfg, root, summary = default
    written = json.loads((root / "cohort.json").read_text())
    assert written["cross_modal_r2"] == summary["cross_modal_r2"]
    assert written["config"]["cross_modal_strength"] == cfg.cross_modal_strength
    assert set(summary["cross_modal_r2"]) == set(cfg.dims)
    for m, r2 in summary["cross_modal_r2"].items():
        assert 0.2 <= r2 <= 0.6, (m, r2)
    # every modality >= E[risk | observed] >= observed modalities alone (within rank noise)
    assert summary["oracle_c_index_all"] > summary["oracle_c_index_observed"]
    assert summary["oracle_c_index_observed"] >= summary["oracle_c_index_no_recovery"] - 0.002


def test_null_setting_has_no_cross_modal_signal_and_nothing_to_recover(tmp_path):
    cfg = CohortConfig(n_patients=900, seed=4, cross_modal_strength=0.0)
    summary = generate_cohort(cfg, tmp_path / "null")
    for m, r2 in summary["cross_modal_r2"].items():
        assert r2 < 0.05, (m, r2)
    truth = pd.read_csv(tmp_path / "null" / "truth.csv")
    np.testing.assert_allclose(truth.observed_risk, truth.observed_risk_no_recovery, atol=1e-6)
    assert summary["oracle_c_index_observed"] == pytest.approx(summary["oracle_c_index_no_recovery"])


def test_refuses_non_empty_output_folder(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="busy.*empty"):
        generate_cohort(CohortConfig(**SMALL), out)
    assert _files(out) == {"keep.txt": b"x"} and not (tmp_path / "busy.partial").exists()


def test_accepts_existing_empty_output_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate_cohort(CohortConfig(n_patients=60, site_names=["A", "B"], site_fractions=[0.5, 0.5]),
                    out)
    assert (out / "site-A" / "patients.csv").exists() and (out / "README.md").exists()
    assert "synthetic" in (out / "README.md").read_text().lower()


@pytest.mark.parametrize("bad", [
    dict(site_fractions=[0.5, 0.3, 0.1, 0.05]),
    dict(site_fractions=[0.5, 0.5]),
    dict(missing_rates={s: {"pathology": 1.0, "radiology": 0.1, "report": 0.1} for s in "ABCD"}),
    dict(instances={"pathology": (5, 2), "radiology": (1, 2), "report": (1, 2)}),
    dict(event_rate=0.9, admin_quantile=0.8),
    dict(mnar={"Z": {"radiology": 1.0}}),
])
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        CohortConfig(**bad)


def test_cli_writes_cohort_and_prints_summary(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--seed", "3", "--patients", "100"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_patients"] == 100 and (tmp_path / "cli" / "truth.csv").exists()


def test_crash_leaves_neither_cohort_nor_partial_folder(tmp_path, monkeypatch):
    import rmmfed.simulations.cohort as cohort

    def boom(cfg):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort, "_readme", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_cohort(CohortConfig(**SMALL), tmp_path / "c")
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_stale_partial_folder_is_replaced(tmp_path):
    (tmp_path / "c.partial" / "site-A").mkdir(parents=True)
    (tmp_path / "c.partial" / "junk.txt").write_text("old")
    generate_cohort(CohortConfig(**SMALL), tmp_path / "c")
    assert not (tmp_path / "c" / "junk.txt").exists() and not (tmp_path / "c.partial").exists()
