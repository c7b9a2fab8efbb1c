"""Checks of a study's optional inputs, made before anything trains.

A study needs its site folders (checked by ``core.data.site_data``); everything else is optional, and a
problem with an optional input must not cost a finished run:
- ``truth.csv`` (the generator's true risk, for the oracle C-index): used only when it has the
  columns ``site``, ``patient_id`` and ``true_risk`` (extra columns are fine), numeric finite risks and
  a row for every test patient; otherwise it is ignored with one warning saying why;
- the ``context`` column against the run's ``high-risk-contexts``: a declared context no site uses, or
  a site label that differs from a declared one only in case or separators, gets a warning;
- the output folder must be writable (checked by writing a probe file), else the run stops here.

Warnings are returned as text; the caller shows each once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import RmmError
from ..core.data.site_data import SiteData

TRUTH_COLUMNS = ("site", "patient_id", "true_risk")


class OutputFolderError(RmmError):
    """The output folder cannot be written."""


@dataclass
class Truth:
    """The true risk of every patient, keyed by (site folder name, patient id)."""

    risk: dict[tuple[str, str], float]
    observed: dict[tuple[str, str], float] | None = None  # E[risk | observed modalities], when the file has it

    def test_risks(self, site_names: list[str], test_ids: list[list[str]]) -> np.ndarray:
        return np.asarray([self.risk[(s, p)] for s, ids in zip(site_names, test_ids) for p in ids])

    def test_observed(self, site_names: list[str], test_ids: list[list[str]]) -> np.ndarray | None:
        if self.observed is None:
            return None
        return np.asarray([self.observed[(s, p)] for s, ids in zip(site_names, test_ids) for p in ids])


@dataclass
class OptionalInputs:
    truth: Truth | None = None
    warnings: list[str] = field(default_factory=list)


def load_truth(path: Path, sites: list[SiteData]) -> tuple[Truth | None, str | None]:
    """(Truth, None) when ``path`` is usable for the oracle C-index; (None, why not) otherwise;
    (None, None) when there is no such file."""
    if not path.is_file():
        return None, None
    skip = "the oracle C-index is skipped"
    try:
        frame = pd.read_csv(path, dtype={"site": str, "patient_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        return None, f"{path} is not a readable CSV ({type(err).__name__}); {skip}. Fix: repair or remove it"
    missing = [c for c in TRUTH_COLUMNS if c not in frame.columns]
    if missing:
        return None, (f"{path} has no column(s) {', '.join(repr(c) for c in missing)} (it has "
                      f"{', '.join(map(str, frame.columns[:8]))}); {skip}. Fix: give it the columns "
                      f"{', '.join(TRUTH_COLUMNS)}, or remove it if it is not the generator's truth file")
    risk = pd.to_numeric(frame["true_risk"], errors="coerce")
    if frame.empty or not np.isfinite(risk.to_numpy(float)).all():
        return None, f"{path}: field 'true_risk' is empty or not a finite number in some rows; {skip}. Fix: repair the file"
    key: dict[tuple[str, str], float] = {}
    for s, p, r in zip(frame["site"].astype(str), frame["patient_id"].astype(str), risk):
        key[(s, p)] = float(r)
    obs_key: dict[tuple[str, str], float] | None = None
    if "observed_risk" in frame.columns:  # optional: E[risk | observed modalities] (the generator writes it)
        obs = pd.to_numeric(frame["observed_risk"], errors="coerce").to_numpy(float)
        if np.isfinite(obs).all():
            obs_key = {(s, p): float(r) for s, p, r in zip(frame["site"].astype(str), frame["patient_id"].astype(str), obs)}
    out: dict[tuple[str, str], float] = {}
    out_obs: dict[tuple[str, str], float] = {}
    for site in sites:
        short = site.site.removeprefix("site-")
        ids = [site.patient_ids[i] for i in site.indices("test")]
        lacking = [p for p in ids if (site.site, p) not in key and (short, p) not in key]
        if lacking:
            return None, (f"{path} has no row for {len(lacking)} test patient(s) of {site.site} (e.g. "
                          f"{lacking[0]}); {skip}. Fix: use the truth file generated with this cohort")
        for p in site.patient_ids:
            r = key.get((site.site, p), key.get((short, p)))
            if r is not None:
                out[(site.site, p)] = r
                if obs_key is not None:
                    out_obs[(site.site, p)] = obs_key.get((site.site, p), obs_key.get((short, p)))
    return Truth(out, out_obs if obs_key is not None else None), None


def _norm(label: str) -> str:
    return re.sub(r"[\s_\-]+", "-", label.strip().lower())


def context_warnings(sites: list[SiteData], high_risk: frozenset[str]) -> list[str]:
    """Warnings about the ``context`` column against the declared high-risk contexts."""
    used: dict[str, set[str]] = {}
    for s in sites:
        for c in set(s.context) - {""}:
            used.setdefault(c, set()).add(s.site)
    out = []
    declared = {_norm(h): h for h in high_risk}
    for label, where in sorted(used.items()):
        near = declared.get(_norm(label))
        if near is not None and label != near:
            out.append(f"context '{label}' at {', '.join(sorted(where))} is not the declared high-risk context "
                       f"'{near}' (they differ only in case or separators), so those patients are routed by "
                       f"uncertainty alone. Fix: write '{near}' in patients.csv, or add '{label}' to "
                       f"--set high-risk-contexts=...")
    for h in sorted(high_risk):
        if h not in used and not any(_norm(u) == _norm(h) for u in used):
            out.append(f"no site uses the declared high-risk context '{h}' in its context column; routing "
                       f"uses uncertainty alone. Fix: none needed if intended; else check patients.csv or "
                       f"--set high-risk-contexts=...")
    return out


def check_output_folder(out: Path) -> None:
    """Create ``out`` and write a probe file, so that a run never trains for nothing."""
    probe = out / ".rmm-write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputFolderError(f"{out}: cannot write the run's outputs there ({err.strerror or err}). "
                                "Fix: choose another --out or fix the folder's permissions") from None


def check_optional_inputs(cohort: Path, sites: list[SiteData], high_risk: frozenset[str], out: Path) -> OptionalInputs:
    """Every optional input of a study, checked before training (raises only for the output folder)."""
    check_output_folder(out)
    truth, why = load_truth(cohort / "truth.csv", sites)
    warnings = ([why] if why else []) + context_warnings(sites, high_risk)
    return OptionalInputs(truth=truth, warnings=warnings)
