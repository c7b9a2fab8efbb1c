"""Benchmark of privacy costs on the default cohort (not a test; prints figures).

    python -m rmmfed.simulations.bench_privacy [--epsilons 8 3 1] [--out runs/privacy] [--seed 0]

1. C-index against the DP-SGD budget: one ``rmm-simulate`` run without DP and one per target
   epsilon (Tier 1 only, no pooled reference, same cohort and seed), with the epsilon each site
   reports at the end.
2. theta's error under histogram noise: the no-DP run's exact calibration counts privatised per
   site-sum with the geometric mechanism (sensitivity = masking patterns per patient, monotone
   repair at the server), on the run's own grid and on a coarse 32-bin grid over the same range.

A run folder under OUT that already holds metrics.json is reused (delete OUT to run everything again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..core.messages import metric_names as M
from ..core.aggregates.histogram import HistogramGrid
from ..core.privacy.private_histogram import theta_error
from .simulate import main as simulate


def _run(out: Path, cohort: Path | None, seed: int, extra: list[str]) -> dict:
    if (out / "metrics.json").is_file() and (out / "calibration.json").is_file():  # a finished run: reused
        return json.loads((out / "metrics.json").read_text())
    args = ["--out", str(out), "--seed", str(seed), "--no-pooled", "--set", "tier2.rounds=0", *extra]
    if cohort is not None:
        args += ["--data", str(cohort)]
    if simulate(args) != 0:
        raise SystemExit(f"bench_privacy: rmm-simulate failed for {out}")
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    p.add_argument("--out", type=Path, default=Path("runs/privacy"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-cuts", default="12,24,36,60,90", help="dp.time-cuts (cohort time unit: months)")
    args = p.parse_args(argv)
    rows = []
    base = _run(args.out / "no-dp", None, args.seed, [])
    cohort = args.out / "no-dp" / "cohort"
    rows.append(("no DP", base["federated"]["c_index"], None))
    for eps in args.epsilons:
        m = _run(args.out / f"eps-{eps:g}", cohort, args.seed,
                 ["--set", "dp.enabled=true", "--set", f"dp.target-epsilon={eps}", "--set", f"dp.time-cuts={args.time_cuts}"])
        spent = [h.get(M.DP_EPSILON) for h in m["history"] if h.get(M.DP_EPSILON) is not None]
        rows.append((f"epsilon {eps:g}", m["federated"]["c_index"], spent[-1] if spent else None))
    print("\n| Tier 1 training | C-index (pooled test) | epsilon spent (mean over sites, end) |\n|---|---|---|")
    for name, c, e in rows:
        print(f"| {name} | {c:.3f} | {'-' if e is None else f'{e:.2f}'} |")

    calib = json.loads((args.out / "no-dp" / "calibration.json").read_text())
    grid = HistogramGrid.from_config(calib["grid"])
    counts = np.asarray(calib["counts"], dtype=np.int64)
    patterns = 6  # 2^3 - 2 masking patterns per patient for the default three modalities
    coarse = HistogramGrid(grid.low, grid.high, 32)  # the run's range, 32 bins (fixed before any data is seen)
    edges = grid.edges()
    centres = np.sqrt(np.maximum(edges[:-1], 1e-12) * np.where(np.isfinite(edges[1:]), edges[1:], edges[-2]))
    coarse_counts = coarse.counts(np.repeat(centres, counts))
    print("\n| grid | histogram epsilon | theta relative error (mean of 200 draws) |\n|---|---|---|")
    for name, g, c in (("run grid (512 bins)", grid, counts), (f"coarse (32 bins, {grid.low:g}..{grid.high:g})", coarse, coarse_counts)):
        for eps in (1.0, 0.1):
            err = theta_error(g, c, calib["quantile"], eps, sensitivity=patterns, trials=200, seed=args.seed,
                              postprocess="monotone")
            print(f"| {name} | {eps:g} | {err:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
