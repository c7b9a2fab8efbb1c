"""The phases of one rmm run, driven by the ServerApp over a Flower Grid.

schema handshake -> federated feature statistics -> setup -> Tier 1 rounds -> calibration ->
evaluation. Only weights, feature sums, histogram counts and scalar metrics come back from sites.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from logging import ERROR, WARNING

import numpy as np
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from .. import __version__
from ..client.records import from_record, to_record
from ..core import protocol as P
from ..core.concordance import ConcordanceCounts, combined_c_index
from ..core.config import RunConfig
from ..core.errors import RmmError
from ..core.feature_stats import FeatureStats, add_sums
from ..core.baseline_hazard import add_hazard_sums, baseline_from_sums, time_grid
from ..core.histogram import HistogramGrid
from ..core.merged_hazard import MergedHazard, fine_sums
from ..core.merged_histogram import MergedBins, QuantileBracket, merged_quantile, pooled_counts, spread
from ..core.site_policy import refused_key
from ..core.risk_groups import RISK_GRID, cutpoints_from_counts
from ..core.tier1 import build_model
from ..core.tier2 import build_tier2
from ..core.two_tier import RiskScale
from ..core.tier2_gate import Tier2Gate, decide
from .checkpoint import Checkpoint, restore_strategy_state, strategy_state
from .handshake import Handshake, SiteInfo, agree
from .progress import Progress
from .strategies import make_strategy


class FederationError(RmmError):
    """The run cannot go on (no site accepted, a phase without replies...)."""


@dataclass
class FederationResult:
    config: RunConfig
    handshake: Handshake
    stats: FeatureStats
    weights: dict[str, np.ndarray]
    grid: HistogramGrid
    counts: np.ndarray
    theta: float
    per_site: dict[str, dict[str, float]]
    history: list[dict] = field(default_factory=list)
    best_round: int = 0
    tier2_weights: dict[str, np.ndarray] | None = None
    bound: float = float("inf")
    scale: RiskScale = field(default_factory=RiskScale)
    tier2_history: list[dict] = field(default_factory=list)
    baseline_hazard: tuple[np.ndarray, np.ndarray] | None = None  # (time grid, cumulative hazard) of Tier 1
    timing_s: dict[str, float] = field(default_factory=dict)
    participation: dict[str, list[str]] = field(default_factory=dict)  # phase -> sites that answered
    risk_cutpoints: list[float] | None = None  # tertiles of the training system risk (rmm-predict's groups)
    risk_cutpoint_values: int = 0  # how many training risks the cut points come from
    release_error: dict = field(default_factory=dict)  # what the sites' privacy floors cost (merged bins)
    tier2_gate: Tier2Gate | None = None  # None: no Tier 2 phase
    tier2_round: int = 0  # the Tier 2 round kept (selected on masked validation, or the last)

    def combined_c_index(self) -> float:
        return combined_c_index(ConcordanceCounts(m["pairs-concordant"], m["pairs-tied-risk"], m["pairs-comparable"])
                                for m in self.per_site.values())


def _ask(grid: Grid, nodes: list[int], message_type: str, timeout: float, *, retries: int = 1,
         reconnect_pause_s: float = 2.0, **records) -> dict[int, Message]:
    """Send the same records to each node; return the successful replies by node (errors logged).

    Every message sent this way is a query a site can answer twice with the same result (schema,
    statistics, setup, histograms, hazard sums, evaluation), so a node that answered with an error
    (e.g. a ClientApp task lost while its SuperNode reconnected) is asked again, up to ``retries``
    times, within the same ``timeout``. A node the SuperLink reports unavailable (its SuperNode missed
    its heartbeats: it is reconnecting after a restart, with a back-off of up to tens of seconds) is
    asked again every ``reconnect_pause_s`` until the timeout, without using up ``retries``. A node
    that does not answer at all uses up the timeout. A node whose site policy refused the request (its
    reason names the policy key) is not asked again.
    """
    deadline = time.monotonic() + timeout
    out: dict[int, Message] = {}
    refused: set[int] = set()
    pending = list(nodes)
    attempt = 0
    while pending and attempt <= retries:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        unavailable: set[int] = set()
        msgs = [Message(RecordDict(dict(records)), dst_node_id=n, message_type=message_type) for n in pending]
        for rep in grid.send_and_receive(msgs, timeout=left):
            nid = rep.metadata.src_node_id
            if rep.has_error() and refused_key(rep.error.reason):
                # The site's own policy refused: the same request would be refused again.
                log(WARNING, "%s: node %s refused by its site policy: %s", message_type, nid, rep.error.reason)
                refused.add(nid)
            elif rep.has_error() and rep.error.code == ErrorCode.NODE_UNAVAILABLE:
                unavailable.add(nid)
            elif rep.has_error():
                log(ERROR, "%s: node %s replied with an error: %s", message_type, nid, rep.error.reason)
            else:
                out[nid] = rep
        pending = [n for n in pending if n not in out and n not in refused]
        if not pending:
            break
        if unavailable and set(pending) <= unavailable:
            # every node still missing is reconnecting: wait for it, this is not a failed attempt
            left = deadline - time.monotonic()
            if left <= reconnect_pause_s:
                log(ERROR, "%s: node(s) %s still unavailable (not reconnected) when the timeout ran out",
                    message_type, ", ".join(map(str, sorted(unavailable))))
                break
            log(WARNING, "%s: node(s) %s unavailable (reconnecting?); asking again in %.0f s", message_type,
                ", ".join(map(str, sorted(unavailable))), reconnect_pause_s)
            time.sleep(reconnect_pause_s)
            continue
        attempt += 1
        if attempt <= retries:
            log(WARNING, "%s: asking node(s) %s again (attempt %d of %d)", message_type,
                ", ".join(map(str, pending)), attempt + 1, retries + 1)
    return out


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > timeout:
            return nodes
        time.sleep(0.5)


def run_federation(grid: Grid, cfg: RunConfig, *, n_sites: int, expected_dims: dict[str, int] | None = None,
                   progress: Progress | None = None, checkpoint: str | Path | None = None, resume: bool = False,
                   expected_sites: frozenset[str] | None = None) -> FederationResult:
    """Run every phase; ``n_sites`` is how many sites the run waits for before the handshake.

    With ``checkpoint`` set, the state is saved after every round; with ``resume``, a run continues from
    the last completed round of the phase it was in (handshake, statistics and setup are always redone:
    they are cheap, deterministic, and re-arm sites that restarted too). ``progress`` hears one line per
    phase and every round (default: Flower log records).
    """
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    progress = progress or Progress()
    say = progress.phase

    # 1. schema handshake
    t = time.perf_counter()
    nodes = _wait_for_nodes(grid, n_sites, cfg.round_timeout_s)
    replies = _ask(grid, nodes, P.SCHEMA, cfg.round_timeout_s)
    infos = []
    for nid, rep in sorted(replies.items()):
        c = rep.content[P.CONFIG]
        infos.append(SiteInfo(nid, str(c["site"]), P.decode_schema(str(c["schema"])), str(c["rmm-version"]),
                              {k: int(c[k]) for k in ("n-patients", "n-events", "n-train", "n-val", "n-test")}))
    hs = agree(infos, __version__, expected_dims, expected_sites)
    for site, reason in hs.refused.items():
        log(WARNING, "site %s refused: %s", site, reason)
    if not hs.accepted:
        raise FederationError("no site passed the schema handshake; see the refusals above")
    accepted = [s.node_id for s in hs.accepted]
    need = min(cfg.min_sites, n_sites) if cfg.min_sites else n_sites // 2 + 1
    if len(accepted) < need:
        raise FederationError(f"only {len(accepted)} of {n_sites} site(s) passed the handshake; this run needs "
                              f"{need} (min-sites). Fix: check that the sites run rmm-client, then submit again "
                              "(with --resume to continue an interrupted run)")
    site_of = {s.node_id: s.site for s in hs.accepted}
    participation = {"handshake": sorted(site_of.values())}

    def answered(phase: str, nodes) -> None:
        participation[phase] = sorted(site_of[n] for n in nodes)
        missing = sorted(set(site_of[n] for n in accepted) - set(participation[phase]))
        if missing:
            log(WARNING, "%s: no answer from %s", phase, ", ".join(missing))
    say(f"handshake: {len(accepted)} site(s) accepted ({', '.join(site_of.values())}); "
        f"modalities {', '.join(f'{m}:{d}' for m, d in hs.dims.items())}")
    timing["handshake"] = time.perf_counter() - t

    # 2. federated feature statistics (counts, sums, sums of squares)
    t = time.perf_counter()
    conf = ConfigRecord({"schema": P.encode_schema(hs.dims), "min-stat-count": cfg.min_stat_count})
    replies = _ask(grid, accepted, P.STATS, cfg.round_timeout_s, config=conf)
    answered("statistics", replies)
    accepted = [n for n in accepted if n in replies]
    if not accepted:
        raise FederationError("no site returned feature statistics")
    sums = add_sums([from_record(replies[n].content[P.SUMS]) for n in accepted])
    stats = FeatureStats.from_sums(sums, hs.dims, cfg.model.anat_partitions)

    # 3. setup: every site gets the run config and the statistics once
    replies = _ask(grid, accepted, P.SETUP, cfg.round_timeout_s, config=ConfigRecord({**cfg.to_flat(), "schema": P.encode_schema(hs.dims)}),
                   **{P.STATS_RECORD: to_record(stats.to_arrays())})
    answered("setup", replies)
    accepted = [n for n in accepted if n in replies]
    timing["statistics"] = time.perf_counter() - t
    say(f"statistics: feature sums from {len(accepted)} site(s); L_anat on "
        + ", ".join(f"{m}:{src}" for m, src in sums_source(sums, hs.dims).items()))

    # 4. Tier 1 rounds
    t = time.perf_counter()
    ckpt = Checkpoint(checkpoint)
    state = ckpt.load(cfg.to_flat()) if resume else None
    base = {"config": cfg.to_flat(), "dims": hs.dims}
    weights, history, best_round, strategy = _run_phase(
        grid, cfg, accepted, phase="tier1", rounds=cfg.rounds, select_best=cfg.select_best, train_type=P.TRAIN,
        initial=ArrayRecord(build_model(hs.dims, cfg.model, cfg.seed).state_dict()),
        state=state, ckpt=ckpt, base=base, progress=progress)
    base["tier1"] = {"weights": weights, "history": history, "best_round": best_round}
    ckpt.save({**base, "phase": "tier1-done"})
    timing["tier1"] = time.perf_counter() - t

    # 5. calibration: histograms on a server-fixed grid -> theta
    t = time.perf_counter()
    grid_h = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    replies = _ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(weights),
                   config=ConfigRecord(grid_h.to_config()))
    answered("calibration", replies)
    parts = _merged_parts(replies, grid_h.n_bins, cfg.dp.histogram_epsilon > 0)
    counts = pooled_counts(parts, grid_h.n_bins) if parts else np.zeros(grid_h.n_bins)
    if counts.sum() <= 0:
        raise FederationError("no site has held-out complete cases to calibrate theta on; "
                              "give each site a 'val' split with some patients who have every modality "
                              "(at least its policy's min-patients of them)")
    bracket = merged_quantile(grid_h, parts, cfg.quantile)
    theta = bracket.estimate
    release_error = {"theta": {**_bracket_doc(bracket, parts), "per_site": _per_site(replies, parts, site_of)}}
    timing["calibration"] = time.perf_counter() - t
    say(f"calibration: {round(float(counts.sum()))} uncertainty values from {len(replies)} site(s); "
        f"theta (q={cfg.quantile}) = {theta:.4g}")

    # 5b. baseline hazard of the frozen Tier 1 (Breslow on a federated time grid), for survival curves
    t = time.perf_counter()
    hazard = _baseline_hazard(grid, cfg, accepted, answered, release_error)
    timing["baseline_hazard"] = time.perf_counter() - t
    if hazard is not None:
        say(f"baseline hazard: {len(hazard[0])} grid points up to t = {hazard[0][-1]:.4g}; "
            f"H0(end) = {hazard[1][-1]:.4g}")

    # 6. Tier 2 rounds (Tier 1 frozen at the sites), then its abstention bound and the risk scales
    tier2_weights: dict[str, np.ndarray] | None = None
    bound, scale, tier2_history = float("inf"), RiskScale(), []
    gate, tier2_round = None, 0
    if cfg.tier2_rounds > 0:
        t = time.perf_counter()
        tier2_weights, tier2_history, tier2_round, _ = _run_phase(
            grid, cfg, accepted, phase="tier2", rounds=cfg.tier2_rounds,
            select_best=cfg.tier2_select_best or cfg.tier2_gate, keep_best=cfg.tier2_select_best,
            train_type=P.TRAIN_TIER2, evaluate_config={"split": "val", "tier": 2},
            initial=ArrayRecord(build_tier2(hs.dims, cfg.tier2, cfg.seed, tier1=cfg.model).state_dict()),
            state=state, ckpt=ckpt, base=base, progress=progress)
        ckpt.save({**base, "phase": "tier2-done", "tier2": {"weights": tier2_weights, "history": tier2_history,
                                                             "best_round": tier2_round}})
        gate = _tier2_gate(cfg, tier2_history, tier2_round)
        say(f"tier2 gate: {'open' if gate.open else 'closed'}: {gate.reason}")
        timing["tier2"] = time.perf_counter() - t
        t = time.perf_counter()
        replies = _ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights),
                       config=ConfigRecord({**grid_h.to_config(), "tier": 2}))
        answered("tier2_calibration", replies)
        parts2 = _merged_parts(replies, grid_h.n_bins, cfg.dp.histogram_epsilon > 0)
        counts2 = pooled_counts(parts2, grid_h.n_bins) if parts2 else np.zeros(grid_h.n_bins)
        sums = {k: sum(float(r.content[P.METRICS][k]) for r in replies.values())
                for k in ("risk-n", "risk1-sum", "risk1-sumsq", "risk2-sum", "risk2-sumsq")}
        if sums["risk-n"] > 0:
            scale = RiskScale.from_sums(sums["risk-n"], sums["risk1-sum"], sums["risk1-sumsq"], sums["risk2-sum"],
                                        sums["risk2-sumsq"])
        else:  # no site answered (timeouts, or every site's policy refused): both heads keep the raw scale
            log(WARNING, "tier2 calibration: no site sent risk sums; the risk scales stay at their defaults")
        if counts2.sum() > 0:
            bracket2 = merged_quantile(grid_h, parts2, cfg.tier2_abstain_quantile)
            bound = bracket2.estimate
            release_error["tier2_bound"] = _bracket_doc(bracket2, parts2)
        timing["tier2_calibration"] = time.perf_counter() - t
        say(f"tier2 calibration: abstain when Tier 2 uncertainty > {bound:.4g} (q={cfg.tier2_abstain_quantile}, "
            f"{round(float(counts2.sum()))} values)")

    scale_conf = {f"scale-{k.replace('_', '-')}": v for k, v in vars(scale).items()}

    # 6b. risk groups: tertile cut points of the training system risk, from summed histograms
    t = time.perf_counter()
    used = {"tier2-used": bool(gate.open) if gate is not None else True}
    replies = _ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights or {}),
                   config=ConfigRecord({**RISK_GRID.to_config(), "what": "risk-groups", "theta": theta,
                                        "bound": bound, **scale_conf, **used}))
    answered("risk_groups", replies)
    risk_parts = _merged_parts(replies, RISK_GRID.n_bins, cfg.dp.histogram_epsilon > 0)
    risk_counts = pooled_counts(risk_parts, RISK_GRID.n_bins) if risk_parts else np.zeros(RISK_GRID.n_bins)
    cutpoints = cutpoints_from_counts(risk_counts)
    if cutpoints is not None:
        release_error["risk_cutpoints"] = {
            "widest_merged_bin_risk_units": max(p.widest() for p in risk_parts) * math.log(RISK_GRID.ratio),
            "bin_risk_units": math.log(RISK_GRID.ratio),
            "brackets": [[math.log(max(b.low, 1e-300)), math.log(b.high) if math.isfinite(b.high) else None]
                         for b in (merged_quantile(RISK_GRID, risk_parts, q) for q in (1 / 3, 2 / 3))]}
    timing["risk_groups"] = time.perf_counter() - t
    say(f"risk groups: tertile cut points of the training system risk "
        f"{'n/a' if cutpoints is None else ', '.join(f'{c:.3f}' for c in cutpoints)} ({round(float(risk_counts.sum()))} values)")

    # 7. evaluation (sites use their frozen Tier 1; only Tier 2 weights travel)
    t = time.perf_counter()
    conf = {"theta": theta, "bound": bound, "split": "test", "has-tier2": tier2_weights is not None, **scale_conf,
            **used}
    replies = _ask(grid, accepted, P.EVALUATE, cfg.round_timeout_s, arrays=to_record(tier2_weights or {}),
                   config=ConfigRecord(conf))
    answered("evaluation", replies)
    per_site = dict(sorted((site_of[n], {k: float(v) for k, v in r.content[P.METRICS].items()})
                           for n, r in replies.items()))
    timing["evaluation"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t_all
    return FederationResult(cfg, hs, stats, weights, grid_h, counts, theta, per_site, history=history,
                            timing_s=timing, best_round=best_round,
                            tier2_weights=tier2_weights, bound=bound, scale=scale, tier2_history=tier2_history,
                            baseline_hazard=hazard, participation=participation, risk_cutpoints=cutpoints,
                            risk_cutpoint_values=int(round(risk_counts.sum())), release_error=release_error,
                            tier2_gate=gate, tier2_round=tier2_round)


def sums_source(sums: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, str]:
    """Which block L_anat statistics came from, per modality (complete cases when any were shared)."""
    return {m: "complete cases" if float(sums[f"{m}.complete.n"][0]) > 0 else "all present cases" for m in dims}


def _tier2_gate(cfg: RunConfig, history: list[dict], kept_round: int) -> Tier2Gate:
    """The gate (core/tier2_gate.py) from the kept round's federated masked validation sums."""
    if not cfg.tier2_gate:
        return Tier2Gate.always_open()
    entry = next((h for h in history if h.get("round") == kept_round and "val-sums" in h), None)
    if entry is None:
        return Tier2Gate(False, f"no federated masked validation of Tier 2 round {kept_round} was received: "
                         "Tier 1 answers the referred")
    return decide(entry["val-sums"], int(entry.get("val-sites", 0)))


