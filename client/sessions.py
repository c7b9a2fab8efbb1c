"""The ClientApp's sessions: one :class:`~rmmfed.core.site.site_session.SiteSession` per (run, site folder).

Loading and validating a site's folder takes seconds to minutes, so a long-lived ClientApp process
keeps its session between messages. A session belongs to one run: asking for another run's session
at the same folder releases the earlier one (that run has ended), and the run's last message
(evaluation) releases its own.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.site.site_session import SiteSession


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: dict[tuple[int, str], SiteSession] = {}

    def get(self, run_id: int, path: str, create: Callable[[], SiteSession]) -> SiteSession:
        key = (int(run_id), str(path))
        if key not in self._sessions:
            for other in [k for k in self._sessions if k[1] == key[1]]:  # an earlier run at this site has ended
                del self._sessions[other]
            self._sessions[key] = create()
        return self._sessions[key]

    def release(self, run_id: int, path: str) -> None:
        self._sessions.pop((int(run_id), str(path)), None)

    def keys(self) -> list[tuple[int, str]]:
        return list(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)
