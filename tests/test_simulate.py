"""rmm-simulate end to end through Flower's simulation engine, and its refusal of bad input."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from rmmfed.core.outputs.bundle import bundle_from_run_dir, load_model
from rmmfed.core.config import RunConfig
from rmmfed.flower.app_keys import APP_KEYS
from rmmfed.simulations.cohort import CohortConfig, generate_cohort
from rmmfed.simulations.simulate import main

from conftest import toy_policy

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "rounds=3", "--set", "model.mc-samples=4", "--set", "model.hidden-dim=32", "--set", "model.embed-dim=16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    cohort = base / "cohort"
    generate_cohort(CohortConfig(n_patients=240, seed=3), cohort)
    toy_policy(cohort)
    out = base / "out"
    code = main(["--data", str(cohort), "--out", str(out), "--seed", "3", "--seeded-noise", *TINY])
    return code, cohort, out


@pytest.mark.slow
def test_tiny_simulation_through_flower_writes_every_output(tiny_run):
    code, _, out = tiny_run
    assert code == 0
    for name in ("metrics.json", "calibration.json", "run_config.json", "model.pt", "report.md"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["federated"]["per_site"]) == {"site-A", "site-B", "site-C", "site-D"}
    assert 0.0 <= m["federated"]["c_index"] <= 1.0
    assert all(v["n_test"] > 0 for v in m["federated"]["per_site"].values())
    assert 0.0 <= m["pooled_reference"]["c_index"] <= 1.0
    assert m["oracle"]["c_index"] > 0.6
    assert set(m["routing"]["referral_rate_per_site"]) == set(m["federated"]["per_site"])
    assert m["timing_s"]["total"] > 0
    assert len(m["history"]) == 3
    hazard = load_model(out).fitted.baseline_hazard_
    assert hazard.times.shape == hazard.cumhaz.shape and bool((np.diff(hazard.cumhaz) >= 0).all())
    cuts = m["risk_groups"]["cutpoints"]  # federated tertiles of the training system risk
    assert len(cuts) == 2 and cuts[0] < cuts[1] and m["risk_groups"]["n_values"] > 0
    assert list(bundle_from_run_dir(out).fitted.cutpoints_) == cuts  # rmm-predict's groups use them


@pytest.mark.slow
def test_theta_comes_from_the_sites_noised_histograms_on_a_zoomed_grid(tiny_run):
    """Under the default policy the sites' calibration counts are epsilon-DP (core/privacy/noised_release.py):
    the server asked a coarse grid, then a zoom around its estimate (server/noised_quantile.py)."""
    from rmmfed.server.noised_quantile import ZOOM_BINS

    _, _, out = tiny_run
    c = json.loads((out / "calibration.json").read_text())
    assert c["grid"]["hist-bins"] == ZOOM_BINS and len(c["counts"]) == ZOOM_BINS and sum(c["counts"]) > 0
    assert c["grid"]["hist-low"] < c["theta"] < c["grid"]["hist-high"] and c["theta_exact_pooled"] > 0


def test_bad_site_data_exits_nonzero_and_writes_nothing(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    generate_cohort(CohortConfig(n_patients=60, seed=1), cohort)
    csv = cohort / "site-B" / "patients.csv"
    csv.write_text(csv.read_text().replace(",1,", ",yes,", 1))
    out = tmp_path / "out"
    code = main(["--data", str(cohort), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "patients.csv" in err and "event" in err and "Fix" in err
    assert not out.exists()


def test_a_folder_without_sites_is_refused(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Fix" in err


def test_unknown_config_key_is_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o"), "--set", "model.embed-dimm=3"]) == 2
    assert "embed-dimm" in capsys.readouterr().err


def test_pyproject_flower_config_equals_run_config_defaults():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = {k: v for k, v in conf.items() if k not in APP_KEYS and not isinstance(v, dict)}
    assert set(APP_KEYS) <= set(conf)  # every app key is one of the pyproject's
    for table, values in conf.items():
        if isinstance(values, dict):
            flat.update({f"{table}.{k}": v for k, v in values.items()})
    assert flat == RunConfig().to_flat()


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_on_cpu(tiny_run, tmp_path):
    _, cohort, out = tiny_run
    again = tmp_path / "again"
    assert main(["--data", str(cohort), "--out", str(again), "--seed", "3", "--no-pooled", "--seeded-noise", *TINY]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, again))
    assert a["federated"] == b["federated"]
    assert a["calibration"]["theta"] == b["calibration"]["theta"]
    assert a["routing"] == b["routing"]


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    from rmmfed.server import checkpoint as ck

    cohort = tmp_path / "cohort"
    generate_cohort(CohortConfig(n_patients=200, seed=5), cohort)
    toy_policy(cohort)
    # average-last = 3: Tier 1 keeps the mean of rounds 2-4, so the resumed run must restore round 2's share
    args = ["--data", str(cohort), "--seed", "5", "--no-pooled", "--set", "rounds=4", "--set", "average-last=3",
            "--seeded-noise", *TINY[2:]]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    real_save = ck.Checkpoint.save

    def crash_after_round_2(self, state):
        real_save(self, state)
        if state.get("phase") == "tier1" and state.get("round") == 2:
            raise RuntimeError("simulated coordinator crash")

    monkeypatch.setattr(ck.Checkpoint, "save", crash_after_round_2)
    with pytest.raises(RuntimeError):
        main([*args, "--out", str(tmp_path / "cut")])
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)  # plain tensors and containers
    assert (saved["phase"], saved["round"]) == ("tier1", 2)
    assert list(saved["tail"]["rounds"]) == [2]  # the averaged rounds so far travel with the checkpoint
    monkeypatch.setattr(ck.Checkpoint, "save", real_save)
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0

    whole, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "cut"))
    assert [h["round"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert abs(whole["federated"]["c_index"] - resumed["federated"]["c_index"]) <= 0.005
    assert whole["federated"] == resumed["federated"]  # deterministic: a resume is exact on CPU


@pytest.mark.slow
def test_every_reply_of_a_whole_run_holds_only_weights_sums_histograms_and_scalars(tiny_run):
    """Egress audit over the ledgers of the tiny run: no array is indexed by patient."""
    _, cohort, out = tiny_run
    bundle = load_model(out)
    shapes = {tuple(v.shape) for part in (bundle.tier1, bundle.tier2) for v in part.values()}
    dims = set(bundle.modalities.values())
    bins = json.loads((out / "calibration.json").read_text())["grid"]["hist-bins"]
    ledgers = sorted((out / "ledger").glob("*.jsonl"))
    assert [p.stem for p in ledgers] == ["site-A", "site-B", "site-C", "site-D"]
    for path in ledgers:
        n_patients = len((cohort / path.stem / "patients.csv").read_text().splitlines()) - 1
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert entries and all(e["status"] == "ok" for e in entries)
        for e in entries:
            for rec in e["records"]:
                assert rec["name"] in {"arrays", "sums", "counts", "hazard", "metrics", "config"}, rec["name"]
                if rec["kind"] == "arrays":
                    for a in rec["arrays"]:
                        shape = tuple(a["shape"])
                        allowed = {"arrays": shape in shapes,  # merged bins: at most one per grid bin
                                   "counts": len(shape) == 1 and shape[0] <= max(bins, 512),
                                   "hazard": len(shape) == 1 and shape[0] <= len(bundle.fitted.baseline_hazard_.times),
                                   "sums": len(shape) == 1 and (shape[0] in dims or shape == (1,))}[rec["name"]]
                        assert allowed, (path.stem, rec["name"], a)
                        assert n_patients not in shape or shape in shapes, (path.stem, a)
                else:
                    assert all(not t.startswith("list") for t in rec["keys"].values()), rec


@pytest.fixture(scope="module")
def robustness_cohort(tmp_path_factory):
    cohort = tmp_path_factory.mktemp("robust") / "cohort"
    generate_cohort(CohortConfig(n_patients=400, seed=7), cohort)
    toy_policy(cohort)
    return cohort


@pytest.fixture(scope="module")
def permissive_cohort(tmp_path_factory):
    """The robustness cohort with an explicit permissive policy per site (no DP, exact releases)."""
    cohort = tmp_path_factory.mktemp("robust-permissive") / "cohort"
    generate_cohort(CohortConfig(n_patients=400, seed=7), cohort)
    for site in sorted(cohort.iterdir()):
        if (site / "patients.csv").is_file():
            (site / "policy.toml").write_text("# robust aggregation measured alone, without DP: a test's choice\n"
                                              "min-patients = 2\n[dp]\nrequired = false\nrelease-epsilon = 0.0\n")
    return cohort


NO_DP = ["--set", "dp.enabled=false"]  # robust aggregation measured alone: DP-SGD noise on 400 patients is
# larger than the 0.02 these tests allow between a clean and a hit run


def _c_index(cohort, out, *extra):
    args = ["--data", str(cohort), "--out", str(out), "--seed", "7", "--no-pooled", "--set", "rounds=4",
            "--set", "tier2.rounds=1", "--seeded-noise", *TINY[2:], *extra]  # runs compared: the same noise
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())["federated"]["c_index"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["nan", "scale"])
def test_a_broken_or_hostile_site_leaves_the_robust_model_sound(permissive_cohort, tmp_path, fault):
    clean = _c_index(permissive_cohort, tmp_path / "clean", "--strategy", "fedmedian", *NO_DP)
    hit = _c_index(permissive_cohort, tmp_path / "hit", "--strategy", "fedmedian", "--faulty-site", "site-B",
                   "--fault", fault, *NO_DP)
    weights = load_model(tmp_path / "hit").tier1
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert abs(hit - clean) <= 0.02, (clean, hit)


@pytest.mark.slow
def test_fedavg_drops_non_finite_updates(robustness_cohort, tmp_path):
    _c_index(robustness_cohort, tmp_path / "nan", "--faulty-site", "site-C", "--fault", "nan")
    m = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    weights = load_model(tmp_path / "nan").tier1
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert 0.5 < m["federated"]["c_index"] <= 1.0
