"""The Flower ClientApp: one generic handler serves every phase of core/messages/protocol.py. The phase's own
definition (core/phases/) decodes the request, runs its registered checks against the site policy and
answers through :class:`~rmmfed.client.site_call.FlowerSiteCall`; the handler encodes the reply. Nothing
else.

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

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ..core.messages import protocol as P
from ..core.config import RunConfig
from ..core.aggregates.feature_stats import FeatureStats
from ..core.phases.phase import Phase
from ..core.phases.site_call import KEPT_TIER1
from ..core.privacy.request_policy import RequestPolicy
from ..core.data.site_data import discover_sites
from ..core.site.site_session import SiteSession
from .egress import egress_guard
from .ledger import configured_ledger_mod, ledger_mod
from ..flower.packing import packing_mod
from .policy_mod import policy_mod, policy_path, request_policy, save_pins, site_policy
from ..flower.records import from_record, records_of, to_content
from .sessions import SessionRegistry
from .site_call import STATE_SETUP, STATE_STATS, FlowerSiteCall
from .site_errors import contain_errors


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

    def session(context: Context) -> SiteSession:
        """The run's session at this site, set up again from what the site kept when this process has
        not seen the run's setup (Flower hands ``context.state`` to whichever process serves)."""
        path = site_dir(context, site_dirs)
        s = sessions.get(context.run_id, path,
                         lambda: SiteSession(path, device=str(context.node_config.get("device", "auto"))))
        st = context.state
        if s.cfg is None and STATE_SETUP in st:
            req = P.SetupRequest.from_records({P.CONFIG: dict(st[STATE_SETUP]), P.STATS_RECORD: {}})
            s.bind_schema(req.dims)
            cfg = RunConfig.from_flat(req.config)
            s.setup(cfg, FeatureStats.from_arrays(from_record(st[STATE_STATS]), cfg.model.anat_partitions))
        if s.tier1_frozen is None and KEPT_TIER1 in st:
            s.tier1_frozen = from_record(st[KEPT_TIER1])
        return s

    def serve(phase: Phase) -> None:
        """One handler per message type: the phase's own definition does the rest (Phase.serve)."""
        def handler(msg: Message, context: Context) -> Message:
            rp = rules(context)

            def restart() -> None:  # (re)apply this run's setup even if the process saw an earlier one
                session(context).cfg = None
                session(context)

            path = site_dir(context, site_dirs)
            site = FlowerSiteCall(phase, records_of(msg.content), context, rp, lambda: session(context),
                                  state_folder=state_dir(context, path, state_root),
                                  simulated_seeded_noise=simulated_seeded_noise, restart=restart,
                                  end=lambda: sessions.release(context.run_id, path))
            try:
                reply = phase.serve(site.records, site)
            finally:
                save_pins(context, rp)  # a check that counts (cox queries) counts a refused request too
            return Message(to_content(reply.to_records()), reply_to=msg)
        getattr(app, phase.category)(phase.action or "default")(handler)

    for phase in P.PHASES:
        serve(phase)
    return app


app = make_client_app()
