"""A site's policy refusal on the wire: the one error a site sends when its policy refuses a request,
and the one way the coordinator (and the site's own egress guard and ledger) reads it back.

A refusal is ``Error(code=POLICY_REFUSED, reason=refusal_reason(key))``, the key alone, e.g.::

    403  site policy [min-patients] refuses this request. Fix: see docs/privacy.md, key 'min-patients'

:func:`refused_key` recognises a refusal by its code and reads the key back only from a reason of
exactly that form (it writes the reason again and compares); anything else is not a refusal. What
the site writes and logs around it (the violation's numbers, its notes) is client/site_errors.py.
"""

from __future__ import annotations

import re

from flwr.app import Error

POLICY_REFUSED = 403  # error code of a policy refusal (Flower's own codes are 0-8)
DOCS = "docs/privacy.md"
_PREFIX = "site policy ["
_KEY = re.compile(r"[a-z][a-z\-]*(\.[a-z][a-z\-]*)*")  # a key a refusal can name: lower-case words, '-', '.'


def refusal_reason(key: str) -> str:
    """The one reason a refusal under ``key`` sends (:func:`refused_key` reads it back)."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"policy key {key!r} is not of the form a refusal can name (lower-case words, '-', '.')")
    return f"{_PREFIX}{key}] refuses this request. Fix: see {DOCS}, key '{key}'"


def refusal_error(key: str) -> Error:
    """The error of a refusal under ``key``: code :data:`POLICY_REFUSED`, reason :func:`refusal_reason`."""
    return Error(code=POLICY_REFUSED, reason=refusal_reason(key))


def refused_key(error: Error | None) -> str | None:
    """The policy key of a refusal (code :data:`POLICY_REFUSED`, reason exactly :func:`refusal_reason`), else None."""
    if error is None or int(error.code) != POLICY_REFUSED:
        return None
    reason = error.reason or ""
    key = reason[len(_PREFIX):reason.find("]")] if reason.startswith(_PREFIX) else ""
    return key if _KEY.fullmatch(key) and refusal_reason(key) == reason else None
