"""Run outputs: metrics.json, calibration.json, run_config.json, model.pt (the model bundle of
core/outputs/bundle.py, which rmm-predict and every evaluation read with ``load_model``), report.md.

Written as soon as the federation's phases all succeeded, each file through a temporary name and an
atomic rename, so a failed run never leaves a half-written file that looks complete. Later steps of
a simulation (pooled test split, oracle, pooled reference) add their sections with
:func:`update_metrics`, so a failure there keeps what the federation produced.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..core.messages import metric_names as M
from ..core.outputs.bundle import ModelBundle, save_bundle
from ..core.survival.concordance import ConcordanceCounts, combined_c_index
from ..core.survival.survival_metrics import combine as combine_survival
from ..core.outputs.metrics_document import RunMetrics
from ..core.outputs.model_card import model_card_from_metrics
from ..core.routing.routing import ABSTAIN, TIER1, TIER2
from ..core.routing.uncertainty_quality import quality_document
from ..core.routing.risk_uncertainty_evaluation import conformal_document, coverage_curve_document, voi_document
from .conformal_phase import CURVE_QUANTILES
from .federation import FederationResult


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_metrics(res: FederationResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics.json document (federation part; ``extra`` adds simulation-only sections)."""
    extra = extra or {}
    ps = res.per_site
    masked_n = sum(m[M.MASKED_N] for m in ps.values())
    masked_ref = sum(m[M.MASKED_REFERRED] for m in ps.values())
    combined = res.combined_c_index()
    federated = {
        "c_index": extra.get("federated_pooled_c_index", combined),
        "c_index_method": "pooled test split (simulation only)" if "federated_pooled_c_index" in extra
        else "comparable-pair-weighted combination of per-site counts",
        "c_index_combined_pairs": combined,
        "per_site": {s: {"c_index": m[M.PAIRS.c_index], "n_test": int(m[M.N_TEST]), "n_events_test": int(m[M.N_EVENTS_TEST])}
                     for s, m in ps.items()},
    }
    doc: dict[str, Any] = {"rmm_version": __version__, "federated": federated}
    for key in ("pooled_reference", "oracle", "cohort", "failed_steps"):
        if key in extra:
            doc[key] = extra[key]
    if res.cox is not None:  # the Cox core alone beside Tier 1 (pooled test split in a simulation)
        cox_pairs = _combined(ps, M.COX_CORE) if all(M.COX_CORE.comparable in m for m in ps.values()) else None
        doc["cox_core"] = {**res.cox, "c_index": extra.get("cox_core_pooled_c_index", cox_pairs),
                           "c_index_combined_pairs": cox_pairs}
        if "cox_core_residual_pooled_c_index" in extra:  # simulation only: the residual kept, whatever was decided
            doc["cox_core"]["c_index_with_residual"] = extra["cox_core_residual_pooled_c_index"]
    if res.fitted.baseline_hazard_ is not None:  # IBS, td-AUC, calibration of Tier 1 (core/survival/survival_metrics.py)
        survival = combine_survival(ps, float(res.fitted.baseline_hazard_.times[-1]))
        if survival:
            doc["survival"] = survival
    doc["calibration"] = {"quantile": res.config.quantile, "theta": res.fitted.theta_,
                          "theta_exact_pooled": extra.get("theta_exact_pooled"),
                          "n_values": int(round(float(res.counts.sum())))}
    doc["privacy_floor"] = res.release_error  # what the sites' merged releases leave open
    doc["routing"] = {
        "referral_rate_per_site": {s: m[M.REFERRAL_RATE] for s, m in ps.items()},
        "route_counts_per_site": {s: {r: int(m[M.ROUTED[r]]) for r in (TIER1, TIER2, ABSTAIN)} for s, m in ps.items()},
        "masked_complete_referral_rate": masked_ref / masked_n if masked_n else float("nan"),
        "masked_complete_n_per_site": {s: int(m[M.MASKED_N]) for s, m in ps.items()},
        "masked_complete_referral_rate_per_site": {
            s: (m[M.MASKED_REFERRED] / m[M.MASKED_N] if m[M.MASKED_N] else float("nan"))
            for s, m in ps.items()},
        "high_risk_contexts": sorted(res.config.high_risk),
    }
    doc["two_tier"] = two_tier_metrics(res)
    if extra.get("pooled_referred"):
        doc["two_tier"]["referred_pooled"] = extra["pooled_referred"]  # simulation only
    doc["uncertainty"] = quality_document(ps, res.config.model.uncertainty)  # sites' scalars, meta-analysed
    doc["risk_uncertainty"] = {  # how well the risk SD tracks the risk change of doing the missing exam
        "spearman_change": doc["uncertainty"]["spearman_risk_sd_change"],
        "per_site": {s: v["spearman_risk_sd_change"] for s, v in doc["uncertainty"]["per_site"].items()},
        "routing_score": res.config.routing_score,
        "definition": "Spearman(SD of Tier 1's risk over its draws of the hidden features, |risk hidden - risk seen|) "
                      "on masked complete test cases"}
    if res.conformal:
        doc["conformal"] = conformal_document(ps, res.conformal, res.config.conformal_alpha)
    if res.fitted.cutpoints_:
        doc["value_of_information"] = voi_document(ps)
    if res.thresholds:
        doc["risk_coverage"] = coverage_curve_document(ps, res.thresholds, CURVE_QUANTILES)
    doc["sites"] = {"accepted": [s.site for s in res.handshake.accepted], "refused": res.handshake.refused,
                    "modalities": res.handshake.dims,
                    "model_dims": res.stats.model_dims(res.handshake.dims),  # after the federated PCA
                    "reduced": sorted(res.stats.basis)}
    doc["risk_groups"] = {"cutpoints": None if res.fitted.cutpoints_ is None else list(res.fitted.cutpoints_), "n_values": res.risk_cutpoint_values,
                          "basis": "tertiles of the two-tier system risk of the training patients (federated histograms)"}
    doc["participation"] = res.participation  # phase -> sites that answered (a dead site shows here)
    doc["cautions"] = res.cautions
    doc["history"] = res.history
    doc["selected_round"] = res.best_round
    doc["selected_by"] = ("validation" if any("val-c-index" in h or "val-pll" in h for h in res.history)
                          else "last round")  # no site's policy answers per-round validation (opt-in)
    doc["timing_s"] = {**res.timing_s, **extra.get("timing_s", {})}
    return RunMetrics.model_validate(_clean(doc)).to_json()


