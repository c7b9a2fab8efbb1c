"""Would Tier 2's risk intervals be narrower than Tier 1's if they were calibrated? Exact split conformal
on finished runs (simulation only: the scores are pooled here to measure them).

    python -m rmmfed.simulations.evidence.tier2_intervals --runs runs/t2w128 [--data-root ../shared/data]
        [--seeds 0 1 2] [--cohorts default tcga-gbmlgg ...] [--alpha 0.1]

In a run, each tier's conformal q-hat is read from the sites' noised histograms of |risk seen - mean
draw| / risk SD on core/routing/conformal.SCORE_GRID (0.1 to 100). Tier 2's falls in the overflow bin in
every run under the default policy (q-hat inf), because its diffusion draws are far narrower than its
error, so issue 25's goal "where the cross-modal R^2 >= 0.2, Tier 2's intervals are narrower than Tier
1's at equal coverage" cannot be read from a run. Here, for every run folder RUNS/<cohort>/seed-S that
``evidence.risk_routing`` wrote (its model.pt), each tier's scores on the masked complete validation
rows of every site are pooled and their exact finite-sample corrected (1 - alpha) quantile taken: no grid
and no noise, the best a calibration could do. The interval, mean draw +- q-hat x risk SD, is scored on
the masked complete test rows: coverage, and mean width in risk units. ``default``'s cohort is read from
RUNS/cohorts/seed-S, a TCGA cohort from DATA-ROOT/<name>. Writes RUNS/tier2_intervals.md, .csv and _raw.csv.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ...core.data.site_data import discover_sites, load_site
from ...core.data.tensors import build_tensors
from ...core.outputs.bundle import load_model
from ...core.routing.conformal import SD_FLOOR, site_scores
from ...core.site.site_seed import site_seed
from .common import mean_sd, progress, write_results

COHORTS = ("default", "tcga-gbmlgg", "tcga-blca", "tcga-luad", "tcga-stad", "tcga-kirp")


def exact_q_hat(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score, or inf when that rank exceeds n."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - alpha))
    return float(np.sort(scores)[rank - 1]) if 0 < rank <= n else math.inf


def tier_intervals(run_dir: Path, data: Path, alpha: float) -> dict[str, float]:
    """Per tier: q-hat from the pooled validation scores, coverage and mean width on the test rows."""
    bundle = load_model(run_dir)
    cfg, tier1, tier2 = bundle.run_config, bundle.build_tier1(), bundle.build_tier2()
    splits = []
    for path in discover_sites(data):
        site = load_site(path, expected=dict(bundle.modalities))
        tensors = build_tensors(site, bundle.stats(), seed=site_seed(cfg.seed, site.site))
        splits.append((tensors.subset(site.indices("val")), tensors.subset(site.indices("test"))))
    out: dict[str, float] = {}
    for tier, model in (("tier1", None), ("tier2", tier2)):
        if tier == "tier2" and tier2 is None:
            continue
        val = np.concatenate([site_scores(tier1, model, v, cfg, tier)[0] for v, _ in splits])
        test = [site_scores(tier1, model, t, cfg, tier) for _, t in splits]
        scores, sd = np.concatenate([s for s, _ in test]), np.concatenate([d for _, d in test])
        q = exact_q_hat(val, alpha)
        out[f"q_hat_{tier}"] = q
        out[f"coverage_{tier}"] = float((scores <= q).mean()) if len(scores) else math.nan
        out[f"width_{tier}"] = float((2.0 * q * np.maximum(sd, SD_FLOOR)).mean()) if math.isfinite(q) else math.inf
        out[f"median_sd_{tier}"] = float(np.median(sd)) if len(sd) else math.nan
    return out


FIGURES = {"coverage_tier1": "Tier 1 coverage (exact q-hat)", "width_tier1": "Tier 1 mean width (risk units)",
           "coverage_tier2": "Tier 2 coverage (exact q-hat)", "width_tier2": "Tier 2 mean width (risk units)",
           "q_hat_tier1": "Tier 1 q-hat", "q_hat_tier2": "Tier 2 q-hat (in a run: inf, above SCORE_GRID's 100)",
           "median_sd_tier1": "Tier 1 median risk SD", "median_sd_tier2": "Tier 2 median risk SD",
           "narrower": "Tier 2 narrower than Tier 1 (share of runs)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="the --out folder of evidence.risk_routing")
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cohorts", nargs="+", default=list(COHORTS))
    p.add_argument("--alpha", type=float, default=0.1)
    args = p.parse_args(argv)
    raw = []
    for seed, cohort in progress([(s, c) for s in args.seeds for c in args.cohorts], desc="tier 2 intervals"):
        run_dir = args.runs / cohort / f"seed-{seed}"
        data = args.runs / "cohorts" / f"seed-{seed}" if cohort == "default" else args.data_root / cohort
        if not (run_dir / "model.pt").is_file() or not data.is_dir():
            continue
        row = {"cohort": cohort, "seed": seed, **tier_intervals(run_dir, data, args.alpha)}
        row["narrower"] = float(row.get("width_tier2", math.inf) < row["width_tier1"])
        raw.append(row)
    if not raw:
        print(f"tier2_intervals: no run folder with a model.pt under {args.runs}. Fix: run "
              "python -m rmmfed.simulations.evidence.risk_routing --out with that folder first")
        return 2
    df = pd.DataFrame(raw)
    cohorts = [c for c in args.cohorts if c in set(df["cohort"])]
    rows = [{"figure": label, **{c: mean_sd(df[df["cohort"] == c][key].replace([np.inf], np.nan).dropna())
                                 for c in cohorts}} for key, label in FIGURES.items() if key in df]
    notes = (f"Mean +- sd over seeds ({', '.join(map(str, args.seeds))}), alpha {args.alpha}; exact split conformal "
             "on the pooled masked complete validation rows, scored on the pooled masked complete test rows "
             "(simulation only). Runs: " + str(args.runs) + ".")
    print(write_results(args.runs, "tier2_intervals", rows, "Tier 2's risk intervals, calibrated exactly, against "
                        "Tier 1's (issue 25)", notes, raw=df.to_dict("records")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
