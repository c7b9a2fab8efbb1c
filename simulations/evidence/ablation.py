"""Table 1 of seed 000 as configurations: every row is one federated run per seed.

    python -m rmmfed.simulations.evidence.ablation --seeds 0 1 2 3 4 --out runs/evidence

For each seed one FUSCC-style cohort is generated into OUT/cohorts/seed-S and reused by every row
(``--data DIR`` uses that cohort for every seed instead);
each row runs through ``run_study`` (Flower simulation engine, pooled reference off) into
OUT/ablation/seed-S/<row>/ (an existing metrics.json is reused). Reported per row, mean +- sd over
seeds: the Tier 1 C-index on the pooled test split (metrics.json ``federated.c_index``), its change
against the full model (mean +- sd of the per-seed differences), and the two-tier C-index on the
non-abstained test patients with Tier 1 alone on the same patients (``two_tier.c_index``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import cohort_for_seed, mean_sd, progress, run_cached, set_threads, write_results

ROWS: list[tuple[str, str, float, dict]] = [  # key, label, seed 000 Table 1 C-index, overrides
    ("full", "Full model (all components)", 0.812, {}),
    ("no-augmentation", "w/o modality augmentation", 0.793, {"model.modality-dropout": 0.0}),
    ("no-modality-prompts", "w/o modality-aware prompts", 0.775, {"model.modality-prompts": False}),
    ("no-missing-prompts", "w/o missing-aware prompts", 0.768, {"model.missing-prompts": False}),
    ("no-pseudo", "w/o learnable pseudo-embeddings (zero-fill)", 0.711, {"model.pseudo-embeddings": False}),
    ("no-diversity", "w/o diversity loss", 0.796, {"tier2.diversity": False}),
    ("single-branch", "single-branch (no multi-branch attention)", 0.798, {"tier2.single-branch": True}),
]
# Not in Table 1 (``--extra-rows``): with f_phi on, the head reads g_k(x_hat_k) for an absent modality and the
# pseudo-embedding only enters f_phi's input; these rows let the head see the eq. 2 slot directly.
EXTRA_ROWS: list[tuple[str, str, float, dict]] = [
    ("no-estimator", "(extra) w/o estimator f_phi in the head", float("nan"), {"model.estimator": False}),
    ("no-estimator-no-pseudo", "(extra) w/o estimator, zero-fill", float("nan"),
     {"model.estimator": False, "model.pseudo-embeddings": False}),
]


def _parse_sets(items: list[str]) -> dict:
    from ..simulate import _parse_value

    out = {}
    for item in items:
        key, _, val = item.partition("=")
        out[key.strip()] = _parse_value(val.strip())
    return out


def summarise(raw: list[dict], rows=None) -> list[dict]:
    """Per configuration: mean +- sd over seeds, and paired differences against the full model."""
    full = {r["seed"]: r for r in raw if r["row"] == "full"}
    table = []
    for key, label, paper, _ in rows or ROWS + EXTRA_ROWS:
        got = [r for r in raw if r["row"] == key]
        if not got:
            continue
        d1 = [r["tier1"] - full[r["seed"]]["tier1"] for r in got if r["seed"] in full]
        d2 = [r["two_tier"] - full[r["seed"]]["two_tier"] for r in got if r["seed"] in full]
        table.append({
            "configuration": label, "seed 000 Table 1": f"{paper:.3f}" if paper == paper else "-",
            "Tier 1 C-index": mean_sd(r["tier1"] for r in got),
            "delta vs full (Tier 1)": "-" if key == "full" else mean_sd(d1),
            "Tier 1, covered": mean_sd(r["tier1_covered"] for r in got),
            "two-tier, covered": mean_sd(r["two_tier"] for r in got),
            "delta vs full (two-tier)": "-" if key == "full" else mean_sd(d2),
            "seeds": len(got),
        })
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    p.add_argument("--data", type=Path, help="a cohort folder used for every seed (default: generated per seed)")
    p.add_argument("--rows", nargs="+", choices=[r[0] for r in ROWS + EXTRA_ROWS],
                   help="subset of rows (default: all Table 1 rows)")
    p.add_argument("--extra-rows", action="store_true", help="add the rows that switch the estimator off")
    p.add_argument("--patients", type=int, default=1679)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override applied to every row (e.g. rounds=20)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    every = ROWS + EXTRA_ROWS
    rows = [r for r in every if (r[0] in args.rows if args.rows else r in ROWS or args.extra_rows)]
    extra = _parse_sets(args.set)
    raw = []
    jobs = [(s, r) for s in args.seeds for r in rows]
    for seed, (key, label, paper, over) in progress(jobs, desc="ablation runs", unit="run"):
        cohort = args.data or cohort_for_seed(args.out, seed, args.patients)
        m = run_cached(cohort, args.out / "ablation" / f"seed-{seed}" / key, {"seed": seed, **extra, **over})
        c = m["two_tier"]["c_index"]
        raw.append({"seed": seed, "row": key, "configuration": label, "paper": paper,
                    "tier1": m["federated"]["c_index"], "tier1_pairs": m["federated"]["c_index_combined_pairs"],
                    "tier1_covered": c["tier1_covered"], "two_tier": c["two_tier_covered"],
                    "wall_s": m["timing_s"]["total"]})
    table = summarise(raw, rows)
    src = (f"cohort {args.data} (fixed splits; seeds vary the models)" if args.data else
           f"default FUSCC-style synthetic cohort ({args.patients} patients, 4 sites) generated per seed and shared by all rows")
    notes = (f"Seeds {' '.join(map(str, args.seeds))}; {src}; run-config overrides for every row: "
             f"{extra or 'none'}. Tier 1 C-index = `federated.c_index` (pooled test split); 'covered' columns = "
             "`two_tier.c_index.tier1_covered` / `two_tier_covered` (pair-weighted per-site combination on "
             "non-abstained test patients). Deltas are mean +- sd of per-seed paired differences. The seed's "
             "numbers come from a different (real) cohort and are shown for orientation only. The two Tier 2 "
             "rows change only Tier 2, so their Tier 1 columns equal the full model's.")
    text = write_results(args.out, "ablation", table, "Table-1 ablation (federated, Flower simulation)", notes, raw=raw)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
