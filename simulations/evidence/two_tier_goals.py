"""The two-tier goals, measured: does sigma^2 know when Tier 1 is wrong, and does Tier 2 help the referred?

    python -m rmmfed.simulations.evidence.two_tier_goals --seeds 0 1 2 3 4 --out runs/goals \
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad] [--data-root ../shared/data]

For every cohort and seed one default study runs through Flower (``run_study``, pooled reference off)
into OUT/<cohort>/seed-S (an existing metrics.json is reused: delete the folder to redo). ``default``
is the synthetic FUSCC-style cohort of that seed; a TCGA cohort is read from DATA-ROOT/<name> (the
real cohorts in ``../shared/data``, which is not part of the product: they are skipped, with a note,
when absent) and keeps its own splits for every seed (the seed moves the model's initialisation, MC
dropout, diffusion noise and bag subsampling). Per run, from metrics.json:

* Spearman(sigma^2, recovery error) and Spearman(sigma^2, |risk gap|) combined over sites (Fisher z,
  core/routing/uncertainty_quality.py) on masked complete test cases; goal >= 0.5 (default), >= 0.3 (TCGA);
* recovery MSE of Tier 1 and Tier 2 on the same masked cases (goal: Tier 2 below Tier 1), and the
  run's gate (whether Tier 2 answered the referred);
* C-index on the referred, pooled over sites (simulation only: per-site counts are suppressed below
  each site's floor of patients): Tier 1 and the two-tier answer on the referred that were not
  abstained, and Tier 2's own risk on all referred (goal: two-tier >= Tier 1; few patients, so the
  per-seed spread is shown);
* referral rate on masked complete test cases, combined (goal 4-6%) and per site against the
  binomial 95% interval of 5% for that site's number of cases;
* ms per referred patient in Tier 2 and the compute share of routing against always-Tier-2 as the
  run measured them (the CPU benchmark of record is ``simulations.bench_tiers``, one thread).

Prints a Markdown table (mean +- sd over seeds) and writes OUT/two_tier_goals.md, .csv and _raw.csv.
"""

from __future__ import annotations

import json

from scipy.stats import binom

from .common import cohort_for_seed, evidence_parser, mean_sd, progress, run_cached, set_threads, write_results

DEFAULT_COHORTS = ("default", "tcga-gbmlgg", "tcga-blca", "tcga-luad")
GOAL_SPEARMAN = {"default": 0.5}  # TCGA: 0.3


def referral_within_binomial(rate: float, n: float, p: float = 0.05) -> bool | None:
    """Whether a site's referral rate over n cases lies inside the binomial 95% interval of p."""
    if not n or rate != rate:
        return None
    lo, hi = binom.interval(0.95, int(n), p)
    return bool(lo / n <= rate <= hi / n)


