"""The visual run report: OUT/report.md and its HTML twin OUT/report.html, with the PNG figures.

The tables come from :func:`~rmmfed.server.outputs.render_report`; this module adds uncertainty
quality, the cohort's own numbers (when metrics.json has them), the figures and notes. What the
server can draw in any run (the summed calibration histogram with theta, routes and referral per
site) is :func:`server_figures`; a simulation adds patient-level figures it computed itself.
Both files are written through temporary names and renamed, like every other output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .markdown_html import markdown_to_html
from .outputs import render_report
from .plots import (Figure, risk_coverage, routes_per_site, summed_histogram, survival_calibration,
                    uncertainty_quality_forest)
from .summary import QUALITY_TARGETS, cohort_facts, rho_ci, risk_distribution, uncertainty_quality

DEPLOYMENT_NOTE = ("This is a deployment: the server holds no patient rows, so it draws only what it has "
                   "(summed histograms, per-site counts, rates and correlations). Kaplan-Meier curves, uncertainty against "
                   "actual error and the C-index by missingness pattern need patient-level predictions, which "
                   "stay at the sites (a simulation, `rmm-simulate`, draws them).")


def calibration_arrays(out: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(bin edges, summed counts, theta, quantile) from OUT/calibration.json."""
    c = json.loads((out / "calibration.json").read_text())
    edges = np.array([np.inf if e == "inf" else float(e) for e in c["bin_edges"]])
    return edges, np.asarray(c["counts"], float), float(c["theta"]), float(c["quantile"])


def server_figures(metrics: dict[str, Any], out: Path, *, per_site_hist: dict[str, np.ndarray] | None = None
                   ) -> list[Figure]:
    """The figures a server can draw from what it holds (calibration.json and metrics.json in ``out``)."""
    edges, counts, theta, q = calibration_arrays(out)
    figs = [summed_histogram(edges, counts, theta, q, out, per_site=per_site_hist)]
    r = metrics["routing"]
    figs.append(routes_per_site(r["route_counts_per_site"], r["referral_rate_per_site"], out))
    unc = metrics.get("uncertainty")
    if isinstance(unc, dict) and unc.get("per_site"):
        figs.append(uncertainty_quality_forest(unc, out))
    surv = metrics.get("survival")
    if isinstance(surv, dict) and surv.get("calibration", {}).get("groups"):
        figs.append(survival_calibration(surv, out))
    curve = metrics.get("risk_coverage")
    if isinstance(curve, dict) and curve.get("points"):
        figs.append(risk_coverage(curve, metrics.get("conformal"), out))
    return figs


def quality_table(metrics: dict[str, Any]) -> list[str]:
    """Per-site Spearman of sigma^2 with each target, with intervals and counts (markdown lines)."""
    unc = metrics.get("uncertainty")
    if not isinstance(unc, dict) or not unc.get("per_site"):
        return []
    lines = ["| site | patients | rows | " + " | ".join(f"vs {label} [95% CI]" for _, label in QUALITY_TARGETS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in QUALITY_TARGETS) + " |"]
    for s, v in unc["per_site"].items():
        lines.append(f"| {s} | {v.get('n_patients')} | {v.get('n_rows')} | "
                     + " | ".join(rho_ci(v.get(key, {})) for key, _ in QUALITY_TARGETS) + " |")
    comb = [unc.get(key) or {} for key, _ in QUALITY_TARGETS]
    lines.append(f"| combined ({comb[0].get('n_sites', 0)} sites) | {comb[0].get('n_patients', 0)} | | "
                 + " | ".join(rho_ci(c) for c in comb) + " |")
    return lines + ["", f"Method: {unc.get('method', 'n/a')}.", ""]


def report_markdown(metrics: dict[str, Any], figures: list[Figure], notes: list[str] | None = None) -> str:
    lines = [render_report(metrics).rstrip(), ""]
    quality = uncertainty_quality(metrics)
    if quality:
        lines += ["## Uncertainty quality", ""] + [f"- {label}: {value}" for label, value in quality] + [""]
        lines += quality_table(metrics)
    risk = risk_distribution(metrics)
    if risk:
        lines += ["## What the missing exams would change", ""] + [f"- {label}: {value}" for label, value in risk] + [""]
    facts = cohort_facts(metrics)
    if facts:
        lines += ["## Cohort", ""] + [f"- {label}: {value}" for label, value in facts] + [""]
    failed = metrics.get("failed_steps") or {}
    if failed:
        lines += ["## Steps that failed", ""] + [f"- {s}: {why}" for s, why in failed.items()] + [""]
    if figures or notes:
        lines += ["## Figures", ""]
    for note in notes or []:
        lines += [note, ""]
    for fig in figures:
        lines += [f"### {fig.title}", "", f"![{fig.title}]({fig.file})", "", fig.caption, ""]
    return "\n".join(lines)


def write_report(out: Path, metrics: dict[str, Any], figures: list[Figure], notes: list[str] | None = None) -> list[Path]:
    """Write report.md and report.html into ``out`` (atomically); returns their paths."""
    text = report_markdown(metrics, figures, notes)
    written = []
    for name, content in (("report.md", text), ("report.html", markdown_to_html(text))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(out / name)
        written.append(out / name)
    return written
