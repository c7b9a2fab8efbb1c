"""One federated training phase (Tier 1 or Tier 2 rounds) with per-round checkpoints and resume, the
typed validation sums the Tier 2 gate is decided from, and the federated Breslow baseline hazard."""

from __future__ import annotations

import time

import numpy as np
from flwr.serverapp import Grid

from ..flower.records import to_record as to_array_record
from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.survival.baseline_hazard import time_grid, baseline_from_sums
from ..core.config import RunConfig
from ..core.aggregates.histogram import HistogramGrid
from ..core.survival.merged_hazard import MergedHazard, fine_sums
from ..core.aggregates.merged_histogram import merged_quantile, pooled_counts, spread
from ..core.survival.follow_up_grid import quantile_time_grid
from ..core.tier2.tier2_gate import ValidationSums
from .checkpoint import Checkpoint
from .noised_quantile import zoom_grid
from .progress import Progress
from .queries import ask, bracket_doc, decode, isotonic, merged_parts
from .strategies import make_strategy, sums_from_plain
from .tail_average import TailAverage


def run_phase(grid: Grid, cfg: RunConfig, accepted: list[int], *, train: P.Phase, evaluate: P.Phase, rounds: int,
              select_best: bool, initial: dict[str, np.ndarray], state: dict | None, ckpt: Checkpoint, base: dict,
              progress: Progress, keep_best: bool | None = None, average_last: int = 0
              ) -> tuple[dict[str, np.ndarray], list[dict], int, dict[int, ValidationSums]]:
    """One federated training phase (``train``: Tier 1 or Tier 2 rounds, ``evaluate``: their validation)
    with per-round checkpoints and resume; returns (weights, history, kept round, the Tier 2 gate's typed
    validation sums per round: empty for Tier 1).

    ``select_best`` validates every round; ``keep_best`` (default: ``select_best``) then keeps the best
    round's weights instead of the last round's. Otherwise, with ``average_last`` = K > 0, the phase
    keeps the mean of its last K rounds' aggregated weights (server/tail_average.py); the kept round
    returned is then the last."""
    phase = train.name
    keep_best = select_best if keep_best is None else keep_best
    say = progress.phase
    done = (state or {}).get(phase) if state and state.get("phase") != phase else None
    if done is not None:  # the phase had finished before the restart
        say(f"resume: {phase} already complete, reusing its weights")
        return (done["weights"], done["history"], done.get("best_round") or rounds,
                sums_from_plain(done.get("validation_sums")))
    runner = make_strategy(cfg, len(accepted), set(accepted), lambda rnd, info: None, train=train, evaluate=evaluate,
                           select_best=select_best)
    strategy = getattr(runner, "strategy", runner)  # central DP wraps the strategy that keeps the books
    offset = 0
    if state and state.get("phase") == phase:
        strategy.resume(state)
        offset, initial = int(state["round"]), state["weights"]
        say(f"resume: {phase} continues after round {offset}/{rounds}")
    reported: set[int] = set()

    def save(strat, rnd: int) -> None:
        ckpt.save({**base, "phase": phase, "round": rnd, **strat.snapshot()})
        if rnd not in reported:  # a phase without validation ends its round twice (train, empty evaluate)
            reported.add(rnd)
            info = dict(strat.history[-1]) if strat.history else {}
            if "val-c-index" not in info and len(strat.history) > 1:  # validated with the next round: the last known
                info.update({"val-c-index": strat.history[-2].get("val-c-index"), "val-round": strat.history[-2]["round"]})
            progress.round_end(phase, rnd, rounds, info)

    strategy.on_round_end(save)
    strategy.last_round = rounds  # each earlier round is validated inside the next training round
    if average_last > 0 and not keep_best and strategy.tail is None:  # (a resumed phase restored its own)
        strategy.tail = TailAverage(rounds - average_last + 1)
    final = initial
    if rounds - offset > 0:
        progress.rounds_start(phase, rounds, offset)
        try:
            result = runner.start(grid=grid, initial_arrays=to_array_record(initial), num_rounds=rounds - offset,
                                  timeout=cfg.round_timeout_s)
        finally:
            progress.rounds_end(phase)
            strategy.say_repeated()  # a warning repeated over the rounds: once more, with its count
        final = {k: v.numpy() for k, v in result.arrays.to_torch_state_dict().items()}
    best_round = rounds
    if not keep_best and strategy.tail is not None and len(strategy.tail):
        final = strategy.tail.mean()
        say(f"{phase}: the kept weights are the mean of {strategy.tail.describe()} (average-last = {average_last})")
    if keep_best and strategy.best_arrays is not None:
        final = {k: v.numpy() for k, v in strategy.best_arrays.to_torch_state_dict().items()}
        best_round = strategy.best_round
        if phase == "tier1":
            what = ("site-stratified validation partial log-likelihood per event"
                    if cfg.select_metric == "partial-likelihood" else "federated validation C-index")
            say(f"model selection: round {best_round} has the best {what} ({strategy.best_score:.4f})")
        else:
            say(f"model selection: {phase} round {best_round} has the lowest federated masked validation "
                f"recovery MSE ({-strategy.best_score:.4f})")
    return final, strategy.history, best_round, strategy.validation_sums


