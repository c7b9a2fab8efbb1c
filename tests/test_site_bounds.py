"""The site, not the coordinator, bounds what a run may ask: its DP knobs, its lifetime privacy budget
across run ids, its training knobs and the weights it sends. Through the real ClientApp, under the
default site policy unless a test says otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client.client_app import make_client_app
from rmmfed.core.messages import protocol as P
from rmmfed.core.privacy.privacy_budget import BUDGET_FILE, PrivacyBudget, read_budget
from rmmfed.core.privacy.site_policy import PolicyViolation
from rmmfed.flower.refusal import refused_key

from conftest import DIMS
from test_hostile_coordinator import Site

pytestmark = pytest.mark.usefixtures("single_thread")
DP = {"dp.time-cuts": "5,10,20"}  # what the server's follow-up quintiles would set


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _setup(s: Site, **overrides) -> object:
    cfg = s.cfg.with_overrides({**DP, **overrides})
    return s.send(P.SETUP, P.SetupRequest(cfg.to_flat(), dict(DIMS), {}))


def _key(reply) -> str | None:
    assert reply.has_error(), "the request should have been refused"
    return refused_key(reply.error)


def _new_run(s: Site, run_id: int) -> None:
    """The same hospital (node config, folder, state) in another run: a fresh Flower context and app."""
    s.app = make_client_app()
    s.context = Context(run_id=run_id, node_id=7, node_config=dict(s.context.node_config), state=RecordDict(),
                        run_config={})


@pytest.mark.parametrize("override, key", [
    ({"dp.enabled": False}, "dp.required"),
    ({"dp.target-epsilon": 1e15}, "dp.max-epsilon"),
    ({"dp.target-epsilon": 0.001}, "dp.max-epsilon"),
    ({"dp.noise-multiplier": 1e-9}, "dp.max-epsilon"),
    ({"dp.max-grad-norm": 1e6}, "dp.max-grad-norm"),
    ({"dp.seeded-noise": True}, "dp.allow-seeded-noise"),
    ({"lr": 1e4}, "training.max-lr"),
    ({"tier2.lr": 1.0}, "training.max-lr"),
    ({"dp.lr": 1e4}, "training.max-lr"),
    ({"min-local-steps": 100_000}, "training.max-local-steps"),
    ({"tier2.local-steps": 100_000}, "training.max-local-steps"),
    ({"local-epochs": 50}, "training.max-local-epochs"),
    ({"batch-size": 2}, "min-patients"),
    ({"dp.batch-size": 3}, "min-patients"),
    ({"model.hidden-dim": 4096}, "training.max-width"),
    ({"model.embed-dim": 100_000}, "training.max-width"),
])
def test_a_run_config_outside_the_sites_bounds_is_refused_at_setup_naming_the_key(tmp_path, override, key):
    s = Site(tmp_path)
    assert _key(_setup(s, **override)) == key
    assert s.last_ledger_line()["policy_key"] == key
    assert not (tmp_path / BUDGET_FILE).exists()  # refused before anything was reserved


def test_a_delta_above_one_over_ten_n_is_refused(tmp_path):
    from rmmfed.core.data.site_data import load_site

    s = Site(tmp_path)
    n_train = len(load_site(s.path).indices("train"))
    assert _key(_setup(s, **{"dp.target-delta": 0.99 / n_train})) == "dp.target-delta"
    assert not _setup(s, **{"dp.target-delta": 1.0 / (10 * n_train)}).has_error()


def test_non_finite_knobs_never_reach_training(tmp_path):
    s = Site(tmp_path)
    flat = s.cfg.with_overrides(DP).to_flat()
    flat["dp.max-grad-norm"] = float("inf")
    reply = s.send(P.SETUP, P.SetupRequest(flat, dict(DIMS), {}))
    assert reply.has_error()
    assert not (tmp_path / BUDGET_FILE).exists()


def test_a_new_run_id_does_not_reset_the_sites_privacy_budget(tmp_path):
    s = Site(tmp_path, policy="[dp]\ntotal-epsilon = 20.0\n")
    for run_id in (1, 2):
        _new_run(s, run_id)
        assert not _setup(s).has_error()
    assert read_budget(tmp_path / BUDGET_FILE).epsilon_spent == pytest.approx(16.0)
    _new_run(s, 3)
    assert _key(_setup(s)) == "dp.total-epsilon"
    _new_run(s, 3)  # a smaller run still fits what is left
    assert not _setup(s, **{"dp.target-epsilon": 4.0}).has_error()
    assert read_budget(tmp_path / BUDGET_FILE).epsilon_spent == pytest.approx(20.0)


def test_the_same_run_asking_setup_again_is_not_charged_twice(tmp_path):
    s = Site(tmp_path)
    for _ in range(3):
        assert not _setup(s).has_error()
    budget = json.loads((tmp_path / BUDGET_FILE).read_text())
    assert list(budget["runs"]) == ["1"] and budget["runs"]["1"]["epsilon"] == 8.0


def test_the_budget_refuses_past_its_total_and_keeps_the_file_whole(tmp_path):
    b = PrivacyBudget(tmp_path, 10.0)
    assert b.reserve("a", 6.0, 1e-5, "test") == pytest.approx(4.0)
    with pytest.raises(PolicyViolation) as err:
        b.reserve("b", 6.0, 1e-5, "test")
    assert err.value.key == "dp.total-epsilon"
    assert b.state().epsilon_spent == pytest.approx(6.0) and b.left() == pytest.approx(4.0)
    assert b.reserve("a", 8.0, 1e-5, "test") == pytest.approx(2.0)  # the same run: the larger plan, not the sum


def _joined(tmp_path) -> Site:
    s = Site(tmp_path)
    s.cfg = s.cfg.with_overrides(DP)
    s.join()
    return s


def test_weights_with_extreme_or_non_finite_values_are_refused(tmp_path):
    s = _joined(tmp_path)
    for bad in (1e4, np.inf, np.nan):
        w = s.weights()
        name = next(iter(w))
        w[name] = w[name].copy()
        w[name].flat[0] = bad
        reply = s.send(P.TIER1_ROUND, P.RoundRequest(w, 1))
        assert _key(reply) == "training.max-weight"


def test_a_training_round_is_answered_once_and_round_zero_never(tmp_path):
    s = _joined(tmp_path)
    assert _key(s.send(P.TIER1_ROUND, P.RoundRequest(s.weights(), 0))) == "max-rounds"
    first = s.send(P.TIER1_ROUND, P.RoundRequest(s.weights(), 1))
    assert not first.has_error(), first.error.reason
    assert _key(s.send(P.TIER1_ROUND, P.RoundRequest(s.weights(), 1))) == "one-answer-per-round"


def test_a_dp_round_returns_no_training_loss(tmp_path):
    s = _joined(tmp_path)
    reply = s.send(P.TIER1_ROUND, P.RoundRequest(s.weights(), 1))
    assert not reply.has_error(), reply.error.reason
    metrics = set(reply.content.metric_records[P.METRICS])
    assert not any(k.startswith("train-") for k in metrics)
    assert {"dp-epsilon", "num-examples"} <= metrics


def _evaluate(s: Site, theta: float = 1e-3):
    """The run's final evaluation (after the final Tier 1), as the server sends it."""
    s.freeze()
    return s.send(P.EVALUATION, P.EvaluateRequest(None, P.FittedTwoTier(theta)))


