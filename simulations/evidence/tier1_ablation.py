"""Table 1's Tier 1 components, each switched off from the default Tier 1, on every cohort (centralised training).

    python -m rmmfed.simulations.evidence.tier1_ablation --seeds 0 1 2 3 4 --out runs/tier1-ablation \
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad] [--data-root ../shared/data]

Each row switches one component off (or, ``first-release-training``, trains with Adam 1e-4, a constant lr,
one epoch and C-index selection) and trains Tier 1 with the
same model, loop and selection criterion as the federation, but on the pooled training splits
(``simulations/pooled.py``: simulation only). Centralised rmm is within about 0.01-0.02 of federated
rmm on these cohorts (``evidence.tier1_cohorts``), and it takes seconds instead of a Flower run, so
every row can be measured on every cohort over seeds; the federated Table 1 is ``evidence.ablation``.
Reported: test C-index per cohort (mean +- sd over seeds) and the mean over seeds of each row's
change against the full model (paired by seed). The TCGA test splits hold 72-100 patients: changes
under about 0.02 are within noise. Writes OUT/tier1_ablation.md, .csv and _raw.csv.
"""

from __future__ import annotations

import statistics

import pandas as pd

from .common import cohort_for_seed, evidence_parser, mean_sd, progress, set_threads, write_results
from .tier1_cohorts import DEFAULT_COHORTS, centralised_rmm

ROWS: list[tuple[str, str, dict]] = [  # key, label, overrides
    ("full", "Full Tier 1 (issue-12 defaults: concatenation)", {}),
    ("no-augmentation", "w/o modality augmentation", {"model.modality-dropout": 0.0}),
    ("no-modality-prompts", "w/o modality-aware prompts", {"model.modality-prompts": False}),
    ("no-missing-prompts", "w/o missing-aware prompts", {"model.missing-prompts": False}),
    ("no-pseudo", "w/o learnable pseudo-embeddings (zero-fill)", {"model.pseudo-embeddings": False}),
    ("no-estimator", "w/o estimator f_phi in the head", {"model.estimator": False}),
    ("attention", "token fusion instead of concatenation", {"model.fusion": "attention"}),
    ("pseudo-in-head", "token fusion, pseudo-embedding also added in the head",
     {"model.fusion": "attention", "model.pseudo-in-head": True}),
    ("attention-no-pseudo", "token fusion, zero-fill", {"model.fusion": "attention", "model.pseudo-embeddings": False}),
    ("attention-no-prompts", "token fusion, w/o modality-aware prompts",
     {"model.fusion": "attention", "model.modality-prompts": False}),
    ("no-linear", "w/o linear Cox path", {"model.linear-path": False}),
    ("no-reduction", "w/o federated PCA (raw wide modalities)", {"model.reduce-dim": 0}),
    ("auto-widths", "(variant) widths scaled to the training patients", {"model.widths": "auto"}),
    ("first-release-training", "first release's training (Adam 1e-4, constant lr, 1 epoch, C-index selection)",
     {"optimizer": "adam", "weight-decay": 1e-4, "lr-schedule": "constant", "min-local-steps": 0,
      "select-metric": "c-index", "model.input-dropout": 0.0}),
]


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/tier1-ablation", DEFAULT_COHORTS)
    p.add_argument("--rows", nargs="*", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    args = p.parse_args(argv)
    if args.threads > 0:
        set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "tier1_ablation_cache.csv"
    raw = pd.read_csv(cache).to_dict("records") if cache.is_file() else []
    done = {(r["cohort"], int(r["seed"]), r["row"]) for r in raw}
    rows = [r for r in ROWS if r[0] in args.rows]
    skipped = []
    jobs = [(c, s, r) for c in args.cohorts for s in args.seeds for r in rows]
    for cohort, seed, (key, label, over) in progress(jobs, desc="tier1 ablation"):
        if (cohort, seed, key) in done:
            continue
        data = cohort_for_seed(args.out, seed) if cohort == "default" else args.data_root / cohort
        if not data.is_dir():
            skipped.append(cohort)
            continue
        raw.append({"cohort": cohort, "seed": seed, "row": key, "label": label,
                    "c_index": centralised_rmm(data, {"seed": seed, **over})})
        pd.DataFrame(raw).to_csv(cache, index=False)
    df = pd.DataFrame(raw)
    df = df[df["cohort"].isin(args.cohorts) & df["seed"].isin(args.seeds) & df["row"].isin(args.rows)]
    cohorts = [c for c in args.cohorts if c in set(df["cohort"])]
    full = df[df["row"] == "full"].set_index(["cohort", "seed"])["c_index"]
    table = []
    for key, label, _ in rows:
        sub = df[df["row"] == key]
        out = {"row": label}
        deltas = []
        for c in cohorts:
            s = sub[sub["cohort"] == c]
            out[c] = mean_sd(s["c_index"])
            d = [v - full.get((c, sd), float("nan")) for sd, v in zip(s["seed"], s["c_index"])]
            d = [x for x in d if x == x]
            out[f"{c} change"] = f"{statistics.mean(d):+.3f}" if d and key != "full" else ""
            deltas += d
        out["mean change"] = f"{statistics.mean(deltas):+.3f}" if deltas and key != "full" else ""
        table.append(out)
    notes = ("Centralised Tier 1 (the federation's model, loop and selection on the pooled training splits; "
             "simulation only), test C-index mean +- sd over seeds; 'change' = mean over seeds of the row minus "
             "the full model on the same seed. TCGA test splits hold 72-100 patients: changes under about 0.02 "
             "are within noise.")
    if skipped:
        notes += f" Skipped (no folder under {args.data_root}): {', '.join(sorted(set(skipped)))}."
    print(write_results(args.out, "tier1_ablation", table, "Tier 1 ablation on the issue-12 architecture", notes,
                        raw=df.to_dict("records")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
