"""What a site sends when it does not answer, through its real ClientApp (mods, egress guard, ledger):
a refusal names its policy key and nothing else, any other failure is one fixed site error, and the
details (counts, paths, tracebacks) stay in the site's own log."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client.client_app import make_client_app
from rmmfed.client.ledger import format_summary, read_ledger, summarize
from rmmfed.client.policy_mod import SITE_ERROR
from rmmfed.client.site_errors import SITE_ERROR_REASON, contain_errors, known_policy_keys
from rmmfed.core.messages import protocol as P
from rmmfed.core.errors import SiteDataError
from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.privacy.site_policy import PolicyViolation
from rmmfed.flower.records import to_content
from rmmfed.flower.refusal import POLICY_REFUSED, refusal_error, refusal_reason, refused_key

from conftest import write_site

ROOT = Path(__file__).resolve().parents[1]
SECRET_PATH = "/secure/site-A/bags/p1.npy"
COUNTS_TEXT = "the test metrics would cover 3 patient(s), fewer than this site's floor of 10"


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


class Site:
    """One hospital: a site folder, its ClientApp (with ``extra_mods`` innermost), its context and ledger."""

    def __init__(self, root: Path, *, extra_mods: list | None = None, data_dir: Path | None = None) -> None:
        self.path = data_dir if data_dir is not None else write_site(root, n=60, seed=5)
        self.ledger = root / "ledger.jsonl"
        node = {"data-dir": str(self.path), "ledger": str(self.ledger)}
        self.app = make_client_app(extra_mods=extra_mods)
        self.context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})

    def ask(self, mtype: str = P.SCHEMA.message_type, **records) -> Message:
        return self.app(Message(RecordDict(records), dst_node_id=7, message_type=mtype), self.context)

    def send(self, phase: P.Phase, request) -> Message:
        content = to_content(request.to_records())
        return self.app(Message(content, dst_node_id=7, message_type=phase.message_type), self.context)

    def ledger_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]


def _raising(err: BaseException):
    def mod(msg, context, call_next):
        raise err
    return mod


def _replying(make):
    def mod(msg, context, call_next):
        return make(msg)
    return mod


def _site_log(caplog) -> str:
    return "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records if r.name == "rmmfed.site")


# ---- refusals: the key only --------------------------------------------------------------------
@pytest.mark.parametrize("key", ["min-patients", "training.max-lr", "dp.total-epsilon"])
def test_a_refusal_whose_text_holds_counts_sends_only_the_fixed_reason_of_its_key(tmp_path, caplog, key):
    caplog.set_level(logging.INFO, logger="rmmfed.site")
    site = Site(tmp_path, extra_mods=[_raising(PolicyViolation(key, COUNTS_TEXT, "nothing to do"))])

    reply = site.ask()

    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert reply.error.reason == f"site policy [{key}] refuses this request. Fix: see docs/privacy.md, key '{key}'"
    assert re.findall(r"\d", reply.error.reason) == re.findall(r"\d", key) == []
    assert refused_key(reply.error) == key  # what the server reads to stop asking
    assert "3 patient(s)" in _site_log(caplog)  # the full text stays on the site
    line = site.ledger_lines()[-1]
    assert line["status"] == "refused" and line["policy_key"] == key and line["run_id"] == 1
    assert "3 patient(s)" not in site.ledger.read_text() and "floor" not in site.ledger.read_text()


def test_a_real_refusal_quoting_the_requested_bins_sends_the_fixed_reason(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rmmfed.site")
    site = Site(tmp_path)

    reply = site.send(P.FOLLOWUP, P.GridRequest(HistogramGrid(1.0, 100.0, 200_000)))

    assert reply.error.code == POLICY_REFUSED and reply.error.reason == refusal_reason("max-bins")
    assert "200000" in _site_log(caplog) and "200000" not in reply.error.reason
    assert site.ledger_lines()[-1]["policy_key"] == "max-bins"


# ---- any other failure: one fixed site error ------------------------------------------------------
def test_an_exception_naming_a_path_sends_the_fixed_site_error_and_logs_the_traceback(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rmmfed.site")
    site = Site(tmp_path, extra_mods=[_raising(FileNotFoundError(SECRET_PATH))])

    reply = site.ask()  # no exception reaches Flower, which would send its text

    assert reply.error.code == SITE_ERROR == 500
    assert reply.error.reason == ("site error: the site could not answer this request; its administrator finds "
                                  "the details in the site log")
    assert "secure" not in reply.error.reason and "FileNotFoundError" not in reply.error.reason
    log = _site_log(caplog)
    assert SECRET_PATH in log and "Traceback" in log
    line = site.ledger_lines()[-1]
    assert line["status"] == "error" and line["error_code"] == SITE_ERROR and line["error_type"] == "FileNotFoundError"
    assert line["run_id"] == 1 and "secure" not in site.ledger.read_text()


def test_a_data_contract_error_naming_the_site_folder_is_not_sent(tmp_path):
    missing = tmp_path / "secret-hospital-folder"
    site = Site(tmp_path, data_dir=missing)

    reply = site.ask()

    assert reply.error.code == SITE_ERROR and reply.error.reason == SITE_ERROR_REASON
    line = site.ledger_lines()[-1]
    assert line["status"] == "error" and line["error_type"] == SiteDataError.__name__
    assert "secret-hospital-folder" not in site.ledger.read_text()


def test_the_outermost_containment_mod_turns_any_exception_into_the_fixed_site_error(caplog):
    caplog.set_level(logging.INFO, logger="rmmfed.site")
    msg = Message(RecordDict(), dst_node_id=7, message_type=P.SCHEMA.message_type)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})

    reply = contain_errors(msg, context, lambda m, c: (_ for _ in ()).throw(OSError(SECRET_PATH)))

    assert reply.error.code == SITE_ERROR and reply.error.reason == SITE_ERROR_REASON
    assert SECRET_PATH in _site_log(caplog)


# ---- the egress guard checks error replies ---------------------------------------------------------
@pytest.mark.parametrize("error", [
    pytest.param(Error(code=2, reason=f"<class 'FileNotFoundError'>:<'{SECRET_PATH}'>"), id="flower-style-text"),
    pytest.param(Error(code=POLICY_REFUSED, reason=f"site policy [min-patients] refuses this request: {COUNTS_TEXT}. "
                       "Fix: wait"), id="verbose-refusal"),
    pytest.param(Error(code=POLICY_REFUSED, reason=refusal_reason("made-up-key")), id="unknown-key"),
    pytest.param(Error(code=SITE_ERROR, reason=SITE_ERROR_REASON + f" ({SECRET_PATH})"), id="site-error-with-more"),
])
def test_the_guard_replaces_an_error_reply_that_is_not_of_a_fixed_form(tmp_path, error):
    site = Site(tmp_path, extra_mods=[_replying(lambda m: Message(error, reply_to=m))])

    reply = site.ask()

    assert reply.error.code == SITE_ERROR and reply.error.reason == SITE_ERROR_REASON
    line = site.ledger_lines()[-1]
    assert line["status"] == "blocked" and line["blocked"] == "EgressViolation" and line["run_id"] == 1
    assert "secure" not in site.ledger.read_text() and "3 patient(s)" not in site.ledger.read_text()


def test_the_guard_lets_a_fixed_refusal_of_a_known_key_through_unchanged(tmp_path):
    fixed = Error(code=POLICY_REFUSED, reason=refusal_reason("one-grid-per-kind"))
    site = Site(tmp_path, extra_mods=[_replying(lambda m: Message(fixed, reply_to=m))])

    reply = site.ask()

    assert (reply.error.code, reply.error.reason) == (fixed.code, fixed.reason)
    assert site.ledger_lines()[-1]["policy_key"] == "one-grid-per-kind"


def test_a_reply_outside_the_allowlist_becomes_the_fixed_site_error_without_its_shapes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rmmfed.site")
    rows = ArrayRecord({"z": Array(np.zeros((37, 8)))})
    site = Site(tmp_path, extra_mods=[_replying(lambda m: Message(RecordDict({"embeddings": rows}), reply_to=m))])

    reply = site.ask()

    assert reply.error.code == SITE_ERROR and reply.error.reason == SITE_ERROR_REASON
    assert "embeddings" in _site_log(caplog)
    line = site.ledger_lines()[-1]
    assert line["status"] == "blocked" and line["blocked"] == "EgressViolation" and "records" not in line


def test_the_summary_counts_refusals_errors_and_blocks_by_kind(tmp_path):
    site = Site(tmp_path, extra_mods=[_raising(PolicyViolation("max-bins", "200000 bins", "fewer"))])
    site.ask()
    site.ask()
    s = summarize(read_ledger(site.ledger))
    assert s["status"] == {"refused": 2} and s["refused_by_key"] == {"max-bins": 2}
    assert list(s["runs"]) == ["1"] and s["runs"]["1"]["replies"] == 2
    assert "max-bins" in format_summary(s)


# ---- every key the code refuses under can be sent -------------------------------------------------
def test_every_policy_violation_key_in_the_code_is_a_key_a_refusal_can_name():
    """A new PolicyViolation key must be a SitePolicy field or in client/site_errors.py EXTRA_KEYS,
    or the guard would block its refusals as site errors."""
    pattern = re.compile(r'PolicyViolation\(\s*"([^"]+)"')
    used = {k for part in ("core", "client") for p in (ROOT / part).rglob("*.py")
            for k in pattern.findall(p.read_text(encoding="utf-8"))}
    assert used, "the scan found no PolicyViolation at all"
    assert sorted(used - known_policy_keys()) == []
    assert all(refused_key(refusal_error(k)) == k for k in used)


# ---- how the coordinator recognises a refusal (flower/refusal.py, shared by both sides) -----------
def test_a_refusal_is_recognised_by_its_code_and_exact_reason_only():
    assert refused_key(refusal_error("dp.max-epsilon")) == "dp.max-epsilon"
    assert refused_key(Error(code=POLICY_REFUSED, reason=refusal_reason("min-patients"))) == "min-patients"
    assert refused_key(Error(code=SITE_ERROR, reason=refusal_reason("min-patients"))) is None  # another code
    assert refused_key(Error(code=POLICY_REFUSED, reason="site policy [min-patients] refuses this request: "
                             "3 patient(s) below the floor")) is None  # not the fixed form
    assert refused_key(Error(code=POLICY_REFUSED, reason=refusal_reason("max-bins").replace(
        "key 'max-bins'", "key 'min-patients'"))) is None
    assert refused_key(Error(code=POLICY_REFUSED, reason="lost task")) is None
    assert refused_key(None) is None
    with pytest.raises(ValueError):
        refusal_error("min-patients-5")
