"""The end-of-run summary a researcher reads on the console, from metrics.json alone.

Federated / pooled reference / oracle C-index, two-tier vs Tier 1 on referred patients, uncertainty
quality, referral per site, calibration, the cohort's own numbers when metrics.json carries them,
wall time and where the outputs are. Sections whose keys a run does not have are left out (a
deployment has no pooled reference or oracle; older runs have no ``cohort`` or ``uncertainty``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..core.messages import metric_names as M


def f3(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else str(x)


def n_referred(m: dict[str, Any]) -> int:
    """Test patients sent to Tier 2 (referral rate x test patients, summed over sites)."""
    rates, per_site = m.get("routing", {}).get("referral_rate_per_site", {}), m["federated"]["per_site"]
    return int(round(sum((rates.get(s) or 0.0) * v["n_test"] for s, v in per_site.items())))


QUALITY_TARGETS = (("spearman_error", "recovery error"), ("spearman_risk_error", "|risk hidden - risk seen|"),
                   ("spearman_risk_sd_change", "|risk hidden - risk seen|, by the risk SD"))


def rho_ci(d: dict[str, Any]) -> str:
    """'0.31 [0.12, 0.48]' from {rho, ci_low, ci_high} (n/a for what is missing)."""
    return f"{f3(d.get('rho'), 2)} [{f3(d.get('ci_low'), 2)}, {f3(d.get('ci_high'), 2)}]"


def uncertainty_quality(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs on how well Tier 1's uncertainty tracks its error, from what metrics.json holds."""
    out: list[tuple[str, str]] = []
    unc = m.get("uncertainty")
    tt = m.get("two_tier", {})
    if isinstance(unc, dict):
        definition = unc.get("definition", "?")
        for key, label in QUALITY_TARGETS:
            c = unc.get(key)
            if isinstance(c, dict):
                who = "risk SD over draws of the hidden features" if key == "spearman_risk_sd_change" else \
                    f"sigma^2 ({definition})"
                out.append((f"{who} vs {label.split(',')[0]}",
                            f"Spearman {rho_ci(c)} (combined over {c.get('n_sites', 0)} site(s), "
                            f"{c.get('n_patients', 0)} patients; 95% CI)"))
        per_site = unc.get("per_site") or {}
        if per_site:
            out.append(("per site, vs recovery error / vs risk gap", "; ".join(
                f"{s} {rho_ci(v.get('spearman_error', {}))} / {rho_ci(v.get('spearman_risk_error', {}))}"
                for s, v in per_site.items())))
    elif tt.get("uncertainty_error_spearman_per_site"):  # metrics.json of a run before the uncertainty section
        rho = tt["uncertainty_error_spearman_per_site"]
        out.append(("Spearman(sigma^2, recovery error) per site", ", ".join(f"{s} {f3(v, 2)}" for s, v in rho.items())))
    rec = tt.get("recovery_mse")
    if rec:
        out.append(("recovery MSE on masked complete cases", f"Tier 1 {f3(rec.get('tier1'))}, Tier 2 {f3(rec.get('tier2'))}"))
    r, c = m.get("routing", {}), m.get("calibration", {})
    if "masked_complete_referral_rate" in r and "quantile" in c:  # on the run's routing score
        out.append(("referral on masked complete cases", f"{f3(r['masked_complete_referral_rate'])} "
                                                          f"(target {1 - c['quantile']:.2f})"))
    return out


