"""A visual Markdown report of one finished run (+ its cohort), with PNGs (matplotlib, Agg).

    python -m rmmfed.simulations.evidence.report --run RUN [--data COHORT] [--out DIR] [--robustness CSV]

Sections: Kaplan-Meier curves of the test split by predicted-risk tertile (cut points = tertiles of
the training split's risk) with the log-rank p-value; Tier 1 uncertainty histogram from
calibration.json with theta marked, plus each site's distribution recomputed from its validation
data (simulation only); routes per site from metrics.json; C-index by missingness pattern on the test
split; robustness curves when a robustness CSV exists (``--robustness`` or OUT/robustness.csv).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ...core.uncertainty import calibration_uncertainties  # noqa: E402
from .common import LoadedRun, fmt, markdown_table, run_split_risks, safe_c_index, set_threads  # noqa: E402


def km_tertiles(run: LoadedRun, sites, out: Path) -> str:
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    train, test = run_split_risks(run, sites, "train"), run_split_risks(run, sites, "test")
    cuts = np.quantile(train.risk, [1 / 3, 2 / 3])
    group = np.digitize(test.risk, cuts)
    names = ["low risk", "middle risk", "high risk"]
    p = multivariate_logrank_test(test.time, group, test.event).p_value
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, name in enumerate(names):
        sel = group == g
        if sel.any():
            KaplanMeierFitter().fit(test.time[sel], test.event[sel], label=f"{name} (n={sel.sum()})").plot_survival_function(ax=ax, ci_show=False)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_title(f"Test split by Tier 1 risk tertile (log-rank p = {p:.2g})")
    fig.tight_layout()
    fig.savefig(out / "km_tertiles.png", dpi=120)
    plt.close(fig)
    return (f"![KM by risk tertile](km_tertiles.png)\n\nTest split ({len(test.time)} patients), tertile cut points from the "
            f"training split's Tier 1 risk; multivariate log-rank p = {p:.3g}; C-index {fmt(test.c_index())}.\n")


def uncertainty_hist(run: LoadedRun, run_dir: Path, sites, out: Path) -> str:
    calib = json.loads((run_dir / "calibration.json").read_text())
    edges = np.array([np.inf if e == "inf" else float(e) for e in calib["bin_edges"]])
    counts = np.asarray(calib["counts"], float)
    nz = np.flatnonzero(counts)
    lo, hi = max(nz[0] - 5, 1), min(nz[-1] + 6, len(counts) - 1)
    centers = np.sqrt(edges[lo:hi] * edges[lo + 1:hi + 1])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(edges[lo:hi], counts[lo:hi] / counts.sum(), width=np.diff(edges[lo:hi + 1]), align="edge",
           alpha=0.4, label="all sites (summed histograms)")
    for s in sites:  # simulation only: each site's values from its validation complete cases
        val = run.tensors(s).subset(s.indices("val"))
        v = calibration_uncertainties(run.model, val, seed=run.cfg.seed)
        if len(v):
            c = np.histogram(v, bins=edges[lo:hi + 1])[0]
            ax.step(centers, c / max(len(v), 1), where="mid", label=f"{s.site} (n={len(v)})")
    ax.axvline(calib["theta"], color="k", ls="--", label=f"theta = {calib['theta']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("Tier 1 uncertainty sigma^2 (masked complete validation cases)")
    ax.set_ylabel("share per bin")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "uncertainty.png", dpi=120)
    plt.close(fig)
    return (f"![uncertainty histogram](uncertainty.png)\n\nBars: the federated histogram (calibration.json, "
            f"{int(counts.sum())} values); lines: each site's values recomputed from its validation split "
            f"(simulation only). theta = {calib['theta']:.4g} (quantile {calib['quantile']}).\n")


def routing(metrics: dict, out: Path) -> str:
    r = metrics["routing"]
    rows, sites = [], list(r["route_counts_per_site"])
    shares = {k: [] for k in ("tier1", "tier2", "abstain")}
    for s in sites:
        c = r["route_counts_per_site"][s]
        n = sum(c.values())
        for k in shares:
            shares[k].append(c[k] / n if n else np.nan)
        rows.append({"site": s, "n test": n, "Tier 1": c["tier1"], "Tier 2": c["tier2"], "abstain": c["abstain"],
                     "referral rate": r["referral_rate_per_site"][s], "abstention rate": c["abstain"] / n if n else np.nan,
                     "masked-complete referral": r["masked_complete_referral_rate_per_site"][s]})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(sites))
    for k, v in shares.items():
        ax.bar(sites, v, bottom=bottom, label=k)
        bottom += np.nan_to_num(v)
    ax.set_ylabel("share of test patients")
    ax.set_title("Routes per site")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "routing.png", dpi=120)
    plt.close(fig)
    return "![routes per site](routing.png)\n\n" + markdown_table(rows)


def by_pattern(run: LoadedRun, sites, out: Path) -> str:
    from .common import split_tensors

    data, _ = split_tensors(run, sites, "test")
    test = run_split_risks(run, sites, "test")
    pres = data.present.numpy()
    labels = np.array(["+".join(m for m, p in zip(run.dims, row) if p) or "none" for row in pres])
    rows = []
    for lab in sorted(set(labels), key=lambda x: (x == "none", -x.count("+"), x)):
        sel = labels == lab
        rows.append({"modalities present": lab, "n": int(sel.sum()), "events": int(test.event[sel].sum()),
                     "C-index": safe_c_index(test.time[sel], test.risk[sel], test.event[sel]) if sel.sum() >= 5 else np.nan})
    ok = [r for r in rows if not np.isnan(r["C-index"])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([f"{r['modalities present']} (n={r['n']})" for r in ok], [r["C-index"] for r in ok])
    ax.axvline(0.5, color="k", lw=0.8)
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("Tier 1 C-index (test split)")
    fig.tight_layout()
    fig.savefig(out / "pattern_cindex.png", dpi=120)
    plt.close(fig)
    return ("![C-index by missingness pattern](pattern_cindex.png)\n\n" + markdown_table(rows)
            + "\nC-index within each pattern (n/a under 5 patients or without a comparable pair); small groups are noisy.\n")


def robustness_plot(csv: Path, out: Path) -> str:
    df = pd.read_csv(csv)
    rate_cols = [c for c in df.columns if c.startswith("r=")]
    rates = [float(c[2:]) for c in rate_cols]
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in df.iterrows():
        ax.plot(rates, row[rate_cols].to_numpy(float), marker="o", label=row["method"])
    ax.set_xlabel("extra test-time missing rate r (per present modality, >= 1 kept)")
    ax.set_ylabel("C-index (test split)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "robustness.png", dpi=120)
    plt.close(fig)
    return f"![robustness curves](robustness.png)\n\nFrom `{csv}`.\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, help="the run's cohort (default: RUN/cohort)")
    p.add_argument("--out", type=Path, help="report folder (default: RUN/evidence-report)")
    p.add_argument("--robustness", type=Path, help="a robustness.csv (default: OUT/robustness.csv if present)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    out = args.out or args.run / "evidence-report"
    out.mkdir(parents=True, exist_ok=True)
    run = LoadedRun(args.run)
    sites = run.load_sites(args.data or args.run / "cohort")
    metrics = json.loads((args.run / "metrics.json").read_text())
    parts = [f"# rmm evidence report: `{args.run}`\n",
             f"Federated Tier 1 C-index (pooled test) {fmt(metrics['federated']['c_index'])}; theta "
             f"{metrics['calibration']['theta']:.4g}; selected round {metrics.get('selected_round')}.\n",
             "## Kaplan-Meier by predicted risk tertile\n", km_tertiles(run, sites, out),
             "## Uncertainty and theta\n", uncertainty_hist(run, args.run, sites, out),
             "## Referral and abstention per site\n", routing(metrics, out),
             "## C-index by missingness pattern\n", by_pattern(run, sites, out)]
    csv = args.robustness or out / "robustness.csv"
    if csv.is_file():
        parts += ["## Robustness to test-time missingness\n", robustness_plot(csv, out)]
    (out / "report.md").write_text("\n".join(parts))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
