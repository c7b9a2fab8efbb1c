"""The risk scale: the federated mean and standard deviation of each head's training-split risk, which
put Tier 1's and Tier 2's risks on one system scale (core/routing/two_tier.py); fitted once per run from the
sites' risk sums (server/federation.tier2) and carried by core/routing/fitted_two_tier.FittedTwoTier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RiskScale:
    """Federated mean/std of each head's training-split risk: z = (risk - mean) / std."""

    tier1_mean: float = 0.0
    tier1_std: float = 1.0
    tier2_mean: float = 0.0
    tier2_std: float = 1.0

    @staticmethod
    def from_sums(n: float, s1: float, ss1: float, s2: float, ss2: float) -> "RiskScale":
        def ms(s: float, ss: float) -> tuple[float, float]:
            m = s / n
            return m, float(np.sqrt(max(ss / n - m * m, 1e-12)))
        m1, sd1 = ms(s1, ss1)
        m2, sd2 = ms(s2, ss2)
        return RiskScale(m1, sd1, m2, sd2)
