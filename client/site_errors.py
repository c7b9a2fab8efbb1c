"""What a site says when it does not answer: two fixed error replies, and the details kept on the site.

A coordinator learns from an error reply only *that* the site did not answer and, for a refusal,
which policy key refused. Never counts, values, paths or exception text: a refusal's reason once
quoted the patient count below the floor, and an exception's text once named the site's folders.

- ``POLICY_REFUSED`` (403), the key alone (the wire form both sides share: flower/refusal.py)::

      site policy [min-patients] refuses this request. Fix: see docs/privacy.md, key 'min-patients'

- :data:`SITE_ERROR` (500), reason :data:`SITE_ERROR_REASON`, for anything else that went wrong
  (exceptions, data-contract errors, replies the egress guard blocked).

The full text (the PolicyViolation with its numbers, the traceback) goes to the site's own log,
Python logger ``rmmfed.site`` (:data:`LOG`), never into a reply. The egress guard
(client/egress.py) lets an error reply out only in one of these two forms (:func:`allowed_error`).

Each reply made here carries a local note (:func:`note_of`: what happened and the exception's type
name) that the egress ledger records; the note is a Python-side table keyed by the reply object,
never part of the message.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from functools import cache

from flwr.app import Context, Error, Message
from pydantic import BaseModel

from ..core.privacy.site_policy import PolicyViolation, SitePolicy
from ..flower.refusal import POLICY_REFUSED, refusal_error, refused_key

LOG = logging.getLogger("rmmfed.site")

SITE_ERROR = 500  # error code of every other failure at the site
SITE_ERROR_REASON = ("site error: the site could not answer this request; its administrator finds the details "
                     "in the site log")

# Keys a refusal may name beyond the policy file's own (core/privacy/request_policy.py, core/privacy/privacy_budget.py):
# a new PolicyViolation key is either a SitePolicy field or listed here (tests/test_error_replies.py checks).
EXTRA_KEYS = frozenset({"weights", "dp.total-epsilon", "dp.target-delta", "one-answer-per-round"})


def _field_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, f in model.model_fields.items():
        key = prefix + (f.alias or name.replace("_", "-"))
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= _field_keys(sub, key + ".")
        else:
            keys.add(key)
    return keys


@cache
def known_policy_keys() -> frozenset[str]:
    """Every key a refusal may name: the site policy's keys (``dp.max-epsilon`` ...) and :data:`EXTRA_KEYS`."""
    return frozenset(_field_keys(SitePolicy)) | EXTRA_KEYS


def allowed_error(error: Error) -> bool:
    """Whether an error reply may leave the site: a fixed refusal of a known key, or the fixed site error."""
    if int(error.code) == POLICY_REFUSED:
        return refused_key(error) in known_policy_keys()
    return int(error.code) == SITE_ERROR and error.reason == SITE_ERROR_REASON


# ---- local notes on replies (never sent) ---------------------------------------------------------
_NOTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def note(reply: Message, **fields: str) -> Message:
    try:
        with _LOCK:
            _NOTES[reply] = dict(fields)
    except TypeError:  # pragma: no cover - a Message that cannot be a weak key: the ledger falls back to the code
        pass
    return reply


def note_of(reply: Message) -> dict[str, str]:
    """What the site noted about a reply it made here: ``status`` (refused, error, blocked),
    ``policy_key``, ``error_type`` (a type name, never a message); empty for other replies."""
    with _LOCK:
        return dict(_NOTES.get(reply, {}))


# ---- the two replies -----------------------------------------------------------------------------
def _where(msg: Message) -> str:
    md = msg.metadata
    return f"run {md.run_id}, message {md.message_type!r} (id {md.message_id or '-'}, round {md.group_id or '-'})"


def refusal(msg: Message, err: PolicyViolation) -> Message:
    """The refusal reply to ``msg``: the key only; the violation's full text goes to the site log."""
    try:
        error = refusal_error(err.key)
    except ValueError:
        return site_error(msg, err)
    LOG.warning("refused %s: %s", _where(msg), err)
    return note(Message(error, reply_to=msg), status="refused",
                policy_key=err.key, error_type=type(err).__name__)


def site_error(msg: Message, err: BaseException | None = None, *, status: str = "error",
               error_type: str | None = None, detail: str = "") -> Message:
    """The fixed site-error reply to ``msg``; the exception's traceback (or ``detail``) goes to the site log."""
    kind = error_type or (type(err).__name__ if err is not None else "")
    if err is not None:
        LOG.error("could not answer %s: %s%s", _where(msg), f"{detail}: " if detail else "", kind,
                  exc_info=(type(err), err, err.__traceback__))
    else:
        LOG.error("could not answer %s: %s", _where(msg), detail or kind or "no detail")
    fields = {"status": status, **({"error_type": kind} if kind else {})}
    return note(Message(Error(code=SITE_ERROR, reason=SITE_ERROR_REASON), reply_to=msg), **fields)


def contain_errors(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A ClientApp mod for the outermost place: an exception of any mod inside it (e.g. unpacking a
    request) becomes the fixed site error instead of Flower's error reply with the exception's text."""
    try:
        return call_next(msg, context)
    except Exception as err:  # noqa: BLE001 - nothing of it may leave the site
        return site_error(msg, err)
