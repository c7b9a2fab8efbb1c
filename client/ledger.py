"""Egress ledger: a local, append-only record of every reply this site sends (a ClientApp mod).

One JSON line per reply: UTC time, run id, message type, round (group id), and for each record its
name and kind; for arrays their name, shape, dtype, serialised size (``bytes``, what travels) and
raw size (``nbytes`` = elements x item size); for metrics/config their keys and
scalar types. Never values: nothing in the ledger is patient data. ``compute_s`` is how long this site
took to answer (the policy check, the egress guard and the computation; not Flower's transport). Each
line also carries the total
payload bytes and a SHA-256 of the payload (:func:`payload_digest`: array bytes plus the sorted
scalar items), so an auditor can match a line against what the server logged as received.

Replies that are not answers (client/site_errors.py), never with a reason or message text:
``"status": "refused"`` with ``policy_key`` (a site-policy refusal); ``"status": "error"`` with
``error_code`` and, for a failure at this site, ``error_type`` (the local exception's type name);
``"status": "blocked"`` with ``blocked`` (the type, e.g. ``EgressViolation``) for a reply the egress
guard replaced by the fixed site error. The details are in the site log (logger ``rmmfed.site``).

Use: ``ClientApp(mods=[ledger_mod("/secure/site-A/egress.jsonl"), egress_guard])`` (outermost first,
so the ledger sees what the guard let through), or :func:`configured_ledger_mod`, which takes the
path from the node's config at each message. Read it with
``rmm-client ledger --summary LEDGER [--budget privacy-budget.json]`` or
``python -m rmmfed.client.ledger summary LEDGER [--budget FILE] [--since ISO] [--until ISO]``:
runs seen, replies by status, refusals by key, errors by type, the privacy budget, and warnings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..flower.refusal import refused_key
from .egress import EgressViolation
from .site_errors import note_of, site_error

try:  # POSIX: serialise writers of several ClientApp processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["ledger_mod", "configured_ledger_mod", "ledger_entry", "payload_digest", "read_ledger", "summarize",
           "format_summary", "budget_summary", "print_summary", "main"]

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
RUNS_PER_DAY = 3  # more runs than this within 24 h: a warning (each new run starts with fresh pins)
REFUSALS_PER_KEY = 5  # more refusals than this under one key: a warning


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


def _error_fields(reply: Message) -> dict:
    """status and kind of an error reply: the note the site made (client/site_errors.py), else the code."""
    n, code = note_of(reply), int(reply.error.code)
    status = n.get("status") or ("refused" if refused_key(reply.error) else "error")
    if status == "refused":
        return {"status": "refused", "error_code": code, "policy_key": n.get("policy_key") or refused_key(reply.error)}
    if status == "blocked":
        return {"status": "blocked", "error_code": code, "blocked": n.get("error_type", EgressViolation.__name__)}
    return {"status": "error", "error_code": code, **({"error_type": n["error_type"]} if n.get("error_type") else {})}


def ledger_entry(request: Message, reply: Message | None, *, blocked: str | None = None,
                 seconds: float | None = None) -> dict:
    """The ledger line (a dict) for one reply: structure and sizes, never values, never reasons;
    ``seconds``: how long the site took to answer."""
    md = (reply or request).metadata
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "run_id": int(md.run_id),
             "message_type": md.message_type, "group_id": md.group_id,
             "reply_to": request.metadata.message_id, "node_id": int(request.metadata.dst_node_id)}
    if seconds is not None:
        entry["compute_s"] = round(float(seconds), 4)
    if blocked is not None:
        return {**entry, "status": "blocked", "blocked": blocked}
    if reply.has_error():
        return {**entry, **_error_fields(reply)}
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
    """A ClientApp mod that appends one ledger line per reply to ``path`` (flush + fsync).

    An exception from inside (normally the guard and policy_mod leave none) becomes the fixed site
    error, logged with its type. A reply whose line cannot be written is not sent either: the fixed
    site error goes instead (fail closed; the site log says why)."""
    target = Path(path)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        start = time.perf_counter()
        try:
            reply = call_next(msg, context)
        except Exception as err:  # noqa: BLE001 - its text may quote file names: the site log only
            reply = site_error(msg, err, status="blocked" if isinstance(err, EgressViolation) else "error")
        try:
            _append(target, ledger_entry(msg, reply, seconds=time.perf_counter() - start))
        except Exception as err:  # noqa: BLE001 - e.g. an unwritable ledger: its path stays on the site
            return site_error(msg, err, detail="the egress ledger could not be written, so the reply was not sent")
        return reply

    return mod


def configured_ledger_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A mod whose file comes from the node: ``node_config["ledger"]`` (deployment), else
    ``run_config["ledger-dir"]/node-<node id>.jsonl`` (simulation nodes only: the run config is the
    coordinator's, and a hospital's files go where the hospital says); neither set: no ledger."""
    path = str(context.node_config.get("ledger", "") or "")
    simulated = "partition-id" in context.node_config  # a deployment's node never takes a path from the run config
    if not path and simulated and str(context.run_config.get("ledger-dir", "") or ""):
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