def risk_distribution(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs on what the missing exams would change: conformal intervals, which exam,
    the risk-coverage curve, from what metrics.json holds."""
    out: list[tuple[str, str]] = []
    conf = m.get("conformal") or {}
    tiers = [f"{t.replace('tier', 'Tier ')} coverage {f3(conf[t].get('coverage'))}, mean width {f3(conf[t].get('width'))}"
             for t in ("tier1", "tier2") if isinstance(conf.get(t), dict)]
    if tiers:
        out.append((f"conformal intervals (nominal {f3(conf.get('nominal_coverage'), 2)}, masked complete test rows)",
                    "; ".join(tiers)))
    voi = m.get("value_of_information") or {}
    if voi:
        out.append(("which exam", f"capture ratio {f3(voi.get('capture_ratio'), 2)} (risk-group changes caught in the "
                                  f"top {voi.get('top_share', 0.1):.0%} by expected change vs at random; by the "
                                  f"probability of a change {f3(voi.get('capture_ratio_by_p_group_change'), 2)}; "
                                  f"{voi.get('changes', 0)} changes)"))
    points = (m.get("risk_coverage") or {}).get("points") or []
    if points:
        out.append(("Tier 1 C-index on those kept", ", ".join(
            f"{f3(p.get('tier1_c_index_kept'))} at {100 * p['referral_rate']:.0f}% referred" for p in points
            if p.get("referral_rate") is not None and not math.isnan(p["referral_rate"]))))
    return out


def cohort_facts(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The generator's own numbers, when metrics.json has a ``cohort`` section."""
    co = m.get("cohort")
    if not isinstance(co, dict):
        return []
    out = []
    r2 = co.get("cross_modal_r2")
    if isinstance(r2, dict) and r2:
        out.append(("cross-modal R^2", ", ".join(f"{k} {f3(v, 2)}" for k, v in r2.items())))
    oracles = [(label, co[key]) for key, label in (("oracle_c_index_all", "every modality"),
                                                      ("oracle_c_index_observed", "E[risk | observed]"),
                                                      ("oracle_c_index_no_recovery", "observed alone"))
               if key in co]
    if oracles:
        out.append(("oracle C-index (test)", "; ".join(f"{label} {f3(v)}" for label, v in oracles)))
    o = m.get("oracle", {})
    if o.get("referred_n"):
        out.append((f"oracle on the {o['referred_n']} referred", f"true risk {f3(o.get('c_index_referred'))}; "
                                                                 f"E[risk | observed] {f3(o.get('c_index_observed_referred'))}"))
    rec = [h[M.TRAIN_REC] for h in m.get("history") or [] if M.TRAIN_REC in h]
    if rec:
        out.append(("Tier 1 reconstruction loss, last round", f"{f3(rec[-1])} (1.0 = predicting the mean)"))
    return out


def summary_lines(m: dict[str, Any], out: Path, files: list[str] | None = None) -> list[str]:
    fed = m["federated"]
    r = m.get("routing", {})
    lines = ["", "=== rmm summary ===",
             f"{'site':<10}{'n test':>7}{'C-index':>9}{'referral':>10}  routes tier1/tier2/abstain"]
    for s, v in fed["per_site"].items():
        rc = r.get("route_counts_per_site", {}).get(s, {})
        lines.append(f"{s:<10}{v['n_test']:>7}{f3(v['c_index']):>9}{f3(r.get('referral_rate_per_site', {}).get(s)):>10}"
                     f"  {rc.get('tier1', '?')}/{rc.get('tier2', '?')}/{rc.get('abstain', '?')}")
    parts = [f"federated {f3(fed['c_index'])}"]
    if "pooled_reference" in m:
        parts.append(f"pooled reference {f3(m['pooled_reference'].get('c_index'))} (simulation only)")
    if "oracle" in m:
        parts.append(f"oracle {f3(m['oracle'].get('c_index'))} (true risk)")
    lines.append(f"C-index, test split:  {'; '.join(parts)}")
    if fed.get("c_index_method", "").startswith("pooled"):
        lines.append(f"  (federated = pooled test split, simulation only; per-site pair-weighted "
                     f"{f3(fed.get('c_index_combined_pairs'))})")
    sv = m.get("survival")
    if sv:
        auc = ", ".join(f"{f3(a)} at t={h:.4g}" for h, a in zip(sv["td_auc"]["horizons"], sv["td_auc"]["auc"].values()))
        lines.append(f"Tier 1 survival:      integrated Brier {f3(sv.get('ibs'))}; time-dependent AUC {auc}; "
                     f"calibration error at t={sv['calibration']['horizon']:.4g} "
                     f"{f3(sv['calibration'].get('binned_error'))} (site sums, IPCW)")
    cox = m.get("cox_core")
    if cox:
        lines.append(f"Tier 1's Cox core:    alone {f3(cox.get('c_index'))} (penalizer {cox.get('penalizer'):g}); the "
                     f"network residual {'kept' if cox.get('residual_kept') else 'dropped (too little gain on validation)'}")
    tt = m.get("two_tier", {})
    if tt.get("enabled"):
        c = tt["c_index"]
        pooled = tt.get("referred_pooled") or {}
        if pooled.get("n"):  # per-site referred counts fall below the sites' floors; the simulation pools them
            lines.append(f"two-tier vs Tier 1:   referred patients (n={pooled['n']}, pooled test split, simulation "
                         f"only) Tier 2 {f3(pooled.get('tier2'))} vs Tier 1 {f3(pooled.get('tier1'))}; answered "
                         f"(n={pooled.get('n_covered')}): two-tier {f3(pooled.get('two_tier_covered'))} vs Tier 1 "
                         f"{f3(pooled.get('tier1_covered'))}")
        else:
            lines.append(f"two-tier vs Tier 1:   referred patients (n={n_referred(m)}) Tier 2 {f3(c['tier2_referred'])} "
                         f"vs Tier 1 {f3(c['tier1_referred'])}")
        lines.append(f"two-tier vs Tier 1:   not abstained: two-tier {f3(c['two_tier_covered'])} vs Tier 1 "
                     f"{f3(c['tier1_covered'])}")
        gate = tt.get("gate")
        if gate:
            lines.append(f"tier 2 gate:          {'open' if gate['open'] else 'CLOSED'} (round {tt.get('selected_round')}): "
                         f"{gate['reason']}")
    for label, value in uncertainty_quality(m):
        lines.append(f"uncertainty:          {label}: {value}")
    for label, value in risk_distribution(m):
        lines.append(f"risk distribution:    {label}: {value}")
    cal = m.get("calibration", {})
    if "theta" in cal:
        exact = cal.get("theta_exact_pooled")
        lines.append(f"calibration:          theta {cal['theta']:.4g} (q={cal['quantile']}"
                     + (f"; exact pooled {exact:.4g}, simulation only" if exact else "") + ")")
    for label, value in cohort_facts(m):
        lines.append(f"cohort:               {label}: {value}")
    t = m.get("timing_s", {})
    shown = [f"{k.replace('_', ' ')} {t[k]:.1f} s" for k in ("federation", "pooled_reference") if t.get(k)]
    lines.append(f"wall time:            {t.get('total', float('nan')):.1f} s" + (f" ({', '.join(shown)})" if shown else ""))
    for step, why in (m.get("failed_steps") or {}).items():
        lines.append(f"FAILED step:          {step}: {why}")
    lines.append(f"outputs:              {out}/  report.md report.html metrics.json model.pt calibration.json")
    if files:
        lines.append(f"figures:              {' '.join(files)}")
    lines.append(f"Flower and Ray logs:  {out / 'flower.log'}")
    return lines