def collect(m: dict, cohort: str, seed: int) -> dict:
    """One run's figures as a flat record."""
    tt, unc, routing = m["two_tier"], m.get("uncertainty", {}), m["routing"]
    c = tt["c_index"]
    rates = routing.get("masked_complete_referral_rate_per_site", {})
    ns = routing.get("masked_complete_n_per_site", {})
    inside = [referral_within_binomial(r, ns.get(s, 0)) for s, r in rates.items()]
    gate = tt.get("gate", {})
    return {
        "cohort": cohort, "seed": seed,
        "spearman_error": unc.get("spearman_error", {}).get("rho", float("nan")),
        "spearman_error_ci": [unc.get("spearman_error", {}).get("ci_low"), unc.get("spearman_error", {}).get("ci_high")],
        "spearman_risk": unc.get("spearman_risk_error", {}).get("rho", float("nan")),
        "mse_tier1": tt["recovery_mse"]["tier1"], "mse_tier2": tt["recovery_mse"]["tier2"],
        "gate_open": gate.get("open"), "gate_val_mse": [gate.get("mse_tier1"), gate.get("mse_tier2")],
        # per-site counts are suppressed below each site's floor: the pooled test split (simulation only)
        "n_referred": tt.get("referred_pooled", {}).get("n"),
        "c_tier1_referred": tt.get("referred_pooled", {}).get("tier1_covered", c.get("tier1_referred")),
        "c_tier2_referred": tt.get("referred_pooled", {}).get("tier2", c.get("tier2_referred")),
        "c_two_tier_referred": tt.get("referred_pooled", {}).get("two_tier_covered", c.get("two_tier_referred")),
        "c_tier1_covered": c.get("tier1_covered"), "c_two_tier_covered": c.get("two_tier_covered"),
        "referral_rate": routing.get("masked_complete_referral_rate"),
        "sites_inside_binomial": sum(1 for x in inside if x), "sites": len(inside),
        "ms_tier2": tt["ms_per_patient"]["tier2"], "compute_share": tt.get("compute_share_vs_always_tier2"),
        "wall_s": m["timing_s"].get("total"),
    }


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/goals", DEFAULT_COHORTS)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = leave as is)")
    p.add_argument("--cached-only", action="store_true", help="tabulate the finished runs under OUT only "
                   "(a cohort/seed without metrics.json is listed as not run)")
    args = p.parse_args(argv)
    if args.threads > 0:
        set_threads(args.threads)
    records, skipped, not_run = [], [], []
    jobs = [(c, s) for c in args.cohorts for s in args.seeds]
    for cohort, seed in progress(jobs, desc="two-tier goals"):
        run_dir = args.out / cohort / f"seed-{seed}"
        if args.cached_only:
            if not (run_dir / "metrics.json").is_file():
                not_run.append(f"{cohort}/seed-{seed}")
                continue
            records.append(collect(json.loads((run_dir / "metrics.json").read_text()), cohort, seed))
            continue
        if cohort == "default":
            data = cohort_for_seed(args.out, seed)
        else:
            data = args.data_root / cohort
            if not data.is_dir():
                skipped.append(cohort)
                continue
        m = run_cached(data, run_dir, {"seed": seed})
        records.append(collect(m, cohort, seed))
    rows = []
    for cohort in dict.fromkeys(r["cohort"] for r in records):
        rs = [r for r in records if r["cohort"] == cohort]
        col = lambda k, nd=3: mean_sd([r[k] for r in rs], nd)  # noqa: E731
        rows.append({
            "cohort": cohort, "seeds": len(rs),
            "Spearman(sigma^2, rec. error)": col("spearman_error", 2),
            "goal": f">= {GOAL_SPEARMAN.get(cohort, 0.3)}",
            "Spearman(sigma^2, risk gap)": col("spearman_risk", 2),
            "recovery MSE Tier 1": col("mse_tier1"), "recovery MSE Tier 2": col("mse_tier2"),
            "gate open": f"{sum(1 for r in rs if r['gate_open'])}/{len(rs)}",
            "referred (pooled test)": col("n_referred", 0),
            "C referred: Tier 1": col("c_tier1_referred"), "C referred: Tier 2": col("c_tier2_referred"),
            "C referred: two-tier": col("c_two_tier_referred"),
            "referral rate (masked complete)": col("referral_rate"),
            "sites in 95% band of 5%": f"{sum(r['sites_inside_binomial'] for r in rs)}/{sum(r['sites'] for r in rs)}",
            "ms / referred (Tier 2)": col("ms_tier2", 1), "routing compute share": col("compute_share"),
        })
    notes = ("mean +- sd over seeds; C on the referred covers few patients per run (noisy); Spearman combined "
             "over sites by Fisher z on masked complete test cases; the gate is Tier 2 vs Tier 1 on federated "
             "masked validation (core/tier2/tier2_gate.py).")
    if skipped:
        notes += f" Skipped (no folder under {args.data_root}): {', '.join(sorted(set(skipped)))}."
    if not_run:
        notes += f" Not run (no metrics.json): {', '.join(not_run)}."
    text = write_results(args.out, "two_tier_goals", rows, "Two-tier goals (issue 13)", notes, raw=records)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
