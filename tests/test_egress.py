"""The egress guard blocks any reply that could carry patient-level data, and any error reply that is
not one of the two fixed forms (client/site_errors.py)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client.egress import EgressViolation, check_reply, egress_guard
from rmmfed.client.site_errors import SITE_ERROR, SITE_ERROR_REASON, note_of
from rmmfed.flower.refusal import POLICY_REFUSED, refusal_reason


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _msg(mtype: str, **records) -> Message:
    return Message(RecordDict(records), dst_node_id=7, message_type=mtype)


def _reply(req: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=req)


def _arrays(**named) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in named.items()})


def test_weights_with_the_sent_names_and_shapes_pass():
    req = _msg("train", arrays=_arrays(w=np.zeros((3, 2)), b=np.zeros(3)), config=ConfigRecord({"server-round": 1}))
    check_reply(req, _reply(req, arrays=_arrays(w=np.ones((3, 2)), b=np.ones(3)),
                            metrics=MetricRecord({"num-examples": 10, "train-loss": 0.5})))


@pytest.mark.parametrize("reply_records", [
    pytest.param({"arrays": {"w": np.zeros((3, 2)), "b": np.zeros(3), "risk": np.zeros(40)}}, id="extra-array-per-patient"),
    pytest.param({"arrays": {"w": np.zeros((40, 2)), "b": np.zeros(3)}}, id="reshaped-weights"),
    pytest.param({"embeddings": {"z": np.zeros((40, 8))}}, id="unknown-array-record"),
])
def test_arrays_outside_the_allowlist_are_blocked(reply_records):
    req = _msg("train", arrays=_arrays(w=np.zeros((3, 2)), b=np.zeros(3)))
    reply = _reply(req, **{k: _arrays(**v) for k, v in reply_records.items()})
    with pytest.raises(EgressViolation):
        check_reply(req, reply)


def test_metric_lists_are_blocked():
    req = _msg("evaluate", arrays=_arrays(w=np.zeros(2)))
    with pytest.raises(EgressViolation, match="list"):
        check_reply(req, _reply(req, metrics=MetricRecord({"risks": [0.1, 0.2, 0.3]})))


def _merged(counts, first, last) -> ArrayRecord:
    return _arrays(counts=np.asarray(counts, dtype=np.int64), first=np.asarray(first, dtype=np.int64),
                   last=np.asarray(last, dtype=np.int64))


def test_histogram_must_be_merged_bins_inside_the_server_grid():
    req = _msg("query.calibration", config=ConfigRecord({"hist-bins": 8}))
    check_reply(req, _reply(req, counts=_merged([12, 10], [0, 3], [2, 7])))
    with pytest.raises(EgressViolation, match="histogram"):  # the old per-bin layout
        check_reply(req, _reply(req, counts=_arrays(counts=np.zeros(8, dtype=np.int64))))
    with pytest.raises(EgressViolation, match="histogram"):  # more merged bins than the grid has
        check_reply(req, _reply(req, counts=_merged(np.ones(9), np.arange(9), np.arange(9))))
    with pytest.raises(EgressViolation, match="ordered"):  # overlapping ranges
        check_reply(req, _reply(req, counts=_merged([12, 10], [0, 2], [2, 7])))
    with pytest.raises(EgressViolation, match="ordered"):  # outside the grid
        check_reply(req, _reply(req, counts=_merged([12], [0], [8])))


def test_hazard_reply_must_be_merged_groups_on_the_server_grid():
    req = _msg("query.hazard", hazard=_arrays(grid=np.linspace(1, 6, 6)))
    ok = {"hazard.first": np.array([0, 3]), "hazard.events": np.array([10.0, 11.0]),
          "hazard.risk-sum": np.array([40.0, 20.0]), "hazard.risk-after": np.array([0.0])}
    check_reply(req, _reply(req, hazard=_arrays(**ok)))
    with pytest.raises(EgressViolation, match="hazard"):  # a per-patient array
        check_reply(req, _reply(req, hazard=_arrays(**ok, **{"hazard.risk-each": np.ones(40)})))
    with pytest.raises(EgressViolation, match="ordered"):  # groups must start at 0 and increase
        check_reply(req, _reply(req, hazard=_arrays(**{**ok, "hazard.first": np.array([1, 3])})))


def test_feature_sums_are_one_dimensional_aggregates():
    req = _msg("query.stats", config=ConfigRecord({"schema": "a:2", "min-stat-count": 5}))
    check_reply(req, _reply(req, sums=_arrays(**{"a.all.n": np.ones(1), "a.all.sum": np.ones(2)})))
    with pytest.raises(EgressViolation, match="feature-sum"):
        check_reply(req, _reply(req, sums=_arrays(**{"a.all.rows": np.ones((30, 2))})))


def test_outer_product_sums_must_be_square_beside_their_blocks_sum():
    req = _msg("query.stats", config=ConfigRecord({"schema": "a:3", "min-stat-count": 5}))
    ok = {"a.pca.n": np.ones(1), "a.pca.sum": np.ones(3), "a.pca.outer": np.ones((3, 3))}
    check_reply(req, _reply(req, sums=_arrays(**ok)))
    for bad in ({**ok, "a.pca.outer": np.ones((40, 3))}, {"a.pca.n": np.ones(1), "a.pca.outer": np.ones((3, 3))},
                {**ok, "a.all.outer": np.ones((3, 3))}):
        with pytest.raises(EgressViolation, match="feature-sum"):
            check_reply(req, _reply(req, sums=_arrays(**bad)))


def test_config_replies_are_only_allowed_for_the_schema_handshake():
    req = _msg("evaluate", arrays=_arrays(w=np.zeros(2)))
    with pytest.raises(EgressViolation, match="config"):
        check_reply(req, _reply(req, config=ConfigRecord({"patient_id": "P001"})))


def test_a_reply_may_carry_only_the_records_its_phase_defines():
    req = _msg("train", arrays=_arrays(w=np.zeros((3, 2))))
    with pytest.raises(EgressViolation, match="tier1 reply may carry only arrays, metrics, not 'counts'"):
        check_reply(req, _reply(req, counts=_merged([12], [0], [2])))
    cal = _msg("query.calibration", config=ConfigRecord({"hist-bins": 8}))
    with pytest.raises(EgressViolation, match="not 'arrays'"):  # weights back from a histogram query
        check_reply(cal, _reply(cal, arrays=_arrays(w=np.zeros(2)), counts=_merged([12], [0], [2])))


def test_a_message_type_outside_the_protocol_gets_no_reply_out():
    req = _msg("query.histogram", config=ConfigRecord({"hist-bins": 8}))  # the type before the protocol split
    with pytest.raises(EgressViolation, match="not a phase of the rmm protocol"):
        check_reply(req, _reply(req, counts=_merged([12], [0], [2])))


def _guard(req: Message, inner) -> Message:
    return egress_guard(req, Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}), inner)


@pytest.mark.parametrize("error", [
    pytest.param(Error(code=POLICY_REFUSED, reason=refusal_reason("max-bins")), id="fixed-refusal"),
    pytest.param(Error(code=POLICY_REFUSED, reason=refusal_reason("dp.total-epsilon")), id="fixed-refusal-dotted-key"),
    pytest.param(Error(code=SITE_ERROR, reason=SITE_ERROR_REASON), id="fixed-site-error"),
])
def test_error_replies_of_the_fixed_forms_pass_unchanged(error):
    req = _msg("train", arrays=_arrays(w=np.zeros(2)))
    reply = _guard(req, lambda m, c: Message(error, reply_to=m))
    assert (reply.error.code, reply.error.reason) == (error.code, error.reason)


@pytest.mark.parametrize("error", [
    pytest.param(Error(code=POLICY_REFUSED, reason="site policy [min-patients] refuses this request: the test "
                       "metrics would cover 3 patient(s). Fix: none"), id="refusal-with-counts"),
    pytest.param(Error(code=POLICY_REFUSED, reason=refusal_reason("max-bins").replace("[max-bins]", "[min-patients]")),
                 id="refusal-naming-two-keys"),
    pytest.param(Error(code=POLICY_REFUSED, reason=refusal_reason("not-a-policy-key")), id="refusal-unknown-key"),
    pytest.param(Error(code=SITE_ERROR, reason="/secure/site-A/patients.csv: field 'time'"), id="site-error-with-path"),
    pytest.param(Error(code=2, reason="<class 'ValueError'>:<'/secure/site-A'>"), id="flower-code-with-text"),
    pytest.param(Error(code=418, reason=SITE_ERROR_REASON), id="other-code"),
])
def test_an_error_reply_of_any_other_form_is_replaced_by_the_fixed_site_error(error):
    req = _msg("train", arrays=_arrays(w=np.zeros(2)))
    reply = _guard(req, lambda m, c: Message(error, reply_to=m))
    assert (reply.error.code, reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)
    assert note_of(reply) == {"status": "blocked", "error_type": "EgressViolation"}


def test_a_blocked_reply_leaves_as_the_fixed_site_error_not_as_the_violation_text():
    req = _msg("train", arrays=_arrays(w=np.zeros((3, 2))))
    reply = _guard(req, lambda m, c: _reply(req, embeddings=_arrays(z=np.zeros((40, 8)))))
    assert (reply.error.code, reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)
    assert note_of(reply)["status"] == "blocked"


def test_an_exception_inside_the_guard_leaves_as_the_fixed_site_error():
    req = _msg("train", arrays=_arrays(w=np.zeros(2)))

    def broken(m, c):
        raise OSError("/secure/site-A/tier1.pt: disk full")

    reply = _guard(req, broken)
    assert (reply.error.code, reply.error.reason) == (SITE_ERROR, SITE_ERROR_REASON)
    assert note_of(reply) == {"status": "error", "error_type": "OSError"}
