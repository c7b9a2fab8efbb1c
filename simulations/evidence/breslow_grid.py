"""Where the Breslow baseline's grid points lie (at the pooled follow-up quantiles or evenly in time) and how
noised risk sets are made monotone, judged by the integrated Brier score each run reports, on every cohort.

    python -m rmmfed.simulations.evidence.breslow_grid --seeds 0 --out runs/breslow-grid \\
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad tcga-stad tcga-kirp] [--data-root ../shared/data]

Per cohort and seed (``default``: the synthetic FUSCC-style cohort of that seed under OUT/cohorts; a TCGA
cohort: DATA-ROOT/<name>, skipped when absent), Tier 1 only (``tier2.rounds = 0``), four runs through
Flower (two where ``--noised-cohorts`` leaves the cohort out) that differ only in ``hazard-grid``,
``hazard-risk-sets`` and the sites' policy (the default policy's arm with ``quantile`` spaces noised
points evenly, the same run as ``uniform``, so it is not run twice):

* ``exact``: every site under OUT/exact-cox-policy.toml (evidence.cox_core's: the Cox core, exact
  releases, no DP-SGD). The sites send Breslow sums merged to their floor (k = 10 events and leavers
  per group), so the grid decides how a group's events and risk set are spread back;
* ``default policy``: DP-SGD and noised releases (noise seeded by the run's seed, ``dp.seeded-noise``).
  The noised sums are not merged; the server asks them on 16 points. ``hazard-grid = quantile`` (the
  default) spaces those evenly; ``quantile-noised`` puts them at the quantiles too, the choice measured
  here; ``uniform`` is rmm 0.12's grid. A fifth run keeps the even grid and makes the summed risk sets
  non-increasing by isotonic regression (``hazard-risk-sets = isotonic``) instead of the running
  minimum (the default), which the other two noised runs use. The exact sums' risk sets are
  non-increasing already, so both rules leave them as they are.

The three noised arms above ask the sums as rmm 0.13 did (16 points, each site clipping |risk| to 2, no
centre: ``hazard-noised-points = 16``, ``hazard-center = zero`` and every site under OUT/bound-2-policy.toml,
the default policy with ``dp.hazard-risk-bound = 2``). A sixth, ``default-policy-0.14``, asks them as the
defaults now do (8 even points, risks centred at the middle of the risk-group cut points and clipped to
+-0.5 by the default policy); against ``default-policy-uniform`` it measures that change. A seventh,
``default-policy-0.14-quantile``, puts 0.14's noised points at the follow-up quantiles
(``hazard-grid = quantile-noised``). ``--arms`` runs a subset, by folder name.

Tier 1's risks do not depend on the grid (it is asked after training), so the C-index of each pair is
the same; the IBS and the binned calibration error at the middle horizon move. Beside them: the pooled
Cox's IBS with an exact Breslow baseline (evidence.cox_core.pooled_cox, simulation only). Writes
OUT/breslow_grid.md, .csv and _raw.csv.
"""

from __future__ import annotations

import pandas as pd

from .common import each_cohort, evidence_parser, mean_sd, run_cached, write_results
from .cox_core import COHORTS, POLICY, pooled_cox

# (sites' policy, hazard-grid, hazard-risk-sets, folder, more overrides); the folders of the first runs are kept
# for their cache
V013 = {"hazard-noised-points": 16, "hazard-center": "zero"}
ARMS = (("exact", "quantile", "running-min", "exact-quantile", {}),
        ("exact", "uniform", "running-min", "exact-uniform", {}),
        ("default policy", "quantile-noised", "running-min", "default-policy-quantile-noised", V013),
        ("default policy", "uniform", "running-min", "default-policy-uniform", V013),
        ("default policy", "uniform", "isotonic", "default-policy-uniform-isotonic", V013),
        ("default policy, 0.14's sums (8 points, bound 0.5, centred)", "quantile", "running-min",
         "default-policy-0.14", {}),
        ("default policy, 0.14's sums at the follow-up quantiles", "quantile-noised", "running-min",
         "default-policy-0.14-quantile", {}))
