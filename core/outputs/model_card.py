"""The model card of a bundle: what the model was trained and evaluated on, read from a run's
metrics.json document, as plain containers (what ``torch.load(weights_only=True)`` accepts)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
from pydantic import ValidationError

from ..errors import RmmError
from .metrics_document import RunMetrics


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



def model_card_from_metrics(metrics: Mapping[str, Any] | RunMetrics, *, date: str | None = None) -> dict[str, Any]:
    """What the model was trained and evaluated on, from a run's metrics.json document
    (validated as :class:`~rmmfed.core.outputs.metrics_document.RunMetrics`; a document that is not one raises
    :class:`MetricsDocumentError` naming the section)."""
    m = metrics if isinstance(metrics, RunMetrics) else _validated(metrics)
    fed, routing = m.federated, m.routing
    per_site = {}
    for s in sorted(set(m.sites.accepted) | set(fed.per_site)):
        c = fed.per_site.get(s)
        per_site[s] = {"c_index": c.c_index if c else None, "n_test": c.n_test if c else None,
                       "n_events_test": c.n_events_test if c else None,
                       "referral_rate": routing.referral_rate_per_site.get(s),
                       "route_counts": routing.route_counts_per_site.get(s)}
    tt = m.two_tier
    return plain({
        "date": date or datetime.now(timezone.utc).date().isoformat(),
        "rmm_version": m.rmm_version,
        "sites": list(m.sites.accepted) or sorted(fed.per_site),
        "sites_refused": m.sites.refused,
        "modalities": m.sites.modalities,
        "model_dims": m.sites.model_dims,  # the widths after the federated PCA
        "c_index": fed.c_index,
        "c_index_method": fed.c_index_method,
        "per_site": per_site,
        "n_patients_test": sum(int(v["n_test"] or 0) for v in per_site.values()),
        "n_events_test": sum(int(v["n_events_test"] or 0) for v in per_site.values()),
        "theta": m.calibration.theta,
        "quantile": m.calibration.quantile,
        "two_tier": bool(tt.get("enabled", False)),
        "selected_round": m.selected_round,
        "tier2_gate_open": (tt.get("gate") or {}).get("open"),
    })


class MetricsDocumentError(RmmError):
    """A metrics.json does not have the layout of rmm's RunMetrics document."""


def _validated(metrics: Mapping[str, Any]) -> RunMetrics:
    try:
        return RunMetrics.model_validate(dict(metrics))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MetricsDocumentError(f"metrics.json is not an rmm {RunMetrics.__name__} document: '{where}': "
                                   f"{first['msg']}. Fix: pass the metrics.json the run wrote (rmm of the same "
                                   "major.minor), or remove it from the run folder (the model card is then empty)"
                                   ) from None
