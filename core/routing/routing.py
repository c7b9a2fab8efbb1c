"""Uncertainty-guided routing (seed 000 eq. 5) with abstention.

Route(i) = abstain  if no modality is present (nothing to go on),
           tier2    if sigma^2_i > theta (or is NaN), or context_i is a declared high-risk context
                    and some modality is missing,
           tier1    otherwise; a patient in a high-risk context with every modality present stays
                    with Tier 1 (there is nothing for Tier 2 to recover) and carries the flag
                    ``high-risk-context``.
Every decision carries its reason (and its flags).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


TIER1, TIER2, ABSTAIN = "tier1", "tier2", "abstain"


HIGH_RISK_CONTEXT = "high-risk-context"
TIER2_NOT_USED = "tier2-not-used"  # referred, but the run's gate kept Tier 1's risk (core/tier2/tier2_gate.py)


@dataclass(frozen=True)
class Route:
    route: str
    reason: str
    flags: tuple[str, ...] = ()


def route_patient(sigma2: float, context: str, any_present: bool, theta: float, high_risk: frozenset[str],
                  all_present: bool = False) -> Route:
    if not any_present:
        return Route(ABSTAIN, "no modality present")
    if context in high_risk:
        if all_present:
            return Route(TIER1, f"high-risk context '{context}', every modality present: nothing to recover, "
                         "Tier 1's risk", (HIGH_RISK_CONTEXT,))
        return Route(TIER2, f"high-risk context '{context}'", (HIGH_RISK_CONTEXT,))
    if not sigma2 == sigma2:  # NaN: a broken estimate is never trusted silently
        return Route(TIER2, "uncertainty could not be computed (NaN)")
    if sigma2 > theta:
        return Route(TIER2, f"uncertainty {sigma2:.3g} > theta {theta:.3g}")
    return Route(TIER1, f"uncertainty {sigma2:.3g} <= theta {theta:.3g}")


def route_all(sigma2: np.ndarray, contexts: list[str] | tuple[str, ...], any_present: np.ndarray, theta: float,
              high_risk: frozenset[str], all_present: np.ndarray | None = None) -> list[Route]:
    full = np.zeros(len(sigma2), dtype=bool) if all_present is None else all_present
    return [route_patient(float(s), c, bool(a), theta, high_risk, bool(f))
            for s, c, a, f in zip(sigma2, contexts, any_present, full)]


def route_counts(routes: list[Route]) -> dict[str, int]:
    c = Counter(r.route for r in routes)
    return {TIER1: c.get(TIER1, 0), TIER2: c.get(TIER2, 0), ABSTAIN: c.get(ABSTAIN, 0)}