def test_a_new_run_id_does_not_reset_the_sites_count_of_exact_test_evaluations(tmp_path):
    """The test evaluation is exact (floored, pinned once per run, not noised): a lying coordinator that starts
    run after run to bisect it gets at most max-evaluations answers in the site's life, whatever run ids it
    makes up; the refusal comes before anything is computed and names the key, in the reply and the ledger."""
    s = Site(tmp_path, policy="max-evaluations = 2\n")
    s.cfg = s.cfg.with_overrides(DP)
    for run_id in (1, 2):
        _new_run(s, run_id)
        s.join()
        reply = _evaluate(s, theta=1e-3 * run_id)
        assert not reply.has_error(), reply.error.reason
    assert read_budget(tmp_path / BUDGET_FILE).evaluations == 2
    _new_run(s, 3)
    s.join()  # the run itself may go on: setup and training are not the evaluation
    assert _key(_evaluate(s)) == "max-evaluations"
    assert s.last_ledger_line()["policy_key"] == "max-evaluations"
    budget = read_budget(tmp_path / BUDGET_FILE)
    assert budget.evaluations == 2 and not budget.runs["3"].get("evaluated")
    assert budget.runs["3"]["epsilon"] == pytest.approx(8.0)  # its setup's reservation stands, as for any run


def test_the_same_run_asking_its_evaluation_again_counts_once(tmp_path):
    """A lost reply may be asked again (the pin answers the same request): it is one evaluation, not two."""
    s = _joined(tmp_path)
    for _ in range(2):
        reply = _evaluate(s)
        assert not reply.has_error(), reply.error.reason
    assert read_budget(tmp_path / BUDGET_FILE).evaluations == 1
    assert PrivacyBudget(tmp_path, 50.0).count_evaluation("1", 5) == 4  # run 1 again: nothing more counted


def test_a_coordinator_that_numbers_a_new_run_like_an_old_one_is_charged_and_counted_afresh(tmp_path):
    """The coordinator's SuperLink numbers runs. Starting again with run id 1 gives the site fresh per-run state
    (no pins), so an old run id must not reopen that run's reservation or its one evaluation: the site's own
    token for each run it served gives the new run an entry of its own."""
    s = Site(tmp_path, policy="max-evaluations = 2\n[dp]\ntotal-epsilon = 20.0\n")
    s.cfg = s.cfg.with_overrides(DP)
    for theta in (1e-3, 2e-3):
        _new_run(s, 1)  # the same run id each time, fresh state
        s.join()
        reply = _evaluate(s, theta=theta)
        assert not reply.has_error(), reply.error.reason
    budget = read_budget(tmp_path / BUDGET_FILE)
    assert sorted(budget.runs) == ["1", "1#2"] and budget.evaluations == 2
    assert budget.epsilon_spent == pytest.approx(16.0)  # both runs' DP-SGD plans, not one
    _new_run(s, 1)
    assert _key(_setup(s)) == "dp.total-epsilon"  # a third 8 would pass the 20
    s.cfg = s.cfg.with_overrides({"dp.target-epsilon": 4.0})  # a smaller run still fits what is left ...
    s.join()
    assert _key(_evaluate(s)) == "max-evaluations"  # ... but gets no third evaluation
