"""The coordinator's side of Tier 1's Cox core (core/survival/cox_core.py): whether the run has one, its fit from
the sites' sums, and whether the network residual is kept.

* :func:`cox_core_sites` (at the handshake): the Cox core needs the sites' exact sums, which a site
  sends only when its policy lists the ``cox`` phase (opt-in: docs/privacy.md). Without such a site,
  or with ``dp.train-parts = linear`` (the DP path trains the linear term itself), the run's config
  turns ``model.cox-core`` off before setup, so every site builds the network-only Tier 1
  (model.cox-core = false).
* :func:`fit` (after setup, before round 1): Newton rounds on the training sums of the sites that take
  part, the penalty chosen on their validation log partial likelihood.
* :func:`keep_residual` (after the Tier 1 rounds): the network stays only when its kept round's
  federated validation log partial likelihood per event beats the Cox core's alone; otherwise its
  risk head is zeroed and Tier 1's risk is the Cox model's (its estimator still serves routing).
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp import Grid

from ..core.messages import metric_names as M
from ..core.phases.cox import COX, CoxReply, CoxRequest
from ..core.config import RunConfig
from ..core.survival.cox_core import LINEAR, CoxCore, CoxMoments, fit_cox_core, keep_residual, with_cox  # noqa: F401
from ..core.survival.cox_newton import CoxSums, add_cox_sums
from ..core.errors import RmmError
from .queries import ask, decode

class CoxPhaseError(RmmError):
    """The Cox core cannot be fitted from the sites' replies."""


def cox_core_sites(cfg: RunConfig, allowed: list[int]) -> tuple[list[int], str]:
    """(the nodes that fit the Cox core, why there is none when empty)."""
    if not cfg.model.cox_core:
        return [], "model.cox-core = false"
    if cfg.dp.enabled and cfg.dp.train_parts == "linear":
        return [], "dp.train-parts = linear trains the linear term under DP instead"
    if not allowed:
        return [], ("no site's policy lists the cox phase (its exact sums are opt-in, docs/privacy.md); Tier 1 "
                    "trains its linear path with the network instead")
    return list(allowed), ""


def fit(grid: Grid, cfg: RunConfig, nodes: list[int], width: int, answered=lambda phase, replies: None) -> CoxCore:
    """The Cox core from the sites ``nodes`` (core/survival/cox_core.py) on a design of ``width`` columns (Tier 1's
    linear term: the model's widths plus one flag per modality); one query per Newton round."""
    moments: list[CoxMoments] = []
    cache: dict[bytes, CoxSums] = {}
    asked = 0

    strata: list[int] = []  # the sites that answered the first query: every later sum must be theirs

    def sums(coef: np.ndarray, split: str) -> list[CoxReply]:
        nonlocal asked
        asked += 1
        replies = ask(grid, strata or nodes, COX, cfg.round_timeout_s, CoxRequest(coef, split))
        answered("cox", replies)
        if not replies:
            raise CoxPhaseError("no site answered the Cox core's query. Fix: check the sites' logs and policies "
                                "(the cox phase), or set model.cox-core = false")
        if not strata:
            strata.extend(sorted(replies))
        elif sorted(replies) != strata:
            raise CoxPhaseError(f"{len(strata) - len(replies)} site(s) stopped answering the Cox core's queries "
                                "part-way, so the sums would mix strata. Fix: submit again (--resume) once the "
                                "sites are back, or set model.cox-core = false")
        return [decode(replies[n], CoxReply) for n in strata]

    def train_at(coef: np.ndarray) -> CoxSums:
        key = np.asarray(coef, dtype=np.float64).tobytes()
        if key in cache:  # the same coefficients again (the fit starts where the design's sums were asked)
            return cache[key]
        parts = sums(coef, "train")
        if not moments:
            moments.extend(CoxMoments(int(r.metrics[M.COX_N]), r.arrays["sum"], r.arrays["sumsq"]) for r in parts)
        cache[key] = add_cox_sums([CoxSums(r.metrics[M.COX_LOGLIK], r.arrays["grad"], r.arrays["hess"],
                                           int(r.metrics[M.COX_N]), int(r.metrics[M.COX_EVENTS])) for r in parts])
        return cache[key]

    def val_at(coef: np.ndarray) -> tuple[float, int]:
        parts = sums(coef, "val")
        return (float(sum(r.metrics[M.COX_LOGLIK] for r in parts)),
                int(sum(r.metrics[M.COX_EVENTS] for r in parts)))

    train_at(np.zeros(width))  # the design's sums (the pooled standardisation) at beta = 0
    total = moments[0]
    for m in moments[1:]:
        total = total + m
    core = fit_cox_core(train_at, val_at, total, cfg.model.penalizers())
    core.queries = asked
    return core
