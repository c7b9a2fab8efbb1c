"""Run outputs: metrics.json, calibration.json, run_config.json, weights, report.md.

Written only after every phase succeeded, each file through a temporary name and an atomic
rename, so a failed run never leaves a half-written file that looks complete.
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
from ..core.routing import ABSTAIN, TIER1, TIER2
from .federation import FederationResult


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_metrics(res: FederationResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics.json document (federation part; ``extra`` adds simulation-only sections)."""
    extra = extra or {}
    ps = res.per_site
    masked_n = sum(m["masked-complete-n"] for m in ps.values())
    masked_ref = sum(m["masked-complete-referred"] for m in ps.values())
    combined = res.combined_c_index()
    federated = {
        "c_index": extra.get("federated_pooled_c_index", combined),
        "c_index_method": "pooled test split (simulation only)" if "federated_pooled_c_index" in extra
        else "comparable-pair-weighted combination of per-site counts",
        "c_index_combined_pairs": combined,
        "per_site": {s: {"c_index": m["c-index"], "n_test": int(m["n-test"]), "n_events_test": int(m["n-events-test"])}
                     for s, m in ps.items()},
    }
    doc: dict[str, Any] = {"rmm_version": __version__, "federated": federated}
    for key in ("pooled_reference", "oracle"):
        if key in extra:
            doc[key] = extra[key]
    doc["calibration"] = {"quantile": res.config.quantile, "theta": res.theta,
                          "theta_exact_pooled": extra.get("theta_exact_pooled"),
                          "n_values": int(res.counts.sum())}
    doc["routing"] = {
        "referral_rate_per_site": {s: m["referral-rate"] for s, m in ps.items()},
        "route_counts_per_site": {s: {TIER1: int(m["routed-tier1"]), TIER2: int(m["routed-tier2"]),
                                      ABSTAIN: int(m["routed-abstain"])} for s, m in ps.items()},
        "masked_complete_referral_rate": masked_ref / masked_n if masked_n else float("nan"),
        "masked_complete_referral_rate_per_site": {
            s: (m["masked-complete-referred"] / m["masked-complete-n"] if m["masked-complete-n"] else float("nan"))
            for s, m in ps.items()},
        "high_risk_contexts": sorted(res.config.high_risk),
    }
    doc["sites"] = {"accepted": [s.site for s in res.handshake.accepted], "refused": res.handshake.refused,
                    "modalities": res.handshake.dims}
    doc["history"] = res.history
    doc["selected_round"] = res.best_round
    doc["timing_s"] = {**res.timing_s, **extra.get("timing_s", {})}
    return _clean(doc)


def write_outputs(out_dir: str | Path, res: FederationResult, extra: dict[str, Any] | None = None,
                  report: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    metrics = build_metrics(res, extra)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    edges = res.grid.edges()
    calib = {"quantile": res.config.quantile, "theta": res.theta,
             "theta_exact_pooled": (extra or {}).get("theta_exact_pooled"),
             "grid": res.grid.to_config(), "bin_edges": [e if np.isfinite(e) else "inf" for e in edges.tolist()],
             "counts": res.counts.astype(int).tolist()}
    (tmp / "calibration.json").write_text(json.dumps(_clean(calib)))
    (tmp / "run_config.json").write_text(json.dumps(
        {"config": res.config.to_flat(), "modalities": res.handshake.dims, "rmm_version": __version__}, indent=2))
    torch.save({"tier1": {k: torch.from_numpy(np.asarray(v)) for k, v in res.weights.items()},
                "feature_stats": {k: torch.from_numpy(np.asarray(v)) for k, v in res.stats.to_arrays().items()},
                "modalities": res.handshake.dims, "config": res.config.to_flat(), "theta": res.theta,
                "rmm_version": __version__}, tmp / "model.pt")
    (tmp / "report.md").write_text(report or render_report(metrics))
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


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
        lines.append(f"| oracle (true risk, simulation only) | {_f(m['oracle']['c_index'])} |")
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
              f"Wall time: {m['timing_s'].get('total', float('nan')):.1f} s.", ""]
    return "\n".join(lines)