def _run_phase(grid: Grid, cfg: RunConfig, accepted: list[int], *, phase: str, rounds: int, select_best: bool,
               train_type: str, initial: ArrayRecord, state: dict | None, ckpt: Checkpoint, base: dict,
               progress: Progress, keep_best: bool | None = None, evaluate_config: dict | None = None
               ) -> tuple[dict[str, np.ndarray], list[dict], int, object]:
    """One federated training phase (Tier 1 or Tier 2) with per-round checkpoints and resume.

    ``select_best`` validates every round; ``keep_best`` (default: ``select_best``) then keeps the best
    round's weights instead of the last round's."""
    keep_best = select_best if keep_best is None else keep_best
    say = progress.phase
    done = (state or {}).get(phase) if state and state.get("phase") != phase else None
    if done is not None:  # the phase had finished before the restart
        say(f"resume: {phase} already complete, reusing its weights")
        return done["weights"], done["history"], done.get("best_round") or rounds, None
    offset = 0
    runner = make_strategy(cfg, len(accepted), set(accepted), lambda rnd, info: None, train_type=train_type,
                           select_best=select_best)
    strategy = getattr(runner, "strategy", runner)  # central DP wraps the strategy that keeps the books
    if state and state.get("phase") == phase:
        offset = int(state["round"])
        initial = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state["weights"].items()})
        strategy.round_offset = offset
        strategy.history = state["history"]
        strategy.best_score, strategy.best_round = state["best_score"], state["best_round"]
        if state.get("best_weights") is not None:
            strategy.best_arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state["best_weights"].items()})
        restore_strategy_state(strategy, state.get("strategy", {}))
        say(f"resume: {phase} continues after round {offset}/{rounds}")

    def save(strat, rnd: int) -> None:
        arrays = strat.last_arrays
        ckpt.save({**base, "phase": phase, "round": rnd,
                   "weights": {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()},
                   "history": strat.history, "best_score": strat.best_score, "best_round": strat.best_round,
                   "best_weights": ({k: v.numpy() for k, v in strat.best_arrays.to_torch_state_dict().items()}
                                    if strat.best_arrays is not None else None),
                   "strategy": strategy_state(strat)})
        if rnd not in reported:  # a phase without validation ends its round twice (train, empty evaluate)
            reported.add(rnd)
            progress.round_end(phase, rnd, rounds, strat.history[-1] if strat.history else {})

    reported: set[int] = set()
    strategy.checkpoint_fn = save
    final = initial
    if rounds - offset > 0:
        progress.rounds_start(phase, rounds, offset)
        try:
            result = runner.start(grid=grid, initial_arrays=initial, num_rounds=rounds - offset,
                                  timeout=cfg.round_timeout_s,
                                  evaluate_config=ConfigRecord(evaluate_config or {"split": "val"}))
        finally:
            progress.rounds_end(phase)
        final = result.arrays
    best_round = rounds
    if keep_best and strategy.best_arrays is not None:
        final, best_round = strategy.best_arrays, strategy.best_round
        if phase == "tier1":
            say(f"model selection: round {best_round} has the best federated validation C-index "
                f"({strategy.best_score:.4f})")
        else:
            say(f"model selection: {phase} round {best_round} has the lowest federated masked validation "
                f"recovery MSE ({-strategy.best_score:.4f})")
    return {k: v.numpy() for k, v in final.to_torch_state_dict().items()}, strategy.history, best_round, strategy


