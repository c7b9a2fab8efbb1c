"""Egress ledger: a local, append-only record of every reply this site sends (a ClientApp mod).

One JSON line per reply: UTC time, run id, message type, round (group id), and for each record its
name and kind; for arrays their name, shape, dtype, serialised size (``bytes``, what travels) and
raw size (``nbytes`` = elements x item size); for metrics/config their keys and
scalar types. Never values: nothing in the ledger is patient data. Each line also carries the total
payload bytes and a SHA-256 of the payload (:func:`payload_digest`: array bytes plus the sorted
scalar items), so an auditor can match a line against what the server logged as received. A reply
that an inner mod refuses (e.g. the egress guard) is logged as ``blocked`` with the exception type.

Use: ``ClientApp(mods=[ledger_mod("/secure/site-A/egress.jsonl"), egress_guard])`` (outermost first,
so the ledger sees what the guard let through), or :func:`configured_ledger_mod`, which takes the
path from the node's config at each message. Read it with
``python -m rmmfed.client.ledger summary LEDGER [--since ISO] [--until ISO]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..core.site_policy import refused_key

try:  # POSIX: serialise writers of several ClientApp processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["ledger_mod", "configured_ledger_mod", "ledger_entry", "payload_digest", "read_ledger", "summarize", "format_summary", "main"]

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def _scalar(v) -> object:
    return v.hex() if isinstance(v, bytes) else v


def payload_digest(content: RecordDict) -> str:
    """SHA-256 over records sorted by name: arrays (name, dtype, shape, bytes), scalars (sorted items)."""
    h = hashlib.sha256()
    for name in sorted(content):
        record = content[name]
        h.update(f"{name}:{type(record).__name__}\n".encode())
        if isinstance(record, ArrayRecord):
            for key in sorted(record):
                a = record[key]
                h.update(f"{key}|{a.dtype}|{tuple(a.shape)}|{len(a.data)}\n".encode())
                h.update(a.data)
        else:
            items = [[k, _scalar(record[k]) if not isinstance(record[k], list) else [_scalar(x) for x in record[k]]]
                     for k in sorted(record)]
            h.update(json.dumps(items, sort_keys=True).encode())
    return h.hexdigest()


def _type_name(v) -> str:
    return f"list[{type(v[0]).__name__ if v else ''}]" if isinstance(v, list) else type(v).__name__


def ledger_entry(request: Message, reply: Message | None, *, blocked: str | None = None) -> dict:
    """The ledger line (a dict) for one reply: structure and sizes, never values."""
    md = (reply or request).metadata
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "run_id": int(md.run_id),
             "message_type": md.message_type, "group_id": md.group_id,
             "reply_to": request.metadata.message_id, "node_id": int(request.metadata.dst_node_id)}
    if blocked is not None:
        return {**entry, "status": "blocked", "blocked": blocked}
    if reply.has_error():
        key = refused_key(reply.error.reason)  # a site-policy refusal names its key (never values)
        return {**entry, "status": "refused" if key else "error", "error_code": int(reply.error.code),
                **({"policy_key": key} if key else {})}
    records, total = [], 0
    for name in sorted(reply.content):
        record = reply.content[name]
        nbytes = int(record.count_bytes())
        total += nbytes
        if isinstance(record, ArrayRecord):
            arrays = [{"name": k, "shape": list(a.shape), "dtype": a.dtype, "bytes": len(a.data),
                       "nbytes": int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize}
                      for k, a in record.items()]
            records.append({"name": name, "kind": "arrays", "bytes": nbytes, "arrays": arrays})
        else:
            kind = "metrics" if isinstance(record, MetricRecord) else "config" if isinstance(record, ConfigRecord) else "other"
            records.append({"name": name, "kind": kind, "bytes": nbytes,
                            "keys": {k: _type_name(v) for k, v in record.items()}})
    return {**entry, "status": "ok", "records": records, "total_bytes": total, "sha256": payload_digest(reply.content)}


def _append(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # "a": never truncates, never seeks back
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def ledger_mod(path: str | Path) -> Mod:
    """A ClientApp mod that appends one ledger line per reply to ``path`` (flush + fsync)."""
    target = Path(path)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        try:
            reply = call_next(msg, context)
        except Exception as err:  # logged (type only: messages may quote file names), then re-raised
            _append(target, ledger_entry(msg, None, blocked=type(err).__name__))
            raise
        _append(target, ledger_entry(msg, reply))
        return reply

    return mod


def configured_ledger_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A mod whose file comes from the node: ``node_config["ledger"]`` (deployment), else
    ``run_config["ledger-dir"]/node-<node id>.jsonl`` (simulation); neither set: no ledger."""
    path = str(context.node_config.get("ledger", "") or "")
    if not path and str(context.run_config.get("ledger-dir", "") or ""):
        path = str(Path(str(context.run_config["ledger-dir"])) / f"node-{context.node_id}.jsonl")
    return ledger_mod(path)(msg, context, call_next) if path else call_next(msg, context)


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def read_ledger(path: str | Path, since: str | None = None, until: str | None = None) -> list[dict]:
    """Ledger lines with ``since <= time <= until`` (ISO 8601; naive times are UTC)."""
    lo = _parse_time(since) if since else None
    hi = _parse_time(until) if until else None
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        t = _parse_time(e["time"])
        if (lo is None or t >= lo) and (hi is None or t <= hi):
            out.append(e)
    return out


