"""Baselines on the same splits as rmm: centralised Cox / early / late fusion / complete-case, local-only
rmm, and FedAvg vs FedProx vs FedAdam; C-index and integrated Brier score on the test split.

    python -m rmmfed.simulations.evidence.baselines --seeds 0 1 2 3 4 --out runs/evidence
    python -m rmmfed.simulations.evidence.baselines --data ../shared/data/tcga-gbmlgg --out runs/evidence-tcga

Without ``--data`` each seed uses OUT/cohorts/seed-S (the ablation's cohorts, generated if absent);
with ``--data`` every seed uses that cohort (its split column), so seeds vary the models only.
Federated runs go to OUT/baselines/seed-S/<strategy> (Tier 1 only: ``tier2.rounds=0``); FedAvg
reuses OUT/ablation/seed-S/full when it exists (Tier 2 never changes Tier 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .brier import default_grid, ibs_for_method, integrated_brier, CensoringKM, predicted_survival
from .common import (LoadedRun, SplitRisks, cohort_for_seed, load_cohort, mean_sd, progress, run_cached,
                     run_split_risks, set_threads, write_results)
from .features import Featurizer, pool_sites
from .local_only import train_local
from .methods import CompleteCaseCox, EarlyFusion, LateFusion, PooledCox, PooledCoxTrainVal

STRATEGIES = ("fedavg", "fedprox", "fedadam")


def centralised(cohort: Path, seed: int) -> tuple[dict[str, dict[str, SplitRisks]], str]:
    """Train the pooled baselines; risks on train and test for each, and the feature description."""
    _, sites, _ = load_cohort(cohort)
    data = pool_sites(sites)
    tr, va = data.rows("train"), data.rows("val")
    out = {}
    for method in (PooledCox(), PooledCoxTrainVal(), EarlyFusion(seed=seed), LateFusion(), CompleteCaseCox()):
        method.fit(data, tr, va)
        out[method.name] = {s: SplitRisks(data.time[r], data.event[r], method.risk(data, r), data.site[r])
                            for s, r in (("train", tr), ("test", data.rows("test")))}
    return out, Featurizer().fit(data, tr).describe()


def local_only(cohort: Path, cfg_over: dict) -> tuple[SplitRisks, float, dict[str, float]]:
    """Tier 1 at each site alone: pooled-test concatenation, IBS (per-site Breslow) and per-site C-index."""
    from ...core.config import RunConfig

    paths, _, dims = load_cohort(cohort)
    cfg = RunConfig().with_overrides({"device": "cpu", **cfg_over})
    parts = [train_local(p, dims, cfg) for p in paths]
    test = SplitRisks(*(np.concatenate([getattr(q["test"], f) for q in parts]) for f in ("time", "event", "risk", "site")))
    train_t = np.concatenate([q["train"].time for q in parts])
    train_e = np.concatenate([q["train"].event for q in parts])
    grid = default_grid(test.time)
    surv = np.concatenate([predicted_survival(q["train"].triple(), q["test"].risk, grid) for q in parts])
    ibs = integrated_brier(grid, surv, test.time, test.event, CensoringKM(train_t, train_e))
    return test, ibs, {q["test"].site[0]: q["test"].c_index() for q in parts}


def federated(cohort: Path, out: Path, seed: int, strategy: str, extra: dict) -> dict[str, SplitRisks]:
    reuse = out / "ablation" / f"seed-{seed}" / "full"
    run_dir = reuse if strategy == "fedavg" and not extra and (reuse / "model.pt").is_file() \
        else out / "baselines" / f"seed-{seed}" / strategy
    run_cached(cohort, run_dir, {"seed": seed, "strategy": strategy, "tier2.rounds": 0, **extra})
    run = LoadedRun(run_dir)
    sites = run.load_sites(cohort)
    return {s: run_split_risks(run, sites, s) for s in ("train", "test")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    p.add_argument("--data", type=Path, help="a cohort folder used for every seed (default: generated per seed)")
    p.add_argument("--patients", type=int, default=1679)
    p.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--no-local", action="store_true", help="skip local-only training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override for rmm runs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    from .ablation import _parse_sets

    extra = _parse_sets(args.set)
    raw, local_rows, feat_note = [], [], ""
    for seed in progress(args.seeds, desc="baselines (seeds)", unit="seed"):
        cohort = args.data or cohort_for_seed(args.out, seed, args.patients)
        results: dict[str, tuple[SplitRisks, float]] = {}
        cent, feat_note = centralised(cohort, seed)
        for name, r in cent.items():
            results[name] = (r["test"], ibs_for_method(r["train"].triple(), r["test"].triple()))
        base = next(iter(cent.values()))
        null_ibs = ibs_for_method((base["train"].time, base["train"].event, np.zeros(len(base["train"].time))),
                                  (base["test"].time, base["test"].event, np.zeros(len(base["test"].time))))
        if not args.no_local:
            test, ibs, per_site = local_only(cohort, {"seed": seed, **extra})
            results["rmm Tier 1, local-only (each site alone)"] = (test, ibs)
            local_rows.append({"seed": seed, **per_site, "pair-weighted": test.pair_weighted()})
        for strat in progress(args.strategies, desc=f"seed {seed}: federated", unit="run", leave=False):
            r = federated(cohort, args.out, seed, strat, extra)
            results[f"rmm Tier 1, federated {strat}"] = (r["test"], ibs_for_method(r["train"].triple(), r["test"].triple()))
        for name, (test, ibs) in results.items():
            pooled = np.nan if "local-only" in name else test.c_index()
            raw.append({"seed": seed, "method": name, "c_index_pooled_test": pooled,
                        "c_index_pair_weighted": test.pair_weighted(), "ibs": ibs})
        raw.append({"seed": seed, "method": "null model (Kaplan-Meier, no covariates)", "c_index_pooled_test": 0.5,
                    "c_index_pair_weighted": 0.5, "ibs": null_ibs})
    methods = list(dict.fromkeys(r["method"] for r in raw))
    table = [{"method": m,
              "C-index (pooled test)": mean_sd(r["c_index_pooled_test"] for r in raw if r["method"] == m),
              "C-index (pair-weighted per site)": mean_sd(r["c_index_pair_weighted"] for r in raw if r["method"] == m),
              "integrated Brier score": mean_sd(r["ibs"] for r in raw if r["method"] == m),
              "seeds": sum(r["method"] == m for r in raw)} for m in methods]
    src = f"cohort {args.data}" if args.data else f"FUSCC-style synthetic cohorts ({args.patients} patients) per seed"
    notes = (f"Seeds {' '.join(map(str, args.seeds))}; {src}; same train/val/test split for every method. Centralised "
             f"baselines use every site's rows (simulation only); features: mean-pooled bags, {feat_note}. Cox: lifelines "
             "CoxPHFitter(penalizer=0.1). Early fusion: MLP (hidden 32, dropout 0.2) with a Cox loss, full batch, 300 "
             "epochs, best validation C-index every 10 epochs. Local-only: rmm Tier 1 trained at each site alone with its "
             "own statistics; its risks are not on one scale across sites, so only the pair-weighted combination is "
             "reported. Federated rmm runs are Tier 1 only (`tier2.rounds=0`). IBS: IPCW Brier score integrated over "
             "50 times between the 10th and 80th percentiles of test times; censoring KM and Breslow baseline fitted "
             "on the training split after a one-covariate Cox slope recalibration of each method's risk (lower is "
             "better; the null model uses no covariates).")
    text = write_results(args.out, "baselines", table, "Baselines (C-index and integrated Brier score, test split)",
                         notes, raw=raw)
    if local_rows:
        sites = [k for k in local_rows[0] if k != "seed"]
        per_site = [{"site": s, "local-only C-index (own test split)": mean_sd(r[s] for r in local_rows)} for s in sites]
        text += "\n" + write_results(args.out, "baselines_local", per_site, "Local-only rmm Tier 1 per site",
                                     "Mean +- sd over seeds; 'pair-weighted' combines the sites' comparable-pair counts.",
                                     raw=local_rows)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
