"""The phases of one rmm run, driven by the ServerApp over a Flower Grid (queries: server/queries.py;
training rounds, the Tier 2 gate and the baseline hazard: server/phases.py).

schema handshake -> federated feature statistics -> setup -> Tier 1 rounds -> calibration ->
evaluation. Only weights, feature sums, histogram counts and scalar metrics come back from sites.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from .. import __version__
from .records import from_record, to_record
from ..core import protocol as P
from ..core.concordance import ConcordanceCounts, combined_c_index
from ..core.config import RunConfig
from ..core.errors import RmmError
from ..core.feature_stats import FeatureStats, add_sums
from ..core.histogram import HistogramGrid
from ..core.merged_histogram import merged_quantile, pooled_counts
from ..core.risk_groups import RISK_GRID, cutpoints_from_counts
from ..core.tier1 import build_model
from ..core.tier2 import build_tier2
from ..core.two_tier import RiskScale
from ..core.tier2_gate import Tier2Gate
from .checkpoint import Checkpoint
from .handshake import Handshake, SiteInfo, agree
from .progress import Progress
from .phases import baseline_hazard, run_phase, tier2_gate
from .queries import ask, bracket_doc, merged_parts, wait_for_nodes
from .queries import per_site as per_site_release


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
    nodes = wait_for_nodes(grid, n_sites, cfg.round_timeout_s)
    replies = ask(grid, nodes, P.SCHEMA, cfg.round_timeout_s)
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
    if cfg.model.widths == "auto":  # resolved once, before round 1: every site receives the same widths
        cfg = cfg.resolve_widths(sum(s.counts["n-train"] for s in hs.accepted))
        say(f"widths: hidden {cfg.model.hidden_dim}, embed {cfg.model.embed_dim}, attention {cfg.model.attn_dim} "
            f"(model.widths = auto)")
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
    conf = ConfigRecord({"schema": P.encode_schema(hs.dims), "min-stat-count": cfg.min_stat_count,
                         "reduce-above": cfg.model.reduce_above, "reduce-dim": cfg.model.reduce_dim})
    replies = ask(grid, accepted, P.STATS, cfg.round_timeout_s, config=conf)
    answered("statistics", replies)
    accepted = [n for n in accepted if n in replies]
    if not accepted:
        raise FederationError("no site returned feature statistics")
    sums = add_sums([from_record(replies[n].content[P.SUMS]) for n in accepted])
    stats = FeatureStats.from_sums(sums, hs.dims, cfg.model.anat_partitions, cfg.model.reduce_dim)
    model_dims = stats.model_dims(hs.dims)

    # 3. setup: every site gets the run config and the statistics once
    replies = ask(grid, accepted, P.SETUP, cfg.round_timeout_s, config=ConfigRecord({**cfg.to_flat(), "schema": P.encode_schema(hs.dims)}),
                   **{P.STATS_RECORD: to_record(stats.to_arrays())})
    answered("setup", replies)
    accepted = [n for n in accepted if n in replies]
    timing["statistics"] = time.perf_counter() - t
    say(f"statistics: feature sums from {len(accepted)} site(s); L_anat on "
        + ", ".join(f"{m}:{src}" for m, src in sums_source(sums, hs.dims).items())
        + ("; federated PCA " + ", ".join(f"{m} {hs.dims[m]}->{model_dims[m]}" for m in stats.basis)
           if stats.basis else ""))

    # 4. Tier 1 rounds
    t = time.perf_counter()
    ckpt = Checkpoint(checkpoint)
    state = ckpt.load(cfg.to_flat()) if resume else None
    base = {"config": cfg.to_flat(), "dims": hs.dims}
    weights, history, best_round, strategy = run_phase(
        grid, cfg, accepted, phase="tier1", rounds=cfg.rounds, select_best=cfg.select_best, train_type=P.TRAIN,
        initial=ArrayRecord(build_model(model_dims, cfg.model, cfg.seed).state_dict()),
        state=state, ckpt=ckpt, base=base, progress=progress)
    base["tier1"] = {"weights": weights, "history": history, "best_round": best_round}
    ckpt.save({**base, "phase": "tier1-done"})
    timing["tier1"] = time.perf_counter() - t

    # 5. calibration: histograms on a server-fixed grid -> theta
    t = time.perf_counter()
    grid_h = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    replies = ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(weights),
                   config=ConfigRecord(grid_h.to_config()))
    answered("calibration", replies)
    parts = merged_parts(replies, grid_h.n_bins, cfg.dp.histogram_epsilon > 0)
    counts = pooled_counts(parts, grid_h.n_bins) if parts else np.zeros(grid_h.n_bins)
    if counts.sum() <= 0:
        raise FederationError("no site has held-out complete cases to calibrate theta on; "
                              "give each site a 'val' split with some patients who have every modality "
                              "(at least its policy's min-patients of them)")
    bracket = merged_quantile(grid_h, parts, cfg.quantile)
    theta = bracket.estimate
    release_error = {"theta": {**bracket_doc(bracket, parts), "per_site": per_site_release(replies, parts, site_of)}}
    timing["calibration"] = time.perf_counter() - t
    say(f"calibration: {round(float(counts.sum()))} uncertainty values from {len(replies)} site(s); "
        f"theta (q={cfg.quantile}) = {theta:.4g}")

    # 5b. baseline hazard of the frozen Tier 1 (Breslow on a federated time grid), for survival curves
    t = time.perf_counter()
    hazard = baseline_hazard(grid, cfg, accepted, answered, release_error)
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
        tier2_weights, tier2_history, tier2_round, _ = run_phase(
            grid, cfg, accepted, phase="tier2", rounds=cfg.tier2_rounds,
            select_best=cfg.tier2_select_best or cfg.tier2_gate, keep_best=cfg.tier2_select_best,
            train_type=P.TRAIN_TIER2, evaluate_config={"split": "val", "tier": 2},
            initial=ArrayRecord(build_tier2(model_dims, cfg.tier2, cfg.seed, tier1=cfg.model).state_dict()),
            state=state, ckpt=ckpt, base=base, progress=progress)
        ckpt.save({**base, "phase": "tier2-done", "tier2": {"weights": tier2_weights, "history": tier2_history,
                                                             "best_round": tier2_round}})
        gate = tier2_gate(cfg, tier2_history, tier2_round)
        say(f"tier2 gate: {'open' if gate.open else 'closed'}: {gate.reason}")
        timing["tier2"] = time.perf_counter() - t
        t = time.perf_counter()
        replies = ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights),
                       config=ConfigRecord({**grid_h.to_config(), "tier": 2}))
        answered("tier2_calibration", replies)
        parts2 = merged_parts(replies, grid_h.n_bins, cfg.dp.histogram_epsilon > 0)
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
            release_error["tier2_bound"] = bracket_doc(bracket2, parts2)
        timing["tier2_calibration"] = time.perf_counter() - t
        say(f"tier2 calibration: abstain when Tier 2 uncertainty > {bound:.4g} (q={cfg.tier2_abstain_quantile}, "
            f"{round(float(counts2.sum()))} values)")

    scale_conf = {f"scale-{k.replace('_', '-')}": v for k, v in vars(scale).items()}

    # 6b. risk groups: tertile cut points of the training system risk, from summed histograms
    t = time.perf_counter()
    used = {"tier2-used": bool(gate.open) if gate is not None else True}
    replies = ask(grid, accepted, P.HISTOGRAM, cfg.round_timeout_s, arrays=to_record(tier2_weights or {}),
                   config=ConfigRecord({**RISK_GRID.to_config(), "what": "risk-groups", "theta": theta,
                                        "bound": bound, **scale_conf, **used}))
    answered("risk_groups", replies)
    risk_parts = merged_parts(replies, RISK_GRID.n_bins, cfg.dp.histogram_epsilon > 0)
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
    replies = ask(grid, accepted, P.EVALUATE, cfg.round_timeout_s, arrays=to_record(tier2_weights or {}),
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


