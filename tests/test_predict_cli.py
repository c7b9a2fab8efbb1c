"""``rmm-predict``: JSON lines, table, routes, abstention, survival, attributions; exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmmfed.client.predict import NO_BASELINE, RECORD_KEYS, main
from rmmfed.core.survival.baseline_hazard import time_grid
from rmmfed.core.survival.baseline_hazard import BaselineHazard
from rmmfed.core.outputs.bundle import load_bundle, make_bundle, save_bundle
from rmmfed.core.config import RunConfig
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.aggregates.feature_stats import FeatureStats, local_feature_sums
from rmmfed.core.data.site_data import load_site
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2 import build_tier2
from rmmfed.core.tier2.tier2_config import Tier2Config

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_T2 = Tier2Config(timesteps=20, sample_steps=4, samples=2, hidden_dim=16, time_dim=4, branches=2, branch_dim=4)
N = 20
EMPTY = f"p{N - 1:03d}"  # the last patient has no modality file at all


@pytest.fixture
def site(site_factory) -> Path:
    return site_factory(n=N, n_empty=1, max_instances=7)


def _bundle_file(site: Path, tier1_cfg, out: Path, **kw) -> Path:
    data = load_site(site)
    dims = {m: int(d) for m, d in data.modalities.items()}
    cfg = RunConfig(model=tier1_cfg.model_copy(update={"max_instances": 4}), tier2=TINY_T2)
    stats = FeatureStats.from_sums(local_feature_sums(data, data.indices("train"), 1), dims, tier1_cfg.anat_partitions)
    kw.setdefault("theta_", 1e-3)
    b = make_bundle(build_model(dims, cfg.model, cfg.seed), stats, cfg,
                    tier2=build_tier2(dims, cfg.tier2, cfg.seed, tier1=cfg.model), fitted=FittedTwoTier(**kw))
    return save_bundle(b, out)


@pytest.fixture
def model(site, tier1_cfg, tmp_path) -> Path:
    return _bundle_file(site, tier1_cfg, tmp_path / "model.rmm")


def _run(capsys, *argv) -> tuple[int, list[dict], str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")], cap.err


def test_json_lines_parse_with_the_documented_keys_and_a_table_on_stderr(capsys, model, site):
    code, recs, err = _run(capsys, "--model", model, "--data", site)

    assert code == 0
    assert [r["patient_id"] for r in recs] == [f"p{i:03d}" for i in range(N)]
    assert all(tuple(r) == RECORD_KEYS for r in recs)
    routes = {r["route"] for r in recs}
    assert routes <= {"tier1", "tier2", "abstain"} and "tier2" in routes  # oncology-staging goes to Tier 2
    for r in recs:
        assert isinstance(r["route_reason"], str) and r["route_reason"]
        if r["route"] == "abstain":
            continue
        assert isinstance(r["risk"], float) and r["risk_group"] in ("low", "intermediate", "high")
        assert r["risk_group_basis"].startswith("site tertiles")
        assert r["sigma2"] >= 0 and r["survival"] == {"available": False, "note": NO_BASELINE}
        assert set(r["modalities_present"]) | set(r["modalities_missing"]) == {"a", "b", "c"}
        assert r["modalities_recovered"] == r["modalities_missing"]
        if r["route"] == "tier2":
            assert r["tier2_risk"] is not None and r["tier2_uncertainty"] is not None
            if r["modalities_missing"]:
                assert r["recovered_by"] == "tier2 diffusion recovery"
    assert "patient" in err and "route" in err and "reason:" in err and "attributions" in err
    assert NO_BASELINE in err


def test_all_missing_patient_abstains_with_reason_and_no_risk(capsys, model, site):
    code, recs, _ = _run(capsys, "--model", model, "--data", site, "--patient", EMPTY, "--json-only")

    assert code == 0 and len(recs) == 1
    r = recs[0]
    assert r["route"] == "abstain" and r["route_reason"] == "no modality present"
    assert r["risk"] is None and r["risk_group"] is None and r["tier1_risk"] is None and r["tier2_risk"] is None
    assert r["survival"] is None and r["attributions"] is None and r["top_instances"] is None
    assert r["modalities_present"] == [] and r["modalities_recovered"] == []


def test_tier2_uncertainty_over_the_bound_abstains_without_risk(capsys, site, tier1_cfg, tmp_path):
    model = _bundle_file(site, tier1_cfg, tmp_path / "strict.rmm", abstain_bound_=-1.0)
    code, recs, _ = _run(capsys, "--model", model, "--data", site, "--json-only")

    assert code == 0
    referred = [r for r in recs if r["tier2_uncertainty"] is not None]
    assert referred
    for r in referred:
        assert r["route"] == "abstain" and "Tier 2 uncertainty" in r["route_reason"]
        assert r["risk"] is None and r["attributions"] is None


def test_attributions_sum_to_the_tier1_risk_change_and_top_instances_index_file_rows(capsys, model, site):
    code, recs, _ = _run(capsys, "--model", model, "--data", site, "--json-only", "--top-k", "2", "--steps", "64")

    assert code == 0
    checked = 0
    for r in recs:
        if r["attributions"] is None:
            continue
        a = r["attributions"]
        assert set(a) == {"a", "b", "c"}
        assert all(a[m] == 0.0 for m in r["modalities_missing"])
        delta = r["tier1_risk"] - r["attribution_baseline_risk"]
        assert sum(a.values()) == pytest.approx(delta, abs=2e-3 + 0.02 * abs(delta))
        assert set(r["top_instances"]) == set(r["modalities_present"])
        for m, top in r["top_instances"].items():
            rows = np.load(site / m / f"{r['patient_id']}.npy").shape[0]
            idx = [t["index"] for t in top]
            w = [t["weight"] for t in top]
            assert 1 <= len(top) <= 2 and all(0 <= i < rows for i in idx) and len(set(idx)) == len(idx)
            assert w == sorted(w, reverse=True)
        checked += 1
    assert checked >= N // 2


def test_patient_selection_keeps_order_and_values(capsys, model, site):
    _, full, _ = _run(capsys, "--model", model, "--data", site, "--json-only")
    code, some, _ = _run(capsys, "--model", model, "--data", site, "--json-only", "--patient", "p007", "p002")

    assert code == 0 and [r["patient_id"] for r in some] == ["p007", "p002"]
    by_id = {r["patient_id"]: r for r in full}
    # a patient's output does not depend on who else was asked (up to float32 rounding of batched maths)
    for r in some:
        _assert_same(r, by_id[r["patient_id"]])


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), where
    else:
        assert a == b, where


def test_baseline_hazard_and_training_tertiles_from_the_bundle(capsys, site, tier1_cfg, tmp_path):
    grid = time_grid(60.0, 30)
    hz = BaselineHazard(grid, np.linspace(0.02, 1.5, 30))
    model = _bundle_file(site, tier1_cfg, tmp_path / "hz.rmm", baseline_hazard_=hz, cutpoints_=(-0.2, 0.3))
    out = tmp_path / "pred.jsonl"

    code = main(["--model", str(model), "--data", str(site), "--horizons", "6,30,90", "--out", str(out), "--table"])
    cap = capsys.readouterr()

    assert code == 0 and cap.err == ""
    assert "S(6)" in cap.out and "median" in cap.out  # the table went to stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == N
    for r in (r for r in recs if r["route"] != "abstain"):
        s = r["survival"]
        assert s["available"] and list(s["at"]) == ["6", "30", "90"]
        assert 0.0 < s["at"]["30"] <= s["at"]["6"] <= 1.0 and s["at"]["90"] is None  # 90 is past the grid
        assert s["median"] is None or 0 < s["median"] <= 60.0
        assert r["risk_group_basis"] == "training tertiles"
        expect = "low" if r["risk"] < -0.2 else ("intermediate" if r["risk"] < 0.3 else "high")
        assert r["risk_group"] == expect


def test_bad_data_exits_2_with_one_clear_error(capsys, model, site):
    (site / "b" / "p001.npy").write_bytes(b"garbage, not numpy")

    code, recs, err = _run(capsys, "--model", model, "--data", site)

    assert code == 2 and recs == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rmm-predict: error:")
    assert "p001.npy" in lines[0] and "Fix:" in lines[0]


def test_schema_mismatch_exits_2_naming_the_modality(capsys, model, site):
    for f in (site / "c").iterdir():
        np.save(f, np.zeros((2, 9), dtype=np.float32))

    code, _, err = _run(capsys, "--model", model, "--data", site)

    assert code == 2 and "'c'" in err and "dim 9" in err and "expects dim 3" in err and "Fix" in err


@pytest.mark.parametrize("extra", [["--patient", "nobody"], ["--horizons", "12,soon"], []])
def test_bad_arguments_exit_2(capsys, model, site, extra, tmp_path):
    argv = ["--model", model, "--data", site, *extra] if extra else ["--model", tmp_path / "none.rmm", "--data", site]
    code, recs, err = _run(capsys, *argv)
    assert code == 2 and recs == [] and "Fix" in err


def test_save_bundle_without_data_exports_a_loadable_file(capsys, model, tmp_path):
    code = main(["--model", str(model), "--save-bundle", str(tmp_path / "copy.rmm")])
    capsys.readouterr()
    assert code == 0 and load_bundle(tmp_path / "copy.rmm").modalities == {"a": 5, "b": 4, "c": 3}


def test_each_missing_modality_gets_its_expected_change_ranked_and_tier1_answers_get_a_conformal_interval(
        capsys, site, tier1_cfg, tmp_path):
    model = _bundle_file(site, tier1_cfg, tmp_path / "m.rmm", theta_=1e9, cutpoints_=(-0.3, 0.3),
                         conformal_q_={"tier1": 1.5, "tier2": float("inf")}, conformal_alpha_=0.1)
    code, recs, err = _run(capsys, "--model", model, "--data", site)
    assert code == 0
    answered = [r for r in recs if r["route"] != "abstain"]
    gaps = [r for r in answered if r["modalities_missing"]]
    assert gaps and any(not r["modalities_missing"] for r in answered)
    for r in answered:
        exams = r["which_exam"]
        assert [e["modality"] for e in exams] == sorted(r["modalities_missing"], key=lambda m: [
            -e["expected_change"] for e in exams if e["modality"] == m][0])
        assert all(e["expected_change"] >= 0 and 0 <= e["p_group_change"] <= 1 for e in exams)
        if r["modalities_missing"] and r["route"] == "tier1":
            lo, hi = r["risk_conformal_interval"]
            assert lo < hi and r["risk_conformal_coverage"] == pytest.approx(0.9)
        else:  # nothing missing (nothing to acquire) or no finite q-hat for the answering tier
            assert r["risk_conformal_interval"] is None
    assert "which exam:" in err
