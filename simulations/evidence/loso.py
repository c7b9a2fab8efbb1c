"""Leave-one-site-out: federate on the other sites, evaluate on the held-out site's test split.

    python -m rmmfed.simulations.evidence.loso --out runs/evidence [--seeds 0] [--data DIR] [--ref-run RUN]

For every site H (every rotation) OUT/loso/seed-S/hold-H/cohort is a folder of symlinks to the other
sites; ``run_study`` federates on it (Tier 1 only, ``tier2.rounds=0``) into OUT/loso/seed-S/hold-H/run.
The held-out site's tensors are built with that run's federated feature statistics from model.pt
(the held-out site contributed nothing) and scored on its test split. For comparison: the same
site's C-index when it takes part in the federation (``--ref-run``'s metrics.json; default
OUT/ablation/seed-S/full when it exists), and a pooled lifelines Cox trained on the other sites'
training rows vs on every site's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ...core.data.site_data import discover_sites, load_site
from ...core.model.train import predict_risk
from .common import LoadedRun, cohort_for_seed, load_cohort, mean_sd, progress, run_cached, safe_c_index, set_threads, write_results
from .features import pool_sites
from .methods import PooledCox


def symlink_cohort(cohort: Path, keep: list[Path], folder: Path) -> Path:
    """``folder`` with one symlink per kept site folder (absolute targets); recreated if stale."""
    folder.mkdir(parents=True, exist_ok=True)
    for link in folder.iterdir():
        if link.is_symlink() and link.name not in {p.name for p in keep}:
            link.unlink()
    for p in keep:
        link = folder / p.name
        if not link.exists():
            link.symlink_to(p.resolve(), target_is_directory=True)
    return folder


def cox_loso(cohort: Path, held: str) -> tuple[float, float]:
    """Pooled Cox test C-index on the held-out site: trained without it, and trained with every site."""
    _, sites, _ = load_cohort(cohort)
    data = pool_sites(sites)
    others = [s.site for s in sites if s.site != held]
    test = data.rows("test", [held])
    out = []
    for train in (data.rows("train", others), data.rows("train")):
        m = PooledCox().fit(data, train)
        out.append(safe_c_index(data.time[test], m.risk(data, test), data.event[test]))
    return out[0], out[1]


def rotation(cohort: Path, held: Path, base: Path, seed: int, extra: dict) -> dict:
    others = [p for p in discover_sites(cohort) if p.name != held.name]
    sub = symlink_cohort(cohort, others, base / "cohort")
    run_dir = base / "run"
    m = run_cached(sub, run_dir, {"seed": seed, "tier2.rounds": 0, **extra})
    run = LoadedRun(run_dir)
    site = load_site(held, expected=run.dims)
    test = run.tensors(site).subset(site.indices("test"))
    risk = predict_risk(run.model, test)
    t, e = test.time.numpy(), test.event.numpy()
    cox_out, cox_all = cox_loso(cohort, held.name)
    return {"held_out": held.name, "n_test": len(t), "events_test": int(e.sum()),
            "rmm_loso": safe_c_index(t, risk, e), "rmm_train_sites_pooled_test": m["federated"]["c_index"],
            "cox_loso": cox_out, "cox_all_sites": cox_all}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    p.add_argument("--data", type=Path, help="a cohort folder (default: OUT/cohorts/seed-S, generated if absent)")
    p.add_argument("--ref-run", type=Path, help="a finished all-site run on the same cohort (per-site C-index)")
    p.add_argument("--patients", type=int, default=1679)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    from .ablation import _parse_sets

    extra = _parse_sets(args.set)
    raw = []
    for seed in args.seeds:
        cohort = args.data or cohort_for_seed(args.out, seed, args.patients)
        ref = args.ref_run or args.out / "ablation" / f"seed-{seed}" / "full"
        ref_sites = (json.loads((ref / "metrics.json").read_text())["federated"]["per_site"]
                     if (ref / "metrics.json").is_file() else {})
        for held in progress(discover_sites(cohort), desc=f"LOSO seed {seed}", unit="rotation"):
            row = rotation(cohort, held, args.out / "loso" / f"seed-{seed}" / f"hold-{held.name}", seed, extra)
            row["rmm_in_federation"] = ref_sites.get(held.name, {}).get("c_index", np.nan)
            raw.append({"seed": seed, **row})
    table = []
    for site in dict.fromkeys(r["held_out"] for r in raw):
        rs = [r for r in raw if r["held_out"] == site]
        table.append({"held-out site": site, "n test (events)": f"{rs[0]['n_test']} ({rs[0]['events_test']})",
                      "rmm, site held out": mean_sd(r["rmm_loso"] for r in rs),
                      "rmm, site in federation": mean_sd(r["rmm_in_federation"] for r in rs),
                      "pooled Cox, site held out": mean_sd(r["cox_loso"] for r in rs),
                      "pooled Cox, all sites": mean_sd(r["cox_all_sites"] for r in rs)})
    notes = (f"Seeds {' '.join(map(str, args.seeds))}; cohort: {args.data or 'FUSCC-style synthetic, generated per seed'}. "
             "C-index on the held-out site's own test split. 'site held out': rmm Tier 1 federated (Flower) on the "
             "other sites, the held-out site's features standardised with the run's federated statistics; 'site in "
             "federation': the same site's C-index in an all-site run (n/a without one). Pooled Cox (lifelines, "
             "penalizer 0.1, mean imputation + indicators) is centralised, simulation only. Overrides: "
             f"{extra or 'none'}; rmm runs are Tier 1 only (tier2.rounds=0).")
    print(write_results(args.out, "loso", table, "Leave-one-site-out", notes, raw=raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