def _runs(entries: list[dict]) -> dict[str, dict]:
    """Per run id (in order of first sight): first and last time, replies."""
    runs: dict[str, dict] = {}
    for e in sorted(entries, key=lambda e: _parse_time(e["time"])):
        rid = str(e.get("run_id", "?"))
        r = runs.setdefault(rid, {"first": e["time"], "last": e["time"], "replies": 0})
        r["last"] = e["time"]
        r["replies"] += 1
    return runs


def _warnings(runs: dict[str, dict], by_key: dict[str, int], blocked: int, budget: dict | None) -> list[str]:
    """One line per hostile pattern worth asking the coordinator about (heuristics: thresholds above)."""
    out = []
    firsts = sorted((_parse_time(r["first"]), rid) for rid, r in runs.items() if rid != "?")
    most: list[str] = []
    for i, (t, _) in enumerate(firsts):
        window = [rid for u, rid in firsts[i:] if u - t <= timedelta(hours=24)]
        most = window if len(window) > len(most) else most
    if len(most) > RUNS_PER_DAY:
        out.append(f"WARNING: {len(most)} runs began within 24 h (run ids {', '.join(most)}); each new run starts "
                   "with fresh pins and spends more privacy budget: worth asking the coordinator about")
    for key, n in by_key.items():
        if n > REFUSALS_PER_KEY:
            out.append(f"WARNING: policy key '{key}' refused {n} requests: worth asking the coordinator about")
    if blocked:
        out.append(f"WARNING: the egress guard blocked {blocked} repl{'y' if blocked == 1 else 'ies'}: the site log "
                   "(logger rmmfed.site) says why")
    if budget and budget.get("left") is not None and budget["left"] <= 0:
        out.append("WARNING: the site's lifetime privacy budget is spent: DP runs are refused (dp.total-epsilon)")
    if budget and budget.get("evaluations_cap") is not None and budget.get("evaluations", 0) >= budget["evaluations_cap"]:
        out.append("WARNING: the site has answered its lifetime number of exact test evaluations: later runs' "
                   "evaluations are refused (max-evaluations)")
    return out


def summarize(entries: list[dict], budget: dict | None = None) -> dict:
    """Runs seen, statuses, refusals by key, errors by type, messages and bytes per message type, array
    names/shapes and scalar keys seen; ``budget`` (:func:`budget_summary`) is added, with warnings."""
    per_type, arrays, keys = {}, {}, {}
    status = Counter(e.get("status", "ok") for e in entries)
    for e in entries:
        t = per_type.setdefault(e["message_type"], {"messages": 0, "bytes": 0})
        t["messages"] += 1
        t["bytes"] += int(e.get("total_bytes", 0))
        for r in e.get("records", []):
            for a in r.get("arrays", []):
                arrays[f"{r['name']}/{a['name']}"] = (tuple(a["shape"]), a["dtype"])
            if "keys" in r:
                keys.setdefault(r["name"], set()).update(r["keys"])
    times = sorted(e["time"] for e in entries)
    refused = Counter(f"{e['message_type']} [{e['policy_key']}]" for e in entries if e.get("policy_key"))
    by_key = Counter(e["policy_key"] for e in entries if e.get("status") == "refused" and e.get("policy_key"))
    errors = Counter(e.get("error_type") or f"code {e.get('error_code', '?')}" for e in entries
                     if e.get("status") == "error")
    blocked = Counter(e.get("blocked") or "?" for e in entries if e.get("status") == "blocked")
    runs = _runs(entries)
    return {"entries": len(entries), "first": times[0] if times else None, "last": times[-1] if times else None,
            "runs": runs, "status": dict(status), "refused": dict(sorted(refused.items())),
            "refused_by_key": dict(sorted(by_key.items())), "errors": dict(sorted(errors.items())),
            "blocked": dict(sorted(blocked.items())),
            "per_type": {k: dict(v) for k, v in sorted(per_type.items())},
            "arrays": dict(sorted(arrays.items())), "keys": {k: sorted(v) for k, v in sorted(keys.items())},
            "budget": budget, "warnings": _warnings(runs, dict(by_key), sum(blocked.values()), budget)}


def budget_summary(path: str | Path) -> dict:
    """The site's privacy budget file (core/privacy/privacy_budget.py): epsilon per run, spent, cap and left."""
    from ..core.privacy.privacy_budget import read_budget

    state = read_budget(path)  # BudgetFileError (naming the file) when unreadable
    top = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}
    cap, eval_cap = top.get("total-epsilon"), top.get("max-evaluations")
    spent = state.epsilon_spent
    return {"file": str(path), "cap": None if cap is None else float(cap), "spent": spent,
            "left": None if cap is None else max(float(cap) - spent, 0.0), "delta_spent": state.delta_spent,
            "evaluations": state.evaluations, "evaluations_cap": None if eval_cap is None else int(eval_cap),
            "runs": {rid: {k: r.get(k) for k in ("epsilon", "delta", "first", "last", "what", "evaluated")}
                     for rid, r in sorted(state.runs.items(), key=lambda kv: str(kv[1].get("first", "")))}}


