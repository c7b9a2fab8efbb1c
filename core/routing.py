"""Uncertainty-guided routing (seed 000 eq. 5) with abstention.

Route(i) = abstain  if no modality is present (nothing to go on),
           tier2    if sigma^2_i > theta (or is NaN) or context_i is a declared high-risk context,
           tier1    otherwise.
Every decision carries its reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

TIER1, TIER2, ABSTAIN = "tier1", "tier2", "abstain"


@dataclass(frozen=True)
class Route:
    route: str
    reason: str


def route_patient(sigma2: float, context: str, any_present: bool, theta: float, high_risk: frozenset[str]) -> Route:
    if not any_present:
        return Route(ABSTAIN, "no modality present")
    if context in high_risk:
        return Route(TIER2, f"high-risk context '{context}'")
    if not sigma2 == sigma2:  # NaN: a broken estimate is never trusted silently
        return Route(TIER2, "uncertainty could not be computed (NaN)")
    if sigma2 > theta:
        return Route(TIER2, f"uncertainty {sigma2:.3g} > theta {theta:.3g}")
    return Route(TIER1, f"uncertainty {sigma2:.3g} <= theta {theta:.3g}")


def route_all(sigma2: np.ndarray, contexts: list[str] | tuple[str, ...], any_present: np.ndarray, theta: float,
              high_risk: frozenset[str]) -> list[Route]:
    return [route_patient(float(s), c, bool(a), theta, high_risk) for s, c, a in zip(sigma2, contexts, any_present)]


def route_counts(routes: list[Route]) -> dict[str, int]:
    c = Counter(r.route for r in routes)
    return {TIER1: c.get(TIER1, 0), TIER2: c.get(TIER2, 0), ABSTAIN: c.get(ABSTAIN, 0)}
