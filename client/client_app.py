"""The Flower ClientApp: for each phase of core/messages/protocol.py, decode the request, check it against the
site policy, ask the SiteSession, encode the reply. Nothing else.

Which folder is the site:
- deployment: ``--node-config "data-dir='/secure/site-A'"`` (node_config ``data-dir``), optional ``device``;
- simulation: the run's cohort folder (run_config ``data-dir``, or the list given to
  :func:`make_client_app`) and the node's ``partition-id``: sorted site sub-folders, one per node.

Sessions live in the ClientApp's :class:`~rmmfed.client.sessions.SessionRegistry`, one per run and
site, so data is loaded and validated once per process, not per message; the run's evaluation
releases it. What a site learned from the server (the run's schema, config, feature statistics and
frozen Tier 1) is kept in ``context.state``, which Flower hands to whichever process serves the next
message, so a fresh process rebuilds the session from it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from .. import __version__
from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.config import RunConfig
from ..core.site.site_cox import cox_release
from ..core.survival.survival_metrics import check_baseline
from ..core.aggregates.feature_stats import FeatureStats
from ..core.privacy.privacy_budget import PrivacyBudget
from ..core.privacy.request_policy import RequestPolicy, digest
from ..core.data.site_data import discover_sites
from ..core.privacy.site_policy import PolicyViolation
from ..core.privacy.noised_release import ReleaseNoise
from ..core.site.site_session import SiteSession
from ..core.site.site_seed import site_seed
from .egress import egress_guard
from .ledger import configured_ledger_mod, ledger_mod
from ..flower.packing import packing_mod
from .policy_mod import policy_mod, policy_path, request_policy, save_pins, site_policy
from ..flower.records import from_record, records_of, to_content, to_record
from .sessions import SessionRegistry
from .site_errors import contain_errors

_STATE_CONFIG = "rmm-run"  # context.state keys (stay on the site)
_STATE_STATS = "rmm-feature-stats"
_STATE_TIER1 = "rmm-tier1-frozen"
_STATE_DP = "rmm-dp"  # DP-SGD accountant history and baseline hazards (stay on the site)

Handler = Callable[[P.Records, Context, RequestPolicy, SiteSession], object]


def site_dir(context: Context, site_dirs: list[str] | None) -> str:
    node = context.node_config
    if "data-dir" in node:
        return str(node["data-dir"])
    pid = int(node["partition-id"])
    if site_dirs is None:
        cohort = str(context.run_config.get("data-dir", ""))
        if not cohort:
            raise ValueError("no site folder: set node_config data-dir (deployment) or run_config data-dir (simulation)")
        site_dirs = [str(p) for p in discover_sites(cohort)]
    return site_dirs[pid]


def state_dir(context: Context, site_folder: str, default: str | Path | None = None) -> Path:
    """Where the site keeps what must outlive a run (the privacy budget): the node's ``state-dir``
    (``rmm-client --state-dir``), else the simulation's folder for this site, else the folder of the
    node's ledger, else ``<site folder>/.rmm-state``. Never the run config: the coordinator must not
    be able to point a site at a fresh, empty budget."""
    node = str(context.node_config.get("state-dir", "") or "")
    if node:
        return Path(node)
    if default:
        return Path(default) / Path(site_folder).name
    ledger = str(context.node_config.get("ledger", "") or "")
    return Path(ledger).parent if ledger else Path(site_folder) / ".rmm-state"


def _enough(n: int, k: int, what: str) -> None:
    if n < k:
        raise PolicyViolation("min-patients", f"the {what} would cover {n} patient(s), fewer than this site's "
                              f"floor of {k}", "nothing to do: the run goes on with the other sites")


def make_client_app(site_dirs: list[str] | None = None, *, ledger_dir: str | None = None,
                    extra_mods: list | None = None, policy: str | Path | None = None,
                    state_root: str | Path | None = None, simulated_seeded_noise: bool = False) -> ClientApp:
    """``site_dirs``: simulation's site folders by partition; ``ledger_dir``: one egress ledger per site there;
    ``policy``: the site policy file of every site without its own (client/policy_mod.py);
    ``state_root``: a simulation's folder of per-site state (privacy budgets), one sub-folder per site;
    ``simulated_seeded_noise``: ``rmm-simulate --seeded-noise`` only: every simulated site accepts
    ``dp.seeded-noise`` (reproducible figures), whatever its policy file says. Never in a deployment."""
    ledger = configured_ledger_mod
    if ledger_dir:
        def ledger(msg: Message, context: Context, call_next):  # noqa: F811 - one file per site folder
            name = Path(site_dir(context, site_dirs)).name
            return ledger_mod(Path(ledger_dir) / f"{name}.jsonl")(msg, context, call_next)
    # The ledger records what the guard let out; extra mods (simulated faults) act before both.
    # Policy refusals become error replies inside the guard, so the ledger logs them with the key.
    # contain_errors outermost: an exception anywhere (unpacking, the ledger's path) leaves as the fixed site error
    app = ClientApp(mods=[contain_errors, packing_mod, ledger, egress_guard, policy_mod, *(extra_mods or [])])
    sessions = SessionRegistry()
    app.rmm_sessions = sessions  # type: ignore[attr-defined]  (tests look at it)

    def rules(context: Context) -> RequestPolicy:
        p = site_policy(policy_path(context, site_dir(context, site_dirs), policy))
        if simulated_seeded_noise:
            p = p.model_copy(update={"dp": p.dp.model_copy(update={"allow_seeded_noise": True})})
        return request_policy(context, p)

    def check_weights(s: SiteSession, arrays: dict[str, np.ndarray], which: str, what: str,
                      rp: RequestPolicy) -> None:
        RequestPolicy.check_weights({k: tuple(np.shape(v)) for k, v in arrays.items()}, s.weight_shapes(which), what)
        rp.check_weight_values(arrays, what)

    def check_grid_and_tier2(rp, s: SiteSession, grid, tier2_weights, what: str) -> None:
        """A request's histogram grid, and its Tier 2 weights when it carries any, checked against the
        site policy before anything is computed."""
        rp.check_grid(grid)
        if tier2_weights:
            check_weights(s, tier2_weights, "tier2", what, rp)

    def pin(context: Context, rp: RequestPolicy, kind: str, key: str, records: P.Records, max_grids: int = 1) -> None:
        """Pin (grid, everything else the request carries) for this kind; refused if it differs."""
        conf = {k: v for k, v in (records.get(P.CONFIG) or {}).items() if k not in ("hist-low", "hist-high", "hist-bins")}
        arrays = {f"{name}/{k}": v for name, rec in records.items() if name not in (P.CONFIG, P.HAZARD_RECORD)
                  for k, v in rec.items()}
        rp.pin(kind, key, digest(arrays, repr(sorted(conf.items()))), max_grids)
        save_pins(context, rp)

    def floor_of(rp: RequestPolicy, s: SiteSession) -> int:
        return rp.floor(s.cfg.dp.histogram_min_count if s.cfg is not None else 0)

    def released(context: Context, rp: RequestPolicy, s: SiteSession, kind: str, key: str, records: P.Records,
                 compute: Callable[[ReleaseNoise | None], object]):
        """One release of ``kind`` on grid ``key``: exact and merged when the policy's dp.release-epsilon is
        0, else epsilon-DP (core/privacy/noised_release.py), charged to the site's lifetime budget once per
        (kind, grid), and kept, so the same request again gets the same answer at no further cost."""
        eps = rp.policy.dp.release_epsilon
        if eps <= 0:
            pin(context, rp, kind, key, records)
            return compute(None)
        pin(context, rp, kind, key, records, max_grids=rp.policy.dp.release_grids)
        slot = f"rmm-release-{kind}-{digest(key)}"
        if slot in context.state:  # the answer already sent: its arrays, and its scalars beside them
            arrays = from_record(context.state[slot])
            if kind == "hazard":
                return P.HazardReply(arrays)
            return P.HistogramReply(arrays, {k: float(v) for k, v in context.state[slot + "-metrics"].items()})
        # seeded noise only where the policy allows it; before setup (the follow-up that places the DP time
        # cuts) the run's wish comes from Flower's run config, or from the simulation's switch
        run = context.run_config
        wanted = s.cfg.dp.seeded_noise if s.cfg is not None else bool(run.get("dp.seeded-noise", False))
        seeded = (wanted or simulated_seeded_noise) and rp.policy.dp.allow_seeded_noise
        base = s.cfg.seed if s.cfg is not None else int(run.get("seed", 0) or 0)
        seed = site_seed(base, s.data.site, zlib.crc32(slot.encode())) if seeded else None
        folder = state_dir(context, site_dir(context, site_dirs), state_root)
        PrivacyBudget(folder, rp.policy.dp.total_epsilon).reserve(
            str(context.run_id), eps, 0.0, f"release {kind}", item=f"release:{kind}:{digest(key)}")
        reply = compute(ReleaseNoise(eps, seed))
        context.state[slot] = to_record(reply.sums if kind == "hazard" else reply.counts)
        if kind != "hazard":
            context.state[slot + "-metrics"] = ConfigRecord(dict(reply.metrics))
        return reply

    def session(context: Context) -> SiteSession:
        path = site_dir(context, site_dirs)
        s = sessions.get(context.run_id, path,
                         lambda: SiteSession(path, device=str(context.node_config.get("device", "auto"))))
        st = context.state
        if s.cfg is None and _STATE_CONFIG in st:
            req = P.SetupRequest.from_records({P.CONFIG: dict(st[_STATE_CONFIG]), P.STATS_RECORD: {}})
            s.bind_schema(req.dims)
            cfg = RunConfig.from_flat(req.config)
            s.setup(cfg, FeatureStats.from_arrays(from_record(st[_STATE_STATS]), cfg.model.anat_partitions))
        if s.tier1_frozen is None and _STATE_TIER1 in st:
            s.tier1_frozen = from_record(st[_STATE_TIER1])
        return s

    def serve(phase: P.Phase) -> Callable[[Handler], Handler]:
        """Register ``fn`` as the handler of ``phase``: policy phase check, decode, call, encode."""
        def register(fn: Handler) -> Handler:
            def handler(msg: Message, context: Context) -> Message:
                rp = rules(context)
                if phase.policy_phase is not None:
                    rp.check_phase(phase.policy_phase)
                reply = fn(records_of(msg.content), context, rp, session(context))
                return Message(to_content(reply.to_records()), reply_to=msg)
            getattr(app, phase.category)(phase.action or "default")(handler)
            return fn
        return register

    @serve(P.SCHEMA)
    def schema(r, context, rp, s):
        d = s.data
        return P.SchemaReply(str(context.node_config.get("site", d.site)), d.modalities, __version__,
                             len(d.patient_ids), int(d.event.sum()), len(d.indices("train")), len(d.indices("val")),
                             len(d.indices("test")), rp.policy.dp.release_epsilon, "cox" in rp.policy.phases)

    @serve(P.STATISTICS)
    def stats(r, context, rp, s):
        req = P.StatsRequest.from_records(r)
        s.bind_schema(req.dims)
        # The site's floor, or the coordinator's min-stat-count when it is stricter.
        return P.SumsReply(s.feature_sums(rp.floor(req.min_stat_count), reduce_above=req.reduce_above,
                                          reduce_dim=req.reduce_dim, second_moments=rp.policy.second_moments))

    @serve(P.SETUP)
    def setup(r, context, rp, s):
        req = P.SetupRequest.from_records(r)
        cfg = RunConfig.from_flat(req.config)
        rp.check_setup(cfg, n_train=len(s.data.indices("train")))
        if cfg.dp.enabled:  # the whole run's epsilon, reserved on disk before any round computes
            folder = state_dir(context, site_dir(context, site_dirs), state_root)
            PrivacyBudget(folder, rp.policy.dp.total_epsilon).reserve(
                str(context.run_id), cfg.dp.target_epsilon, cfg.dp.target_delta, "tier1+tier2 DP-SGD")
        context.state[_STATE_CONFIG] = ConfigRecord(dict(r[P.CONFIG]))
        context.state[_STATE_STATS] = to_record(req.stats)
        s.cfg = None  # (re)apply this run's setup even if the process saw an earlier one
        session(context)
        return P.MetricsReply({M.READY: 1.0})

    def round_request(r: P.Records, rp: RequestPolicy, s: SiteSession, which: str, what: str,
                      training: bool = False) -> P.RoundRequest:
        req = P.RoundRequest.from_records(r)
        dp = s.cfg.dp.enabled if training and s.cfg is not None else None
        rp.check_round(req.run_round, dp)
        check_weights(s, req.weights, which, what, rp)
        return req

    @serve(P.TIER1_ROUND)
    def train(r, context, rp, s):
        req = round_request(r, rp, s, "tier1", "Tier 1 weights", training=True)
        rp.answer_once("tier1", req.run_round)
        save_pins(context, rp)
        if _STATE_DP in context.state:  # epsilon accumulates across rounds and ClientApp processes
            s.dp_state = from_record(context.state[_STATE_DP])
        weights, result = s.train(req.weights, req.run_round, req.proximal_mu)
        if s.dp_state:
            context.state[_STATE_DP] = to_record(s.dp_state)
        return P.RoundReply(weights, {M.NUM_EXAMPLES: result.n_examples, **result.metrics()})

    @serve(P.TIER1_VALIDATION)
    def validate_tier1(r, context, rp, s):
        req = round_request(r, rp, s, "tier1", "Tier 1 weights")
        _enough(len(s.data.indices("val")), floor_of(rp, s), "validation pair counts")
        pin(context, rp, f"validation-{req.run_round}", "", r)
        metrics = s.validate(req.weights)
        return P.MetricsReply({M.NUM_EXAMPLES: metrics[M.N_VAL], **metrics})

    @serve(P.COX)
    def cox(r, context, rp, s):
        req = P.CoxRequest.from_records(r)
        rp.check_cox_query(req.split)
        rp.check_weight_values({"coef": req.coef}, "Cox core coefficients")
        save_pins(context, rp)
        arrays, metrics = cox_release(s.model(), s.split(req.split), req.coef, req.split, floor_of(rp, s))
        return P.CoxReply(arrays, metrics)

    @serve(P.FREEZE_TIER1)
    def freeze(r, context, rp, s):
        req = P.FreezeRequest.from_records(r)
        check_weights(s, req.weights, "tier1", "frozen Tier 1 weights", rp)
        pin(context, rp, "freeze-tier1", "", r)  # one final Tier 1 per run
        context.state[_STATE_TIER1] = to_record(req.weights)
        s.freeze(req.weights)
        return P.MetricsReply({M.FROZEN: 1.0})

    @serve(P.CALIBRATION)
    def calibration(r, context, rp, s):
        req = P.GridRequest.from_records(r)
        rp.check_grid(req.grid)

        def compute(noise):
            merged, n = s.calibration_release(req.grid, floor_of(rp, s), noise)
            return P.HistogramReply(merged.to_arrays(), {M.NOISED: noise.epsilon} if noise else {M.N_VALUES: float(n)})
        return released(context, rp, s, "calibration", repr(req.grid), r, compute)

    @serve(P.FOLLOWUP)
    def followup(r, context, rp, s):
        req = P.GridRequest.from_records(r)
        rp.check_grid(req.grid)
        return released(context, rp, s, "followup", repr(req.grid), r, lambda noise: P.HistogramReply(
            s.followup_release(req.grid, floor_of(rp, s), noise).to_arrays(), {M.NOISED: noise.epsilon} if noise else {}))

    @serve(P.HAZARD)
    def hazard(r, context, rp, s):
        req = P.HazardRequest.from_records(r)
        rp.check_time_grid(req.grid)
        return released(context, rp, s, "hazard", digest(req.grid), r,
                        lambda noise: P.HazardReply(s.hazard_release(req.grid, floor_of(rp, s), noise).to_arrays()))

    @serve(P.TIER2_ROUND)
    def train_tier2(r, context, rp, s):
        req = round_request(r, rp, s, "tier2", "Tier 2 weights", training=True)
        rp.answer_once("tier2", req.run_round)
        save_pins(context, rp)
        if _STATE_DP in context.state:
            s.dp_state = from_record(context.state[_STATE_DP])
        weights, metrics = s.train_tier2(req.weights, req.run_round)
        if s.dp_state:
            context.state[_STATE_DP] = to_record(s.dp_state)
        return P.RoundReply(weights, metrics)

    @serve(P.TIER2_VALIDATION)
    def validate_tier2(r, context, rp, s):
        req = round_request(r, rp, s, "tier2", "Tier 2 weights")
        pin(context, rp, f"validation-tier2-{req.run_round}", "", r)
        k = floor_of(rp, s)
        metrics = s.tier2_validation(req.weights, k)
        _enough(int(metrics[M.TIER2_VAL_CASES]), k, "Tier 2 validation sums (masked complete val cases)")
        return P.MetricsReply({M.NUM_EXAMPLES: metrics[M.TIER2_VAL_CASES], **metrics})

    @serve(P.TIER2_CALIBRATION)
    def tier2_calibration(r, context, rp, s):
        req = P.Tier2CalibrationRequest.from_records(r)
        rp.check_grid(req.grid)
        check_weights(s, req.weights, "tier2", "tier2-calibration weights", rp)
        def compute(noise):
            merged, sums = s.tier2_release(req.weights, req.grid, floor_of(rp, s), noise)
            return P.HistogramReply(merged.to_arrays(), {**sums, M.NOISED: noise.epsilon} if noise else sums)
        return released(context, rp, s, "tier2-calibration", repr(req.grid), r, compute)

    @serve(P.CONFORMAL)
    def conformal(r, context, rp, s):
        req = P.ConformalRequest.from_records(r)
        check_grid_and_tier2(rp, s, req.grid, req.tier2_weights, "conformal Tier 2 weights")

        def compute(noise):
            merged, sums = s.conformal_release(req.tier, req.tier2_weights, req.grid, floor_of(rp, s), noise)
            return P.HistogramReply(merged.to_arrays(), {**sums, M.NOISED: noise.epsilon} if noise else sums)
        kind = "conformal-tier2" if req.tier == "tier2" else "conformal-tier1"
        return released(context, rp, s, kind, repr(req.grid), r, compute)

    @serve(P.RISK_GROUPS)
    def risk_groups(r, context, rp, s):
        req = P.RiskGroupsRequest.from_records(r)
        check_grid_and_tier2(rp, s, req.grid, req.tier2_weights, "risk-groups weights")
        def compute(noise):
            merged = s.risk_group_release(req.tier2_weights, req.fitted, floor_of(rp, s), req.grid, noise=noise)
            return P.HistogramReply(merged.to_arrays(), {M.NOISED: noise.epsilon} if noise else {})
        return released(context, rp, s, "risk-groups", repr(req.grid), r, compute)

    @serve(P.EVALUATION)
    def evaluate(r, context, rp, s):
        req = P.EvaluateRequest.from_records(r)
        if req.tier2_weights is not None:
            check_weights(s, req.tier2_weights, "tier2", "Tier 2 weights", rp)
        k = floor_of(rp, s)
        _enough(len(s.data.indices("test")), k, "test metrics")
        pin(context, rp, "evaluation", "", r)
        hz = req.fitted.baseline_hazard_
        if hz is not None:
            rp.check_time_grid(hz.times)
            check_baseline(hz.times, hz.cumhaz)
        metrics = s.evaluate(req.tier2_weights, req.fitted, k, thresholds=req.thresholds)
        # the run's last message: release the site's data and models (a retried evaluation rebuilds the
        # session from the Flower state, which keeps the config, the statistics and the frozen Tier 1)
        sessions.release(context.run_id, site_dir(context, site_dirs))
        return P.MetricsReply({M.NUM_EXAMPLES: metrics[M.N_TEST], **metrics})

    return app


app = make_client_app()
