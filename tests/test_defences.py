"""Server-side defences: non-finite filter, update-norm bound, robust strategies, central DP."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedMedian
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.server.defences import (DefenceError, bound_update_norms, central_dp, defended, finite_update_filter,
                                    robust_strategy, update_norm)
from rmmfed.server.strategies import _restricted

GLOBAL = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
COMMON = dict(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _reply(node: int, arrays: dict[str, np.ndarray], n: int = 10) -> Message:
    request = Message(RecordDict({"arrays": _record(GLOBAL), "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=node, message_type="train")
    return Message(RecordDict({"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=request)


def _clean(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _replies():
    """Two honest sites, one NaN, one update scaled by 1e6."""
    a, b = _clean(1), _clean(2)
    nan = _clean(3)
    nan["w"][0, 0] = np.nan
    huge = {k: v * 1e6 for k, v in _clean(4).items()}
    return [_reply(1, a), _reply(2, b), _reply(3, nan), _reply(4, huge)], {k: (a[k] + b[k]) / 2 for k in a}


def _aggregate(strategy, replies):
    strategy.set_reference(_record(GLOBAL))
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}


def test_without_defences_one_nan_site_poisons_fedavg():
    replies, _ = _replies()
    arrays, _ = FedAvg(**COMMON).aggregate_train(1, replies)
    assert np.isnan(arrays["w"].numpy()).any()


def test_fedavg_with_filter_and_norm_bound_stays_close_to_the_clean_mean():
    replies, clean_mean = _replies()
    strategy = defended(FedAvg)(max_update_norm=5.0, norm_action="drop", **COMMON)

    out = _aggregate(strategy, replies)

    for k in out:
        assert np.isfinite(out[k]).all()
        np.testing.assert_allclose(out[k], clean_mean[k], atol=1e-6)
    assert strategy.last_defence == {"round": 1, "dropped-nonfinite": [3], "norm-dropped": [4]}


def test_norm_clipping_bounds_the_influence_of_one_site():
    replies, clean_mean = _replies()
    strategy = defended(FedAvg)(max_update_norm=1.0, **COMMON)  # default action: scale down

    out = _aggregate(strategy, replies)

    shift = np.sqrt(sum(np.sum((out[k] - clean_mean[k]) ** 2) for k in out))
    assert np.isfinite(shift) and shift <= 2 * (1 / 3) * 1.0 + 1e-3  # <= its weight x C, plus the clean spread
    assert strategy.last_defence["norm-clipped"] == [4]


def test_fedmedian_is_not_moved_much_by_a_huge_update():
    replies, clean_mean = _replies()

    out = _aggregate(robust_strategy("fedmedian", **COMMON), replies)

    for k in out:
        assert np.isfinite(out[k]).all()
        assert np.abs(out[k] - clean_mean[k]).max() < 0.5  # vs ~1e5 for the plain mean


@pytest.mark.parametrize("name, kwargs", [
    pytest.param("fedtrimmedavg", {"beta": 0.34}, id="trimmed-mean"),
    pytest.param("krum", {"num_malicious_nodes": 1}, id="krum"),
    pytest.param("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 2}, id="multikrum"),
])
def test_robust_strategies_give_finite_aggregates_near_the_honest_sites(name, kwargs):
    replies, clean_mean = _replies()
    out = _aggregate(robust_strategy(name, **kwargs, **COMMON), replies)
    for k in out:
        assert np.isfinite(out[k]).all() and np.abs(out[k] - clean_mean[k]).max() < 0.5


def test_central_dp_wraps_a_strategy_and_drops_nonfinite_updates_first():
    replies, _ = _replies()
    strategy = central_dp(FedAvg(**COMMON), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=4)

    out = _aggregate(strategy, replies)

    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert all(np.isfinite(v).all() for v in out.values())
    assert np.sqrt(sum(np.sum(v ** 2) for v in out.values())) <= 1.0 + 1e-5  # every update clipped to 1


def test_defences_compose_with_the_restricted_strategy_factory():
    replies, clean_mean = _replies()
    rounds = []
    strategy = _restricted(defended(FedMedian))(accepted={1, 2, 3, 4}, on_round=lambda r, info: rounds.append(info),
                                                max_update_norm=5.0, norm_action="drop", **COMMON)

    out = _aggregate(strategy, replies)

    assert len(rounds) == 1 and all(np.isfinite(v).all() for v in out.values())
    np.testing.assert_allclose(out["b"], np.median(np.stack([r["b"] for r in (_clean(1), _clean(2))]), axis=0),
                               atol=1e-6)


def test_central_dp_around_the_restricted_strategy_keeps_its_bookkeeping():
    replies, _ = _replies()
    rounds = []
    inner = _restricted(FedAvg)(accepted={1, 2, 3, 4}, on_round=lambda r, info: rounds.append(info), **COMMON)
    strategy = central_dp(inner, noise_multiplier=0.5, clipping_norm=1.0, num_sampled_clients=4)

    out = _aggregate(strategy, replies)

    assert all(np.isfinite(v).all() for v in out.values())
    assert strategy.strategy is inner and len(inner.history) == 1 and rounds[0]["sites"] == 3


def test_update_helpers_measure_from_the_global_weights():
    ref = _record(GLOBAL)
    upd = _record({"w": np.full((4, 3), 1.0, np.float32), "b": np.zeros(3, np.float32)})
    assert update_norm(upd, ref) == pytest.approx(np.sqrt(12))
    kept, hit = bound_update_norms([_reply(9, {"w": np.full((4, 3), 1.0, np.float32), "b": np.zeros(3, np.float32)})],
                                   ref, 1.0)
    assert hit == [9] and update_norm(kept[0].content["arrays"], ref) == pytest.approx(1.0, rel=1e-5)
    kept, dropped = finite_update_filter([_reply(5, {"w": np.full((4, 3), np.inf, np.float32), "b": GLOBAL["b"]})])
    assert kept == [] and dropped == [5]


@pytest.mark.parametrize("make, match", [
    pytest.param(lambda: robust_strategy("bulyan-typo"), "Fix: use one of", id="unknown-strategy"),
    pytest.param(lambda: defended(FedAvg)(norm_action="shrink"), "Fix", id="unknown-norm-action"),
    pytest.param(lambda: update_norm(_record({"x": np.zeros(2)}), _record(GLOBAL)), "Fix", id="different-arrays"),
])
def test_misconfigured_defences_say_the_fix(make, match):
    with pytest.raises(DefenceError, match=match):
        make()


def test_a_round_without_any_update_keeps_the_weights_it_sent_for_the_checkpoint():
    rounds = []
    strategy = _restricted(FedAvg)(accepted={1, 2}, on_round=lambda r, info: rounds.append(info), **COMMON)
    sent = _record(GLOBAL)
    strategy._sent = sent  # what configure_train records before the messages go out

    arrays, _ = strategy.aggregate_train(1, [])  # every site timed out

    assert arrays is None  # Flower keeps its own copy of the weights
    assert strategy.last_arrays is sent and rounds[0]["sites"] == 0