FOLLOWUP_GRID = HistogramGrid(1e-3, 1e6, 512)  # follow-up in any unit from hours to centuries of days
FOLLOWUP_COARSE = HistogramGrid(1e-3, 1e6, 48)  # the DP time cuts' grid: few bins, so little noise per quantile
DP_CUT_QUANTILES = (0.2, 0.4, 0.6, 0.8)  # where the DP path's discrete-time intervals end by default


def dp_time_cuts(grid: Grid, cfg: RunConfig, nodes: list[int]) -> tuple[str | None, bool]:
    """``dp.time-cuts`` at the pooled follow-up quintiles, from the sites' follow-up histograms (the
    same release, on the same grid, that later places the Breslow grid: asked once, answered twice),
    and whether a site noised its release. None when no site answered."""
    replies = ask(grid, nodes, P.FOLLOWUP, cfg.round_timeout_s, P.GridRequest(FOLLOWUP_COARSE))
    noised = any(decode(r, P.HistogramReply).metrics.get(M.NOISED, 0.0) > 0 for r in replies.values())  # epsilon
    parts = merged_parts(replies, FOLLOWUP_COARSE.n_bins, cfg.dp.histogram_epsilon > 0)
    if not parts or spread(parts, FOLLOWUP_COARSE.n_bins).sum() <= 0:
        return None, noised
    cuts: list[float] = []
    for q in DP_CUT_QUANTILES:
        c = float(merged_quantile(FOLLOWUP_COARSE, parts, q).estimate)
        if c > 0 and (not cuts or c > cuts[-1] * (1 + 1e-6)):
            cuts.append(c)
    return ",".join(f"{c:.6g}" for c in cuts) or None, noised


def monotone_risk_sets(risk_sums: np.ndarray, rule: str = "running-min") -> np.ndarray:
    """The summed Breslow risk sets made non-increasing and >= 0 (post-processing of noised sums; exact ones
    already are and come back unchanged). ``running-min`` (the default): a running minimum, which carries a
    deep dip of noise in one interval into every later one; ``isotonic``: the nearest such sequence in least
    squares, which averages the dip with its neighbours. On the six cohorts the second gave the same or a
    worse integrated Brier score (docs/evidence/tier1/breslow_grid.md), so the first stays."""
    r = np.asarray(risk_sums, dtype=float)
    if rule == "isotonic":
        return np.clip(-isotonic(-r), 0.0, None)
    return np.minimum.accumulate(np.clip(r, 0.0, None))


