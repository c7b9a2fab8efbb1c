"""The egress ledger: one append-only JSON line per reply, structure and sizes only, never values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client.egress import EgressViolation, egress_guard
from rmmfed.client.ledger import configured_ledger_mod, ledger_mod, main, payload_digest, read_ledger, summarize

SECRET_WEIGHT = 12345.678
SECRET_METRIC = 0.987654321


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _arrays(**named) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in named.items()})


def _request(mtype: str = "train") -> Message:
    return Message(RecordDict({"arrays": _arrays(w=np.zeros((3, 2), np.float32), b=np.zeros(3, np.float32)),
                               "config": ConfigRecord({"server-round": 1, "hist-bins": 4})}),
                   dst_node_id=7, message_type=mtype)


def _train_reply(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": _arrays(w=np.full((3, 2), SECRET_WEIGHT, np.float32), b=np.ones(3, np.float32)),
                               "metrics": MetricRecord({"num-examples": 36, "train-loss": SECRET_METRIC})}),
                   reply_to=msg)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_reply_with_names_shapes_and_sizes(tmp_path):
    path = tmp_path / "egress.jsonl"
    mod = ledger_mod(path)

    replies = [mod(_request(), _context(), _train_reply) for _ in range(3)]

    lines = _lines(path)
    assert len(lines) == 3
    e = lines[0]
    assert e["status"] == "ok" and e["message_type"] == "train" and e["run_id"] == 1
    arrays = {r["name"]: r for r in e["records"]}["arrays"]["arrays"]
    assert {a["name"]: (a["shape"], a["dtype"], a["nbytes"]) for a in arrays} == {
        "w": ([3, 2], "float32", 24), "b": ([3], "float32", 12)}
    assert all(a["bytes"] >= a["nbytes"] for a in arrays)  # serialised (.npy header included)
    assert {r["name"]: r for r in e["records"]}["metrics"]["keys"] == {"num-examples": "int", "train-loss": "float"}
    assert e["total_bytes"] >= 36
    assert e["sha256"] == payload_digest(replies[0].content)
    assert e["time"].endswith("+00:00")


def test_nothing_of_the_values_appears_in_the_ledger(tmp_path):
    path = tmp_path / "egress.jsonl"
    mod = ledger_mod(path)
    mod(_request(), _context(), _train_reply)
    mod(_request("query.schema"), _context(),
        lambda m, c: Message(RecordDict({"config": ConfigRecord({"site": "St-Elsewhere", "n-patients": 4242})}),
                             reply_to=m))

    text = json.dumps([{k: v for k, v in e.items() if k not in ("sha256", "time")} for e in _lines(path)])

    for value in ("12345", "0.98765", "St-Elsewhere", "4242", np.float32(SECRET_WEIGHT).tobytes().hex()):
        assert value not in text
    assert "n-patients" in text  # keys are logged


def test_payload_hashes_are_stable_and_content_sensitive():
    req = _request()
    a, b = _train_reply(req, _context()), _train_reply(req, _context())
    reordered = Message(RecordDict({"metrics": MetricRecord({"train-loss": SECRET_METRIC, "num-examples": 36}),
                                    "arrays": _arrays(b=np.ones(3, np.float32),
                                                      w=np.full((3, 2), SECRET_WEIGHT, np.float32))}), reply_to=req)
    changed = Message(RecordDict({"arrays": _arrays(w=np.full((3, 2), SECRET_WEIGHT, np.float32), b=np.zeros(3, np.float32)),
                                  "metrics": MetricRecord({"num-examples": 36, "train-loss": SECRET_METRIC})}), reply_to=req)

    assert payload_digest(a.content) == payload_digest(b.content) == payload_digest(reordered.content)
    assert payload_digest(changed.content) != payload_digest(a.content)


def test_existing_lines_are_never_touched(tmp_path):
    path = tmp_path / "egress.jsonl"
    path.write_text('{"time": "2020-01-01T00:00:00+00:00", "message_type": "train", "status": "ok"}\n')
    before = path.read_bytes()

    ledger_mod(path)(_request(), _context(), _train_reply)
    ledger_mod(path)(_request(), _context(), _train_reply)  # a fresh process opens the same file

    after = path.read_bytes()
    assert after.startswith(before)
    assert len(after.splitlines()) == 3


def test_refused_and_error_replies_are_logged_without_reasons(tmp_path):
    path = tmp_path / "egress.jsonl"
    mod = ledger_mod(path)

    def leaky(msg, context):  # the guard refuses per-patient arrays
        return egress_guard(msg, context, lambda m, c: Message(
            RecordDict({"embeddings": _arrays(z=np.zeros((40, 8)))}), reply_to=m))

    with pytest.raises(EgressViolation):
        mod(_request(), _context(), leaky)
    mod(_request(), _context(), lambda m, c: Message(Error(code=3, reason="patient p007 file broken"), reply_to=m))

    blocked, error = _lines(path)
    assert blocked["status"] == "blocked" and blocked["blocked"] == "EgressViolation"
    assert error["status"] == "error" and error["error_code"] == 3
    assert "p007" not in path.read_text()


def test_the_configured_mod_takes_its_file_from_the_node(tmp_path):
    site_file = tmp_path / "site" / "egress.jsonl"
    deployed = Context(run_id=1, node_id=7, node_config={"ledger": str(site_file)}, state=RecordDict(), run_config={})
    simulated = Context(run_id=1, node_id=9, node_config={}, state=RecordDict(),
                        run_config={"ledger-dir": str(tmp_path / "sim")})

    configured_ledger_mod(_request(), deployed, _train_reply)
    configured_ledger_mod(_request(), simulated, _train_reply)
    reply = configured_ledger_mod(_request(), _context(), _train_reply)  # nothing configured: no ledger

    assert len(_lines(site_file)) == 1 and len(_lines(tmp_path / "sim" / "node-9.jsonl")) == 1
    assert not reply.has_error() and sorted(p.name for p in tmp_path.rglob("*.jsonl")) == ["egress.jsonl", "node-9.jsonl"]


def _write_history(path):
    entries = [("2026-01-01T10:00:00+00:00", "query.schema", 50), ("2026-01-02T10:00:00+00:00", "train", 1000),
               ("2026-01-03T10:00:00+00:00", "train", 1000), ("2026-01-04T10:00:00+00:00", "query.calibration", 64)]
    with open(path, "w") as f:
        for t, mtype, n in entries:
            f.write(json.dumps({"time": t, "run_id": 1, "message_type": mtype, "status": "ok", "total_bytes": n,
                                "records": [{"name": "arrays", "kind": "arrays", "bytes": n,
                                             "arrays": [{"name": "w", "shape": [n // 4], "dtype": "float32",
                                                         "bytes": n}]}]}) + "\n")


def test_summary_is_readable_and_filters_by_time(tmp_path, capsys):
    path = tmp_path / "egress.jsonl"
    _write_history(path)

    assert main(["summary", str(path), "--since", "2026-01-02", "--until", "2026-01-03T23:00:00Z"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("2 replies from 2026-01-02T10:00:00+00:00 to 2026-01-03T10:00:00+00:00")
    assert "train" in out and "2,000 bytes" in out
    assert "query.schema" not in out and "query.calibration" not in out
    assert "arrays/w" in out and "shape=[250]" in out
    s = summarize(read_ledger(path))
    assert s["entries"] == 4 and s["per_type"]["train"] == {"messages": 2, "bytes": 2000}


def test_summary_cli_runs_as_a_module(tmp_path):
    path = tmp_path / "egress.jsonl"
    _write_history(path)
    done = subprocess.run([sys.executable, "-m", "rmmfed.client.ledger", "summary", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 replies" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "rmmfed.client.ledger", "summary", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Fix" in missing.stderr