def _combined(ps: dict[str, dict[str, float]], names: M.Pairs) -> float:
    return combined_c_index(ConcordanceCounts(*(m[k] for k in names.counts)) for m in ps.values())


def two_tier_metrics(res: FederationResult) -> dict[str, Any]:
    """Tier 1 alone vs the two-tier system, recovery quality, routing and compute (issue #4)."""
    ps = res.per_site
    n_rec = sum(m[M.RECOVERY_N] for m in ps.values())
    n_test = sum(m[M.N_TEST] for m in ps.values())
    referred = sum(m[M.REFERRED] for m in ps.values())
    t1 = sum(m[M.TIER1_SECONDS] for m in ps.values())
    t2 = sum(m[M.TIER2_SECONDS] for m in ps.values())
    ms1 = 1000 * t1 / n_test if n_test else float("nan")
    ms2 = 1000 * t2 / referred if referred else float("nan")
    out: dict[str, Any] = {
        "enabled": res.tier2_weights is not None,
        "abstain_bound": res.fitted.abstain_bound_,
        "c_index": {
            "tier1_covered": _combined(ps, M.TIER1_COVERED),
            "two_tier_covered": _combined(ps, M.SYSTEM_COVERED),
            "tier1_referred": _combined(ps, M.TIER1_REFERRED),
            "tier2_referred": _combined(ps, M.TIER2_REFERRED),
            "two_tier_referred": _combined(ps, M.SYSTEM_REFERRED) if all(M.SYSTEM_REFERRED.comparable in m
                                                                         for m in ps.values()) else float("nan"),
            "method": "comparable-pair-weighted combination of per-site counts; covered = not abstained; "
                      "tier2_referred = Tier 2's own risk on the referred (measured even when the gate keeps "
                      "Tier 1's), two_tier_referred = what the system answered them (covered)",
        },
        "recovery_mse": {
            "tier1": sum(m[M.RECOVERY_SSE_TIER1] for m in ps.values()) / n_rec if n_rec else float("nan"),
            "tier2": sum(m[M.RECOVERY_SSE_TIER2] for m in ps.values()) / n_rec if n_rec else float("nan"),
            "population": "held-out complete test cases under every masking pattern (standardised features)",
        },
        "uncertainty_error_spearman_per_site": {s: m[M.uncertainty("error", "spearman")] for s, m in ps.items()},
        "ms_per_patient": {"tier1": ms1, "tier2": ms2},
        "compute_share_vs_always_tier2": ((ms1 * n_test + ms2 * referred) / ((ms1 + ms2) * n_test)
                                          if referred and n_test else float("nan")),
    }
    if res.tier2_history:
        out["history"] = res.tier2_history
    if res.fitted.gate_ is not None:
        out["gate"] = res.fitted.gate_.to_dict()
        out["selected_round"] = res.tier2_round
        out["high_risk_context_kept_tier1"] = int(sum(m.get(M.HIGH_RISK_KEPT_TIER1, 0) for m in ps.values()))
    return out