def baseline_hazard(grid: Grid, cfg: RunConfig, nodes: list[int], answered=lambda phase, replies: None,
                     release_error: dict | None = None, followup_grid: HistogramGrid = FOLLOWUP_GRID,
                     noised: bool = False, center: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Federated Breslow baseline hazard of the frozen Tier 1 on a time grid the server fixes. The grid
    ends at the pooled 95th percentile of follow-up, from ``followup_grid`` (the grid the run already
    asked, answered again at no cost), and with noised releases from a zoom around that estimate. Where the
    sites' sums are exact (merged to their floor) and ``hazard-grid = quantile``, its points are that
    histogram's pooled quantiles (core/survival/follow_up_grid.py). Noised sums are not merged and keep
    evenly spaced points: quantile spacing was no better for them on average
    (docs/evidence/tier1/breslow_grid.md).
    ``quantile-noised`` places noised points at the quantiles too (for that comparison); ``uniform`` and a
    fixed ``hazard-max-time`` space the points evenly; noised sums come on ``hazard-noised-points`` points.
    The sites send the sums of exp(risk - ``center``) (noised ones with |risk - center| clipped by their
    policy), so the cumulative hazard returned, for exp(risk), is theirs times exp(-center)."""
    t_max = cfg.hazard_max_time
    errors = release_error if release_error is not None else {}
    n_points = min(cfg.hazard_points, cfg.hazard_noised_points) if noised else cfg.hazard_points
    points = None
    if t_max <= 0:
        replies = ask(grid, nodes, P.FOLLOWUP, cfg.round_timeout_s, P.GridRequest(followup_grid))
        parts = merged_parts(replies, followup_grid.n_bins, cfg.dp.histogram_epsilon > 0)
        if not parts or spread(parts, followup_grid.n_bins).sum() <= 0:
            return None
        bracket, bracket_parts = merged_quantile(followup_grid, parts, 0.95), parts
        if noised:
            zoom = zoom_grid(FOLLOWUP_GRID, bracket.estimate)
            replies = ask(grid, nodes, P.FOLLOWUP, cfg.round_timeout_s, P.GridRequest(zoom))
            zparts = merged_parts(replies, zoom.n_bins, True)
            if zparts and spread(zparts, zoom.n_bins).sum() > 0:
                bracket, bracket_parts = merged_quantile(zoom, zparts, 0.95), zparts
        errors["hazard_max_time"] = bracket_doc(bracket, bracket_parts)
        t_max = bracket.estimate
        if cfg.hazard_grid == "quantile-noised" or (cfg.hazard_grid == "quantile" and not noised):
            points = quantile_time_grid(followup_grid, pooled_counts(parts, followup_grid.n_bins), t_max, n_points)
    spacing = "quantile" if points is not None else "uniform"
    if points is None:  # noised sums: the risk set's error grows with the intervals it is summed over, so fewer
        points = time_grid(t_max, n_points)
    replies = ask(grid, nodes, P.HAZARD, cfg.round_timeout_s, P.HazardRequest(points, float(center)))
    answered("baseline_hazard", replies)
    if not replies:
        return None
    parts = [MergedHazard.from_arrays(decode(r, P.HazardReply).sums, len(points)) for r in replies.values()]
    widest = max(p.widest() for p in parts)
    errors["baseline_hazard"] = {"grid_points": len(points), "grid_spacing": spacing,
                                 "widest_merged_intervals": widest,
                                 "widest_merged_time": max(p.widest_time(points) for p in parts),
                                 "groups_per_site": sorted(int(p.first.size) for p in parts),
                                 "risk_center": float(center)}
    return points, baseline_from_parts(points, parts, center, cfg.hazard_risk_sets)


def baseline_from_parts(points: np.ndarray, parts: list[MergedHazard], center: float = 0.0,
                        risk_sets: str = "running-min") -> np.ndarray:
    """The cumulative hazard, for exp(risk), at ``points`` from the sites' Breslow sums of exp(risk - ``center``)
    (merged groups spread back, or noised intervals). Noised sums (core/privacy/noised_release.py) can dip
    below 0 or rise: events are clipped at 0 and the risk sets made non-increasing (post-processing; exact
    sums already are)."""
    events, risk_sums = fine_sums(parts, len(points))
    events, risk_sums = np.clip(events, 0.0, None), monotone_risk_sets(risk_sums, risk_sets)
    return baseline_from_sums(points, events, risk_sums) * float(np.exp(-center))


def hazard_center(cfg: RunConfig, cutpoints: list[float] | None) -> float:
    """The centre the sites subtract from Tier 1's risks before their Breslow sums: with ``hazard-center =
    risk-groups``, the middle of the training risk's tertile cut points (about its median, from a release the
    run makes anyway), else 0. Any centre keeps the sums' privacy; a centre near the middle of the risks keeps
    the clipping of noised sums (core/privacy/noised_release.py) from flattening them."""
    if cfg.hazard_center != "risk-groups" or not cutpoints:
        return 0.0
    return float(np.mean(cutpoints))


def run_baseline_hazard(run, cutpoints: list[float] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`baseline_hazard` for a server/federation.Run: timed, and said."""
    t = time.perf_counter()
    hazard = baseline_hazard(run.grid, run.cfg, run.accepted, run.answered, run.release_error, run.followup_grid,
                             run.noised, hazard_center(run.cfg, cutpoints))
    run.timed("baseline_hazard", t)
    if hazard is not None:
        run.say(f"baseline hazard: {len(hazard[0])} grid points up to t = {hazard[0][-1]:.4g}; "
                f"H0(end) = {hazard[1][-1]:.4g}")
    return hazard
