"""A warning that comes back every round is said once at once and once with its count (server/repeated_warnings.py)."""

from __future__ import annotations

import logging

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.core.messages import metric_names as M
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


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_refusal_repeated_over_the_rounds_is_said_once_at_once_and_once_with_its_count(caplog):
    strategy = make_strategy(RunConfig(), 3, {1, 2, 3}, on_round=lambda r, h: None)
    with caplog.at_level(logging.INFO, logger="flwr"):
        for rnd in range(1, 31):  # site 3 refuses in 20 of the 30 rounds, on and off
            strategy.aggregate_evaluate(rnd, [_reply(1, False), _reply(2, False), _reply(3, rnd % 3 != 0)])
        assert _said(caplog) == ["tier1 validation round 1: 1 site refused by its site policy (min-patients); the "
                                 "score uses the other 2 site(s) (if it comes back, a count follows at the end of the "
                                 "phase)"]
        strategy.say_repeated()
    assert _said(caplog)[1:] == ["tier1 validation: 1 site refused by its site policy in 20 of 30 rounds "
                                 "(min-patients)"]


def test_different_warnings_are_counted_apart_only_those_that_came_back_are_counted_and_the_count_starts_afresh(caplog):
    from rmmfed.server.repeated_warnings import RepeatedWarnings

    w = RepeatedWarnings("tier2 validation")
    with caplog.at_level(logging.INFO, logger="flwr"):
        w.round(1)
        w.warn(2, "1 site failed to answer")
        w.warn(3, "1 site failed to answer")
        w.warn(3, "2 sites refused by their site policy", "max-bins")
        w.summary()
        w.summary()  # nothing left to say
    assert _said(caplog) == [
        "tier2 validation round 2: 1 site failed to answer (if it comes back, a count follows at the end of the phase)",
        "tier2 validation round 3: 2 sites refused by their site policy (max-bins) (if it comes back, a count "
        "follows at the end of the phase)",
        "tier2 validation: 1 site failed to answer in 2 of 3 rounds"]  # the refusal came once: said in full


def _train_reply(node: int, validation: bool) -> Message:
    """A Tier 1 training reply (0.9.0) with, or without (a site below its floor), the previous round's validation."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    ask = Message(RecordDict(), dst_node_id=node, message_type="train")
    metrics = {M.NUM_EXAMPLES: 20.0, **({M.N_VAL: 20.0, M.VAL_PLL: -30.0, M.VAL_EVENTS: 10.0,
                                        **{k: 10.0 for k in M.PAIRS.counts}} if validation else {})}
    arrays = ArrayRecord({"w": Array(np.full(3, float(node)))})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=ask)


def test_a_training_round_whose_sites_differ_in_sending_validation_still_aggregates(caplog):
    """One site below its validation floor sends its update without validation metrics: the round is
    aggregated (Flower refuses to average metric records whose keys differ) and scored on the others."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    strategy = make_strategy(RunConfig(), 3, {1, 2, 3}, on_round=lambda r, h: None)
    strategy.last_round = 5
    strategy.history = [{"round": 1}]
    strategy._sent = ArrayRecord({"w": Array(np.zeros(3))})  # the weights round 2 was sent (round 1's aggregate)
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, _ = strategy.aggregate_train(2, [_train_reply(1, True), _train_reply(2, True), _train_reply(3, False)])
    assert arrays is not None
    assert strategy.history[0]["val-sites"] == 2 and strategy.history[0]["val-failed"] == 1
    assert any("sent no validation" in m for m in _said(caplog))
