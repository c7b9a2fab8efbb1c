"""Routing on what the missing exam would change, on every cohort, same splits, over seeds.

    python -m rmmfed.simulations.evidence.risk_routing --seeds 0 1 2 3 4 --out runs/risk-routing \\
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad tcga-stad tcga-kirp] [--data-root ../shared/data]

One run through Flower per cohort and seed, with the defaults and every site under the default site
policy (DP-SGD, noised releases: what a consortium gets), ``routing-score = risk-sd`` (``default``: the
synthetic FUSCC-style cohort of that seed, under OUT/cohorts; a TCGA cohort: DATA-ROOT/<name>, skipped
when absent). Read from each run's metrics.json, every figure computed from the sites' sums:

* ``risk SD ~ |change|``: Spearman(risk SD, |risk hidden - risk seen|) on masked complete test cases,
  combined over sites (``risk_uncertainty.spearman_change``), and sigma^2's (``uncertainty.spearman_risk_error``);
* conformal coverage and mean width of each tier's interval (alpha 0.1), combined, and the smallest
  per-site coverage among sites with >= 30 masked rows;
* the value-of-information capture ratio (top 10% by expected change vs random);
* the risk-coverage curve: Tier 1's C-index on the patients kept, with everything referred and with
  the calibration's 50% quantile as threshold (and whether it rises);
* masked-complete referral (goal 4-6%), and the Tier 2 gate: whether it opened, Tier 2's recovery
  MSE and C-index on masked validation cases against Tier 1's, and the Tier 2 phase's seconds.

Runs are cached in OUT/<cohort>/seed-S (an existing metrics.json is reused). Writes OUT/risk_routing.md,
.csv and _raw.csv with the goals checked under the table. Masked complete test rows are few on the
TCGA cohorts (tens of patients x 6 patterns), so coverage and the capture ratio carry wide intervals.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from .common import cohort_for_seed, evidence_parser, mean_sd, progress, run_cached, set_threads, write_results

COHORTS = ("default", "tcga-gbmlgg", "tcga-blca", "tcga-luad", "tcga-stad", "tcga-kirp")
FIGURES = {
    "spearman_change": "Spearman(risk SD, |risk change|), combined",
    "spearman_sigma2": "Spearman(sigma^2, |risk change|), combined",
    "coverage_tier1": "Tier 1 conformal coverage (nominal 0.90)",
    "min_site_coverage_tier1": "Tier 1 coverage, lowest site with >= 30 rows",
    "width_tier1": "Tier 1 interval width (risk units)",
    "coverage_tier2": "Tier 2 conformal coverage",
    "width_tier2": "Tier 2 interval width",
    "capture_ratio": "value of information: capture ratio (top 10% by expected change)",
    "capture_ratio_p": "capture ratio, top 10% by P(risk group changes)",
    "c_kept_all": "Tier 1 C-index, every test patient",
    "c_kept_half": "Tier 1 C-index, kept at the calibration median",
    "curve_rises": "risk-coverage curve rises (share of runs)",
    "masked_referral": "masked-complete referral rate (goal 4-6%)",
    "gate_open": "Tier 2 gate open (share of runs)",
    "tier2_mse_ratio": "Tier 2 / Tier 1 masked validation recovery MSE (gate; < 1: Tier 2 recovers better)",
    "tier2_c_gain": "Tier 2 - Tier 1 masked validation C-index (gate)",
    "tier2_test_mse_ratio": "Tier 2 / Tier 1 recovery MSE, masked complete test cases",
    "tier2_seconds": "Tier 2 training phase, seconds",
    "r2": "cross-modal R^2 (mean over modalities, simulation only)",
}


def figures(m: dict) -> dict[str, float]:
    """The issue's figures from one run's metrics.json (NaN where the run has none)."""
    nan = math.nan
    conf = m.get("conformal") or {}
    out = {"spearman_change": ((m.get("risk_uncertainty") or {}).get("spearman_change") or {}).get("rho", nan),
           "spearman_sigma2": ((m.get("uncertainty") or {}).get("spearman_risk_error") or {}).get("rho", nan)}
    for tier in ("tier1", "tier2"):
        t = conf.get(tier) or {}
        out[f"coverage_{tier}"], out[f"width_{tier}"] = t.get("coverage", nan), t.get("width", nan)
        sites = [v["coverage"] for v in (t.get("per_site") or {}).values()
                 if v.get("n_rows", 0) >= 30 and v.get("coverage") is not None and math.isfinite(v["coverage"])]
        out[f"min_site_coverage_{tier}"] = min(sites) if sites else nan
    voi = m.get("value_of_information") or {}
    out["capture_ratio"], out["capture_ratio_p"] = voi.get("capture_ratio", nan), voi.get("capture_ratio_by_p_group_change", nan)
    points = [p for p in (m.get("risk_coverage") or {}).get("points", []) if p.get("tier1_c_index_kept") is not None]
    by_q = {p["calibration_quantile"]: p for p in points}
    out["c_kept_all"] = (by_q.get(1.0) or {}).get("tier1_c_index_kept", nan)
    out["c_kept_half"] = (by_q.get(0.5) or {}).get("tier1_c_index_kept", nan)
    c = [p["tier1_c_index_kept"] for p in sorted(points, key=lambda p: -p["referral_rate"])
         if p["tier1_c_index_kept"] is not None and math.isfinite(p["tier1_c_index_kept"])]
    out["curve_rises"] = float(len(c) >= 2 and c[0] > c[-1]) if c else nan  # most referred vs none referred
    out["masked_referral"] = (m.get("routing") or {}).get("masked_complete_referral_rate", nan)
    gate = ((m.get("two_tier") or {}).get("gate") or {})
    out["gate_open"] = float(bool(gate.get("open"))) if gate else nan
    both = [gate.get(k) for k in ("mse_tier2", "mse_tier1", "c_index_tier2", "c_index_tier1")]
    out["tier2_mse_ratio"] = both[0] / both[1] if both[0] is not None and both[1] else nan
    out["tier2_c_gain"] = both[2] - both[3] if both[2] is not None and both[3] is not None else nan
    rec = ((m.get("two_tier") or {}).get("recovery_mse") or {})
    out["tier2_test_mse_ratio"] = rec["tier2"] / rec["tier1"] if rec.get("tier2") is not None and rec.get("tier1") else nan
    out["tier2_seconds"] = (m.get("timing_s") or {}).get("tier2", nan)
    r2 = ((m.get("cohort") or {}).get("cross_modal_r2") or {})
    out["r2"] = statistics.mean(r2.values()) if isinstance(r2, dict) and r2 else nan
    return out


def goals(df: pd.DataFrame) -> list[str]:
    g = df.groupby("cohort").mean(numeric_only=True)
    lines = []
    if "spearman_change" in g:
        d = g.loc["default", "spearman_change"] if "default" in g.index else math.nan
        real = g.drop(index="default", errors="ignore")["spearman_change"]
        lines.append(f"- risk SD ~ |change| >= 0.5 on the default cohort: {'met' if d >= 0.5 else 'missed'} ({d:.2f}); "
                     f">= 0.3 on every real cohort: {'met' if (real >= 0.3).all() else 'missed'} ("
                     + ", ".join(f"{c} {v:.2f}" for c, v in real.items()) + ").")
    if "coverage_tier1" in g:
        cov = g["coverage_tier1"]
        lines.append("- Tier 1 coverage within 3 points of 0.90, combined: " + ("met" if ((cov - 0.9).abs() <= 0.03).all()
                     else "missed") + " (" + ", ".join(f"{c} {v:.3f}" for c, v in cov.items()) + ").")
        low = g["min_site_coverage_tier1"]
        lines.append("- ... at every site with >= 30 rows (lowest site, mean over seeds): "
                     + ("met" if (low >= 0.87).all() else "missed") + " ("
                     + ", ".join(f"{c} {v:.3f}" for c, v in low.items()) + ").")
    if "width_tier2" in g:
        both = g[["width_tier1", "width_tier2", "r2"]].dropna(subset=["width_tier1", "width_tier2"])
        lines.append("- Tier 2 narrower than Tier 1 (where both calibrated): "
                     + ", ".join(f"{c} {r.width_tier2:.3f} vs {r.width_tier1:.3f}" for c, r in both.iterrows()) + ".")
    if "capture_ratio" in g:
        cr = g["capture_ratio"]
        lines.append("- capture ratio >= 2: " + ("met" if (cr >= 2).all() else "missed") + " ("
                     + ", ".join(f"{c} {v:.2f}" for c, v in cr.items()) + "); ranked by P(group changes) instead: "
                     + ", ".join(f"{c} {v:.2f}" for c, v in g["capture_ratio_p"].items()) + ".")
    if "curve_rises" in g:
        lines.append("- risk-coverage curve rises (C-index with the most referred > with none referred), share of "
                     "runs: " + ", ".join(f"{c} {v:.2f}" for c, v in g["curve_rises"].items()) + ".")
    if "masked_referral" in g:
        mr = g["masked_referral"]
        lines.append("- masked-complete referral within 4-6%: " + ("met" if mr.between(0.04, 0.06).all() else "missed")
                     + " (" + ", ".join(f"{c} {100 * v:.1f}%" for c, v in mr.items()) + ").")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/risk-routing", COHORTS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config override for every run (e.g. routing-score=sigma2)")
    args = p.parse_args(argv)
    if args.threads > 0:
        set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in args.overrides)
    raw, skipped = [], []
    for seed, cohort in progress([(s, c) for s in args.seeds for c in args.cohorts], desc="risk routing"):  # seed-major
        data = cohort_for_seed(args.out, seed) if cohort == "default" else args.data_root / cohort
        if not data.is_dir():
            skipped.append(cohort)
            continue
        m = run_cached(data, args.out / cohort / f"seed-{seed}", {"seed": seed, **extra})
        raw.append({"cohort": cohort, "seed": seed, **figures(m), "seconds": (m.get("timing_s") or {}).get("total")})
        pd.DataFrame(raw).to_csv(args.out / "risk_routing_progress.csv", index=False)
    df = pd.DataFrame(raw)
    cohorts = [c for c in args.cohorts if c in set(df["cohort"])]
    rows = [{"figure": label, **{c: mean_sd(df[df["cohort"] == c][key].dropna()) for c in cohorts}}
            for key, label in FIGURES.items() if key in df]
    notes = "\n".join(goals(df)) + (
        f"\n\nMean +- sd over seeds ({', '.join(map(str, args.seeds))}); default site policy (DP-SGD, noised "
        "releases); every figure from the sites' sums in each run's metrics.json. Masked complete test cases: every "
        "complete test case under every masking pattern (rows of one patient are correlated). Small TCGA test "
        "splits: coverage and capture ratios move by several points between seeds.")
    if extra:
        notes += " Overrides: " + ", ".join(f"{k}={v}" for k, v in extra.items()) + "."
    if skipped:
        notes += f" Skipped (no folder under {args.data_root}): {', '.join(sorted(set(skipped)))}."
    print(write_results(args.out, "risk_routing", rows, "Routing on the risk SD, conformal intervals, which exam "
                        "(issue 25)", notes, raw=df.to_dict("records")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
