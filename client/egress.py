"""Egress guard: a ClientApp mod that checks every reply before it leaves the site.

The request's message type names its phase (core/messages/protocol.py); the reply may carry only the records
that phase's definition lists, each of the kind the protocol gives it. Then, per record (anything
else makes the reply an error and nothing is sent):
- ``arrays``: model weights with exactly the names and shapes of the weights the server sent;
- ``sums``: feature sums ``<modality>.<all|complete>.<n|sum|sumsq>``, each of shape [1] or [dim], and
  ``<modality>.pca.<n|sum|outer>`` [1], [dim], [dim, dim] (second moments for the federated PCA);
- ``counts``: one histogram: ``counts``, ``first``, ``last``, each [m] with m <= hist-bins,
  ``first``/``last`` ordered fine-bin ranges of the server's grid (every bin, noised, under the default
  policy: core/privacy/noised_release.py; bins merged to the site's floor with exact releases);
- ``hazard``: Breslow sums with intervals merged to the floor: ``hazard.first``, ``hazard.events``,
  ``hazard.risk-sum`` each [m] with m <= the server's grid points, ``hazard.risk-after`` [1];
- ``cox``: the Cox core's sums over a whole split for the p coefficients sent: ``grad`` [p], ``hess``
  [p, p], ``sum`` [p], ``sumsq`` [p] (core/site/site_cox.py);
- ``metrics``: scalar metrics only; ``config``: the schema reply's scalar fields only.
No reply can carry an array indexed by patient.

Error replies are checked too (client/site_errors.py): one leaves only as the fixed refusal of a
known policy key (code 403) or the fixed site error (code 500). Anything else, a reply that breaks
the list above, or an exception from the mods and handler inside the guard, is replaced by the fixed
site error; what was wrong goes to the site log (logger ``rmmfed.site``) and the ledger records the
reply as ``blocked``. Nothing of a blocked reply, not even the violation's text, is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from ..core.messages import protocol as P
from ..core.errors import RmmError
from .site_errors import allowed_error, site_error

_SUM_KEY = re.compile(r"^.+\.(all|complete|pca)\.(n|sum|sumsq)$")
_OUTER_KEY = re.compile(r"^.+\.pca\.outer$")


class EgressViolation(RmmError):
    """A reply would send something outside the allowlist; it is blocked."""


def check_reply(request: Message, reply: Message) -> None:
    mtype = request.metadata.message_type
    phase = P.phase_of(mtype)
    if phase is None:
        raise EgressViolation(f"message type '{mtype}' is not a phase of the rmm protocol: nothing is sent")
    for name, record in reply.content.items():
        if name not in phase.reply:
            raise EgressViolation(f"a {phase.name} reply may carry only {', '.join(phase.reply)}, not '{name}'")
        if isinstance(record, MetricRecord):
            bad = [k for k, v in record.items() if isinstance(v, list)]
            if name != P.METRICS or bad:
                raise EgressViolation(f"metric record '{name}' with list values {bad} is not allowed")
            unknown = sorted(set(record) - set(phase.metrics))
            if unknown:
                raise EgressViolation(f"a {phase.name} reply carries metric(s) {unknown} that core/messages/protocol.py does "
                                      f"not list for it")
        elif isinstance(record, ConfigRecord):
            if name != P.CONFIG or set(record) - P.SCHEMA_KEYS:
                raise EgressViolation(f"config record '{name}' with keys {sorted(record)} is not allowed here")
            if any(isinstance(v, (list, bytes)) for v in record.values()):
                raise EgressViolation("config replies carry scalars only")
        elif isinstance(record, ArrayRecord) and name not in P.SCALAR_RECORDS:
            _check_arrays(request, name, record)
        else:
            raise EgressViolation(f"record '{name}' of type {type(record).__name__} is not allowed")


def _check_arrays(request: Message, name: str, record: ArrayRecord) -> None:
    shapes = {k: tuple(a.shape) for k, a in record.items()}
    if name == P.ARRAYS:
        sent = request.content.array_records.get(P.ARRAYS)
        expected = {k: tuple(a.shape) for k, a in sent.items()} if sent is not None else None
        if expected != shapes:
            raise EgressViolation("weights reply does not match the weights the server sent (names/shapes)")
    elif name == P.SUMS:
        for k, s in shapes.items():
            if _OUTER_KEY.match(k):  # [D, D] beside the same block's sum [D]: a second moment, never rows
                d = shapes.get(k[: -len("outer")] + "sum")
                if d is None or len(s) != 2 or s != (d[0], d[0]):
                    raise EgressViolation(f"feature-sum array '{k}' of shape {s} is not a [dim, dim] sum of "
                                          "outer products beside its block's sum")
                continue
            if not _SUM_KEY.match(k) or len(s) != 1:
                raise EgressViolation(f"feature-sum array '{k}' of shape {s} is not allowed")
    elif name == P.HAZARD_RECORD:
        sent = request.content.array_records.get(P.HAZARD_RECORD)
        points = int(sent["grid"].shape[0]) if sent is not None and "grid" in sent else 0
        keys = {"hazard.first", "hazard.events", "hazard.risk-sum", "hazard.risk-after"}
        m = shapes.get("hazard.first", (0,))
        if set(shapes) != keys or shapes["hazard.risk-after"] != (1,) or len(m) != 1 or not 1 <= m[0] <= points \
                or any(shapes[k] != m for k in ("hazard.events", "hazard.risk-sum")):
            raise EgressViolation(f"hazard reply must be merged Breslow sums on the server's grid of {points} points, "
                                  f"got {shapes}")
        _check_ranges(record["hazard.first"].numpy(), None, points)
    elif name == P.COX_RECORD:
        sent = request.content.array_records.get(P.COX_RECORD)
        p = int(sent["coef"].shape[0]) if sent is not None and "coef" in sent else -1
        want = {"grad": (p,), "hess": (p, p), "sum": (p,), "sumsq": (p,)}
        if shapes != want:
            raise EgressViolation(f"a Cox core reply must be sums over the split for the {p} coefficients sent "
                                  f"(grad, hess, sum, sumsq), got {shapes}")
    elif name == P.COUNTS:
        bins = int(request.content.config_records[P.CONFIG]["hist-bins"])
        m = shapes.get("counts", (0,))
        if set(shapes) != {"counts", "first", "last"} or len(m) != 1 or m[0] > bins \
                or shapes["first"] != m or shapes["last"] != m:
            raise EgressViolation(f"histogram reply must be merged bins (counts, first, last; at most {bins}), got {shapes}")
        _check_ranges(record["first"].numpy(), record["last"].numpy(), bins)
    else:
        raise EgressViolation(f"array record '{name}' is not allowed")


def _check_ranges(first, last, size: int) -> None:
    """Merged bins or intervals: integer indices into the server's grid, ordered, never overlapping."""
    f = np.asarray(first)
    ok = f.dtype.kind in "iu" and (f.size == 0 or (f.min() >= 0 and f.max() < size))
    if last is None:
        ok = ok and f.size > 0 and f[0] == 0 and bool((np.diff(f) > 0).all())
    else:
        l = np.asarray(last)
        ok = ok and l.dtype.kind in "iu" and bool((l >= f).all()) and (l.size == 0 or l.max() < size) \
            and bool((f[1:] > l[:-1]).all())
    if not ok:
        raise EgressViolation("merged bins must be ordered, non-overlapping index ranges of the server's grid")


def egress_guard(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """The reply, if it conforms (module docstring); else the fixed site error, noted ``blocked`` (or
    ``error`` for an exception from inside, with its type name) for the ledger."""
    try:
        reply = call_next(msg, context)
    except Exception as err:  # noqa: BLE001 - normally policy_mod's; here too, so no text reaches Flower
        return site_error(msg, err)
    if reply.has_error():
        if allowed_error(reply.error):
            return reply
        return site_error(msg, status="blocked", error_type=EgressViolation.__name__,
                          detail=f"egress guard blocked an error reply of code {reply.error.code} whose reason is "
                                 f"not one of the fixed forms: {reply.error.reason!r}")
    try:
        check_reply(msg, reply)
    except Exception as err:  # noqa: BLE001 - an EgressViolation, or a request the check cannot read
        return site_error(msg, err, status="blocked", detail="egress guard blocked the reply")
    return reply
