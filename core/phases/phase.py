"""One phase of the rmm protocol, defined once: what travels (message type, records, metrics), what the
site checks (a tuple of registered request checks), and what it does (its ``answer``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..messages.record_names import Records

if TYPE_CHECKING:
    from .site_call import SiteCall

Check = Callable[[Any, "SiteCall"], None]  # core/privacy/request_checks.py
Answer = Callable[[Any, "SiteCall"], Any]


@dataclass(frozen=True)
class Phase:
    """One kind of message.

    ``request``/``reply``: the record names a request carries and a reply may carry (nothing else passes
    the egress guard); ``metrics``: the scalar metrics a reply may carry. ``request_type``/``reply_type``:
    the typed payloads (``to_records``/``from_records``). ``checks`` run in order on the decoded request
    before anything is computed; ``answer`` computes the reply."""

    name: str  # as logs, the ledger summary and participation call it
    message_type: str  # "<category>" or "<category>.<action>" (Flower: train / evaluate / query)
    policy_phase: str | None  # the site policy's phase key (core/privacy/site_policy.py); None: always allowed
    request: tuple[str, ...]
    reply: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    request_type: type | None = None  # None: the request carries nothing
    reply_type: type | None = None
    checks: tuple[Check, ...] = ()
    answer: Answer | None = None

    @property
    def category(self) -> str:
        return self.message_type.partition(".")[0]

    @property
    def action(self) -> str | None:
        return self.message_type.partition(".")[2] or None

    def decode_request(self, records: Records):
        return self.request_type.from_records(records) if self.request_type is not None else None

    def decode_reply(self, records: Records):
        return self.reply_type.from_records(records)

    def encode_request(self, request) -> Records:
        """The coordinator's request as records; a request of another phase's type is a bug, not a message."""
        if request is None:
            if self.request_type is not None:
                raise TypeError(f"the {self.name} phase needs a {self.request_type.__name__}")
            return {}
        if self.request_type is None or not isinstance(request, self.request_type):
            raise TypeError(f"the {self.name} phase sends {getattr(self.request_type, '__name__', 'nothing')}, "
                            f"not {type(request).__name__}")
        return request.to_records()

    def serve(self, records: Records, site: "SiteCall"):
        """The site's side, whole: the policy's switch for the phase, the request decoded, every check,
        then the answer (a reply payload)."""
        if self.policy_phase is not None:
            site.policy.check_phase(self.policy_phase)
        request = self.decode_request(records)
        for check in self.checks:
            check(request, site)
        return self.answer(request, site)
