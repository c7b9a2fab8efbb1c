"""Optional inputs of a study (truth.csv, contexts, the output folder) are checked before training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rmmfed.core.data.site_data import discover_sites, load_site
from rmmfed.simulations import run as run_mod
from rmmfed.simulations.cohort import CohortConfig, generate_cohort
from rmmfed.simulations.optional_inputs import context_warnings, load_truth
from rmmfed.simulations.simulate import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("optional") / "cohort"
    generate_cohort(CohortConfig(n_patients=80, seed=4), folder)
    return folder


def _sites(cohort: Path):
    return [load_site(p) for p in discover_sites(cohort)]


class Stop(Exception):
    """Raised instead of training: the test only needs what happened before."""


def test_a_truth_csv_with_other_columns_is_ignored_with_a_warning_before_training(cohort, tmp_path, monkeypatch, capfd):
    other = tmp_path / "cohort"
    import shutil

    shutil.copytree(cohort, other)
    pd.DataFrame({"site": ["A"], "patient_id": ["A0001"], "stage": ["II"]}).to_csv(other / "truth.csv", index=False)
    seen = {}

    def fake_study(*args, truth=None, **kwargs):
        seen["truth"] = truth
        seen["console so far"] = capfd.readouterr()
        raise Stop

    monkeypatch.setattr(run_mod, "run_study", fake_study)
    with pytest.raises(Stop):
        main(["--data", str(other), "--out", str(tmp_path / "out")])
    assert seen["truth"] is None  # no oracle from it
    err = seen["console so far"].err
    assert err.count("truth.csv has no column(s) 'true_risk'") == 1 and "Fix:" in err
    assert "stage" in err  # says what the file has


def test_a_truth_csv_with_extra_columns_is_used(cohort):
    sites = _sites(cohort)
    frame = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str, "site": str})
    frame["observed_risk"] = 0.0  # the generator may add columns; the oracle needs only three
    path = cohort.parent / "truth-extra.csv"
    frame.to_csv(path, index=False)
    truth, why = load_truth(path, sites)
    assert why is None and truth is not None
    s = sites[0]
    pid = s.patient_ids[int(s.indices("test")[0])]
    short = s.site.removeprefix("site-")
    assert truth.risk[(s.site, pid)] == pytest.approx(float(frame.loc[(frame.site == short) & (frame.patient_id == pid),
                                                                     "true_risk"].iloc[0]))


def test_a_truth_csv_missing_test_patients_or_with_bad_risks_is_ignored_with_the_reason(cohort, tmp_path):
    sites = _sites(cohort)
    frame = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str, "site": str})
    frame.iloc[: len(frame) // 2].to_csv(tmp_path / "half.csv", index=False)
    truth, why = load_truth(tmp_path / "half.csv", sites)
    assert truth is None and "no row for" in why and "test patient" in why
    frame.assign(true_risk="high").to_csv(tmp_path / "text.csv", index=False)
    truth, why = load_truth(tmp_path / "text.csv", sites)
    assert truth is None and "'true_risk'" in why and "finite number" in why
    assert load_truth(tmp_path / "none.csv", sites) == (None, None)  # no file: no oracle, no warning


def test_a_context_label_that_only_nearly_matches_a_high_risk_context_is_warned(cohort, tmp_path):
    import shutil

    other = tmp_path / "cohort"
    shutil.copytree(cohort, other)
    csv = other / "site-B" / "patients.csv"
    csv.write_text(csv.read_text().replace("oncology-staging", "Oncology_Staging"))
    warnings = context_warnings(_sites(other), frozenset({"oncology-staging"}))
    assert len(warnings) == 1 and "'Oncology_Staging' at site-B" in warnings[0] and "Fix:" in warnings[0]
    assert context_warnings(_sites(cohort), frozenset({"oncology-staging"})) == []
    unused = context_warnings(_sites(cohort), frozenset({"oncology-staging", "icu"}))
    assert len(unused) == 1 and "'icu'" in unused[0]


def test_an_output_folder_that_cannot_be_written_stops_the_run_before_training(cohort, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(run_mod, "run_study", must_not_train)
    assert main(["--data", str(cohort), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run's outputs" in err and "Fix:" in err
