"""Benchmark of the default study over several seeds (not a test; prints figures).

    python -m rmmfed.simulations.benchmark --seeds 0 1 2 3 4 [--data DIR] [--out runs/bench]

For each seed: a fresh FUSCC-style cohort with that seed (or ``--data``), one ``rmm-simulate`` run,
then a table of wall time, federated / pooled / oracle C-index, |federated - pooled|, the referral
rate on held-out complete cases with modalities masked, and theta's error against the exact pooled
percentile; then mean +- sd. Goals (issue #2): wall time < 300 s on 2 cores; |fed - pooled| <= 0.01;
masked-complete referral rate within 5% +- 1%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .simulate import main as simulate


def run(seeds: list[int], out: Path, data: Path | None, extra: list[str]) -> list[dict]:
    rows = []
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        args = ["--out", str(run_dir), "--seed", str(seed), *extra]
        if data is not None:
            args += ["--data", str(data)]
        if simulate(args) != 0:
            sys.exit(f"benchmark: rmm-simulate failed for seed {seed}")
        m = json.loads((run_dir / "metrics.json").read_text())
        c = m["calibration"]
        rows.append({
            "seed": seed,
            "wall_s": m["timing_s"]["total"],
            "federated": m["federated"]["c_index"],
            "pooled": m.get("pooled_reference", {}).get("c_index", float("nan")),
            "oracle": m.get("oracle", {}).get("c_index", float("nan")),
            "referral_masked": m["routing"]["masked_complete_referral_rate"],
            "theta_rel_err": abs(c["theta"] - c["theta_exact_pooled"]) / c["theta_exact_pooled"],
        })
        rows[-1]["fed_minus_pooled"] = rows[-1]["federated"] - rows[-1]["pooled"]
    return rows


def table(rows: list[dict]) -> str:
    cols = ["seed", "wall_s", "federated", "pooled", "oracle", "fed_minus_pooled", "referral_masked", "theta_rel_err"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if len(rows) > 1:
        cells = ["mean +- sd"]
        for c in cols[1:]:
            vals = [r[c] for r in rows]
            cells.append(f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--data", type=Path, help="benchmark this cohort instead of generated ones (seed then varies the model/split only)")
    args, extra = p.parse_known_args(argv)
    rows = run(args.seeds, args.out, args.data, extra)
    text = table(rows)
    print("\n" + text)
    (args.out / "benchmark.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
