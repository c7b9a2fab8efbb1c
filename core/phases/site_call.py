"""What a phase's answer may use at a site: the session, the site's policy and run pins, and the few
site-held services that outlive one message. The ClientApp implements it over Flower's context
(client/site_call.py); a phase module sees only this.

Nothing here leaves the site: pins, kept state and the privacy budget stay in the site's own storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..messages.record_names import Records
    from ..privacy.noised_release import ReleaseNoise
    from ..privacy.request_policy import RequestPolicy
    from ..site.site_session import SiteSession

# what a site keeps between messages of a run (Flower's context.state on the ClientApp)
KEPT_DP = "rmm-dp"  # DP-SGD accountant history (Tier 1 and Tier 2 rounds)
KEPT_TIER1 = "rmm-tier1-frozen"  # the run's frozen Tier 1


class SiteCall(Protocol):
    session: "SiteSession"
    policy: "RequestPolicy"  # the site policy with this run's pins
    records: "Records"  # the request as it arrived (what a pin digests)
    site_name: str  # the name the site answers the handshake with

    def floor(self) -> int:
        """Patients behind every released number: the site's floor, or the run's if stricter."""

    def pin(self, kind: str, key: str = "", max_grids: int = 1) -> None:
        """Pin this request (its grid ``key`` and everything else it carries) for ``kind``; a different
        one is refused (core/privacy/request_policy.RequestPolicy.pin)."""

    def answer_once(self, kind: str, run_round: int) -> None:
        """A training round of ``kind`` is answered once per run."""

    def release(self, kind: str, key: str, compute: Callable[["ReleaseNoise | None"], Any]) -> Any:
        """One release of ``kind`` on grid ``key``: ``compute(None)`` (exact, merged to the floor) when the
        policy's dp.release-epsilon is 0, else ``compute(noise)``, charged once to the site's lifetime
        budget and kept, so the same request again gets the same reply at no further cost."""

    def reserve(self, epsilon: float, delta: float, what: str) -> None:
        """Charge this run's DP-SGD epsilon to the site's lifetime budget before anything computes."""

    def count_evaluation(self) -> None:
        """Count this run's exact test evaluation against the site's lifetime ``max-evaluations``, kept with
        its privacy budget on disk, before it is computed (the same run again counts once)."""

    def keep(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep arrays between this run's messages (``KEPT_*``)."""

    def kept(self, name: str) -> dict[str, np.ndarray] | None:
        ...

    def keep_setup(self) -> None:
        """Keep this (setup) request's config and feature statistics, and set the session up with them."""

    def end_session(self) -> None:
        """The run's last message: release the site's data and models."""
