"""Benchmark of the two tiers' inference cost on CPU (not a test; prints figures).

    python -m rmmfed.simulations.bench_tiers --run runs/default [--data DIR] [--threads 1]

Loads a finished run's ``model.pt`` (Tier 1, Tier 2, feature statistics, theta, config), builds every
site's patients of ``--data`` (default: the run's own generated cohort) and times:
- Tier 1: risk plus the run's routing score (core/routing/routing_score.py: sigma^2 from T MC-dropout passes,
  and with routing-score = risk-sd the SD of the risk over T draws read through the head), patients per
  second (goal >= 1,000 with T=20);
- Tier 2: DDIM recovery with S samples plus its head, milliseconds per referred patient (goal <= 20 ms);
- the compute share of routing at the run's referral rate against sending everyone to Tier 2 (goal <= 10%).
Each timing is the best of ``--repeats`` runs on the same machine, measured in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..core.outputs.bundle import load_model
from ..core.data.site_data import discover_sites, load_site
from ..core.data.tensors import SiteTensors, build_tensors
from ..core.tier2.tier2_train import predict_tier2
from ..core.routing.routing_score import patient_scores


def best_of(fn, repeats: int) -> float:
    """The best wall time of ``repeats`` calls of ``fn`` (one process, same machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/default"), help="a finished rmm-simulate output folder")
    p.add_argument("--data", type=Path, help="cohort folder (default: RUN/cohort)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.run)
    cfg, dims, stats = bundle.run_config, dict(bundle.modalities), bundle.stats()
    tier1 = bundle.build_tier1()
    cohort = args.data or args.run / "cohort"
    data = SiteTensors.concat([build_tensors(load_site(s, expected=dims), stats, seed=0)
                               for s in discover_sites(cohort)])
    n = len(data)
    t1 = best_of(lambda: patient_scores(tier1, data, cfg, seed=0), args.repeats)
    score = patient_scores(tier1, data, cfg, seed=0)[2]
    referred = np.flatnonzero(score > float(bundle.fitted.theta_))
    gaps = np.flatnonzero(~data.present.all(dim=1).numpy() & data.present.any(dim=1).numpy())
    out = {"patients": n, "threads": args.threads, "mc_samples": cfg.model.mc_samples,
           "routing_score": cfg.routing_score, "tier1_patients_per_s": n / t1, "tier1_ms_per_patient": 1000 * t1 / n,
           "referral_rate": len(referred) / n}
    tier2 = bundle.build_tier2()
    if tier2 is not None:
        sub = data.subset(gaps)  # Tier 2 cost per patient with something to recover
        t2 = best_of(lambda: predict_tier2(tier2, tier1, sub, cfg.tier2, seed=0, mc_samples=cfg.model.mc_samples),
                   args.repeats)
        ms2 = 1000 * t2 / max(len(gaps), 1)
        ms1 = out["tier1_ms_per_patient"]
        share = (ms1 + out["referral_rate"] * ms2) / (ms1 + ms2)
        out.update({"tier2_patients_timed": int(len(gaps)), "tier2_samples": cfg.tier2.samples,
                    "tier2_sample_steps": cfg.tier2.sample_steps, "tier2_ms_per_patient": ms2,
                    "routing_compute_share_vs_always_tier2": share})
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