def summarize(entries: list[dict]) -> dict:
    """Messages and bytes per message type, statuses, array names/shapes and scalar keys seen."""
    per_type, arrays, keys = defaultdict(lambda: {"messages": 0, "bytes": 0}), {}, defaultdict(set)
    status = Counter(e.get("status", "ok") for e in entries)
    for e in entries:
        t = per_type[e["message_type"]]
        t["messages"] += 1
        t["bytes"] += int(e.get("total_bytes", 0))
        for r in e.get("records", []):
            for a in r.get("arrays", []):
                arrays[f"{r['name']}/{a['name']}"] = (tuple(a["shape"]), a["dtype"])
            if "keys" in r:
                keys[r["name"]].update(r["keys"])
    times = sorted(e["time"] for e in entries)
    refused = Counter(f"{e['message_type']} [{e['policy_key']}]" for e in entries if e.get("policy_key"))
    return {"entries": len(entries), "first": times[0] if times else None, "last": times[-1] if times else None,
            "status": dict(status), "refused": dict(sorted(refused.items())),
            "per_type": {k: dict(v) for k, v in sorted(per_type.items())},
            "arrays": dict(sorted(arrays.items())), "keys": {k: sorted(v) for k, v in sorted(keys.items())}}


def format_summary(s: dict) -> str:
    lines = [f"{s['entries']} replies from {s['first']} to {s['last']}",
             "status: " + ", ".join(f"{k}={v}" for k, v in sorted(s["status"].items()))]
    if s.get("refused"):
        lines += ["", "refused by this site's policy (request [policy key]):"]
        lines += [f"  {what:<40} {n:>6}" for what, n in s["refused"].items()]
    lines += ["", "per message type:"]
    lines += [f"  {t:<18} {v['messages']:>6} messages {v['bytes']:>14,} bytes" for t, v in s["per_type"].items()]
    lines += ["", f"arrays sent ({len(s['arrays'])} distinct):"]
    lines += [f"  {name:<40} shape={list(shape)} dtype={dt}" for name, (shape, dt) in s["arrays"].items()]
    lines += ["", "scalar keys sent (values are never logged):"]
    lines += [f"  {rec}: {', '.join(ks)}" for rec, ks in s["keys"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmmfed.client.ledger", description="Read a site's egress ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="messages, bytes and array shapes per message type")
    p.add_argument("ledger", type=Path)
    p.add_argument("--since", help="ISO 8601 time (UTC if no offset), inclusive")
    p.add_argument("--until", help="ISO 8601 time (UTC if no offset), inclusive")
    args = parser.parse_args(argv)
    if not args.ledger.is_file():
        print(f"no ledger at {args.ledger}. Fix: pass the path given to ledger_mod (node config 'ledger').",
              file=sys.stderr)
        return 2
    print(format_summary(summarize(read_ledger(args.ledger, args.since, args.until))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
