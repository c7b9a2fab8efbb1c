"""The model card of a bundle: what the model was trained and evaluated on, read from a run's
metrics.json document, as plain containers (what ``torch.load(weights_only=True)`` accepts)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np


def plain(x: Any) -> Any:
    """JSON-like plain containers (what weights_only loading accepts); NaN/Inf -> None."""
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)



def model_card_from_metrics(metrics: Mapping[str, Any], *, date: str | None = None) -> dict[str, Any]:
    """What the model was trained and evaluated on, from a run's metrics.json document."""
    fed = metrics.get("federated", {}) or {}
    per_site_c = fed.get("per_site", {}) or {}
    routing = metrics.get("routing", {}) or {}
    rates = routing.get("referral_rate_per_site", {}) or {}
    routes = routing.get("route_counts_per_site", {}) or {}
    sites_doc = metrics.get("sites", {}) or {}
    sites = list(sites_doc.get("accepted", [])) or sorted(per_site_c)
    per_site = {}
    for s in sorted(set(sites) | set(per_site_c)):
        c = per_site_c.get(s, {})
        per_site[s] = {"c_index": c.get("c_index"), "n_test": c.get("n_test"), "n_events_test": c.get("n_events_test"),
                       "referral_rate": rates.get(s), "route_counts": routes.get(s)}
    n_test = sum(int(v["n_test"] or 0) for v in per_site.values())
    n_ev = sum(int(v["n_events_test"] or 0) for v in per_site.values())
    tt = metrics.get("two_tier", {}) or {}
    return plain({
        "date": date or datetime.now(timezone.utc).date().isoformat(),
        "rmm_version": metrics.get("rmm_version"),
        "sites": sites,
        "sites_refused": sites_doc.get("refused", {}),
        "modalities": sites_doc.get("modalities"),
        "model_dims": sites_doc.get("model_dims"),  # the widths after the federated PCA
        "c_index": fed.get("c_index"),
        "c_index_method": fed.get("c_index_method"),
        "per_site": per_site,
        "n_patients_test": n_test,
        "n_events_test": n_ev,
        "theta": (metrics.get("calibration") or {}).get("theta"),
        "quantile": (metrics.get("calibration") or {}).get("quantile"),
        "two_tier": bool(tt.get("enabled", False)),
        "selected_round": metrics.get("selected_round"),
        "tier2_gate_open": (tt.get("gate") or {}).get("open"),
    })
