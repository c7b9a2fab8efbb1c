"""The console says once that a site refuses validation, not every round (server/strategies.py)."""

from __future__ import annotations

import logging

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.core import metric_names as M
from rmmfed.core.config import RunConfig
from rmmfed.flower.refusal import refusal_error
from rmmfed.server.strategies import make_strategy


@pytest.fixture(autouse=True)
def task_identity():  # Flower's Message needs a run to belong to
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _reply(node: int, refused: bool) -> Message:
    ask = Message(RecordDict(), dst_node_id=node, message_type="evaluate.tier1_validation")
    if refused:
        return Message(refusal_error("min-patients"), reply_to=ask)
    metrics = {M.NUM_EXAMPLES: 20.0, M.N_VAL: 20.0, M.VAL_PLL: -30.0, M.VAL_EVENTS: 10.0,
               **{k: 10.0 for k in M.PAIRS.counts}}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=ask)


def test_a_site_refusing_every_validation_round_is_warned_about_once_and_again_only_on_a_change(caplog):
    strategy = make_strategy(RunConfig(), 3, {1, 2, 3}, on_round=lambda r, h: None)
    with caplog.at_level(logging.INFO, logger="flwr"):
        for rnd in range(1, 6):
            strategy.aggregate_evaluate(rnd, [_reply(1, False), _reply(2, False), _reply(3, rnd < 4)])
    said = list(dict.fromkeys(r.getMessage() for r in caplog.records if "validation round" in r.getMessage()))
    assert said == ["validation round 1: 1 refused by their site policy of 3 site(s); the score uses the others "
                    "(said again only when this changes)", "validation round 4: every site answered again"], said
