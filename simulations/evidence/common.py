"""Shared plumbing of the evidence commands: cohorts per seed, cached Flower runs, finished-run loading,
tables (Markdown + CSV), mean +- sd."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ...core.outputs.bundle import load_model  # noqa: E402
from ...core.survival.concordance import c_index, combined_c_index, concordance_counts  # noqa: E402
from ...core.config import RunConfig  # noqa: E402
from ...core.data.site_data import SiteData, discover_sites, load_site  # noqa: E402
from ...core.site.site_seed import site_seed  # noqa: E402
from ...core.data.tensors import SiteTensors, build_tensors  # noqa: E402
from ...core.model.tier1 import Tier1Model  # noqa: E402


# ---- cohorts ----------------------------------------------------------------------------
def cohort_for_seed(out: Path, seed: int, patients: int = 1679) -> Path:
    """OUT/cohorts/seed-S: the default FUSCC-style cohort for ``seed``, generated once and reused."""
    from ..cohort import CohortConfig, generate_cohort

    folder = out / "cohorts" / f"seed-{seed}"
    if not (folder / "truth.csv").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        generate_cohort(CohortConfig(n_patients=patients, seed=seed), folder)
    return folder


def load_cohort(cohort: Path) -> tuple[list[Path], list[SiteData], dict[str, int]]:
    """Validated site paths, sites (bound to the merged schema) and modality dims."""
    from ..simulate import validate_cohort

    return validate_cohort(cohort)


def run_cached(cohort: Path, out: Path, overrides: dict[str, Any], *, quiet: bool = True,
               policy: Path | None = None) -> dict:
    """One study through Flower (``run_study``, pooled reference off) into ``out``; metrics.json is the
    cache key: an existing one is returned without rerunning (delete the folder to redo). Flower's and
    Ray's output goes to ``out/flower.log`` (``quiet=False``: to the console). ``policy``: every site's
    policy file (default: the safe defaults)."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    from ...server.flower_log import QuietRun
    from ..optional_inputs import load_truth
    from ..run import run_study

    cfg = RunConfig().with_overrides({"device": "cpu", **overrides})
    paths, sites, dims = load_cohort(cohort)
    truth, _ = load_truth(cohort / "truth.csv", sites)  # oracle C-index when the cohort has a usable one
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with QuietRun(out / "flower.log", verbose=not quiet) as q:
        study = run_study(cfg, cohort, paths, sites, dims, out, pooled=False, t0=t0, truth=truth, quiet=q,
                          policy=policy)
    return study.metrics


def each_cohort(args: argparse.Namespace, desc: str, skipped: list[str]) -> Iterator[tuple[str, int, Path]]:
    """(cohort, seed, folder) for every ``args.cohorts`` x ``args.seeds`` with a progress bar: ``default`` is the
    synthetic cohort of that seed under ``args.out``, any other a folder of ``args.data_root``; a cohort whose
    folder is absent is appended to ``skipped`` instead."""
    for cohort, seed in progress([(c, s) for c in args.cohorts for s in args.seeds], desc=desc):
        data = cohort_for_seed(args.out, seed) if cohort == "default" else args.data_root / cohort
        if not data.is_dir():
            skipped.append(cohort)
            continue
        yield cohort, seed, data


def progress(iterable, **kw):
    """tqdm on the real stderr (so it stays visible while runs are quiet)."""
    import sys

    from tqdm import tqdm

    return tqdm(iterable, file=sys.__stderr__, dynamic_ncols=True, **kw)


# ---- finished runs ------------------------------------------------------------------------
class LoadedRun:
    """A finished run's Tier 1 model, config, dims and federated feature statistics (from model.pt)."""

    def __init__(self, run_dir: Path) -> None:
        bundle = load_model(run_dir)
        self.bundle = bundle
        self.cfg = bundle.run_config
        self.dims: dict[str, int] = dict(bundle.modalities)
        self.stats = bundle.stats()
        self.model: Tier1Model = bundle.build_tier1()
        self.theta = float(bundle.fitted.theta_)

    def tensors(self, site: SiteData) -> SiteTensors:
        """A site's tensors built with the run's federated statistics (seeded like the run)."""
        return build_tensors(site, self.stats, seed=site_seed(self.cfg.seed, site.site))

    def load_sites(self, cohort: Path) -> list[SiteData]:
        return [load_site(p, expected=self.dims) for p in discover_sites(cohort)]


