"""The run report's figures, each one PNG drawn with matplotlib (Agg) from plain arrays.

Two kinds of input: what a server holds in any run (summed histograms, per-site counts and rates),
and patient-level arrays that only a simulation has (risks, times, sigma^2 and recovery errors of
the pooled test split). Every function writes ``out/<name>.png`` and returns a :class:`Figure` with the
caption the report prints under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

ROUTE_COLORS = {"tier1": "#4c78a8", "tier2": "#f58518", "abstain": "#9d9d9d"}
GROUP_COLORS = ("#54a24b", "#eeca3b", "#e45756")
DPI = 130


@dataclass(frozen=True)
class Figure:
    file: str  # PNG name inside the run folder
    title: str
    caption: str


def _log_x(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 x 10^k in plain numbers (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def km_by_risk_group(time: np.ndarray, event: np.ndarray, group: np.ndarray, names: list[str], out: Path,
                     *, note: str = "") -> Figure:
    """Kaplan-Meier curves per risk group (``group`` indexes ``names``; -1 = left out) with the
    multivariate log-rank p-value."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    keep = group >= 0
    t, e, g = np.asarray(time, float)[keep], np.asarray(event, int)[keep], np.asarray(group)[keep]
    used = sorted(set(g.tolist()))
    p = multivariate_logrank_test(t, g, e).p_value if len(used) > 1 else float("nan")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in used:
        sel = g == k
        km = KaplanMeierFitter().fit(t[sel], e[sel], label=f"{names[k]} (n={int(sel.sum())}, {int(e[sel].sum())} events)")
        km.plot_survival_function(ax=ax, ci_show=True, ci_alpha=0.07, color=GROUP_COLORS[k % len(GROUP_COLORS)], lw=2)
    ax.set_xlabel("follow-up time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Kaplan-Meier by predicted risk group (log-rank p = {p:.2g})")
    ax.legend(loc="lower left", fontsize=9)
    name = _save(fig, out, "km_risk_groups.png")
    return Figure(name, "Kaplan-Meier by risk group",
                  f"{int(keep.sum())} test patients in {len(used)} groups{note}; multivariate log-rank p = {p:.3g}.")


