"""Load and validate one hospital's site folder (docs: site data format).

``load_site`` either returns a fully valid `SiteData` or raises `SiteDataError` /
`SchemaMismatchError`; it never writes anything. A missing modality file is normal. Every bag is
validated in full (header, dtype, shape, every value) but streamed: the returned bags are
:class:`~rmmfed.core.data.bag_file.BagFile` references, read row by row when the model needs them, so a
site of whole-slide bags is checked in bounded memory.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from .bag_file import BagFile, open_bag
from ..errors import SchemaMismatchError, SiteDataError
from .schema import SPLITS, PatientRow, SiteSchema

PATIENTS_CSV = "patients.csv"
REQUIRED_COLUMNS = ("patient_id", "time", "event")
_SPLIT_PATTERN = ("train", "val", "test", "train", "train")  # 60/20/20, all 3 once N >= 3
_FIELD_FIX = {
    "patient_id": "give every row a non-empty patient_id (the file stem of its modality files)",
    "time": "set time to the follow-up time as a number > 0 (e.g. days since diagnosis)",
    "event": "set event to 1 (event observed) or 0 (censored)",
    "split": "use train, val or test in every row, or drop the split column for a seeded split",
    "context": "use a short text label such as oncology-staging, or leave it empty",
}


@dataclass(frozen=True, eq=False)
class SiteData:
    """A validated site: patients, outcomes, splits and per-modality bags of features."""

    site: str
    root: Path
    patient_ids: list[str]
    time: np.ndarray
    event: np.ndarray
    split: np.ndarray
    context: list[str]
    modalities: dict[str, int | None]
    bags: dict[str, list[BagFile | np.ndarray | None]]  # BagFile: validated, still on disk
    pooled_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.patient_ids)

    def indices(self, split: str) -> np.ndarray:
        """Integer indices of the patients in ``split`` (train, val or test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    def present(self, modality: str) -> np.ndarray:
        """Bool mask [N]: which patients have a file for ``modality``."""
        if modality not in self.bags:
            raise KeyError(f"site '{self.site}' has no modality {modality!r}; "
                           f"known: {sorted(self.bags)}")
        return np.array([bag is not None for bag in self.bags[modality]], dtype=bool)

    def schema(self) -> SiteSchema:
        """What this site reports to the server: modality dims and counts."""
        return SiteSchema(site=self.site, modalities=dict(self.modalities),
                          n_patients=len(self.patient_ids), n_events=int(self.event.sum()),
                          rmm_version=_rmm_version())

    def summary(self) -> dict:
        """Plain-dict overview for logs and reports."""
        n = len(self.patient_ids)
        masks = {m: self.present(m) for m in self.modalities}
        any_present = np.zeros(n, dtype=bool)
        for mask in masks.values():
            any_present |= mask
        return {
            "site": self.site,
            "patients": n,
            "events": int(self.event.sum()),
            "event_rate": float(self.event.mean()) if n else 0.0,
            "splits": {s: int((self.split == s).sum()) for s in SPLITS},
            "modalities": {m: {"dim": self.modalities[m], "present": int(mask.sum()),
                               "missing": int(n - mask.sum())} for m, mask in masks.items()},
            "no_modality": int(n - any_present.sum()),
        }


def _rmm_version() -> str:
    try:
        return metadata.version("rmmfed")
    except metadata.PackageNotFoundError:
        return ""


def _visible(path: Path) -> list[Path]:
    """Directory entries not starting with '.', sorted by name."""
    return sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def discover_sites(cohort_dir: str | Path) -> list[Path]:
    """Sorted sub-folders of ``cohort_dir`` that contain a ``patients.csv``."""
    cohort = Path(cohort_dir)
    if not cohort.is_dir():
        raise SiteDataError(cohort, "cohort folder", "folder does not exist or is not a folder",
                            "point --data at a folder whose sub-folders are site folders")
    sites = [p for p in _visible(cohort) if p.is_dir() and (p / PATIENTS_CSV).is_file()]
    if not sites:
        hint = (" (this looks like a single site folder; point --data at its parent)"
                if (cohort / PATIENTS_CSV).is_file() else "")
        raise SiteDataError(cohort, "site folders", f"no sub-folder contains {PATIENTS_CSV}{hint}",
                            "point --data at a folder whose sub-folders are site folders, "
                            f"each with its own {PATIENTS_CSV}")
    return sites


def _is_blank(value: object) -> bool:
    """True for an empty CSV cell (pandas reads it as NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: object) -> object:
    """numpy scalars -> Python scalars; NaN stays float NaN."""
    return value.item() if isinstance(value, np.generic) else value


def _read_patients(csv: Path) -> tuple[list[PatientRow], bool]:
    """Parse and validate ``patients.csv``; returns rows and whether a split column exists."""
    try:
        header = pd.read_csv(csv, nrows=0).columns
        ids_as_text = {c: str for c in header if str(c).strip() == "patient_id"}
        frame = pd.read_csv(csv, dtype=ids_as_text)  # keeps ids like "0012" as strings
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SiteDataError(csv, "file", f"cannot be parsed as CSV ({exc})",
                            "save it as a comma-separated UTF-8 file with a header row") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise SiteDataError(csv, column, f"required column is missing (columns found: "
                                f"{', '.join(frame.columns)})",
                                f"add a '{column}' column; required: {', '.join(REQUIRED_COLUMNS)}")
    if frame.empty:
        raise SiteDataError(csv, "patient_id", "the file has a header but no patient rows",
                            "add one row per patient")
    has_split = "split" in frame.columns
    fields = [c for c in (*REQUIRED_COLUMNS, "split", "context") if c in frame.columns]
    rows: list[PatientRow] = []
    for index, record in enumerate(frame[fields].itertuples(index=False)):
        raw = {f: _plain(v) for f, v in zip(fields, record)}
        if "context" in raw:
            raw["context"] = "" if _is_blank(raw["context"]) else str(raw["context"]).strip()
        raw.setdefault("split", "train")  # placeholder when absent; replaced by seeded split
        if _is_blank(raw["patient_id"]):
            raw["patient_id"] = ""
        try:
            rows.append(PatientRow(**raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "row"
            shown = "empty/NaN" if _is_blank(raw.get(field)) else repr(raw.get(field))
            raise SiteDataError(csv, field, f"row {index + 2}: value {shown} is "
                                f"invalid ({err['msg']})", _FIELD_FIX.get(field, "fix the value"))
    lines: dict[str, int] = {}
    for index, row in enumerate(rows):
        if row.patient_id in lines:
            raise SiteDataError(csv, "patient_id", f"duplicate patient_id {row.patient_id!r} "
                                f"on rows {lines[row.patient_id]} and {index + 2}",
                                "give every patient exactly one row with a unique patient_id")
        lines[row.patient_id] = index + 2
    return rows, has_split


def seeded_split(patient_ids: list[str], event: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic 60/20/20 train/val/test split stratified by event.

    Patients are grouped by event, sorted by id (independent of row order), shuffled with
    ``np.random.default_rng(seed)`` and dealt train/val/test/train/train in turn.
    """
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for value in (0, 1):
        members = sorted(np.flatnonzero(event == value), key=lambda i: patient_ids[i])
        order.extend(int(i) for i in rng.permutation(np.asarray(members, dtype=np.int64)))
    split = np.empty(len(patient_ids), dtype=object)
    for position, i in enumerate(order):
        split[i] = _SPLIT_PATTERN[position % len(_SPLIT_PATTERN)]
    return split


def _load_modality(folder: Path, modality: str, site: str, row_of: dict[str, int],
                   expected_dim: int | None, scan: bool = True) -> tuple[int | None, list[BagFile | None]]:
    """Validate every bag of one modality folder (streamed, see core/data/bag_file.py); returns (dim,
    per-patient bags left on disk)."""
    bags: list[BagFile | None] = [None] * len(row_of)
    files: list[tuple[Path, BagFile]] = []
    for entry in _visible(folder):
        if not entry.is_file() or not entry.name.endswith(".npy"):
            raise SiteDataError(entry, f"{modality} folder", "is not a .npy file",
                                f"remove it from {modality}/ or convert it to "
                                "<patient_id>.npy with numpy.save")
        stem = entry.name[: -len(".npy")]
        if stem not in row_of:
            raise SiteDataError(entry, "patient_id", f"orphan file: no patient {stem!r} in "
                                f"{PATIENTS_CSV}", f"add patient {stem!r} to {PATIENTS_CSV}, "
                                "rename the file to an existing patient_id, or delete it")
        bag = open_bag(entry, modality, scan=scan)
        files.append((entry, bag))
        bags[row_of[stem]] = bag
    if not files:
        return expected_dim, bags
    dims = Counter(bag.shape[1] for _, bag in files)
    if expected_dim is not None and len(dims) == 1 and expected_dim not in dims:
        raise SchemaMismatchError(
            f"site '{site}', modality '{modality}': files have dim {next(iter(dims))} but the "
            f"run expects dim {expected_dim}. Fix: extract '{modality}' features with the same "
            "encoder as the other sites, or leave this site out of the run")
    reference = expected_dim if expected_dim is not None else dims.most_common(1)[0][0]
    for entry, bag in files:
        if bag.shape[1] != reference:
            source = "the run expects" if expected_dim is not None else "most files here have"
            raise SiteDataError(entry, f"{modality} dim", f"has dim {bag.shape[1]} but {source} "
                                f"dim {reference}", f"re-extract it so every {modality}/ file "
                                f"has shape [n_instances, {reference}]")
    return reference, bags


def load_site(path: str | Path, *, expected: dict[str, int] | None = None,
              split_seed: int = 0, scan_values: bool = True) -> SiteData:
    """Validate a site folder completely (bags stay on disk as BagFile); never writes anything.

    With ``expected`` (the run's modality -> dim map), ``modalities`` equals ``expected``
    (sorted), modalities absent at the site have all-None bags, and any other modality folder
    or dim raises SchemaMismatchError. Without it, modalities are the site's sub-folders and a
    folder without files has dim None. ``scan_values=False`` skips the NaN/Inf scan of the values
    (headers, shapes and sizes are still checked): for re-loading a folder this process has just
    validated in full.
    """
    root = Path(path)
    if not root.is_dir():
        raise SiteDataError(root, "site folder", "does not exist or is not a folder",
                            "pass the path of a site folder that contains patients.csv")
    csv = root / PATIENTS_CSV
    if not csv.is_file():
        raise SiteDataError(csv, PATIENTS_CSV, "file not found",
                            "add patients.csv with columns patient_id, time, event")
    rows, has_split = _read_patients(csv)
    ids = [r.patient_id for r in rows]
    time = np.array([r.time for r in rows], dtype=np.float64)
    event = np.array([r.event for r in rows], dtype=np.int64)
    split = (np.array([r.split for r in rows], dtype=object) if has_split
             else seeded_split(ids, event, split_seed))

    folders = {p.name: p for p in _visible(root) if p.is_dir()}
    if expected is not None:
        for name in folders:
            if name not in expected:
                raise SchemaMismatchError(
                    f"site '{root.name}' has modality folder '{name}' that is not in the run's "
                    f"modalities ({', '.join(sorted(expected)) or 'none'}). Fix: remove or "
                    "rename the folder, or include the modality at the other sites")
    names = sorted(expected) if expected is not None else sorted(folders)
    row_of = {pid: i for i, pid in enumerate(ids)}
    modalities: dict[str, int | None] = {}
    bags: dict[str, list[BagFile | None]] = {}
    for name in names:
        want = expected[name] if expected is not None else None
        if name in folders:
            modalities[name], bags[name] = _load_modality(folders[name], name, root.name,
                                                          row_of, want, scan_values)
        else:
            modalities[name], bags[name] = want, [None] * len(ids)
    return SiteData(site=root.name, root=root, patient_ids=ids, time=time, event=event,
                    split=split, context=[r.context for r in rows], modalities=modalities,
                    bags=bags)
