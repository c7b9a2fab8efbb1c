"""The egress ledger: one append-only JSON line per reply, structure and sizes only, never values."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client import cli
from rmmfed.client.egress import egress_guard
from rmmfed.client.ledger import (configured_ledger_mod, format_summary, ledger_mod, main, payload_digest,
                                  read_ledger, summarize)
from rmmfed.client.policy_mod import policy_mod
from rmmfed.client.site_errors import SITE_ERROR, SITE_ERROR_REASON
from rmmfed.flower.refusal import POLICY_REFUSED
from rmmfed.core.privacy.privacy_budget import BudgetFileError
from rmmfed.core.privacy.site_policy import PolicyViolation

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


def _raise(err):
    def handler(msg, context):
        raise err
    return handler


def test_refused_error_and_blocked_replies_are_logged_by_kind_without_reasons(tmp_path):
    path = tmp_path / "egress.jsonl"
    mod = ledger_mod(path)

    def leaky(msg, context):  # the guard blocks per-patient arrays
        return egress_guard(msg, context, lambda m, c: Message(
            RecordDict({"embeddings": _arrays(z=np.zeros((40, 8)))}), reply_to=m))

    def site(handler):  # the inner part of the site's stack: guard, then policy_mod
        return lambda m, c: egress_guard(m, c, lambda m2, c2: policy_mod(m2, c2, handler))

    blocked_reply = mod(_request(), _context(), leaky)
    mod(_request(), _context(), lambda m, c: Message(Error(code=3, reason="patient p007 file broken"), reply_to=m))
    mod(_request(), _context(), site(_raise(PolicyViolation("max-bins", "a histogram of 200000 bins", "fewer"))))
    mod(_request(), _context(), site(_raise(BudgetFileError("/secure/site-A/state/privacy-budget.json: broken"))))

    blocked, error, refused, budget = _lines(path)
    assert (blocked_reply.error.code, blocked_reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)
    assert blocked["status"] == "blocked" and blocked["blocked"] == "EgressViolation"
    assert error["status"] == "error" and error["error_code"] == 3 and "error_type" not in error
    assert refused["status"] == "refused" and refused["policy_key"] == "max-bins"
    assert refused["error_code"] == POLICY_REFUSED
    assert budget["status"] == "error" and budget["error_code"] == SITE_ERROR
    assert budget["error_type"] == "BudgetFileError"
    assert all(line["run_id"] == 1 for line in _lines(path))
    text = path.read_text()
    for secret in ("p007", "200000", "/secure", "broken", "40, 8"):
        assert secret not in text


def test_an_exception_reaching_the_ledger_is_logged_and_answered_with_the_fixed_site_error(tmp_path):
    path = tmp_path / "egress.jsonl"
    reply = ledger_mod(path)(_request(), _context(), _raise(FileNotFoundError("/secure/site-A/bags/p1.npy")))
    assert (reply.error.code, reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)
    line = _lines(path)[0]
    assert line["status"] == "error" and line["error_type"] == "FileNotFoundError" and "secure" not in path.read_text()


def test_a_reply_whose_ledger_line_cannot_be_written_is_not_sent(tmp_path):
    unwritable = tmp_path / "a-folder"
    unwritable.mkdir()  # open(..., "a") on a folder fails, naming it
    reply = ledger_mod(unwritable)(_request(), _context(), _train_reply)
    assert (reply.error.code, reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)


def test_the_configured_mod_takes_its_file_from_the_node(tmp_path):
    site_file = tmp_path / "site" / "egress.jsonl"
    deployed = Context(run_id=1, node_id=7, node_config={"ledger": str(site_file)}, state=RecordDict(), run_config={})
    simulated = Context(run_id=1, node_id=9, node_config={"partition-id": 0}, state=RecordDict(),
                        run_config={"ledger-dir": str(tmp_path / "sim")})
    # a deployed node never writes where the coordinator's run config says
    hostile = Context(run_id=1, node_id=8, node_config={}, state=RecordDict(),
                      run_config={"ledger-dir": str(tmp_path / "chosen-by-coordinator")})

    configured_ledger_mod(_request(), deployed, _train_reply)
    configured_ledger_mod(_request(), simulated, _train_reply)
    configured_ledger_mod(_request(), hostile, _train_reply)
    assert not (tmp_path / "chosen-by-coordinator").exists()
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


def _write_hostile_history(path):
    """Five runs in ten hours, six max-bins refusals, an error and a block (what a curious coordinator leaves)."""
    lines = []
    for run in range(1, 6):
        t = f"2026-02-01T{2 * run:02d}:00:00+00:00"
        lines.append({"time": t, "run_id": run, "message_type": "query.schema", "status": "ok", "total_bytes": 10,
                      "records": []})
        lines.append({"time": t, "run_id": run, "message_type": "query.followup", "status": "refused",
                      "error_code": POLICY_REFUSED, "policy_key": "max-bins"})
    lines.append({"time": "2026-02-01T11:00:00+00:00", "run_id": 5, "message_type": "query.followup",
                  "status": "refused", "error_code": POLICY_REFUSED, "policy_key": "max-bins"})
    lines.append({"time": "2026-02-01T11:00:00+00:00", "run_id": 5, "message_type": "query.hazard",
                  "status": "refused", "error_code": POLICY_REFUSED, "policy_key": "one-grid-per-kind"})
    lines.append({"time": "2026-02-01T11:30:00+00:00", "run_id": 5, "message_type": "train", "status": "error",
                  "error_code": SITE_ERROR, "error_type": "BudgetFileError"})
    lines.append({"time": "2026-02-01T11:40:00+00:00", "run_id": 5, "message_type": "train", "status": "blocked",
                  "error_code": SITE_ERROR, "blocked": "EgressViolation"})
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))


def _write_budget(path):
    runs = {str(r): {"epsilon": 4.0, "delta": 1e-5, "first": f"2026-02-01T{2 * r:02d}:00:00+00:00",
                     "last": f"2026-02-01T{2 * r:02d}:30:00+00:00", "what": "tier1+tier2 DP-SGD"} for r in (1, 2, 3)}
    path.write_text(json.dumps({"total-epsilon": 32.0, "runs": runs}))


def test_the_summary_shows_runs_statuses_refusals_by_key_errors_and_the_epsilon_left(tmp_path, capsys):
    ledger, budget = tmp_path / "egress.jsonl", tmp_path / "privacy-budget.json"
    _write_hostile_history(ledger)
    _write_budget(budget)

    assert main(["summary", str(ledger), "--budget", str(budget)]) == 0

    out = capsys.readouterr().out
    assert "runs seen: 5 (ids 1, 2, 3, 4, 5)" in out
    assert "run 5            first 2026-02-01T10:00:00+00:00  last 2026-02-01T11:40:00+00:00" in out
    assert "status: blocked=1, error=1, ok=5, refused=7" in out
    assert re.search(r"refused by policy key:\n  max-bins +6\n  one-grid-per-kind +1\n", out)
    assert re.search(r"BudgetFileError +1", out) and re.search(r"EgressViolation +1", out)
    assert "epsilon spent 12 over 3 run(s), cap 32, left 20" in out
    assert "run 2            epsilon 4" in out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3
    assert "5 runs began within 24 h" in warnings[0] and "worth asking the coordinator about" in warnings[0]
    assert "'max-bins' refused 6 requests" in warnings[1]  # one-grid-per-kind (1) is below the threshold
    assert "blocked 1 reply" in warnings[2]


def test_the_summary_shows_the_exact_test_evaluations_answered_and_warns_at_the_cap(tmp_path, capsys):
    from rmmfed.core.privacy.privacy_budget import PrivacyBudget

    ledger = tmp_path / "egress.jsonl"
    _write_history(ledger)
    budget = PrivacyBudget(tmp_path, 50.0)
    budget.reserve("1", 8.0, 1e-5, "tier1+tier2 DP-SGD")
    for run in ("1", "2"):
        budget.count_evaluation(run, 2)
    assert main(["summary", str(ledger), "--budget", str(budget.path)]) == 0
    out = capsys.readouterr().out
    assert "exact test evaluations answered: 2 of max-evaluations 2" in out
    assert re.search(r"run 2 +epsilon 0 .*\(test evaluation\)", out)
    assert any("max-evaluations" in line for line in out.splitlines() if line.startswith("WARNING"))


def test_a_quiet_ledger_gets_no_warnings(tmp_path):
    path = tmp_path / "egress.jsonl"
    _write_history(path)  # one run, four ok replies over four days
    s = summarize(read_ledger(path))
    assert s["warnings"] == [] and s["refused_by_key"] == {} and list(s["runs"]) == ["1"]
    assert "WARNING" not in format_summary(s)


def test_rmm_client_ledger_summary_prints_the_same_summary(tmp_path, capsys):
    ledger, budget = tmp_path / "egress.jsonl", tmp_path / "privacy-budget.json"
    _write_hostile_history(ledger)
    _write_budget(budget)

    assert cli.main(["ledger", "--summary", str(ledger), "--budget", str(budget)]) == 0
    out = capsys.readouterr().out
    assert "refused by policy key:" in out and "left 20" in out

    assert cli.main(["ledger", "--summary", str(ledger), "--budget", str(tmp_path / "none.json")]) == 2
    assert "Fix" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert cli.main(["ledger", "--summary", str(ledger), "--budget", str(tmp_path / "broken.json")]) == 2
    assert "cannot be read" in capsys.readouterr().err