def uncertainty_vs_error(sigma2: np.ndarray, error: np.ndarray, site: np.ndarray, theta: float, out: Path) -> Figure:
    """Tier 1 sigma^2 against its actual recovery error, one point per (masked complete case, pattern)."""
    from scipy.stats import spearmanr

    s2, err, site = np.asarray(sigma2, float), np.asarray(error, float), np.asarray(site)
    ok = np.isfinite(s2) & np.isfinite(err) & (s2 > 0)
    rho = float(spearmanr(s2[ok], err[ok]).statistic) if ok.sum() >= 3 else float("nan")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted(set(site[ok].tolist())):
        sel = ok & (site == name)
        ax.scatter(s2[sel], err[sel], s=10, alpha=0.45, label=f"{name} (n={int(sel.sum())})")
    if ok.sum() >= 20:  # mean error per decile of sigma^2: the trend the points hide
        cuts = np.quantile(s2[ok], np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(cuts, s2[ok], side="right") - 1, 0, 9)
        xs = [np.exp(np.mean(np.log(s2[ok][idx == b]))) for b in range(10) if (idx == b).any()]
        ys = [np.mean(err[ok][idx == b]) for b in range(10) if (idx == b).any()]
        ax.plot(xs, ys, color="k", marker="o", lw=2, label="mean error per sigma^2 decile")
    if np.isfinite(theta) and theta > 0:
        ax.axvline(theta, color="k", ls="--", lw=1.2, label=f"theta = {theta:.3g}")
    _log_x(ax)
    ax.set_xlabel("Tier 1 uncertainty sigma^2")
    ax.set_ylabel("actual recovery error (MSE, standardised features)")
    ax.set_title(f"Uncertainty vs actual error (Spearman rho = {rho:.2f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = _save(fig, out, "uncertainty_vs_error.png")
    above = ok & (s2 > theta)
    msg = (f"{int(ok.sum())} (patient, masking pattern) pairs of complete test cases; Spearman rho = {rho:.3f}. "
           f"Mean error above theta {np.mean(err[above]):.3f} vs at or below {np.mean(err[ok & ~above]):.3f}."
           if above.any() and (ok & ~above).any() else f"{int(ok.sum())} pairs; Spearman rho = {rho:.3f}.")
    return Figure(name, "Uncertainty vs actual error", msg)


def summed_histogram(edges: np.ndarray, counts: np.ndarray, theta: float, quantile: float, out: Path,
                     *, per_site: dict[str, np.ndarray] | None = None) -> Figure:
    """The federated (summed) histogram of Tier 1 uncertainty on a log axis, theta marked; optionally
    each site's share per bin (simulation only: the server never sees per-site values)."""
    edges, counts = np.asarray(edges, float), np.asarray(counts, float)
    nz = np.flatnonzero(counts)
    if len(nz) == 0:
        raise ValueError("summed_histogram: every count is zero")
    lo, hi = max(int(nz[0]) - 3, 1), min(int(nz[-1]) + 4, len(counts) - 1)  # skip under/overflow bins
    total = counts.sum()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(edges[lo:hi], counts[lo:hi] / total, width=np.diff(edges[lo:hi + 1]), align="edge", color="#9ecae9",
           edgecolor="#4c78a8", lw=0.4, label=f"all sites, summed histograms (n={int(total)})")
    for name, c in (per_site or {}).items():
        c = np.asarray(c, float)
        if c.sum() > 0:
            centers = np.sqrt(edges[lo:hi] * edges[lo + 1:hi + 1])
            ax.step(centers, c[lo:hi] / c.sum(), where="mid", lw=1.2, label=f"{name} (n={int(c.sum())})")
    ax.axvline(theta, color="k", ls="--", lw=1.5, label=f"theta = {theta:.3g} (q = {quantile})")
    _log_x(ax)
    ax.set_xlabel("Tier 1 uncertainty sigma^2 (masked complete validation cases)")
    ax.set_ylabel("share of values per bin")
    ax.set_title("Federated calibration histogram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = _save(fig, out, "uncertainty_histogram.png")
    above = counts[np.searchsorted(edges, theta, side="right"):].sum() / total
    return Figure(name, "Uncertainty histogram and theta",
                  f"Summed site histograms ({int(total)} values); theta = {theta:.4g} at quantile {quantile}; "
                  f"{above:.1%} of the histogrammed values lie in bins above the one holding theta."
                  + (" Lines: each site's values (simulation only)." if per_site else ""))


def routes_per_site(route_counts: dict[str, dict[str, int]], referral: dict[str, float | None], out: Path) -> Figure:
    """Left: stacked shares of the test patients' routes per site. Right: referral and abstention
    rates per site as bars with their values (the small shares the stack cannot show)."""
    sites = list(route_counts)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [1.1, 1]})
    x = np.arange(len(sites))
    bottom = np.zeros(len(sites))
    totals = np.array([max(sum(route_counts[s].values()), 1) for s in sites], float)
    for route in ("tier1", "tier2", "abstain"):
        share = np.array([route_counts[s].get(route, 0) for s in sites], float) / totals
        ax.bar(x, share, bottom=bottom, color=ROUTE_COLORS[route], label=route)
        bottom += share
    for i in range(len(sites)):
        ax.text(i, 0.5, f"n={int(totals[i])}", ha="center", va="center", color="white", fontsize=9)
    ax.set_xticks(x, sites)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of test patients")
    ax.set_title("Routes per site")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ref = np.array([np.nan if referral.get(s) is None else referral[s] for s in sites], float)
    abst = np.array([route_counts[s].get("abstain", 0) for s in sites], float) / totals
    w = 0.38
    for off, vals, label, color in ((-w / 2, ref, "referral (to Tier 2)", ROUTE_COLORS["tier2"]),
                                    (w / 2, abst, "abstention", ROUTE_COLORS["abstain"])):
        ax2.bar(x + off, np.nan_to_num(vals), width=w, color=color, label=label)
        for xi, v in zip(x + off, vals):
            ax2.text(xi, (0 if np.isnan(v) else v) + 0.003, "n/a" if np.isnan(v) else f"{v:.1%}", ha="center",
                     va="bottom", fontsize=8)
    top = np.nanmax(np.concatenate([ref, abst, [0.01]]))
    ax2.set_ylim(0, top * 1.25)
    ax2.set_xticks(x, sites)
    ax2.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax2.set_title("Referral and abstention rate per site")
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    name = _save(fig, out, "routes_per_site.png")
    return Figure(name, "Routes and referral per site",
                  "Share of each site's test patients per route; referral = routed to Tier 2 (uncertainty above "
                  "theta or a high-risk context); abstention = no modality present, or Tier 2 too uncertain.")


