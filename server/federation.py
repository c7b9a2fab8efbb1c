"""The phases of one rmm run, driven by the ServerApp over a Flower Grid.

schema handshake -> federated feature statistics -> setup -> Tier 1 rounds -> calibration ->
evaluation. Only weights, feature sums, histogram counts and scalar metrics come back from sites.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import ERROR, WARNING

import numpy as np
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
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
from ..core.histogram import HistogramGrid, quantile_from_counts
from ..core.private_histogram import monotone_counts
from ..core.risk_groups import RISK_GRID, cutpoints_from_counts
from ..core.tier1 import build_model
from ..core.tier2 import build_tier2
from ..core.two_tier import RiskScale
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

    def combined_c_index(self) -> float:
        return combined_c_index(ConcordanceCounts(m["pairs-concordant"], m["pairs-tied-risk"], m["pairs-comparable"])
                                for m in self.per_site.values())


def _ask(grid: Grid, nodes: list[int], message_type: str, timeout: float, *, retries: int = 1,
         **records) -> dict[int, Message]:
    """Send the same records to each node; return the successful replies by node (errors logged).

    Every message sent this way is a query a site can answer twice with the same result (schema,
    statistics, setup, histograms, hazard sums, evaluation), so a node that answered with an error
    (e.g. a ClientApp task lost while its SuperNode reconnected) is asked again, up to ``retries``
    times, within the same ``timeout``. A node that does not answer at all uses up the timeout.
    """
    deadline = time.monotonic() + timeout
    out: dict[int, Message] = {}
    pending = list(nodes)
    for attempt in range(retries + 1):
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        if attempt:
            log(WARNING, "%s: asking node(s) %s again (attempt %d of %d)", message_type,
                ", ".join(map(str, pending)), attempt + 1, retries + 1)
        msgs = [Message(RecordDict(dict(records)), dst_node_id=n, message_type=message_type) for n in pending]
        for rep in grid.send_and_receive(msgs, timeout=left):
            nid = rep.metadata.src_node_id
            if rep.has_error():
                log(ERROR, "%s: node %s replied with an error: %s", message_type, nid, rep.error.reason)
            else:
                out[nid] = rep
        pending = [n for n in pending if n not in out]
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
    counts = np.sum([from_record(r.content[P.COUNTS])["counts"] for r in replies.values()], axis=0)
    if cfg.dp.histogram_epsilon > 0:  # sites sent unclipped noisy counts: make the summed CDF monotone
        counts = monotone_counts(counts)
    if counts.sum() == 0:
        raise FederationError("no site has held-out complete cases to calibrate theta on; "
                              "give each site a 'val' split with some patients who have every modality")
    theta = quantile_from_counts(grid_h, counts, cfg.quantile)
    timing["calibration"] = time.perf_counter() - t
    say(f"calibration: {int(counts.sum())} uncertainty values from {len(replies)} site(s); "
        f"theta (q={cfg.quantile}) = {theta:.4g}")

    # 5b. baseline hazard of the frozen Tier 1 (Breslow on a federated time grid), for survival curves
    t = time.perf_counter()
    hazard = _baseline_hazard(grid, cfg, accepted, answered)
    timing["baseline_hazard"] = time.perf_counter() - t
    if hazard is not None:
        say(f"baseline hazard: {len(hazard[0])} grid points up to t = {hazard[0][-1]:.4g}; "
            f"H0(end) = {hazard[1][-1]:.4g}")

    # 6. Tier 2 rounds (Tier 1 frozen at the sites), then its abstention bound and the risk scales
    tier2_weights: dict[str, np.ndarray] | None = None
    bound, scale, tier2_history = float("inf"), RiskScale(), []
    if cfg.tier2_rounds > 0:
        t = time.perf_counter()
        tier2_weights, tier2_history, _, _ = _run_phase(
            grid, cfg, accepted, phase="tier2", rounds=cfg.tier2_rounds, select_best=False, train_type=P.TRAIN_TIER2,
            initial=ArrayRecord(build_tier2(hs.dims, cfg.tier2, cfg.seed).state_dict()),
            state=state, ckpt=ckpt, base=base, progress=progress)
        ckpt.save({**base, "phase": "tier2-done", "tier2": {"weights": tier2_weights, "history": tier2_history}})
        timing["tier2"] = time.perf_counter() - t
        t = time.perf_counter()
        replies = _ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights),
                       config=ConfigRecord({**grid_h.to_config(), "tier": 2}))
        answered("tier2_calibration", replies)
        counts2 = np.sum([from_record(r.content[P.COUNTS])["counts"] for r in replies.values()], axis=0)
        counts2 = monotone_counts(counts2) if cfg.dp.histogram_epsilon > 0 else counts2
        sums = {k: sum(float(r.content[P.METRICS][k]) for r in replies.values())
                for k in ("risk-n", "risk1-sum", "risk1-sumsq", "risk2-sum", "risk2-sumsq")}
        scale = RiskScale.from_sums(sums["risk-n"], sums["risk1-sum"], sums["risk1-sumsq"], sums["risk2-sum"],
                                    sums["risk2-sumsq"])
        if counts2.sum() > 0:
            bound = quantile_from_counts(grid_h, counts2, cfg.tier2_abstain_quantile)
        timing["tier2_calibration"] = time.perf_counter() - t
        say(f"tier2 calibration: abstain when Tier 2 uncertainty > {bound:.4g} (q={cfg.tier2_abstain_quantile}, "
            f"{int(counts2.sum())} values)")

    scale_conf = {f"scale-{k.replace('_', '-')}": v for k, v in vars(scale).items()}

    # 6b. risk groups: tertile cut points of the training system risk, from summed histograms
    t = time.perf_counter()
    replies = _ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights or {}),
                   config=ConfigRecord({**RISK_GRID.to_config(), "what": "risk-groups", "theta": theta,
                                        "bound": bound, **scale_conf}))
    answered("risk_groups", replies)
    risk_counts = np.sum([from_record(r.content[P.COUNTS])["counts"] for r in replies.values()], axis=0) \
        if replies else np.zeros(RISK_GRID.n_bins)
    risk_counts = monotone_counts(risk_counts) if cfg.dp.histogram_epsilon > 0 else risk_counts
    cutpoints = cutpoints_from_counts(risk_counts)
    timing["risk_groups"] = time.perf_counter() - t
    say(f"risk groups: tertile cut points of the training system risk "
        f"{'n/a' if cutpoints is None else ', '.join(f'{c:.3f}' for c in cutpoints)} ({int(risk_counts.sum())} values)")

    # 7. evaluation (sites use their frozen Tier 1; only Tier 2 weights travel)
    t = time.perf_counter()
    conf = {"theta": theta, "bound": bound, "split": "test", "has-tier2": tier2_weights is not None, **scale_conf}
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
                            risk_cutpoint_values=int(risk_counts.sum()))


def sums_source(sums: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, str]:
    """Which block L_anat statistics came from, per modality (complete cases when any were shared)."""
    return {m: "complete cases" if float(sums[f"{m}.complete.n"][0]) > 0 else "all present cases" for m in dims}


def _run_phase(grid: Grid, cfg: RunConfig, accepted: list[int], *, phase: str, rounds: int, select_best: bool,
               train_type: str, initial: ArrayRecord, state: dict | None, ckpt: Checkpoint, base: dict,
               progress: Progress) -> tuple[dict[str, np.ndarray], list[dict], int, object]:
    """One federated training phase (Tier 1 or Tier 2) with per-round checkpoints and resume."""
    say = progress.phase
    done = (state or {}).get(phase) if state and state.get("phase") != phase else None
    if done is not None:  # the phase had finished before the restart
        say(f"resume: {phase} already complete, reusing its weights")
        return done["weights"], done["history"], done.get("best_round", rounds), None
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
                                  timeout=cfg.round_timeout_s, evaluate_config=ConfigRecord({"split": "val"}))
        finally:
            progress.rounds_end(phase)
        final = result.arrays
    best_round = rounds
    if select_best and strategy.best_arrays is not None:
        final, best_round = strategy.best_arrays, strategy.best_round
        say(f"model selection: round {best_round} has the best federated validation C-index ({strategy.best_score:.4f})")
    return {k: v.numpy() for k, v in final.to_torch_state_dict().items()}, strategy.history, best_round, strategy


FOLLOWUP_GRID = HistogramGrid(1e-3, 1e6, 512)  # follow-up in any unit from hours to centuries of days


def _baseline_hazard(grid: Grid, cfg: RunConfig, nodes: list[int],
                     answered=lambda phase, replies: None) -> tuple[np.ndarray, np.ndarray] | None:
    """Federated Breslow baseline hazard of the frozen Tier 1 on a time grid the server fixes."""
    t_max = cfg.hazard_max_time
    if t_max <= 0:
        replies = _ask(grid, nodes, P.HAZARD, cfg.round_timeout_s,
                       config=ConfigRecord({**FOLLOWUP_GRID.to_config(), "step": "followup"}))
        counts = np.sum([from_record(r.content[P.COUNTS])["counts"] for r in replies.values()], axis=0)
        if not replies or counts.sum() == 0:
            return None
        t_max = quantile_from_counts(FOLLOWUP_GRID, counts, 0.95)
    points = time_grid(t_max, cfg.hazard_points)
    replies = _ask(grid, nodes, P.HAZARD, cfg.round_timeout_s, config=ConfigRecord({"step": "sums"}),
                   **{P.HAZARD_RECORD: to_record({"grid": points})})
    answered("baseline_hazard", replies)
    if not replies:
        return None
    parts = [from_record(r.content[P.HAZARD_RECORD]) for r in replies.values()]
    events, risk_sums = add_hazard_sums([(p["hazard.events"], p["hazard.risk-sum"]) for p in parts])
    return points, baseline_from_sums(points, events, risk_sums)