FOLLOWUP_GRID = HistogramGrid(1e-3, 1e6, 512)  # follow-up in any unit from hours to centuries of days


def _baseline_hazard(grid: Grid, cfg: RunConfig, nodes: list[int], answered=lambda phase, replies: None,
                     release_error: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Federated Breslow baseline hazard of the frozen Tier 1 on a time grid the server fixes."""
    t_max = cfg.hazard_max_time
    errors = release_error if release_error is not None else {}
    if t_max <= 0:
        replies = _ask(grid, nodes, P.HAZARD, cfg.round_timeout_s,
                       config=ConfigRecord({**FOLLOWUP_GRID.to_config(), "step": "followup"}))
        parts = _merged_parts(replies, FOLLOWUP_GRID.n_bins, cfg.dp.histogram_epsilon > 0)
        if not parts or spread(parts, FOLLOWUP_GRID.n_bins).sum() <= 0:
            return None
        bracket = merged_quantile(FOLLOWUP_GRID, parts, 0.95)
        t_max = bracket.estimate
        errors["hazard_max_time"] = _bracket_doc(bracket, parts)
    points = time_grid(t_max, cfg.hazard_points)
    replies = _ask(grid, nodes, P.HAZARD, cfg.round_timeout_s, config=ConfigRecord({"step": "sums"}),
                   **{P.HAZARD_RECORD: to_record({"grid": points})})
    answered("baseline_hazard", replies)
    if not replies:
        return None
    parts = [MergedHazard.from_arrays(from_record(r.content[P.HAZARD_RECORD]), len(points)) for r in replies.values()]
    events, risk_sums = fine_sums(parts, len(points))
    widest = max(p.widest() for p in parts)
    errors["baseline_hazard"] = {"grid_points": len(points), "widest_merged_intervals": widest,
                                 "widest_merged_time": float(widest * points[0]),
                                 "groups_per_site": sorted(int(p.first.size) for p in parts)}
    return points, baseline_from_sums(points, events, risk_sums)


def _merged_parts(replies: dict[int, Message], n_bins: int, noisy: bool) -> list[MergedBins]:
    """The sites' merged histograms (core/merged_histogram.py); noisy counts are clipped after summing."""
    parts = [MergedBins.from_arrays(from_record(r.content[P.COUNTS]), n_bins) for r in replies.values()]
    if noisy and parts:  # unclipped noisy counts: spread, sum, then a monotone CDF, as one exact part
        total = spread(parts, n_bins)
        cdf = np.maximum.accumulate(np.clip(np.cumsum(total), 0, None))
        fine = np.round(np.diff(np.concatenate(([0.0], cdf)))).astype(np.int64)
        nz = np.flatnonzero(fine)
        return [MergedBins(nz, nz, fine[nz], n_bins)] if nz.size else []
    return parts


def _per_site(replies: dict[int, Message], parts: list[MergedBins], site_of: dict[int, str]) -> dict:
    """Per site: values binned, merged bins sent, widest merged bin (fine bins). Exact parts only."""
    if len(parts) != len(replies):  # noisy counts were pooled into one part
        return {}
    return {site_of[n]: {"values": int(np.asarray(p.counts).sum()), "merged_bins": int(p.first.size),
                         "widest_merged_bin": p.widest()} for n, p in zip(replies, parts)}


def _bracket_doc(b: QuantileBracket, parts: list[MergedBins]) -> dict:
    """What a merged release leaves open about a quantile: where the exact pooled value must lie."""
    return {"estimate": b.estimate, "low": b.low, "high": b.high if math.isfinite(b.high) else None,
            "bracket_ratio": b.ratio if math.isfinite(b.ratio) else None,
            "widest_merged_bin": max((p.widest() for p in parts), default=0)}