BOUND_2 = "# the default site policy but rmm 0.13's clipping of noised Breslow sums\n[dp]\nhazard-risk-bound = 2.0\n"


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/breslow-grid", COHORTS, seeds=(0,))
    p.add_argument("--noised-cohorts", nargs="*", default=None,
                   help="cohorts that also run the default policy's arms (default: every cohort)")
    p.add_argument("--arms", nargs="*", default=None, choices=[a[3] for a in ARMS],
                   help="run only these arms (folder names; default: every arm)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    policy, bound_2 = args.out / "exact-cox-policy.toml", args.out / "bound-2-policy.toml"
    policy.write_text(POLICY)
    bound_2.write_text(BOUND_2)
    raw, skipped = [], []
    for cohort, seed, data in each_cohort(args, "breslow grid", skipped):
        for arm, grid, risk_sets, name, more in ARMS:
            if args.arms is not None and name not in args.arms:
                continue
            if arm != "exact" and args.noised_cohorts is not None and cohort not in args.noised_cohorts:
                continue
            over = {"tier2.rounds": 0, "seed": seed, "hazard-grid": grid, "hazard-risk-sets": risk_sets, **more}
            if arm == "exact":
                over["dp.enabled"] = False
            else:
                over["dp.seeded-noise"] = True
            folder = args.out / cohort / f"seed-{seed}" / name
            site_policy = policy if arm == "exact" else (bound_2 if more == V013 else None)
            m = run_cached(data, folder, over, policy=site_policy)
            s = m.get("survival") or {}
            hz = (m.get("privacy_floor") or {}).get("baseline_hazard") or {}
            raw.append({"cohort": cohort, "seed": seed, "arm": arm, "grid": grid, "risk_sets": risk_sets,
                        "risk_center": hz.get("risk_center"), "grid_points": hz.get("grid_points"),
                        "spacing_used": hz.get("grid_spacing"), "c_index": m["federated"]["c_index"],
                        "ibs": s.get("ibs"), "calibration_error": (s.get("calibration") or {}).get("binned_error"),
                        "widest_interval_time": hz.get("widest_merged_time")})
        _, ibs = pooled_cox(data)
        raw.append({"cohort": cohort, "seed": seed, "arm": "pooled Cox (exact Breslow, simulation only)",
                    "grid": "", "ibs": ibs})
        pd.DataFrame(raw).to_csv(args.out / "breslow_grid_progress.csv", index=False)
    df = pd.DataFrame(raw)
    cohorts = [c for c in args.cohorts if c in set(df["cohort"])]
    rows = []
    for figure in ("ibs", "calibration_error"):
        for (arm, grid, risk_sets), sub in df.groupby(["arm", "grid", "risk_sets"], sort=False, dropna=False):
            if sub[figure].isna().all():
                continue
            row = {"figure": figure.replace("_", " "), "policy": arm, "grid": grid,
                   "risk sets": risk_sets if isinstance(risk_sets, str) else "",
                   **{c: mean_sd(sub[sub["cohort"] == c][figure]) for c in cohorts}}
            per = [sub[sub["cohort"] == c][figure].mean() for c in cohorts]
            row["mean over cohorts"] = f"{pd.Series(per).mean():.3f}"
            rows.append(row)
    notes = (f"Integrated Brier score (lower is better) and Tier 1's binned calibration error at the middle horizon, "
             f"each run's own figures (site-stratified IPCW from the sites' sums); mean +- sd over seeds "
             f"({', '.join(map(str, args.seeds))}); Tier 1 only. The C-index of the two grids of a policy is the same "
             "(the grid is asked after training).")
    if skipped:
        notes += f" Skipped (no folder under {args.data_root}): {', '.join(sorted(set(skipped)))}."
    text = write_results(args.out, "breslow_grid", rows, "The Breslow grid: pooled follow-up quantiles or even "
                         "spacing", notes, raw=df.to_dict("records"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