def cindex_by_pattern(labels: list[str], n: list[int], cindex: list[float], out: Path) -> Figure:
    """Horizontal bars: the C-index within each missingness pattern, with the patients per pattern."""
    order = [i for i in range(len(labels)) if np.isfinite(cindex[i])]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(order) + 1.5)))
    y = np.arange(len(order))
    vals = [cindex[i] for i in order]
    ax.barh(y, vals, color="#4c78a8")
    ax.set_yticks(y, [f"{labels[i]} (n={n[i]})" for i in order])
    for yi, v in zip(y, vals):
        ax.text(min(v, 0.93) + 0.005, yi, f"{v:.3f}", va="center", fontsize=9, family="sans-serif")
    ax.axvline(0.5, color="k", lw=0.8)
    ax.set_xlim(0.3, 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("Tier 1 C-index within the pattern (test split)")
    ax.set_title("C-index by missingness pattern (modalities present)")
    ax.grid(axis="x", alpha=0.3)
    name = _save(fig, out, "cindex_by_pattern.png")
    left = [labels[i] for i in range(len(labels)) if i not in order]
    return Figure(name, "C-index by missingness pattern",
                  "Patterns with under 5 patients or no comparable pair are left out"
                  + (f" ({', '.join(left)})" if left else "") + "; small groups are noisy.")


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def uncertainty_quality_forest(unc: dict, out: Path) -> Figure:
    """Forest plot from metrics.json's ``uncertainty`` section (scalars only, so any run can draw it):
    each site's Spearman rho of sigma^2 with the recovery error and with the risk gap, its patient
    bootstrap interval, and the fixed-effect Fisher-z combination over sites as a diamond."""
    targets = (("spearman_error", "sigma^2 vs recovery error"), ("spearman_risk_error", "sigma^2 vs |risk change|"),
               ("spearman_risk_sd_change", "risk SD vs |risk change|"))
    targets = tuple(t for t in targets if t[0] in unc)  # runs before the risk SD have two
    per_site = unc.get("per_site") or {}
    sites = list(per_site)
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), max(2.8, 0.45 * (len(sites) + 1) + 1.6)),
                             sharey=True)
    y_comb = len(sites)
    for ax, (key, label) in zip(axes, targets):
        for i, s in enumerate(sites):
            d = per_site[s].get(key, {})
            rho, lo, hi = _num(d.get("rho")), _num(d.get("ci_low")), _num(d.get("ci_high"))
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [i, i], color="#4c78a8", lw=2)
            if np.isfinite(rho):
                ax.plot([rho], [i], "s", color="#4c78a8", ms=7)
            else:
                ax.text(0, i, "n/a", ha="center", va="center", fontsize=8)
        c = unc.get(key) or {}
        rho, lo, hi = _num(c.get("rho")), _num(c.get("ci_low")), _num(c.get("ci_high"))
        if np.isfinite(rho) and np.isfinite(lo) and np.isfinite(hi):
            ax.fill([lo, rho, hi, rho], [y_comb, y_comb - 0.25, y_comb, y_comb + 0.25], color="k")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("Spearman rho (95% interval)")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    comb = unc.get("spearman_error") or {}
    labels = [f"{s} (n={per_site[s].get('n_patients', '?')})" for s in sites]
    labels.append(f"combined ({comb.get('n_sites', 0)} sites)")
    axes[0].set_yticks(np.arange(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.4, -0.6)  # sites top to bottom, the combination last
    name = _save(fig, out, "uncertainty_quality.png")
    return Figure(name, "Uncertainty quality per site",
                  f"Spearman rho of Tier 1's sigma^2 ({unc.get('definition', '?')}) with its recovery error (left) and "
                  "with the risk change |risk with the modalities hidden - risk with them seen| (middle), and of the "
                  "risk's SD over draws of the hidden features with that change (right), on masked complete test "
                  "cases; bars: 95% bootstrap intervals over each site's patients (n = patients). Diamond: "
                  "fixed-effect Fisher-z combination of the sites' rho weighted by n - 3 (a meta-analysis of "
                  "per-site correlations, not the Spearman of pooled data).")


def survival_calibration(survival: dict, out: Path) -> Figure:
    """Predicted against observed event probability at the calibration horizon, one point per site group
    (core/survival/survival_metrics.py), sized by its patients, with the diagonal of perfect calibration."""
    cal = survival["calibration"]
    groups = cal["groups"]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    pred = np.array([g["predicted"] for g in groups])
    obs = np.array([g["observed"] for g in groups])
    n = np.array([g["n"] for g in groups], dtype=float)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect calibration")
    ax.scatter(pred, obs, s=20 + 180 * n / max(n.max(), 1), color="#4c78a8", alpha=0.7, label="site group")
    ax.set_xlim(0, 1), ax.set_ylim(0, max(1.0, float(obs.max()) + 0.05) if obs.size else 1.0)
    ax.set_xlabel(f"predicted P(event by t = {cal['horizon']:.4g})")
    ax.set_ylabel("observed (IPCW, site's own censoring)")
    err = cal.get("binned_error")
    ax.set_title("Tier 1 calibration at the horizon" + (f" (binned error {err:.3f})" if err is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    name = _save(fig, out, "survival_calibration.png")
    return Figure(name, "Calibration at the horizon",
                  "Each point is one site's group of test patients (fixed probability bins, coarser where a bin "
                  "would hold fewer than the site's floor); the observed probability is the IPCW estimate. "
                  f"Integrated Brier score {survival.get('ibs', float('nan')):.3f}.")


def risk_coverage(curve: dict, conformal: dict | None, out: Path) -> Figure:
    """Tier 1's C-index on the test patients it keeps, against the share referred (routing score above a
    threshold placed at calibration quantiles), from the sites' pair counts."""
    pts = [p for p in curve.get("points", []) if p.get("referral_rate") is not None
           and p.get("tier1_c_index_kept") is not None and np.isfinite(_num(p["tier1_c_index_kept"]))]
    pts.sort(key=lambda p: p["referral_rate"])
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    x = [100 * p["referral_rate"] for p in pts]
    y = [p["tier1_c_index_kept"] for p in pts]
    ax.plot(x, y, marker="o", color="#4c78a8")
    for p, xi, yi in zip(pts, x, y):
        ax.annotate(f"q={p['calibration_quantile']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("test patients referred (%)")
    ax.set_ylabel("Tier 1 C-index on the patients kept")
    cov = (conformal or {}).get("tier1") or {}
    extra = f"; Tier 1 conformal coverage {cov['coverage']:.2f}" if cov.get("coverage") is not None else ""
    ax.set_title("Risk-coverage" + extra, fontsize=10)
    ax.grid(alpha=0.3)
    name = _save(fig, out, "risk_coverage.png")
    return Figure(name, "Risk-coverage",
                  "Each point refers the test patients whose routing score lies above a threshold (q: the quantile "
                  "of the calibration histogram that placed it) and scores Tier 1 on those it keeps. A curve that "
                  "rises to the left means the score refers the patients Tier 1 gets wrong. Only sites that sent "
                  "every point (above their floors) are counted.")
