"""The phases of one rmm run, driven by the ServerApp over a Flower Grid: one function per phase over
a small :class:`Run` (the Grid, the config, the accepted sites, and what the run has learned).

handshake -> feature statistics and setup -> Tier 1 rounds -> freeze Tier 1 -> calibration ->
Tier 2 rounds and its calibration -> risk groups -> baseline hazard -> evaluation. Messages are
core/messages/protocol.py's phases; only weights, feature sums, merged histogram counts, merged Breslow sums
and scalar metrics come back from sites. Queries: server/queries.py; training rounds, the Tier 2
gate and the baseline hazard: server/phases.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from .. import __version__
from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.survival.concordance import ConcordanceCounts, combined_c_index
from ..core.config import RunConfig
from ..core.errors import RmmError
from ..core.aggregates.feature_stats import FeatureStats, add_sums
from ..core.aggregates.histogram import HistogramGrid
from ..core.aggregates.merged_histogram import merged_quantile, pooled_counts
from ..core.privacy.dp import zero_risk_head
from ..core.model.tier1 import build_model
from ..core.tier2.tier2 import build_tier2
from ..core.survival.baseline_hazard import BaselineHazard
from ..core.routing.fitted_two_tier import FittedTwoTier
from ..core.routing.risk_scale import RiskScale
from ..core.tier2.tier2_gate import Tier2Gate, gate_of_round
from ..core.model.weights import get_weights
from . import conformal_phase, cox_phase, tier2_gate_phase
from .risk_groups_phase import risk_groups
from .checkpoint import Checkpoint
from .cox_phase import cox_core_sites
from .few_events import few_events_warning
from .handshake import Handshake, SiteInfo, agree
from .phases import FOLLOWUP_COARSE, FOLLOWUP_GRID, dp_time_cuts, run_baseline_hazard, run_phase
from .strategies import sums_to_plain
from .noised_quantile import quantile_release, thin_tail
from .progress import Progress
from .queries import ask, bracket_doc, decode, no_answer, wait_for_nodes
from .queries import per_site as per_site_release


NO_VALIDATION = ("no site's policy answers exact per-round validation (the opt-in 'validation' phase: a lying "
                 "coordinator could bisect its exact metrics over rounds, docs/privacy.md)")


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
    fitted: FittedTwoTier  # theta, bound, risk scale, gate, cut points, q-hats, baseline hazard (one object)
    per_site: dict[str, dict[str, float]]
    history: list[dict] = field(default_factory=list)
    best_round: int = 0
    tier2_weights: dict[str, np.ndarray] | None = None
    tier2_history: list[dict] = field(default_factory=list)
    timing_s: dict[str, float] = field(default_factory=dict)
    participation: dict[str, list[str]] = field(default_factory=dict)  # phase -> sites that answered
    risk_cutpoint_values: int = 0  # how many training risks the cut points come from
    release_error: dict = field(default_factory=dict)  # what the sites' privacy floors cost (merged bins)
    tier2_round: int = 0  # the Tier 2 round kept (selected on masked validation, or the last)
    cox: dict | None = None  # Tier 1's Cox core: its fit and whether the network residual was kept
    residual_weights: dict[str, np.ndarray] | None = None  # the kept round before that decision (never sent)
    conformal: dict = field(default_factory=dict)  # the conformal phase's report per tier (server/conformal_phase.py)
    thresholds: tuple[float, ...] = ()  # the risk-coverage curve's routing-score thresholds evaluation measured
    cautions: list[str] = field(default_factory=list)  # warnings a reader of the results must see (metrics, report)

    def combined_c_index(self) -> float:
        return combined_c_index(ConcordanceCounts(*(m[k] for k in M.PAIRS.counts)) for m in self.per_site.values())


@dataclass
class Run:
    """What every phase function works on; each phase adds what it learned."""

    grid: Grid
    cfg: RunConfig
    progress: Progress
    ckpt: Checkpoint
    state: dict | None  # the checkpoint resumed from, if any
    accepted: list[int] = field(default_factory=list)
    site_of: dict[int, str] = field(default_factory=dict)
    participation: dict[str, list[str]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    release_error: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)  # what every checkpoint holds
    noised: bool = False  # the sites' releases are epsilon-DP (seen on the follow-up histograms)
    cox_nodes: list[int] = field(default_factory=list)  # the sites that fit Tier 1's Cox core
    validates: bool = False  # a site's policy answers exact per-round validation (the opt-in phase)
    cox: dict | None = None  # the Cox core's fit and the residual decision (server/cox_phase.py)
    residual_weights: dict | None = None  # Tier 1's kept round before the residual decision
    followup_grid: HistogramGrid = FOLLOWUP_GRID  # the follow-up grid the run asked first
    cautions: list[str] = field(default_factory=list)  # FederationResult.cautions

    def say(self, text: str) -> None:
        self.progress.phase(text)

    def ask(self, phase: P.Phase, request=None, *, record: str | None = None) -> dict[int, object]:
        """``phase`` to every accepted site; ``record`` names the participation entry (default: the phase's)."""
        replies = ask(self.grid, self.accepted, phase, self.cfg.round_timeout_s, request, say_refusals=False)
        self.answered(record or phase.name, replies)
        return replies

    def answered(self, phase: str, nodes) -> None:
        """Record who answered ``phase``; one warning names the sites that did not (:func:`no_answer`)."""
        self.participation[phase] = sorted(self.site_of[n] for n in nodes)
        missing = sorted(set(self.site_of[n] for n in self.accepted) - set(self.participation[phase]))
        if missing:
            refused = {self.site_of.get(n, str(n)): key for n, key in getattr(nodes, "refused", {}).items()}
            log(WARNING, "%s", no_answer(phase, missing, refused))

    def keep_answering(self, replies) -> None:
        self.accepted = [n for n in self.accepted if n in replies]

    def timed(self, name: str, t0: float) -> None:
        self.timing[name] = time.perf_counter() - t0


def run_federation(grid: Grid, cfg: RunConfig, *, n_sites: int, expected_dims: dict[str, int] | None = None,
                   progress: Progress | None = None, checkpoint: str | Path | None = None, resume: bool = False,
                   expected_sites: frozenset[str] | None = None) -> FederationResult:
    """Run every phase; ``n_sites`` is how many sites the run waits for before the handshake.

    With ``checkpoint`` set, the state is saved after every round; with ``resume``, a run continues from
    the last completed round of the phase it was in (handshake, statistics, setup, the freeze of Tier 1
    and the queries are always redone: they are cheap, deterministic, and re-arm sites that restarted
    too). ``progress`` hears one line per phase and every round (default: Flower log records).
    """
    t_all = time.perf_counter()
    ckpt = Checkpoint(checkpoint)
    run = Run(grid, cfg, progress or Progress(), ckpt, None)
    hs = handshake(run, n_sites, expected_dims, expected_sites)
    place_dp_time_cuts(run, ckpt.saved_config() if resume else None)
    run.state = ckpt.load(run.cfg.to_flat()) if resume else None
    stats = statistics_and_setup(run, hs)
    weights, history, best_round = tier1(run, hs, stats)
    freeze_tier1(run, weights)
    grid_h, counts, theta = calibration(run)
    t2 = tier2(run, stats, grid_h) if run.cfg.tier2.rounds > 0 else Tier2Outcome()
    q_hat = conformal_phase.calibrate(run, t2.weights)
    fitted = FittedTwoTier(theta, t2.bound, t2.scale, conformal_phase.judge_gate(run, t2.gate, q_hat),
                           conformal_q_={t: float(v["q_hat"]) for t, v in q_hat.items()},
                           conformal_alpha_=run.cfg.conformal_alpha, routing_score_=run.cfg.routing_score)
    cutpoints, n_risk = risk_groups(run, t2.weights, fitted)
    hazard = run_baseline_hazard(run, cutpoints)  # after the risk groups: their cut points centre the sums
    fitted = fitted.replace(cutpoints_=cutpoints,
                            baseline_hazard_=None if hazard is None else BaselineHazard(*hazard, risk="tier1"))
    thresholds = conformal_phase.curve_thresholds(grid_h, counts)
    per_site = evaluation(run, t2.weights, fitted, thresholds)
    run.timing["total"] = time.perf_counter() - t_all
    return FederationResult(run.cfg, hs, stats, weights, grid_h, counts, fitted, per_site, history=history,
                            timing_s=run.timing, best_round=best_round, tier2_weights=t2.weights,
                            tier2_history=t2.history, participation=run.participation, risk_cutpoint_values=n_risk,
                            release_error=run.release_error, tier2_round=t2.round, cox=run.cox,
                            residual_weights=run.residual_weights, conformal=q_hat, thresholds=thresholds,
                            cautions=run.cautions)


# ---- 1. schema handshake ----------------------------------------------------------------------
def handshake(run: Run, n_sites: int, expected_dims: dict[str, int] | None,
              expected_sites: frozenset[str] | None) -> Handshake:
    t = time.perf_counter()
    cfg = run.cfg
    nodes = wait_for_nodes(run.grid, n_sites, cfg.round_timeout_s)
    replies = ask(run.grid, nodes, P.SCHEMA, cfg.round_timeout_s)
    infos = []
    for nid, rep in sorted(replies.items()):
        r = decode(rep, P.SchemaReply)
        infos.append(SiteInfo(nid, r.site, r.dims, r.rmm_version, r.counts, r.release_epsilon, r.cox,
                              r.validation))
    hs = agree(infos, __version__, expected_dims, expected_sites)
    # the sites say whether their policy noises releases, so every histogram is asked the noised way
    # (coarse, then a zoom) from the first, in runs without DP-SGD too
    run.noised = any(s.release_epsilon > 0 for s in hs.accepted)
    if run.noised:  # the Breslow grid's end: coarse first, then a zoom (server/phases.baseline_hazard)
        run.followup_grid = FOLLOWUP_COARSE
    for site, reason in hs.refused.items():
        log(WARNING, "site %s refused: %s", site, reason)
    if few := few_events_warning(cfg.dp.enabled, hs.accepted):
        log(WARNING, "%s", few)
        run.cautions.append(few)
    if not hs.accepted:
        raise FederationError("no site passed the schema handshake; see the refusals above")
    if cfg.model.widths == "auto":  # resolved once, before round 1: every site receives the same widths
        run.cfg = cfg = cfg.resolve_widths(sum(s.counts[M.N_TRAIN] for s in hs.accepted))
        run.say(f"widths: hidden {cfg.model.hidden_dim}, embed {cfg.model.embed_dim}, attention {cfg.model.attn_dim} "
                f"(model.widths = auto)")
    need = min(cfg.min_sites, n_sites) if cfg.min_sites else n_sites // 2 + 1
    if len(hs.accepted) < need:
        raise FederationError(f"only {len(hs.accepted)} of {n_sites} site(s) passed the handshake; this run needs "
                              f"{need} (min-sites). Fix: check that the sites run rmm-client, then submit again "
                              "(with --resume to continue an interrupted run)")
    run.accepted = [s.node_id for s in hs.accepted]
    run.site_of = {s.node_id: s.site for s in hs.accepted}
    run.participation["handshake"] = sorted(run.site_of.values())
    run.validates = any(s.validation for s in hs.accepted)
    if not run.validates and (cfg.select_best or cfg.tier2.select_best or cfg.tier2.gate):
        run.say(f"validation: off ({NO_VALIDATION}); each tier keeps its last round, and Tier 2's gate reads one "
                "noised release")
    run.cox_nodes, why = cox_core_sites(cfg, [s.node_id for s in hs.accepted if s.cox])
    if why and cfg.model.cox_core:  # before setup: every site builds the network-only Tier 1
        run.cfg = cfg = cfg.with_overrides({"model.cox-core": False})
        run.say(f"cox core: off ({why})")
    run.say(f"handshake: {len(run.accepted)} site(s) accepted ({', '.join(run.site_of.values())}); "
            f"modalities {', '.join(f'{m}:{d}' for m, d in hs.dims.items())}")
    run.timed("handshake", t)
    return hs


def place_dp_time_cuts(run: Run, resumed: dict | None = None) -> None:
    """A DP run without ``dp.time-cuts`` gets them from the sites' follow-up histograms (pooled quintiles);
    a resumed run keeps the cuts its checkpoint was trained with (noised releases differ per run)."""
    cfg = run.cfg
    if not cfg.dp.enabled or cfg.dp.time_cuts.strip():
        return
    cuts, noised = dp_time_cuts(run.grid, cfg, run.accepted)
    run.noised = run.noised or noised
    run.followup_grid = FOLLOWUP_COARSE
    if cuts is None:
        raise FederationError("no site released a follow-up histogram, so the DP path has no time cuts. Fix: set "
                              "dp.time-cuts (the consortium's agreed follow-up quantiles, in the data's time unit)")
    if resumed and str(resumed.get("dp.time-cuts", "")).strip():
        cuts = str(resumed["dp.time-cuts"])
    run.cfg = cfg.with_overrides({"dp.time-cuts": cuts})
    run.say(f"DP-SGD time cuts at the federated follow-up quintiles: {cuts}")


# ---- 2. federated feature statistics, then the run's setup at every site ---------------------------
def statistics_and_setup(run: Run, hs: Handshake) -> FeatureStats:
    t = time.perf_counter()
    cfg = run.cfg
    replies = run.ask(P.STATISTICS, P.StatsRequest(hs.dims, cfg.min_stat_count, cfg.model.reduce_above,
                                                   cfg.model.reduce_dim))
    run.keep_answering(replies)
    if not run.accepted:
        raise FederationError("no site returned feature statistics")
    sums = add_sums([decode(replies[n], P.SumsReply).sums for n in run.accepted])
    stats = FeatureStats.from_sums(sums, hs.dims, cfg.model.anat_partitions, cfg.model.reduce_dim)
    model_dims = stats.model_dims(hs.dims)
    run.keep_answering(run.ask(P.SETUP, P.SetupRequest(cfg.to_flat(), hs.dims, stats.to_arrays())))
    run.timed("statistics", t)
    run.say(f"statistics: feature sums from {len(run.accepted)} site(s); L_anat on "
            + ", ".join(f"{m}:{src}" for m, src in sums_source(sums, hs.dims).items())
            + ("; federated PCA " + ", ".join(f"{m} {hs.dims[m]}->{model_dims[m]}" for m in stats.basis)
               if stats.basis else ""))
    run.base = {"config": cfg.to_flat(), "dims": hs.dims}
    return stats


# ---- 3. Tier 1 rounds, then the final Tier 1 frozen at every site ----------------------------------
def tier1(run: Run, hs: Handshake, stats: FeatureStats) -> tuple[dict[str, np.ndarray], list[dict], int]:
    t = time.perf_counter()
    cfg = run.cfg
    initial = get_weights(build_model(stats.model_dims(hs.dims), cfg.model, cfg.seed))
    if cfg.dp.enabled and cfg.dp.train_parts == "linear":  # the frozen network adds nothing to the linear risk
        initial = zero_risk_head(initial)
    core = None
    if run.cox_nodes:  # Tier 1 = the exact federated Cox model + a network residual that starts at 0
        core = cox_phase.fit(run.grid, cfg, run.cox_nodes, initial[cox_phase.LINEAR].shape[1], run.answered)
        initial = cox_phase.with_cox(initial, core)
        run.timed("cox", t)
        run.say(f"cox core: penalizer {core.penalizer:g} on {int(core.kept_columns.sum())} of {core.coef.size} "
                f"columns from {len(run.participation.get('cox', []))} site(s), {core.queries} queries; validation "
                f"log partial likelihood per event {core.val_pll_per_event:.4f}")
    weights, history, best_round, _ = run_phase(
        run.grid, cfg, run.accepted, train=P.TIER1_ROUND, evaluate=P.TIER1_VALIDATION, rounds=cfg.rounds,
        select_best=cfg.select_best and run.validates, initial=initial, state=run.state, ckpt=run.ckpt,
        base=run.base, progress=run.progress, average_last=cfg.average_last)
    if core is not None:
        run.residual_weights = weights  # the kept round as trained (a simulation scores it against the decision)
        weights, decision = cox_phase.keep_residual(weights, history, best_round, core, cfg.model.residual_min_gain)
        run.cox = {**core.to_doc(), **decision}
        run.say("cox core: the network residual " + ("is kept" if decision["residual_kept"] else
                f"adds no more than {cfg.model.residual_min_gain:g} nats on validation: Tier 1's risk is the Cox "
                "model's")
                + f" (validation pll per event: Cox {decision['val_pll_per_event_cox']:.4f}, with the network "
                f"{decision['val_pll_per_event_tier1']:.4f})")
    run.base["tier1"] = {"weights": weights, "history": history, "best_round": best_round}
    run.ckpt.save({**run.base, "phase": "tier1-done"})
    run.timed("tier1", t)
    return weights, history, best_round


def freeze_tier1(run: Run, weights: dict[str, np.ndarray]) -> None:
    """Every site keeps the final Tier 1 (frozen) for calibration, Tier 2, the hazard and evaluation."""
    run.keep_answering(run.ask(P.FREEZE_TIER1, P.FreezeRequest(weights)))
    if not run.accepted:
        raise FederationError("no site acknowledged the final Tier 1 weights")


# ---- 4. calibration: histograms on a server-fixed grid -> theta -----------------------------------
def calibration(run: Run) -> tuple[HistogramGrid, np.ndarray, float]:
    t, cfg = time.perf_counter(), run.cfg
    base = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    grid_h, replies, parts = quantile_release(run.ask, P.CALIBRATION, P.GridRequest, base, cfg.quantile, run.noised,
                                              cfg.dp.histogram_epsilon > 0)
    counts = pooled_counts(parts, grid_h.n_bins) if parts else np.zeros(grid_h.n_bins)
    if counts.sum() <= 0:
        if run.noised and replies:
            raise FederationError(f"the {len(replies)} site(s)' noised calibration histograms hold no count above "
                                  "their noise: too few held-out complete cases for dp.release-epsilon. Fix: give "
                                  "the sites larger 'val' splits with patients who have every modality, or let "
                                  "the sites raise dp.release-epsilon in their policies")
        raise FederationError("no site has held-out complete cases to calibrate theta on; "
                              "give each site a 'val' split with some patients who have every modality "
                              "(at least its policy's min-patients of them)")
    bracket = merged_quantile(grid_h, parts, cfg.quantile)
    run.release_error["theta"] = {**bracket_doc(bracket, parts), "per_site": per_site_release(replies, parts, run.site_of)}
    run.timed("calibration", t)
    run.say(f"calibration: {round(float(counts.sum()))} uncertainty values from {len(replies)} site(s); "
            f"theta (q={cfg.quantile}) = {bracket.estimate:.4g}")
    if thin := thin_tail(counts.sum(), cfg.quantile, "theta"):
        log(WARNING, "calibration: %s", thin)
    return grid_h, counts, bracket.estimate


# ---- 5. Tier 2 rounds (Tier 1 frozen at the sites), its gate, abstention bound and risk scales ------
@dataclass
class Tier2Outcome:
    weights: dict[str, np.ndarray] | None = None
    history: list[dict] = field(default_factory=list)
    round: int = 0
    gate: Tier2Gate | None = None
    bound: float = float("inf")
    scale: RiskScale = field(default_factory=RiskScale)


def tier2(run: Run, stats: FeatureStats, grid_h: HistogramGrid) -> Tier2Outcome:
    t = time.perf_counter()
    cfg = run.cfg
    initial = get_weights(build_tier2(stats.model_dims(run.base["dims"]), cfg.tier2, cfg.seed, tier1=cfg.model))
    weights, history, kept, sums = run_phase(
        run.grid, cfg, run.accepted, train=P.TIER2_ROUND, evaluate=P.TIER2_VALIDATION, rounds=cfg.tier2.rounds,
        select_best=(cfg.tier2.select_best or cfg.tier2.gate) and run.validates,
        keep_best=cfg.tier2.select_best and run.validates, initial=initial, state=run.state, ckpt=run.ckpt,
        base=run.base, progress=run.progress)
    run.ckpt.save({**run.base, "phase": "tier2-done", "tier2": {"weights": weights, "history": history,
                                                                 "best_round": kept,
                                                                 "validation_sums": sums_to_plain(sums)}})
    gate = gate_of_round(sums, kept, cfg.tier2.gate)
    if cfg.tier2.gate and not run.validates:  # one noised release per site instead
        gate = tier2_gate_phase.noised_gate(run, weights)
    out = Tier2Outcome(weights, history, kept, gate)
    run.say(f"tier2 gate: {'open' if out.gate.open else 'closed'}: {out.gate.reason}")
    run.timed("tier2", t)
    t = time.perf_counter()
    if run.noised:  # the calibration grid was zoomed onto Tier 1's uncertainty: start again from the run's
        grid_h = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    grid_h, replies, parts = quantile_release(run.ask, P.TIER2_CALIBRATION,
                                              lambda g: P.Tier2CalibrationRequest(weights, g), grid_h,
                                              cfg.tier2.abstain_quantile, run.noised, cfg.dp.histogram_epsilon > 0)
    counts = pooled_counts(parts, grid_h.n_bins) if parts else np.zeros(grid_h.n_bins)
    sums = {k: sum(decode(r, P.HistogramReply).metrics[k] for r in replies.values())
            for k in P.RISK_SUMS}
    if sums[M.RISK_N] > 0:
        out.scale = RiskScale.from_sums(*(sums[k] for k in M.RISK_SUMS))
    else:  # no site answered (timeouts, or every site's policy refused): both heads keep the raw scale
        log(WARNING, "tier2 calibration: no site sent risk sums; the risk scales stay at their defaults")
    if counts.sum() > 0:
        bracket = merged_quantile(grid_h, parts, cfg.tier2.abstain_quantile)
        out.bound = bracket.estimate
        run.release_error["tier2_bound"] = bracket_doc(bracket, parts)
    run.timed("tier2_calibration", t)
    run.say(f"tier2 calibration: abstain when Tier 2 uncertainty > {out.bound:.4g} (q={cfg.tier2.abstain_quantile}, "
            f"{round(float(counts.sum()))} values)")
    return out


# ---- 7. evaluation (sites use their frozen Tier 1; only Tier 2 weights travel) -----------------------
def evaluation(run: Run, tier2_weights: dict[str, np.ndarray] | None, fitted: FittedTwoTier,
               thresholds: tuple[float, ...] = ()) -> dict[str, dict[str, float]]:
    t = time.perf_counter()
    replies = run.ask(P.EVALUATION, P.EvaluateRequest(tier2_weights, fitted, thresholds))
    per_site = dict(sorted((run.site_of[n], decode(r, P.MetricsReply).metrics) for n, r in replies.items()))
    run.timed("evaluation", t)
    return per_site


def sums_source(sums: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, str]:
    """Which block L_anat statistics came from, per modality (complete cases when any were shared)."""
    return {m: "complete cases" if float(sums[f"{m}.complete.n"][0]) > 0 else "all present cases" for m in dims}
