"""Site-data contract: loading valid site folders and rejecting every broken one."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from rmmfed.core.errors import SchemaMismatchError, SiteDataError
from rmmfed.core.data.schema import PatientRow, SiteSchema, merge_schemas
from rmmfed.core.data.site_data import SiteData, discover_sites, load_site

DIM = {"pathology": 4, "radiology": 3}
HEADER = "patient_id,time,event"


def write_site(root: Path, csv: str, files: dict[str, dict[str, object]] | None = None,
               name: str = "site-A") -> Path:
    """Write a site folder: ``csv`` text as patients.csv, ``files[modality][stem] = array``.

    An array value is saved with numpy; a bytes value is written raw (corrupt files).
    """
    site = root / name
    site.mkdir(parents=True)
    (site / "patients.csv").write_text(csv)
    for modality, by_stem in (files or {}).items():
        folder = site / modality
        folder.mkdir()
        for stem, value in by_stem.items():
            target = folder / (stem if "." in stem else f"{stem}.npy")
            if isinstance(value, bytes):
                target.write_bytes(value)
            else:
                np.save(target, value)
    return site


def feats(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """A seeded [n, dim] float64 bag."""
    return np.random.default_rng(seed).normal(size=(n, dim))


def basic_csv(n: int = 3, split: bool = False) -> str:
    """``n`` valid patients p0..p(n-1), alternating event."""
    head = HEADER + (",split" if split else "")
    lines = [f"p{i},{10.0 + i},{i % 2}" + (",train" if split else "") for i in range(n)]
    return "\n".join([head, *lines]) + "\n"


def basic_files() -> dict[str, dict[str, object]]:
    """Every modality file for p0, pathology only for p1, nothing for p2."""
    return {"pathology": {"p0": feats(5, 4), "p1": feats(2, 4, 1)},
            "radiology": {"p0": feats(1, 3)}}


# --- valid sites ---------------------------------------------------------------------------

def test_valid_site_loads_shapes_present_masks_and_dtypes(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), basic_files())
    # Execute
    data = load_site(site)
    # Assert
    assert isinstance(data, SiteData)
    assert data.site == "site-A" and data.root == site
    assert data.patient_ids == ["p0", "p1", "p2"]
    assert data.time.dtype == np.float64 and data.event.dtype == np.int64
    assert data.event.tolist() == [0, 1, 0]
    assert list(data.modalities) == ["pathology", "radiology"]
    assert data.modalities == DIM
    assert data.bags["pathology"][0].shape == (5, 4)
    assert data.bags["pathology"][0].dtype == np.float32
    assert data.present("pathology").tolist() == [True, True, False]
    assert data.present("radiology").tolist() == [True, False, False]


def test_one_dimensional_file_becomes_one_instance(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(1), {"pathology": {"p0": np.arange(4.0)}})
    # Execute
    bag = load_site(site).bags["pathology"][0]
    # Assert
    assert bag.shape == (1, 4)


def test_integer_array_is_accepted_and_converted_to_float32(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(1), {"pathology": {"p0": np.ones((2, 4), np.int64)}})
    # Execute
    bag = load_site(site).bags["pathology"][0]
    # Assert
    assert bag.dtype == np.float32 and bag.read().dtype == np.float32 and bag.read().sum() == 8


def test_zero_padded_patient_ids_stay_strings(tmp_path):
    # Prepare
    csv = f"{HEADER}\n007,5,1\n0012,6,0\n"
    site = write_site(tmp_path, csv, {"pathology": {"007": feats(1, 4)}})
    # Execute
    data = load_site(site)
    # Assert
    assert data.patient_ids == ["007", "0012"]
    assert data.present("pathology").tolist() == [True, False]


def test_padded_header_names_are_trimmed_and_ids_stay_strings(tmp_path):
    # Prepare
    site = write_site(tmp_path, " patient_id , time , event\n007,5,1\n")
    # Execute
    data = load_site(site)
    # Assert
    assert data.patient_ids == ["007"]


def test_missing_modality_file_is_normal(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), basic_files())
    # Execute
    data = load_site(site)
    # Assert
    assert data.bags["radiology"][1] is None
    assert data.summary()["modalities"]["radiology"] == {"dim": 3, "present": 1, "missing": 2}


def test_patient_with_every_modality_missing_is_kept(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), basic_files())
    # Execute
    data = load_site(site)
    # Assert
    assert "p2" in data.patient_ids
    assert all(data.bags[m][2] is None for m in data.modalities)
    assert data.summary()["no_modality"] == 1


def test_empty_modality_folder_has_dim_none(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), {"pathology": {"p0": feats(2, 4)}, "radiology": {}})
    # Execute
    data = load_site(site)
    # Assert
    assert data.modalities == {"pathology": 4, "radiology": None}
    assert not data.present("radiology").any()


def test_absent_modality_folder_with_expected_dims_gives_all_none_bags(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), {"pathology": {"p0": feats(2, 4)}})
    # Execute
    data = load_site(site, expected={"radiology": 3, "pathology": 4})
    # Assert
    assert list(data.modalities) == ["pathology", "radiology"]
    assert data.modalities == DIM
    assert data.bags["radiology"] == [None, None, None]


def test_site_without_any_modality_folder_loads(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv())
    # Execute
    data = load_site(site)
    # Assert
    assert data.modalities == {} and data.summary()["no_modality"] == 3


def test_custom_modality_names_work(tmp_path):
    # Prepare
    files = {"performance": {"p0": feats(1, 2)}, "nutrition": {"p1": feats(3, 5)},
             "demographics": {"p0": np.arange(6.0), "p2": np.arange(6.0)}}
    site = write_site(tmp_path, basic_csv(), files)
    # Execute
    data = load_site(site)
    # Assert
    assert data.modalities == {"demographics": 6, "nutrition": 5, "performance": 2}
    assert list(data.modalities) == ["demographics", "nutrition", "performance"]
    assert data.present("demographics").tolist() == [True, False, True]


def test_hidden_entries_and_extra_columns_are_ignored(tmp_path):
    # Prepare
    csv = "patient_id,time,event,age,context\np0,1.5,1,70,oncology-staging\np1,2,0,55,\n"
    site = write_site(tmp_path, csv, {"pathology": {"p0": feats(1, 4)}})
    (site / "pathology" / ".DS_Store").write_bytes(b"junk")
    (site / ".cache").mkdir()
    (site / "README.md").write_text("notes")
    # Execute
    data = load_site(site)
    # Assert
    assert list(data.modalities) == ["pathology"]
    assert data.context == ["oncology-staging", ""]


def test_split_column_is_honoured(tmp_path):
    # Prepare
    csv = f"{HEADER},split\np0,1,1,test\np1,2,0,train\np2,3,0,val\np3,4,1,train\n"
    site = write_site(tmp_path, csv)
    # Execute
    data = load_site(site)
    # Assert
    assert data.split.tolist() == ["test", "train", "val", "train"]
    assert data.indices("train").tolist() == [1, 3]
    assert data.summary()["splits"] == {"train": 2, "val": 1, "test": 1}


def test_seeded_split_is_deterministic_stratified_and_has_all_splits(tmp_path):
    # Prepare: 100 patients, 30 events
    lines = [f"p{i:03d},{i + 1},{int(i < 30)}" for i in range(100)]
    site = write_site(tmp_path, "\n".join([HEADER, *lines]) + "\n")
    # Execute
    first, again = load_site(site, split_seed=7), load_site(site, split_seed=7)
    other = load_site(site, split_seed=8)
    # Assert
    assert first.split.tolist() == again.split.tolist()
    assert first.split.tolist() != other.split.tolist()
    counts = first.summary()["splits"]
    assert counts == {"train": 60, "val": 20, "test": 20}
    for name, events in (("train", 18), ("val", 6), ("test", 6)):
        assert first.event[first.indices(name)].sum() == events


def test_seeded_split_of_tiny_site_still_has_all_three_splits(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(5))
    # Execute
    data = load_site(site, split_seed=0)
    # Assert
    assert set(data.split.tolist()) == {"train", "val", "test"}


def test_schema_and_summary_describe_the_site(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), basic_files())
    # Execute
    data = load_site(site)
    schema, summary = data.schema(), data.summary()
    # Assert
    assert schema.site == "site-A" and schema.modalities == DIM
    assert (schema.n_patients, schema.n_events) == (3, 1)
    assert summary["patients"] == 3 and summary["events"] == 1
    assert summary["event_rate"] == pytest.approx(1 / 3)


def test_loading_never_writes_to_the_site_folder(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), basic_files())
    before = sorted((p, p.stat().st_mtime_ns) for p in site.rglob("*"))
    # Execute
    load_site(site)
    # Assert
    assert sorted((p, p.stat().st_mtime_ns) for p in site.rglob("*")) == before


def test_patient_row_rejects_unknown_event():
    # Execute / Assert
    with pytest.raises(ValueError, match="event"):
        PatientRow(patient_id="p0", time=1.0, event=2, split="train")


# --- broken sites --------------------------------------------------------------------------

CSV_ERRORS = [
    pytest.param("patient_id,time\np0,1\n", "patients.csv", "event", id="missing-event-column"),
    pytest.param("patient_id,event\np0,1\n", "patients.csv", "time", id="missing-time-column"),
    pytest.param("id,time,event\np0,1,1\n", "patients.csv", "patient_id", id="missing-id-column"),
    pytest.param(f"{HEADER}\np0,1,1\np0,2,0\n", "patients.csv", "patient_id.*'p0'",
                 id="duplicate-patient-id"),
    pytest.param(f"{HEADER}\np0,1,1\n,2,0\n", "patients.csv", "patient_id", id="empty-patient-id"),
    pytest.param(f"{HEADER}\np0,0,1\n", "patients.csv", "time.*row 2", id="time-zero"),
    pytest.param(f"{HEADER}\np0,-3,1\n", "patients.csv", "time.*-3", id="time-negative"),
    pytest.param(f"{HEADER}\np0,,1\n", "patients.csv", "time.*empty/NaN", id="time-nan"),
    pytest.param(f"{HEADER}\np0,soon,1\n", "patients.csv", "time.*'soon'", id="time-not-a-number"),
    pytest.param(f"{HEADER}\np0,inf,1\n", "patients.csv", "time", id="time-infinite"),
    pytest.param(f"{HEADER}\np0,1,2\n", "patients.csv", "event.*2", id="event-two"),
    pytest.param(f"{HEADER}\np0,1,1\np1,1,\n", "patients.csv", "event.*row 3", id="event-nan"),
    pytest.param(f"{HEADER}\np0,1,yes\n", "patients.csv", "event.*'yes'", id="event-yes"),
    pytest.param(f"{HEADER},split\np0,1,1,training\n", "patients.csv", "split.*'training'",
                 id="split-invalid"),
    pytest.param(f"{HEADER},split\np0,1,1,train\np1,1,0,\n", "patients.csv", "split",
                 id="split-empty"),
    pytest.param(f"{HEADER}\n", "patients.csv", "patient_id", id="no-patient-rows"),
    pytest.param("", "patients.csv", "file", id="empty-csv"),
]


@pytest.mark.parametrize(("csv", "file", "field"), CSV_ERRORS)
def test_broken_patients_csv_is_rejected(tmp_path, csv, file, field):
    # Prepare
    site = write_site(tmp_path, csv)
    # Execute / Assert
    with pytest.raises(SiteDataError, match=rf"{re.escape(file)}: field '{field}"):
        load_site(site)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz_bytes(tmp_path: Path) -> bytes:
    np.savez(tmp_path / "x.npz", a=np.ones((1, 4)))
    return (tmp_path / "x.npz").read_bytes()


FILE_ERRORS = [
    pytest.param({"p0": b"not a numpy file"}, "p0.npy", "pathology features", id="corrupt-npy"),
    pytest.param({"p0": _npy_bytes(np.ones((8, 4)))[:-40]}, "p0.npy", "pathology features",
                 id="truncated-npy"),
    pytest.param({"p0": _npy_bytes(np.array([[1.0, "a"]], dtype=object))}, "p0.npy",
                 "pathology features", id="object-array"),
    pytest.param({"p0": np.zeros((0, 4))}, "p0.npy", "pathology features", id="zero-instances"),
    pytest.param({"p0": np.zeros((2, 0))}, "p0.npy", "pathology features", id="zero-dim"),
    pytest.param({"p0": np.array([[1.0, np.nan, 0, 0]])}, "p0.npy", "pathology features",
                 id="nan-value"),
    pytest.param({"p0": np.array([[1.0, np.inf, 0, 0]])}, "p0.npy", "pathology features",
                 id="inf-value"),
    pytest.param({"p0": np.full((1, 4), 1e300)}, "p0.npy", "pathology features",
                 id="overflows-float32"),
    pytest.param({"p0": np.zeros((2, 2, 4))}, "p0.npy", "pathology features", id="three-d"),
    pytest.param({"p0": np.array(1.0)}, "p0.npy", "pathology features", id="zero-d"),
    pytest.param({"p0": np.array([["a", "b"]])}, "p0.npy", "pathology features", id="strings"),
    pytest.param({"p0": np.ones((1, 4), bool)}, "p0.npy", "pathology features", id="booleans"),
    pytest.param({"p0": np.ones((1, 4), complex)}, "p0.npy", "pathology features",
                 id="complex"),
    pytest.param({"p0": feats(1, 4), "p1": feats(1, 4), "p2": feats(1, 5)}, "p2.npy",
                 "pathology dim", id="dim-differs-within-site"),
    pytest.param({"p0": feats(1, 4), "ghost": feats(1, 4)}, "ghost.npy", "patient_id",
                 id="orphan-file"),
    pytest.param({"p0": feats(1, 4), "notes.txt": b"hello"}, "notes.txt", "pathology folder",
                 id="non-npy-file"),
]


@pytest.mark.parametrize(("files", "file", "field"), FILE_ERRORS)
def test_broken_modality_file_is_rejected(tmp_path, files, file, field):
    # Prepare
    site = write_site(tmp_path, basic_csv(), {"pathology": files})
    # Execute / Assert
    with pytest.raises(SiteDataError, match=rf"{re.escape(file)}: field '{field}'"):
        load_site(site)


def test_npz_archive_named_npy_is_rejected(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), {"pathology": {"p0": _npz_bytes(tmp_path)}})
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"p0\.npy: field 'pathology features'"):
        load_site(site)


def test_subfolder_inside_modality_folder_is_rejected(tmp_path):
    # Prepare
    site = write_site(tmp_path, basic_csv(), {"pathology": {"p0": feats(1, 4)}})
    (site / "pathology" / "extra").mkdir()
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"extra: field 'pathology folder'.*Fix: remove"):
        load_site(site)


def test_file_with_dim_other_than_expected_is_rejected(tmp_path):
    # Prepare: p0 matches the run, p1 does not
    site = write_site(tmp_path, basic_csv(), {"pathology": {"p0": feats(1, 4), "p1": feats(1, 6)}})
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"p1\.npy: field 'pathology dim'.*dim 6.*dim 4"):
        load_site(site, expected={"pathology": 4})


@pytest.mark.parametrize(
    ("files", "expected", "match"),
    [
        pytest.param({"pathology": {"p0": feats(1, 6)}}, {"pathology": 4},
                     r"site 'site-A', modality 'pathology'.*dim 6.*dim 4.*Fix",
                     id="site-dim-differs"),
        pytest.param({"genomics": {"p0": feats(1, 2)}}, {"pathology": 4},
                     r"site 'site-A'.*'genomics'.*Fix", id="unexpected-modality-folder"),
    ],
)
def test_site_disagreeing_with_run_schema_is_rejected(tmp_path, files, expected, match):
    # Prepare
    site = write_site(tmp_path, basic_csv(), files)
    # Execute / Assert
    with pytest.raises(SchemaMismatchError, match=match):
        load_site(site, expected=expected)


def test_missing_patients_csv_is_rejected(tmp_path):
    # Prepare
    (tmp_path / "site-A").mkdir()
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"patients\.csv: field 'patients\.csv'.*Fix"):
        load_site(tmp_path / "site-A")


@pytest.mark.parametrize("make_file", [pytest.param(False, id="absent"),
                                       pytest.param(True, id="is-a-file")])
def test_site_path_that_is_not_a_folder_is_rejected(tmp_path, make_file):
    # Prepare
    target = tmp_path / "site-A"
    if make_file:
        target.write_text("x")
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"site-A: field 'site folder'"):
        load_site(target)


# --- run schema ----------------------------------------------------------------------------

def test_merge_schemas_takes_union_and_sorts():
    # Prepare
    a = SiteSchema(site="site-A", modalities={"radiology": 3, "pathology": None},
                   n_patients=3, n_events=1)
    b = SiteSchema(site="site-B", modalities={"pathology": 4, "report": 8}, n_patients=2,
                   n_events=1)
    # Execute
    merged = merge_schemas([a, b])
    # Assert
    assert merged == {"pathology": 4, "radiology": 3, "report": 8}
    assert list(merged) == ["pathology", "radiology", "report"]


def test_merge_schemas_rejects_disagreeing_dims():
    # Prepare
    a = SiteSchema(site="site-A", modalities={"pathology": 4}, n_patients=1, n_events=0)
    b = SiteSchema(site="site-B", modalities={"pathology": 5}, n_patients=1, n_events=0)
    # Execute / Assert
    with pytest.raises(SchemaMismatchError, match=r"pathology.*dim 4 at site-A.*dim 5 at site-B"):
        merge_schemas([a, b])


def test_merge_schemas_rejects_modality_without_any_file():
    # Prepare
    a = SiteSchema(site="site-A", modalities={"pathology": None}, n_patients=1, n_events=0)
    # Execute / Assert
    with pytest.raises(SchemaMismatchError, match=r"pathology.*site-A.*Fix: remove"):
        merge_schemas([a])


def test_loaded_sites_merge_and_reload_with_expected(tmp_path):
    # Prepare
    write_site(tmp_path, basic_csv(), basic_files(), name="site-A")
    write_site(tmp_path, basic_csv(2), {"pathology": {"p1": feats(2, 4)}}, name="site-B")
    sites = discover_sites(tmp_path)
    # Execute
    expected = merge_schemas([load_site(s).schema() for s in sites])
    reloaded = load_site(sites[1], expected=expected)
    # Assert
    assert expected == DIM
    assert reloaded.modalities == DIM and reloaded.bags["radiology"] == [None, None]


# --- cohort discovery ----------------------------------------------------------------------

def test_discover_sites_returns_sorted_site_folders_only(tmp_path):
    # Prepare
    for name in ("site-B", "site-A"):
        write_site(tmp_path, basic_csv(), name=name)
    (tmp_path / "truth.csv").write_text("x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "notes").mkdir()
    # Execute
    sites = discover_sites(tmp_path)
    # Assert
    assert [s.name for s in sites] == ["site-A", "site-B"]


@pytest.mark.parametrize("layout", [pytest.param("empty", id="no-site-folders"),
                                    pytest.param("site", id="pointed-at-a-site"),
                                    pytest.param("absent", id="missing-cohort-folder")])
def test_discover_sites_without_sites_is_rejected(tmp_path, layout):
    # Prepare
    cohort = tmp_path / "cohort"
    if layout == "empty":
        cohort.mkdir()
    elif layout == "site":
        write_site(tmp_path, basic_csv(), name="cohort")
    # Execute / Assert
    with pytest.raises(SiteDataError, match=r"cohort: field '.*'.*Fix: point --data"):
        discover_sites(cohort)
