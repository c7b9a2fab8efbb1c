"""Tier 2's gate for a run whose sites do not answer per-round validation (the default site policy): one
``query.tier2_gate`` release per site after the Tier 2 rounds (core/phases/tier2_gate.py), noised by each site's
policy, decided by core/tier2/tier2_gate.decide_noised."""

from __future__ import annotations

import numpy as np

from ..core.messages import protocol as P
from ..core.tier2.tier2_gate import NoisedGateSums, Tier2Gate, decide_noised
from .queries import decode


def noised_gate(run, weights: dict[str, np.ndarray]) -> Tier2Gate:
    """The gate of the run's Tier 2 from the sites that answer (a server/federation.Run)."""
    replies = run.ask(P.TIER2_GATE, P.Tier2GateRequest(weights))
    return decide_noised(NoisedGateSums.of_sites([decode(r, P.MetricsReply).metrics for r in replies.values()]))
