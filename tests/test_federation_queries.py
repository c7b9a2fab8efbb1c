"""The ServerApp's query helper asks a site again after an error reply (a fake Grid: no network)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.core.messages import protocol as P
from rmmfed.flower.refusal import refusal_error
from rmmfed.server.queries import ask as _ask


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _reply(node: int, what: str) -> SimpleNamespace:
    """What _ask reads of a reply: the sender, whether it is an error, the error's code and reason."""
    error = {"error": SimpleNamespace(code=ErrorCode.CLIENT_APP_CRASHED, reason="lost task"),
             "unavailable": SimpleNamespace(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"),
             "refused": refusal_error("min-patients")}.get(what)
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), has_error=lambda: error is not None,
                           error=error)


class ScriptedGrid:
    """Answers each node per call from a script: "ok", "error", "unavailable" or "silent" (no reply)."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script
        self.calls: list[list[int]] = []

    def send_and_receive(self, messages, *, timeout=None):
        self.calls.append([m.metadata.dst_node_id for m in messages])
        if any(self.script[m.metadata.dst_node_id][0] == "silent" for m in messages):
            time.sleep(timeout)  # Flower waits for the missing reply until the timeout
        for m in messages:
            node = m.metadata.dst_node_id
            what = self.script[node].pop(0)
            if what != "silent":
                yield _reply(node, what)


def test_a_site_that_answered_with_an_error_is_asked_again():
    grid = ScriptedGrid({1: ["ok"], 2: ["error", "ok"]})
    replies = _ask(grid, [1, 2], P.SCHEMA, timeout=30.0)
    assert sorted(replies) == [1, 2]
    assert grid.calls == [[1, 2], [2]]  # only the failed node is asked again


def test_a_site_failing_every_attempt_is_left_out_after_the_retries():
    grid = ScriptedGrid({1: ["ok"], 2: ["error", "error", "error"]})
    replies = _ask(grid, [1, 2], P.SCHEMA, timeout=30.0, retries=2)
    assert sorted(replies) == [1]
    assert grid.calls == [[1, 2], [2], [2]]


def test_a_silent_site_uses_up_the_timeout_and_is_not_asked_again():
    grid = ScriptedGrid({1: ["ok"], 2: ["silent", "ok"]})
    replies = _ask(grid, [1, 2], P.SCHEMA, timeout=0.2)
    assert sorted(replies) == [1]
    assert grid.calls == [[1, 2]]  # the timeout is spent: a dead site costs one timeout, not two


def test_a_reconnecting_site_is_asked_until_it_is_back_without_using_up_the_retries():
    # after a SuperLink restart a SuperNode reconnects with a back-off: the SuperLink answers for it with
    # "Node Unavailable" until then (seen in CI: a resumed run's handshake lost a site this way)
    grid = ScriptedGrid({1: ["ok"], 2: ["unavailable"] * 4 + ["error", "ok"]})
    replies = _ask(grid, [1, 2], P.SCHEMA, timeout=30.0, retries=1, reconnect_pause_s=0.01)
    assert sorted(replies) == [1, 2]
    assert grid.calls == [[1, 2], [2], [2], [2], [2], [2]]


def test_a_site_that_never_reconnects_is_left_out_when_the_timeout_runs_out():
    grid = ScriptedGrid({1: ["ok"], 2: ["unavailable"] * 1000})
    t0 = time.monotonic()
    replies = _ask(grid, [1, 2], P.SCHEMA, timeout=0.3, reconnect_pause_s=0.05)
    assert sorted(replies) == [1]
    assert time.monotonic() - t0 < 2.0
    assert 2 <= len(grid.calls) <= 8


def test_a_refusing_site_is_not_asked_again_and_is_named_once_with_its_key_beside_those_that_did_not_answer(caplog):
    """The coordinator's console says who did not answer a phase in one line, with the policy key of each
    refusal, instead of a line of node ids and a second line of site names."""
    from rmmfed.core.config import RunConfig
    from rmmfed.server.federation import Run

    grid = ScriptedGrid({1: ["ok"], 2: ["refused"], 3: ["refused"], 4: ["error", "error"]})
    run = Run(grid=grid, cfg=RunConfig(), progress=None, ckpt=None, state=None, accepted=[1, 2, 3, 4],
              site_of={1: "A", 2: "B", 3: "C", 4: "D"})
    with caplog.at_level(logging.INFO, logger="flwr"):
        replies = run.ask(P.SCHEMA)
    assert sorted(replies) == [1] and replies.refused == {2: "min-patients", 3: "min-patients"}
    assert grid.calls == [[1, 2, 3, 4], [4]]  # a refusal would be refused again
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said[-1] == "handshake: no answer from B, C, D (2 sites refused by their site policy: min-patients)"
    assert not any("node(s)" in line for line in said if "refused" in line)
    assert run.participation["handshake"] == ["A"]