def _counts(title: str, counts: dict[str, int]) -> list[str]:
    return ["", title] + [f"  {what:<40} {n:>6}" for what, n in counts.items()] if counts else []


def format_summary(s: dict) -> str:
    runs = s.get("runs", {})
    lines = [f"{s['entries']} replies from {s['first']} to {s['last']}",
             f"runs seen: {len(runs)}" + (f" (ids {', '.join(runs)})" if runs else "")]
    lines += [f"  run {rid:<12} first {r['first']}  last {r['last']}  {r['replies']:>5} replies"
              for rid, r in runs.items()]
    lines += ["status: " + ", ".join(f"{k}={v}" for k, v in sorted(s["status"].items()))]
    lines += _counts("refused by policy key:", s.get("refused_by_key", {}))
    lines += _counts("refused by this site's policy (request [policy key]):", s.get("refused", {}))
    lines += _counts("errors at this site by type (details: site log, logger rmmfed.site):", s.get("errors", {}))
    lines += _counts("blocked by the egress guard:", s.get("blocked", {}))
    b = s.get("budget")
    if b is not None:
        cap = "no cap in the file" if b["cap"] is None else f"cap {b['cap']:g}"
        left = "" if b["left"] is None else f", left {b['left']:g}"
        lines += ["", f"privacy budget ({b['file']}): epsilon spent {b['spent']:g} over {len(b['runs'])} run(s), "
                      f"{cap}{left}"]
        ev_cap = b.get("evaluations_cap")
        lines += [f"exact test evaluations answered: {b.get('evaluations', 0)}"
                  + ("" if ev_cap is None else f" of max-evaluations {ev_cap}")]
        lines += [f"  run {rid:<12} epsilon {float(r['epsilon']):g}  delta {float(r.get('delta') or 0):g}  "
                  f"first {r.get('first')}  last {r.get('last')}  {r.get('what') or ''}"
                  f"{'  (test evaluation)' if r.get('evaluated') else ''}".rstrip()
                  for rid, r in b["runs"].items()]
    lines += ["", "per message type:"]
    lines += [f"  {t:<18} {v['messages']:>6} messages {v['bytes']:>14,} bytes" for t, v in s["per_type"].items()]
    lines += ["", f"arrays sent ({len(s['arrays'])} distinct):"]
    lines += [f"  {name:<40} shape={list(shape)} dtype={dt}" for name, (shape, dt) in s["arrays"].items()]
    lines += ["", "scalar keys sent (values are never logged):"]
    lines += [f"  {rec}: {', '.join(ks)}" for rec, ks in s["keys"].items()]
    if s.get("warnings"):
        lines += [""] + s["warnings"]
    return "\n".join(lines)


def print_summary(ledger: Path, since: str | None = None, until: str | None = None, budget: Path | None = None,
                  prog: str = "python -m rmmfed.client.ledger") -> int:
    """Print the summary of ``ledger`` (and ``budget``); 0, or 2 with a message naming the fix."""
    if not Path(ledger).is_file():
        print(f"{prog}: no ledger at {ledger}. Fix: pass the path given to ledger_mod (node config 'ledger').",
              file=sys.stderr)
        return 2
    if budget is not None and not Path(budget).is_file():
        print(f"{prog}: no privacy budget file at {budget}. Fix: pass the site's privacy-budget.json (in its "
              "state folder), or leave out --budget.", file=sys.stderr)
        return 2
    try:
        entries = read_ledger(ledger, since, until)
        b = budget_summary(budget) if budget is not None else None
    except ValueError as err:  # a bad --since/--until, a broken line, an unreadable budget file
        print(f"{prog}: {err}. Fix: ISO 8601 times (e.g. 2026-01-01T00:00Z) and the site's own files.",
              file=sys.stderr)
        return 2
    print(format_summary(summarize(entries, b)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmmfed.client.ledger", description="Read a site's egress ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="runs, statuses, refusals, errors, bytes and array shapes per message type")
    p.add_argument("ledger", type=Path)
    p.add_argument("--budget", type=Path, help="the site's privacy-budget.json: epsilon per run, spent and left")
    p.add_argument("--since", help="ISO 8601 time (UTC if no offset), inclusive")
    p.add_argument("--until", help="ISO 8601 time (UTC if no offset), inclusive")
    args = parser.parse_args(argv)
    return print_summary(args.ledger, args.since, args.until, args.budget)


if __name__ == "__main__":
    sys.exit(main())
