"""The names of the records a protocol message carries (core/messages/protocol.py), defined once."""

from __future__ import annotations

from typing import Any

ARRAYS = "arrays"  # model weights (Tier 1 or Tier 2 state dict)
CONFIG = "config"  # scalars: request settings; in a reply only the schema handshake's
METRICS = "metrics"  # scalar metrics
SUMS = "sums"  # feature sums
COUNTS = "counts"  # one histogram: noised counts on every bin, or bins merged to the site's floor
HAZARD_RECORD = "hazard"  # Breslow sums (reply) / the time grid (request)
STATS_RECORD = "feature-stats"  # the federated feature statistics (setup request)
SURVIVAL_RECORD = "survival"  # the federated Breslow baseline an evaluation request carries (grid, cumhaz)
COX_RECORD = "cox"  # the Cox core's coefficients (request) / gradient, Hessian and design sums (reply)
PLAN_RECORD = "plan"  # what an evaluation request asks beyond routing: conformal q-hats, risk cut points, thresholds
SCALAR_RECORDS = (CONFIG, METRICS)

Records = dict[str, dict[str, Any]]  # record name -> {key: scalar or np.ndarray}
