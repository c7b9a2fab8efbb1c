"""The Flower ClientApp: what a hospital does for each message, as a thin adapter over SiteSession.

Which folder is the site:
- deployment: ``--node-config "data-dir='/secure/site-A'"`` (node_config ``data-dir``), optional ``device``;
- simulation: the run's cohort folder (run_config ``data-dir``, or the list given to
  :func:`make_client_app`) and the node's ``partition-id``: sorted site sub-folders, one per node.

Sessions are cached per run and site in the (long-lived) ClientApp process, so data is loaded and
validated once per process, not per message. What a site learned from the server (the run's schema,
config and feature statistics) is kept in ``context.state``, which Flower hands to whichever
process serves the next message, so a fresh process rebuilds the session from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import __version__
from ..core import protocol as P
from ..core.config import RunConfig
from ..core.feature_stats import FeatureStats
from ..core.histogram import HistogramGrid
from ..core.request_policy import RequestPolicy, digest
from ..core.site_data import discover_sites
from ..core.site_policy import PolicyViolation
from ..core.site_session import SiteSession
from ..core.two_tier import RiskScale
from .packing import packing_mod
from .egress import egress_guard
from .ledger import configured_ledger_mod, ledger_mod
from .policy_mod import policy_mod, policy_path, request_policy, save_pins, site_policy
from .records import from_record, to_record

_SESSIONS: dict[tuple[int, str], SiteSession] = {}
_STATE_CONFIG = "rmm-run"  # context.state keys (stay on the site)
_STATE_STATS = "rmm-feature-stats"
_STATE_TIER1 = "rmm-tier1-frozen"
_STATE_DP = "rmm-dp"  # DP-SGD accountant history and baseline hazards (stay on the site)


def _risk_scale(conf: ConfigRecord) -> RiskScale:
    """The federated risk scales the server sends as ``scale-<head>-<mean|std>``."""
    return RiskScale(*(float(conf[f"scale-{k}"]) for k in ("tier1-mean", "tier1-std", "tier2-mean", "tier2-std")))


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


def make_client_app(site_dirs: list[str] | None = None, *, ledger_dir: str | None = None,
                    extra_mods: list | None = None, policy: str | Path | None = None) -> ClientApp:
    """``site_dirs``: simulation's site folders by partition; ``ledger_dir``: one egress ledger per site there;
    ``policy``: the site policy file of every site without its own (client/policy_mod.py)."""
    ledger = configured_ledger_mod
    if ledger_dir:
        def ledger(msg: Message, context: Context, call_next):  # noqa: F811 - one file per site folder
            name = Path(site_dir(context, site_dirs)).name
            return ledger_mod(Path(ledger_dir) / f"{name}.jsonl")(msg, context, call_next)
    # The ledger records what the guard let out; extra mods (simulated faults) act before both.
    # Policy refusals become error replies inside the guard, so the ledger logs them with the key.
    app = ClientApp(mods=[packing_mod, ledger, egress_guard, policy_mod, *(extra_mods or [])])

    def rules(context: Context) -> RequestPolicy:
        return request_policy(context, site_policy(policy_path(context, site_dir(context, site_dirs), policy)))

    def shapes(arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(np.shape(v)) for k, v in arrays.items()}

    def check_weights(s: SiteSession, arrays: dict[str, np.ndarray], which: str, what: str,
                      optional: bool = False) -> None:
        if optional and not arrays:
            return
        RequestPolicy.check_weights(shapes(arrays), s.weight_shapes(which), what)

    def pinned(context: Context, rp: RequestPolicy, kind: str, grid_key: str, msg: Message) -> None:
        """Pin (grid, everything else the request carries) for this kind; refused if it differs."""
        conf = {k: v for k, v in msg.content[P.CONFIG].items() if k not in ("hist-low", "hist-high", "hist-bins")}
        arrays = {f"{name}/{k}": v for name, rec in msg.content.array_records.items()
                  for k, v in from_record(rec).items() if name != P.HAZARD_RECORD}
        rp.pin(kind, grid_key, digest(arrays, repr(sorted(conf.items()))))
        save_pins(context, rp)

    def floor_of(context: Context, s: SiteSession) -> int:
        return rules(context).floor(s.cfg.dp.histogram_min_count if s.cfg is not None else 0)

    def enough(n: int, k: int, what: str) -> None:
        if n < k:
            raise PolicyViolation("min-patients", f"the {what} would cover {n} patient(s), fewer than this site's "
                                  f"floor of {k}", "nothing to do: the run goes on with the other sites")

    def session(context: Context) -> SiteSession:
        path = site_dir(context, site_dirs)
        key = (context.run_id, path)
        if key not in _SESSIONS:
            for other in [k for k in _SESSIONS if k[1] == path]:  # an earlier run at this site has ended
                del _SESSIONS[other]
            _SESSIONS[key] = SiteSession(path, device=str(context.node_config.get("device", "auto")))
        s = _SESSIONS[key]
        st = context.state
        if s.cfg is None and _STATE_CONFIG in st:
            conf = st[_STATE_CONFIG]
            s.bind_schema({k: int(v) for k, v in P.decode_schema(str(conf["schema"])).items()})
            cfg = RunConfig.from_flat({k: v for k, v in conf.items() if k != "schema"})
            s.setup(cfg, FeatureStats.from_arrays(from_record(st[_STATE_STATS]), cfg.model.anat_partitions))
        if s.tier1_frozen is None and _STATE_TIER1 in st:
            s.tier1_frozen = from_record(st[_STATE_TIER1])
        return s

    def reply(msg: Message, **records) -> Message:
        return Message(RecordDict(records), reply_to=msg)

    @app.query("schema")
    def schema(msg: Message, context: Context) -> Message:
        s = session(context)
        d = s.data
        return reply(msg, config=ConfigRecord({
            "site": str(context.node_config.get("site", d.site)), "schema": P.encode_schema(d.modalities),
            "rmm-version": __version__,
            "n-patients": len(d.patient_ids), "n-events": int(d.event.sum()),
            "n-train": len(d.indices("train")), "n-val": len(d.indices("val")), "n-test": len(d.indices("test")),
        }))

    @app.query("stats")
    def stats(msg: Message, context: Context) -> Message:
        cfg = msg.content[P.CONFIG]
        rp = rules(context)
        rp.check_phase("statistics")
        s = session(context)
        s.bind_schema({k: int(v) for k, v in P.decode_schema(str(cfg["schema"])).items()})
        # The site's floor, or the coordinator's min-stat-count when it is stricter.
        return reply(msg, sums=to_record(s.feature_sums(rp.floor(int(cfg.get("min-stat-count", 0))),
                                                        reduce_above=int(cfg.get("reduce-above", 0)),
                                                        reduce_dim=int(cfg.get("reduce-dim", 0)),
                                                        second_moments=rp.policy.second_moments)))

    @app.query("setup")
    def setup(msg: Message, context: Context) -> Message:
        conf = msg.content[P.CONFIG]
        rules(context).check_setup(RunConfig.from_flat({k: v for k, v in conf.items() if k != "schema"}))
        context.state[_STATE_CONFIG] = conf
        context.state[_STATE_STATS] = msg.content[P.STATS_RECORD]
        s = session(context)
        s.cfg = None  # (re)apply this run's setup even if the process saw an earlier one
        session(context)
        return reply(msg, metrics=MetricRecord({"ready": 1}))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content[P.CONFIG]
        rnd = int(cfg["server-round"]) + int(cfg.get("round-offset", 0))  # the run's round, across resumes
        rp = rules(context)
        rp.check_phase("tier1")
        s = session(context)
        rp.check_round(rnd, s.cfg.dp.enabled if s.cfg is not None else None)
        check_weights(s, from_record(msg.content[P.ARRAYS]), "tier1", "Tier 1 weights")
        if _STATE_DP in context.state:  # epsilon accumulates across rounds and ClientApp processes
            s.dp_state = from_record(context.state[_STATE_DP])
        weights, result = s.train(from_record(msg.content[P.ARRAYS]), rnd, float(cfg.get("proximal-mu", 0.0)))
        if s.dp_state:
            context.state[_STATE_DP] = to_record(s.dp_state)
        metrics = {"num-examples": result.n_examples, **result.metrics()}
        return reply(msg, arrays=to_record(weights), metrics=MetricRecord(metrics))

    @app.train("tier2")
    def train_tier2(msg: Message, context: Context) -> Message:
        cfg = msg.content[P.CONFIG]
        rnd = int(cfg["server-round"]) + int(cfg.get("round-offset", 0))
        rp = rules(context)
        rp.check_phase("tier2")
        rp.check_round(rnd)
        s = session(context)
        check_weights(s, from_record(msg.content[P.ARRAYS]), "tier2", "Tier 2 weights")
        weights, metrics = s.train_tier2(from_record(msg.content[P.ARRAYS]), rnd)
        return reply(msg, arrays=to_record(weights), metrics=MetricRecord(metrics))

    @app.query("histogram")
    def histogram(msg: Message, context: Context) -> Message:
        conf = msg.content[P.CONFIG]
        grid = HistogramGrid.from_config(dict(conf))
        rp = rules(context)
        s = session(context)
        arrays = from_record(msg.content[P.ARRAYS]) if P.ARRAYS in msg.content.array_records else {}
        what = str(conf.get("what", ""))
        kind, phase = (("risk-groups", "risk-groups") if what == "risk-groups" else
                       ("tier2-calibration", "tier2") if int(conf.get("tier", 1)) == 2 else ("calibration", "calibration"))
        rp.check_phase(phase)
        rp.check_grid(grid)
        check_weights(s, arrays, "tier1" if kind == "calibration" else "tier2", f"{kind} weights",
                      optional=kind == "risk-groups")
        pinned(context, rp, kind, repr(grid), msg)
        k = floor_of(context, s)
        if kind == "risk-groups":  # training system risk, for rmm-predict's risk groups
            merged = s.risk_group_release(arrays or None, float(conf["theta"]), float(conf["bound"]),
                                          _risk_scale(conf), k, grid, use_tier2=bool(conf.get("tier2-used", True)))
            return reply(msg, counts=to_record(merged.to_arrays()))
        if kind == "tier2-calibration":
            merged, sums = s.tier2_release(arrays, grid, k)
            return reply(msg, counts=to_record(merged.to_arrays()), metrics=MetricRecord(sums))
        # Tier 1 calibration fixes Tier 1: the site keeps these weights (frozen) in its own state.
        context.state[_STATE_TIER1] = msg.content[P.ARRAYS]
        merged, n = s.calibration_release(arrays, grid, k)
        return reply(msg, counts=to_record(merged.to_arrays()), metrics=MetricRecord({"n-values": n}))

    @app.query("hazard")
    def hazard(msg: Message, context: Context) -> Message:
        conf = msg.content[P.CONFIG]
        rp = rules(context)
        rp.check_phase("baseline-hazard")
        s = session(context)
        k = floor_of(context, s)
        if str(conf["step"]) == "followup":
            grid = HistogramGrid.from_config(dict(conf))
            rp.check_grid(grid)
            pinned(context, rp, "followup", repr(grid), msg)
            return reply(msg, counts=to_record(s.followup_release(grid, k).to_arrays()))
        grid = np.asarray(msg.content[P.HAZARD_RECORD]["grid"].numpy(), dtype=np.float64)
        rp.check_time_grid(grid)
        pinned(context, rp, "hazard", digest(grid), msg)
        return reply(msg, hazard=to_record(s.hazard_release(grid, k).to_arrays()))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        conf = msg.content[P.CONFIG]
        weights = from_record(msg.content[P.ARRAYS])
        rp = rules(context)
        s = session(context)
        k = floor_of(context, s)
        if str(conf.get("split", "test")) == "val" and int(conf.get("tier", 1)) == 2:  # Tier 2 round selection
            rp.check_phase("tier2")
            rnd = int(conf.get("server-round", 0)) + int(conf.get("round-offset", 0))
            rp.check_round(rnd)
            check_weights(s, weights, "tier2", "Tier 2 weights")
            pinned(context, rp, f"validation-tier2-{rnd}", "", msg)
            metrics = s.tier2_validation(weights, k)
            enough(int(metrics["tier2-val-cases"]), k, "Tier 2 validation sums (masked complete val cases)")
            return reply(msg, metrics=MetricRecord({"num-examples": int(metrics["tier2-val-cases"]), **metrics}))
        if str(conf.get("split", "test")) == "val":  # per-round model selection
            rp.check_phase("tier1")
            rnd = int(conf.get("server-round", 0)) + int(conf.get("round-offset", 0))
            rp.check_round(rnd)
            check_weights(s, weights, "tier1", "Tier 1 weights")
            enough(len(s.data.indices("val")), k, "validation pair counts")
            pinned(context, rp, f"validation-{rnd}", "", msg)
            metrics = s.validate(weights)
            return reply(msg, metrics=MetricRecord({"num-examples": int(metrics["n-val"]), **metrics}))
        rp.check_phase("evaluation")
        has_tier2 = bool(conf["has-tier2"])
        check_weights(s, weights, "tier2", "Tier 2 weights", optional=not has_tier2)
        enough(len(s.data.indices("test")), k, "test metrics")
        pinned(context, rp, "evaluation", "", msg)
        metrics = s.evaluate(weights if has_tier2 else None, float(conf["theta"]), float(conf["bound"]),
                             _risk_scale(conf), k, use_tier2=bool(conf.get("tier2-used", True)))
        # the run's last message: release the site's data and models (a retried evaluation rebuilds the
        # session from the Flower state, which keeps the config, the statistics and the frozen Tier 1)
        _SESSIONS.pop((context.run_id, site_dir(context, site_dirs)), None)
        return reply(msg, metrics=MetricRecord({"num-examples": int(metrics["n-test"]), **metrics}))

    return app


app = make_client_app()
