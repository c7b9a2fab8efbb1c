"""Benchmark of ``rmm-predict``'s per-patient work on CPU (not a test; prints JSON).

    python -m rmmfed.simulations.bench_predict --model RUN_DIR_OR_BUNDLE [--data COHORT_OR_SITE] [--threads 1]

Every site of ``--data`` (default: the run's own cohort) is loaded once (validation and file reading
are timed separately, they depend on the disk), then timed, best of ``--repeats``:

* ``predict``: the whole per-site prediction of :func:`rmmfed.client.predict.predict_site`: tensors,
  Tier 1 risk + MC-dropout sigma^2, routing, Tier 2 for the referred, risk groups, integrated-gradients
  attributions (``--steps`` path points) with top instances, and the JSON-ready records;
* ``attributions``: integrated gradients alone on the same patients;
* ``two_tier``: the two-tier prediction alone (no attributions).

Reported as patients per second on ``--threads`` torch threads (default 1: one core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ..client.predict import load_site_for, predict_site
from ..core.model.attribution import integrated_gradients
from ..core.outputs.bundle import load_model
from ..core.site.site_seed import site_seed
from ..core.data.tensors import build_tensors
from ..core.routing.two_tier import predict_two_tier
from .bench_tiers import best_of as _best
from .faithfulness import site_folders


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="finished run folder or bundle file")
    p.add_argument("--data", type=Path, help="cohort or site folder (default: RUN/cohort)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients path steps")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    cfg = bundle.run_config
    tier1, tier2 = bundle.build_tier1(), bundle.build_tier2()
    t0 = time.perf_counter()
    sites = [load_site_for(bundle, s) for s in site_folders(args.data or args.model / "cohort")]
    load_s = time.perf_counter() - t0
    n = sum(len(s) for s in sites)
    stats = bundle.stats()
    tensors = [build_tensors(s, stats, seed=site_seed(cfg.seed, s.site))
               for s in sites]

    def full() -> None:
        for s in sites:
            predict_site(bundle, s, steps=args.steps, tier1=tier1, tier2=tier2)

    def attributions() -> None:
        for d in tensors:
            integrated_gradients(tier1, list(d.x), list(d.inst_mask), d.present, steps=args.steps)

    def two_tier() -> None:
        for d in tensors:
            predict_two_tier(tier1, tier2, d, cfg, fitted=bundle.fitted, seed=0)

    t_full, t_att, t_two = (_best(fn, args.repeats) for fn in (full, attributions, two_tier))
    print(json.dumps({
        "patients": n, "sites": len(sites), "threads": args.threads, "ig_steps": args.steps,
        "mc_samples": cfg.model.mc_samples, "tier2": tier2 is not None,
        "cpu": platform.processor() or platform.machine(),
        "load_and_validate_s": load_s,
        "predict_with_attributions_patients_per_s": n / t_full,
        "predict_with_attributions_ms_per_patient": 1000 * t_full / n,
        "attributions_only_patients_per_s": n / t_att,
        "two_tier_only_patients_per_s": n / t_two,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
