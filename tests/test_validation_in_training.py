"""Each round's validation rides in the next training round's replies (``validate-sent``): one message per round,
the same numbers as a validation message of its own, and only the phase's last round validated by itself."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from rmmfed.client.client_app import make_client_app
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums
from rmmfed.core.model.weights import get_weights
from rmmfed.core.config import RunConfig
from rmmfed.core.messages import metric_names as M
from rmmfed.core.messages import protocol as P
from rmmfed.core.phases.tier1_validation import SENT_METRICS
from rmmfed.flower.records import records_of, to_content
from rmmfed.server.federation import run_federation

from conftest import DIMS, WITH_VALIDATION, write_site
from test_phases_in_process import TINY, _grid, task_identity  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("single_thread", "task_identity")


def test_only_the_last_round_is_validated_by_a_message_of_its_own(tmp_path):
    grid = _grid(tmp_path, WITH_VALIDATION)  # per-round validation is opt-in
    cfg = RunConfig().with_overrides({**TINY, "rounds": 3, "tier2.rounds": 2})
    res = run_federation(grid, cfg, n_sites=2, expected_dims=dict(DIMS))
    assert grid.sent.count(P.TIER1_ROUND.message_type) == 3 * 2
    assert grid.sent.count(P.TIER1_VALIDATION.message_type) == 1 * 2  # the last round only
    assert grid.sent.count(P.TIER2_VALIDATION.message_type) == 1 * 2
    # ... and yet every round was scored, by both sites
    assert [h["round"] for h in res.history] == [1, 2, 3]
    assert all(h.get("val-sites") == 2 and np.isfinite(h["val-c-index"]) for h in res.history), [
        {k: v for k, v in h.items() if k.startswith("val") or k == "round"} for h in res.history]
    assert all(h["val-sites"] == 2 and "val-sums" in h for h in res.tier2_history), res.tier2_history
    # no averaged validation sums ("val-pll" is also the history's own per-event score)
    assert [k for h in res.history for k in SENT_METRICS if k in h and k != M.VAL_PLL] == []


def _site(tmp_path, name: str) -> tuple[object, Context]:
    path = write_site(tmp_path / name, name="site-A", n=120, seed=1, absent_rate=0.3)
    policy = tmp_path / f"{name}-policy.toml"
    policy.write_text(WITH_VALIDATION)  # per-round validation is opt-in
    context = Context(run_id=1, node_id=1, node_config={"data-dir": str(path), "device": "cpu"},
                      state=RecordDict(), run_config={})
    return make_client_app(simulated_seeded_noise=True, policy=policy), context


def _send(site, phase: P.Phase, request) -> dict:
    app, context = site
    reply = app(Message(to_content(phase.encode_request(request)), dst_node_id=1, message_type=phase.message_type),
                context)
    assert not reply.has_error(), reply.error.reason
    return records_of(reply.content)


def _set_up(site, cfg: RunConfig) -> None:
    """Handshake, statistics and setup, as the coordinator sends them to one site."""
    schema = P.SchemaReply.from_records(_send(site, P.SCHEMA, None))
    dims = {k: v for k, v in schema.dims.items() if v is not None}
    sums = P.SumsReply.from_records(_send(site, P.STATISTICS, P.StatsRequest(dims)))
    stats = FeatureStats.from_sums(add_sums([sums.sums]), dims, cfg.model.anat_partitions, cfg.model.reduce_dim)
    _send(site, P.SETUP, P.SetupRequest(cfg.to_flat(), dims, stats.to_arrays()))


def test_a_training_round_scores_the_weights_it_received_as_a_validation_message_would(tmp_path):
    cfg = RunConfig().with_overrides({**TINY, "dp.enabled": True, "dp.target-epsilon": 8.0, "dp.time-cuts": "5,10,20"})
    a, b = _site(tmp_path, "a"), _site(tmp_path, "b")  # the same site's data twice: two independent runs
    _set_up(a, cfg), _set_up(b, cfg)
    session = next(iter(a[0].rmm_sessions._sessions.values()))
    weights = get_weights(session.model())  # the run's initial Tier 1
    plain = _send(a, P.TIER1_ROUND, P.RoundRequest(weights, 1, validate_sent=True))[P.METRICS]
    assert not set(plain) & set(SENT_METRICS)  # round 1 scores nothing: no round 0 to validate, whatever is asked
    in_training = _send(a, P.TIER1_ROUND, P.RoundRequest(weights, 2, validate_sent=True))[P.METRICS]
    alone = _send(b, P.TIER1_VALIDATION, P.RoundRequest(weights, 1))[P.METRICS]
    assert {k: in_training[k] for k in SENT_METRICS} == {k: alone[k] for k in SENT_METRICS}
    # the round it scored is pinned: round 1's validation with other weights is refused afterwards
    app, context = a
    other = {k: v * 1.5 for k, v in weights.items()}
    again = app(Message(to_content(P.TIER1_VALIDATION.encode_request(P.RoundRequest(other, 1))), dst_node_id=1,
                        message_type=P.TIER1_VALIDATION.message_type), context)
    assert again.has_error() and "one-grid-per-kind" in again.error.reason
