"""The risk-groups phase: tertile cut points of the training system risk, from the sites' summed histograms
on the server's fixed risk grid (noised or merged to the floor by each site's policy)."""

from __future__ import annotations

import math
import time

import numpy as np

from ..core.aggregates.merged_histogram import merged_quantile, pooled_counts
from ..core.messages import protocol as P
from ..core.routing.fitted_two_tier import FittedTwoTier
from ..core.survival.risk_groups import RISK_GRID, cutpoints_from_counts
from .queries import merged_parts


def risk_groups(run, tier2_weights: dict[str, np.ndarray] | None, fitted: FittedTwoTier
                ) -> tuple[list[float] | None, int]:
    """(the cut points, how many training risks they come from) for a server/federation.Run."""
    t = time.perf_counter()
    replies = run.ask(P.RISK_GROUPS, P.RiskGroupsRequest(tier2_weights, RISK_GRID, fitted))
    parts = merged_parts(replies, RISK_GRID.n_bins, run.cfg.dp.histogram_epsilon > 0)
    counts = pooled_counts(parts, RISK_GRID.n_bins) if parts else np.zeros(RISK_GRID.n_bins)
    cutpoints = cutpoints_from_counts(counts)
    if cutpoints is not None:
        run.release_error["risk_cutpoints"] = {
            "widest_merged_bin_risk_units": max(p.widest() for p in parts) * math.log(RISK_GRID.ratio),
            "bin_risk_units": math.log(RISK_GRID.ratio),
            "brackets": [[math.log(max(b.low, 1e-300)), math.log(b.high) if math.isfinite(b.high) else None]
                         for b in (merged_quantile(RISK_GRID, parts, q) for q in (1 / 3, 2 / 3))]}
    run.timed("risk_groups", t)
    run.say(f"risk groups: tertile cut points of the training system risk "
            f"{'n/a' if cutpoints is None else ', '.join(f'{c:.3f}' for c in cutpoints)} ({round(float(counts.sum()))} values)")
    return cutpoints, int(round(counts.sum()))