def write_outputs(out_dir: str | Path, res: FederationResult, extra: dict[str, Any] | None = None,
                  report: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    metrics = build_metrics(res, extra)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (tmp / "calibration.json").write_text(json.dumps(_calibration_doc(res, extra)))
    (tmp / "run_config.json").write_text(json.dumps(
        {"config": res.config.to_flat(), "modalities": res.handshake.dims, "rmm_version": __version__}, indent=2))
    save_bundle(run_bundle(res, metrics), tmp / "model.pt")
    (tmp / "report.md").write_text(report or render_report(metrics))
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


def run_bundle(res: FederationResult, metrics: dict[str, Any]) -> ModelBundle:
    """The run's model as the one model file (core/outputs/bundle.py): both tiers, statistics, calibration,
    baseline hazard, risk groups, gate and a model card from ``metrics``."""
    return ModelBundle(
        tier1={k: torch.from_numpy(np.array(v)) for k, v in res.weights.items()},
        tier2=(None if res.tier2_weights is None else
               {k: torch.from_numpy(np.array(v)) for k, v in res.tier2_weights.items()}),
        feature_stats={k: np.asarray(v) for k, v in res.stats.to_arrays().items()},
        modalities=dict(res.handshake.dims), config=res.config.to_flat(), fitted=res.fitted, rmm_version=__version__,
        model_card=model_card_from_metrics(metrics))


def _calibration_doc(res: FederationResult, extra: dict[str, Any] | None) -> dict[str, Any]:
    edges = res.grid.edges()
    return _clean({"quantile": res.config.quantile, "theta": res.fitted.theta_,
                   "theta_exact_pooled": (extra or {}).get("theta_exact_pooled"),
                   "grid": res.grid.to_config(), "bin_edges": [e if np.isfinite(e) else "inf" for e in edges.tolist()],
                   "theta_bracket": res.release_error.get("theta"),
                   "counts": [round(float(c), 3) for c in res.counts]})  # merged bins spread over the grid


def update_metrics(out_dir: str | Path, res: FederationResult, extra: dict[str, Any]) -> dict[str, Any]:
    """Rewrite metrics.json and calibration.json with ``extra`` (atomic renames); returns the metrics."""
    out = Path(out_dir)
    metrics = build_metrics(res, extra)
    for name, doc, indent in (("metrics.json", metrics, 2), ("calibration.json", _calibration_doc(res, extra), None)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=indent))
        tmp.replace(out / name)
    return metrics


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def render_report(m: dict[str, Any]) -> str:
    fed = m["federated"]
    lines = ["# rmm run report", "",
             f"rmm {m['rmm_version']}; sites accepted: {', '.join(m['sites']['accepted'])}"
             + (f"; refused: {m['sites']['refused']}" if m["sites"]["refused"] else ""), "",
             "## C-index (test split)", "",
             "| model | C-index |", "| --- | --- |",
             f"| federated Tier 1 ({fed['c_index_method']}) | {_f(fed['c_index'])} |",
             f"| federated, pair-weighted per-site combination | {_f(fed['c_index_combined_pairs'])} |"]
    if "pooled_reference" in m:
        lines.append(f"| pooled reference (simulation only: trained on pooled data) | {_f(m['pooled_reference']['c_index'])} |")
    if "oracle" in m:
        o = m["oracle"]
        lines.append(f"| oracle (true risk, simulation only) | {_f(o['c_index'])} |")
        if "c_index_observed" in o:
            lines.append(f"| oracle E[risk given the observed modalities] (simulation only) | {_f(o['c_index_observed'])} |")
    if m.get("cautions"):
        lines += ["", "## Cautions", ""] + [f"- {c}" for c in m["cautions"]]
    lines += ["", "## Per site", "", "| site | n test | events | C-index | referral rate | routes tier1/tier2/abstain | masked-complete referral |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    r = m["routing"]
    for s, v in fed["per_site"].items():
        rc = r["route_counts_per_site"][s]
        lines.append(f"| {s} | {v['n_test']} | {v['n_events_test']} | {_f(v['c_index'])} | "
                     f"{_f(r['referral_rate_per_site'][s])} | {rc['tier1']}/{rc['tier2']}/{rc['abstain']} | "
                     f"{_f(r['masked_complete_referral_rate_per_site'][s])} |")
    c = m["calibration"]
    lines += ["", "## Calibration", "",
              f"theta = {c['theta']:.4g} at quantile {c['quantile']} from {c['n_values']} histogrammed values"
              + (f"; exact pooled percentile {c['theta_exact_pooled']:.4g} (simulation only)" if c.get("theta_exact_pooled") else ""),
              f"Referral rate on held-out complete cases with modalities masked: {_f(r['masked_complete_referral_rate'])}"
              f" (target {1 - c['quantile']:.2f}).", "",
              ""]
    tt = m.get("two_tier", {})
    if tt.get("enabled"):
        c2, rec = tt["c_index"], tt["recovery_mse"]
        lines += ["## Two tiers", "",
                  "| | Tier 1 alone | two-tier |", "| --- | --- | --- |",
                  f"| C-index, patients not abstained | {_f(c2['tier1_covered'])} | {_f(c2['two_tier_covered'])} |",
                  f"| C-index, referred patients | {_f(c2['tier1_referred'])} | {_f(c2['tier2_referred'])} |",
                  f"| recovery MSE (masked complete cases) | {_f(rec['tier1'])} | {_f(rec['tier2'])} |",
                  f"| ms per patient | {_f(tt['ms_per_patient']['tier1'], 2)} | {_f(tt['ms_per_patient']['tier2'], 2)} (referred only) |",
                  "", f"Routing costs {_f(tt['compute_share_vs_always_tier2'])} of sending everyone to Tier 2. "
                  f"Abstain bound on Tier 2 uncertainty: {_f(tt['abstain_bound'], 4)}.", ""]
    lines += _participation_lines(m)
    lines += [f"Wall time: {m['timing_s'].get('total', float('nan')):.1f} s.", ""]
    return "\n".join(lines)


def _criterion(m: dict[str, Any]) -> str:
    metric = (m.get("config") or {}).get("select-metric", "c-index")
    return ("site-stratified validation partial log-likelihood per event" if metric == "partial-likelihood"
            else "federated validation C-index")


def _selected(m: dict[str, Any]) -> str:
    if m.get("selected_by") == "last round":
        return (f"Kept round: {m.get('selected_round', 'n/a')}, the last (no site's policy answers the opt-in "
                "per-round validation, so no round was selected on it).")
    return f"Selected round (best {_criterion(m)}): {m.get('selected_round', 'n/a')}."


def _participation_lines(m: dict[str, Any]) -> list[str]:
    """Tier 1 rounds (sites trained / failed / validated) and any phase a site did not answer."""
    history = m.get("history") or []
    if not history:
        return []
    lines = ["## Rounds and participation", "",
             _selected(m), "",
             "| round | sites trained | failed | sites validated | validation C-index | validation log-PL per event | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for h in history:
        lines.append(f"| {h['round']} | {h.get('sites', 'n/a')} | {h.get('failed', 0)} | {h.get('val-sites', 'n/a')} | "
                     f"{_f(h.get('val-c-index'))} | {_f(h.get('val-pll'))} | {_f(h.get('seconds'), 1)} |")
    accepted = set(m.get("sites", {}).get("accepted", []))
    missing = {phase: sorted(accepted - set(sites)) for phase, sites in (m.get("participation") or {}).items()}
    missing = {phase: sites for phase, sites in missing.items() if sites}
    lines += [""] + ([f"- {phase}: no answer from {', '.join(sites)}" for phase, sites in missing.items()]
                     or ["Every accepted site answered every phase."]) + [""]
    return lines