def split_tensors(run: LoadedRun, sites: list[SiteData], split: str) -> tuple[SiteTensors, np.ndarray]:
    """Every site's ``split`` patients stacked, and the site label of each row."""
    parts, labels = [], []
    for s in sites:
        idx = s.indices(split)
        parts.append(run.tensors(s).subset(idx))
        labels += [s.site] * len(idx)
    return SiteTensors.concat(parts), np.asarray(labels)


# ---- metrics and tables -------------------------------------------------------------------
def safe_c_index(time_, risk, event) -> float:
    try:
        return c_index(time_, risk, event)
    except Exception:  # no events / no comparable pair in a small group
        return float("nan")


def pair_weighted(time_, risk, event, site) -> float:
    """Comparable-pair-weighted combination of per-site C-index counts (what a deployment reports)."""
    site = np.asarray(site)
    return combined_c_index(concordance_counts(time_[site == s], risk[site == s], event[site == s])
                            for s in np.unique(site))


def mean_sd(values: Iterable[float], nd: int = 3) -> str:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{statistics.mean(vals):.{nd}f} +- {statistics.stdev(vals):.{nd}f}"


def fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{nd}f}"
    return str(x)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, nd: int = 3) -> str:
    """A GitHub Markdown table of ``rows`` (floats to ``nd`` decimals, NaN/None as n/a)."""
    if not rows:
        return "(no rows)\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c), nd) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(out: Path, name: str, rows: list[dict[str, Any]], title: str, notes: str = "",
                  columns: list[str] | None = None, raw: list[dict[str, Any]] | None = None) -> str:
    """OUT/<name>.md (title, table, notes), OUT/<name>.csv (the table) and OUT/<name>_raw.csv (``raw``)."""
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + markdown_table(rows, columns) + (f"\n{notes.strip()}\n" if notes else "")
    (out / f"{name}.md").write_text(text)
    pd.DataFrame(rows, columns=columns).to_csv(out / f"{name}.csv", index=False)
    if raw is not None:
        pd.DataFrame(raw).to_csv(out / f"{name}_raw.csv", index=False)
    return text


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, n))


@dataclass
class SplitRisks:
    """One method's risks on one split, with outcomes and each patient's site."""

    time: np.ndarray
    event: np.ndarray
    risk: np.ndarray
    site: np.ndarray

    def c_index(self) -> float:
        return safe_c_index(self.time, self.risk, self.event)

    def pair_weighted(self) -> float:
        return pair_weighted(self.time, self.risk, self.event, self.site)

    def triple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.time, self.event, self.risk


def run_split_risks(run: LoadedRun, sites: list[SiteData], split: str,
                    observed: torch.Tensor | None = None) -> SplitRisks:
    """Tier 1 risks of a finished run on every site's ``split`` (dropout off)."""
    from ...core.model.train import predict_risk

    data, labels = split_tensors(run, sites, split)
    risk = predict_risk(run.model, data, observed)
    return SplitRisks(data.time.numpy().astype(float), data.event.numpy().astype(int), risk, labels)


def evidence_parser(doc: str, out: str, cohorts: Iterable[str], seeds: Iterable[int] = (0, 1, 2, 3, 4)
                    ) -> argparse.ArgumentParser:
    """The options every evidence command shares: seeds, cohorts, where the shared cohorts are, where the
    runs go. ``doc``: the command's module docstring (its first paragraph is the description)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--cohorts", nargs="+", default=list(cohorts))
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                   help="the folder of the shared real cohorts (read only)")
    p.add_argument("--out", type=Path, default=Path(out), help="where the runs and tables go (a finished run is reused)")
    return p
