"""The ClientApp's :class:`~rmmfed.core.phases.site_call.SiteCall`: what a phase's answer may use at the site,
over Flower's per-run ``context.state`` (pins, kept arrays, the run's setup, answers already released)
and the site's lifetime privacy budget on disk. Nothing here leaves the site."""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from ..core.messages import protocol as P
from ..core.phases.phase import Phase
from ..core.privacy.noised_release import ReleaseNoise
from ..core.privacy.privacy_budget import PrivacyBudget
from ..core.privacy.request_policy import RequestPolicy, digest
from ..core.site.site_seed import site_seed
from ..core.site.site_session import SiteSession
from ..flower.records import from_record, to_record
from .policy_mod import save_pins

STATE_SETUP = "rmm-run"  # context.state keys (stay on the site): the run's setup config ...
STATE_STATS = "rmm-feature-stats"  # ... and its feature statistics
STATE_INSTANCE = "rmm-run-instance"  # this site's token for the run (budget entries: PrivacyBudget.entry_key)
_UNPINNED = (P.CONFIG, P.HAZARD_RECORD)  # a pin digests the other records whole, and the config without its grid
_GRID_KEYS = ("hist-low", "hist-high", "hist-bins")


class FlowerSiteCall:
    """One message's view of the site. ``state_folder``: where the site's lifetime budget lives;
    ``simulated_seeded_noise``: rmm-simulate --seeded-noise (every simulated site allows seeded noise);
    ``session``: gives the run's session; ``restart``/``end``: set it up again from the kept setup / release
    it (the ClientApp's)."""

    def __init__(self, phase: Phase, records: P.Records, context: Context, policy: RequestPolicy,
                 session: Callable[[], SiteSession], *, state_folder: Path, simulated_seeded_noise: bool,
                 restart: Callable[[], None], end: Callable[[], None]) -> None:
        self.phase, self.records, self.context, self.policy = phase, records, context, policy
        self._session_of, self._session = session, None
        self._state_folder, self._seeded_switch = state_folder, simulated_seeded_noise
        self._restart, self._end = restart, end

    @property
    def session(self) -> SiteSession:
        """The run's session, loaded on first use (a phase the policy refuses never loads the site's data)."""
        if self._session is None:
            self._session = self._session_of()
        return self._session

    @property
    def site_name(self) -> str:
        return str(self.context.node_config.get("site", self.session.data.site))

    # ---- the policy ---------------------------------------------------------------------------
    def floor(self) -> int:
        s = self.session
        return self.policy.floor(s.cfg.dp.histogram_min_count if s.cfg is not None else 0)

    def pin(self, kind: str, key: str = "", max_grids: int = 1) -> None:
        conf = {k: v for k, v in (self.records.get(P.CONFIG) or {}).items() if k not in _GRID_KEYS}
        arrays = {f"{name}/{k}": v for name, rec in self.records.items() if name not in _UNPINNED
                  for k, v in rec.items()}
        self.policy.pin(kind, key, digest(arrays, repr(sorted(conf.items()))), max_grids)
        self.save_pins()

    def answer_once(self, kind: str, run_round: int) -> None:
        self.policy.answer_once(kind, run_round)
        self.save_pins()

    def save_pins(self) -> None:
        save_pins(self.context, self.policy)

    # ---- releases and the budget ----------------------------------------------------------------
    def reserve(self, epsilon: float, delta: float, what: str, item: str | None = None) -> None:
        budget = PrivacyBudget(self._state_folder, self.policy.policy.dp.total_epsilon)
        budget.reserve(str(self.context.run_id), epsilon, delta, what, **({"item": item} if item else {}),
                       instance=self.instance())

    def count_evaluation(self) -> None:
        budget = PrivacyBudget(self._state_folder, self.policy.policy.dp.total_epsilon)
        budget.count_evaluation(str(self.context.run_id), self.policy.policy.max_evaluations, instance=self.instance())

    def instance(self) -> str:
        """This site's token for the run as it serves it, drawn from OS entropy on first use and kept with the
        run's pins in Flower's per-run state: a coordinator that numbers a new run like an old one gets fresh
        state and so a fresh token, and the budget file charges and counts that run on its own entry
        (core/privacy/privacy_budget.PrivacyBudget.entry_key)."""
        st = self.context.state
        if STATE_INSTANCE not in st:
            st[STATE_INSTANCE] = ConfigRecord({"token": secrets.token_hex(16)})
        return str(st[STATE_INSTANCE]["token"])

    def release(self, kind: str, key: str, compute: Callable[[ReleaseNoise | None], Any]) -> Any:
        eps = self.policy.policy.dp.release_epsilon
        if eps <= 0:
            self.pin(kind, key)
            return compute(None)
        self.pin(kind, key, max_grids=self.policy.policy.dp.release_grids)
        slot = f"rmm-release-{kind}-{digest(key)}"
        st = self.context.state
        if slot in st:  # the answer already sent, record by record
            names = [n for n in str(st[slot]["records"]).split(",") if n]
            return self.phase.decode_reply({n: dict(st[f"{slot}/{n}"]) if n in P.SCALAR_RECORDS
                                            else from_record(st[f"{slot}/{n}"]) for n in names})
        # seeded noise only where the policy allows it; before setup (the follow-up that places the DP time
        # cuts) the run's wish comes from Flower's run config, or from the simulation's switch
        run, s = self.context.run_config, self.session
        wanted = s.cfg.dp.seeded_noise if s.cfg is not None else bool(run.get("dp.seeded-noise", False))
        seeded = (wanted or self._seeded_switch) and self.policy.policy.dp.allow_seeded_noise
        base = s.cfg.seed if s.cfg is not None else int(run.get("seed", 0) or 0)
        seed = site_seed(base, s.data.site, zlib.crc32(slot.encode())) if seeded else None
        self.reserve(eps, 0.0, f"release {kind}", item=f"release:{kind}:{digest(key)}")
        reply = compute(ReleaseNoise(eps, seed))
        records = reply.to_records()
        for n, rec in records.items():
            st[f"{slot}/{n}"] = ConfigRecord(dict(rec)) if n in P.SCALAR_RECORDS else to_record(rec)
        st[slot] = ConfigRecord({"records": ",".join(records)})
        return reply

    # ---- what the site keeps between messages --------------------------------------------------------
    def keep(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.context.state[name] = to_record(arrays)

    def kept(self, name: str) -> dict[str, np.ndarray] | None:
        return from_record(self.context.state[name]) if name in self.context.state else None

    def keep_setup(self) -> None:
        self.context.state[STATE_SETUP] = ConfigRecord(dict(self.records[P.CONFIG]))
        self.context.state[STATE_STATS] = to_record(dict(self.records.get(P.STATS_RECORD) or {}))
        self._restart()

    def end_session(self) -> None:
        self._end()
