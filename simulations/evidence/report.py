"""A visual Markdown report of one finished run (+ its cohort), with PNGs (matplotlib, Agg).

    python -m rmmfed.simulations.evidence.report --run RUN [--data COHORT] [--out DIR] [--robustness CSV]

The figures are drawn by ``server/plots.py``, the same functions as every run's own report.md.
Sections: Kaplan-Meier curves of the test split by predicted-risk tertile (cut points = tertiles of
the training split's Tier 1 risk) with the log-rank p-value; Tier 1 uncertainty histogram from
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

from ...core.routing.uncertainty import calibration_uncertainties  # noqa: E402
from ...server.plots import cindex_by_pattern, km_by_risk_group, routes_per_site, summed_histogram  # noqa: E402
from .common import LoadedRun, fmt, markdown_table, run_split_risks, safe_c_index, set_threads  # noqa: E402


def km_tertiles(run: LoadedRun, sites, out: Path) -> str:
    train, test = run_split_risks(run, sites, "train"), run_split_risks(run, sites, "test")
    cuts = np.quantile(train.risk, [1 / 3, 2 / 3])
    fig = km_by_risk_group(test.time, test.event, np.digitize(test.risk, cuts), ["low risk", "middle risk", "high risk"],
                           out, note=" (Tier 1 risk; cut points: tertiles of the training split's Tier 1 risk)")
    return f"![{fig.title}]({fig.file})\n\n{fig.caption} C-index {fmt(test.c_index())}.\n"


def uncertainty_hist(run: LoadedRun, run_dir: Path, sites, out: Path) -> str:
    from ...server.run_report import calibration_arrays

    edges, counts, theta, q = calibration_arrays(run_dir)
    per_site = {}
    for s in sites:  # simulation only: each site's values from its validation complete cases
        val = run.tensors(s).subset(s.indices("val"))
        v = calibration_uncertainties(run.model, val, seed=run.cfg.seed)
        if len(v):
            per_site[s.site] = np.histogram(v, bins=edges)[0]
    fig = summed_histogram(edges, counts, theta, q, out, per_site=per_site)
    return f"![{fig.title}]({fig.file})\n\n{fig.caption}\n"


def routing(metrics: dict, out: Path) -> str:
    r = metrics["routing"]
    rows = []
    for s, c in r["route_counts_per_site"].items():
        n = sum(c.values())
        rows.append({"site": s, "n test": n, "Tier 1": c["tier1"], "Tier 2": c["tier2"], "abstain": c["abstain"],
                     "referral rate": r["referral_rate_per_site"][s], "abstention rate": c["abstain"] / n if n else np.nan,
                     "masked-complete referral": r["masked_complete_referral_rate_per_site"][s]})
    fig = routes_per_site(r["route_counts_per_site"], r["referral_rate_per_site"], out)
    return f"![{fig.title}]({fig.file})\n\n" + markdown_table(rows)


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
    fig = cindex_by_pattern([r["modalities present"] for r in rows], [r["n"] for r in rows], [r["C-index"] for r in rows], out)
    return (f"![{fig.title}]({fig.file})\n\n" + markdown_table(rows)
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
