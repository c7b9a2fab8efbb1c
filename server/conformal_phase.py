"""The conformal phase, the coordinator's side (the phase itself: core/phases/conformal.py): each tier's q-hat from the sites' summed score histograms (core/routing/conformal.py),
which the run's fitted two-tier decision holds (core/routing/fitted_two_tier.py), the gate judged on the
intervals, and the risk-coverage thresholds an evaluation measures."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from ..core.messages import metric_names as M
from ..core.phases.conformal import CONFORMAL, ConformalRequest
from ..core.routing.conformal import SCORE_GRID, corrected_level, needs_infinite
from ..core.aggregates.histogram import HistogramGrid, quantile_from_counts
from ..core.aggregates.merged_histogram import merged_quantile, pooled_counts
from ..core.messages.metric_names import KEPT_LEVELS
from ..core.tier2.tier2_gate import judge_intervals
from .queries import decode, merged_parts

if TYPE_CHECKING:
    from .federation import Run

# Noised score histograms are read without a noise floor: conformal scores spread thinly over decades of
# log bins, and zeroing the bins within 2 noise sds (theta's rule) drops most of them. Measured on simulated
# scores (4 sites, 168 patients, epsilon 1, 60 draws): coverage 0.916 +- 0.048 without the floor, 0.874 +-
# 0.060 with it; exact split conformal 0.90 +- 0.023.
# calibration quantiles of the routing score that place the risk-coverage curve's thresholds (the last:
# no threshold, every patient kept); spaced so that the kept groups of neighbouring levels differ by more
# than a site's floor (core/routing/risk_uncertainty_evaluation.kept_sums)
CURVE_QUANTILES = (0.25, 0.5, 0.75, 0.95, 1.0)
assert len(CURVE_QUANTILES) <= KEPT_LEVELS


def calibrate(run: "Run", tier2_weights: dict[str, np.ndarray] | None) -> dict[str, dict]:
    """{tier: {q_hat, level, n_scores, sites, val_width}} for Tier 1 and (with weights) Tier 2; q_hat inf
    when the sites hold too few scores for the guarantee (or it falls in the grid's overflow bin), NaN
    when none answered; val_width: 2 q_hat x the patients' mean risk SD on validation (the gate's figure)."""
    t0, alpha = time.perf_counter(), run.cfg.conformal_alpha
    out: dict[str, dict] = {}
    for tier, weights in (("tier1", None), ("tier2", tier2_weights)):
        if tier == "tier2" and not weights:
            continue
        grid = SCORE_GRID  # one coarse grid, no zoom, no noise floor (core/routing/conformal.py)
        replies = run.ask(CONFORMAL, ConformalRequest(tier, grid, weights))
        parts = merged_parts(replies, grid.n_bins, run.noised or run.cfg.dp.histogram_epsilon > 0, 0.0)
        n = float(pooled_counts(parts, grid.n_bins).sum()) if parts else 0.0
        sums = [decode(r, CONFORMAL.reply_type).metrics for r in replies.values()]
        sd_n = sum(m.get(M.CONFORMAL_SD_N, 0.0) for m in sums)
        mean_sd = sum(m.get(M.CONFORMAL_SD_SUM, 0.0) for m in sums) / sd_n if sd_n > 0 else math.nan
        if n <= 0:
            out[tier] = {"q_hat": math.nan, "level": math.nan, "n_scores": 0, "sites": len(replies)}
        elif needs_infinite(n, alpha):
            out[tier] = {"q_hat": math.inf, "level": 1.0, "n_scores": int(round(n)), "sites": len(replies)}
        else:
            level = corrected_level(n, alpha)
            q = merged_quantile(grid, parts, level).estimate if level < 1.0 else math.inf
            q = math.inf if not q < grid.high else q  # in the overflow bin: no finite q-hat is known to cover
            out[tier] = {"q_hat": float(q), "level": level, "n_scores": int(round(n)), "sites": len(replies)}
        out[tier]["val_width"] = 2.0 * out[tier]["q_hat"] * mean_sd if out[tier]["q_hat"] != 0 else 0.0
        run.say(f"conformal {tier}: q-hat {out[tier]['q_hat']:.4g} at level {out[tier]['level']:.4g} of "
                f"{out[tier]['n_scores']} scores ({len(replies)} site(s), alpha {alpha:g}); mean width on "
                f"validation {out[tier]['val_width']:.4g}")
    run.timed("conformal", t0)
    return out


def curve_thresholds(grid: HistogramGrid, counts: np.ndarray) -> tuple[float, ...]:
    """Routing-score thresholds at :data:`CURVE_QUANTILES` of the calibration histogram (inf for 1.0)."""
    if not counts.sum() > 0:
        return ()
    frac = bool((counts != np.round(counts)).any())
    return tuple(math.inf if q >= 1.0 else float(quantile_from_counts(grid, counts, q, fractional=frac))
                 for q in CURVE_QUANTILES)


def judge_gate(run: "Run", gate, q_hat: dict[str, dict]):
    """The Tier 2 gate once both tiers' intervals are calibrated (core/tier2/tier2_gate.judge_intervals); left
    as it is when the gate is off (tier2.gate = false) or there is no Tier 2."""
    if gate is None or not run.cfg.tier2.gate or "tier2" not in q_hat:
        return gate
    judged = judge_intervals(gate, q_hat["tier1"].get("val_width", math.nan), q_hat["tier2"].get("val_width", math.nan),
                             q_hat["tier2"].get("q_hat", math.nan))
    if judged.open != gate.open:
        run.say(f"tier2 gate: closed after the conformal phase: {judged.reason}")
    return judged
