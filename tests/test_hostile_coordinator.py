"""A curious coordinator, through a site's real ClientApp (mods, egress guard, ledger), with
well-formed messages: every attack is refused (an error naming the policy key, a ledger line) or
releases nothing below the site's floor of k patients. The tests of merged (exact) releases run under
a policy with ``dp.release-epsilon = 0``; the default policy's noised releases are in
tests/test_noised_releases.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.client.client_app import make_client_app
from rmmfed.client.ledger import format_summary, read_ledger, summarize
from rmmfed.flower.refusal import POLICY_REFUSED, refusal_reason
from rmmfed.flower.records import from_record, to_content
from rmmfed.core.messages import metric_names as M
from rmmfed.core.messages import protocol as P
from rmmfed.core.survival.baseline_hazard import time_grid
from rmmfed.core.config import RunConfig
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums
from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.survival.risk_groups import RISK_GRID
from rmmfed.core.site.site_releases import pattern_patients
from rmmfed.core.site.site_session import SiteSession
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.weights import get_weights
from rmmfed.server.phases import FOLLOWUP_GRID
from rmmfed.server.queries import ask as _ask

from conftest import DIMS, WITH_VALIDATION, write_site

pytestmark = pytest.mark.usefixtures("single_thread")
K = 10  # the default policy's min-patients
TINY = {"model.embed-dim": 8, "model.prompt-dim": 3, "model.attn-dim": 4, "model.hidden-dim": 16,
        "model.mc-samples": 4, "model.max-instances": 6, "model.anat-partitions": 2, "batch-size": 16,
        "rounds": 3, "tier2.rounds": 0, "hist-bins": 128}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


class Site:
    """One hospital: a site folder, its ClientApp, its Flower context and its ledger."""

    def __init__(self, root: Path, *, n: int = 200, policy: str | None = None, **overrides) -> None:
        self.path = write_site(root, n=n, seed=5, absent_rate=0.3)
        self.ledger = root / "ledger.jsonl"
        node = {"data-dir": str(self.path), "ledger": str(self.ledger)}
        if policy is not None:
            (root / "policy.toml").write_text(policy)
            node["policy"] = str(root / "policy.toml")
        self.app = make_client_app()
        self.context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
        self.cfg = RunConfig().with_overrides({**TINY, **overrides})

    def ask(self, mtype: str, **records) -> Message:
        """Any message, hand-built (for requests the protocol's payloads would not produce)."""
        return self.app(Message(RecordDict(records), dst_node_id=7, message_type=mtype), self.context)

    def send(self, phase: P.Phase, request=None) -> Message:
        """A well-formed request of ``phase`` (core/messages/protocol.py payloads), as the server sends it."""
        content = to_content(request.to_records()) if request is not None else RecordDict()
        return self.app(Message(content, dst_node_id=7, message_type=phase.message_type), self.context)

    def refusal(self, reply: Message) -> str:
        assert reply.has_error(), "the request should have been refused"
        assert reply.error.code == POLICY_REFUSED
        return reply.error.reason

    def last_ledger_line(self) -> dict:
        return json.loads(self.ledger.read_text().splitlines()[-1])

    def join(self, min_stat_count: int = 5) -> None:
        """Statistics and setup, as an honest run starts."""
        sums = from_record(self.send(P.STATISTICS, P.StatsRequest(dict(DIMS), min_stat_count)).content[P.SUMS])
        stats = FeatureStats.from_sums(add_sums([sums]), DIMS, self.cfg.model.anat_partitions)
        reply = self.send(P.SETUP, P.SetupRequest(self.cfg.to_flat(), dict(DIMS), stats.to_arrays()))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        self.stats = stats

    def weights(self) -> dict[str, np.ndarray]:
        return get_weights(build_model(DIMS, self.cfg.model, self.cfg.seed))

    def freeze(self) -> Message:
        """The final Tier 1 (this site's fixed test weights), as the server sends it after the Tier 1 rounds."""
        reply = self.send(P.FREEZE_TIER1, P.FreezeRequest(self.weights()))
        assert not reply.has_error(), reply.error.reason
        return reply

    def calibrate(self, grid: HistogramGrid | None = None) -> Message:
        self.freeze()
        grid = grid or HistogramGrid(self.cfg.hist_low, self.cfg.hist_high, self.cfg.hist_bins)
        return self.send(P.CALIBRATION, P.GridRequest(grid))

    def session(self) -> SiteSession:
        s = SiteSession(self.path, device="cpu")
        s.bind_schema(DIMS)
        s.setup(self.cfg, FeatureStats.from_arrays(self.stats.to_arrays(), self.cfg.model.anat_partitions))
        return s


@pytest.fixture
def site(tmp_path) -> Site:
    s = Site(tmp_path)
    s.join()
    return s


EXACT_RELEASES = "[dp]\nrelease-epsilon = 0.0\n"  # merged, exact releases (not the default)
DP_CUTS = {"dp.time-cuts": "5,10,20"}  # what the server's follow-up quintiles would set, for DP-SGD rounds


@pytest.fixture
def validating_site(tmp_path) -> Site:
    """The default policy plus the opt-in per-round validation."""
    s = Site(tmp_path, policy=WITH_VALIDATION, **DP_CUTS)
    s.join()
    return s


@pytest.fixture
def exact_site(tmp_path) -> Site:
    s = Site(tmp_path, policy=EXACT_RELEASES)
    s.join()
    return s


def _followup(site: Site, grid: HistogramGrid) -> Message:
    return site.send(P.FOLLOWUP, P.GridRequest(grid))


def _train_times(s: Site) -> np.ndarray:
    d = s.session().data
    return d.time[d.indices("train")]


# ---- fine grids --------------------------------------------------------------------------------
def test_a_200000_bin_followup_grid_is_refused_naming_max_bins_in_reply_and_ledger(site):
    t = _train_times(site)
    fine = HistogramGrid(float(t.min()) * 0.99, float(t.max()) * 1.01, 200_000)
    reason = site.refusal(_followup(site, fine))
    assert "max-bins" in reason
    line = site.last_ledger_line()
    assert line["status"] == "refused" and line["policy_key"] == "max-bins" and "records" not in line
    summary = summarize(read_ledger(site.ledger))
    assert summary["refused"] == {"query.followup [max-bins]": 1}
    assert "query.followup [max-bins]" in format_summary(summary)


def test_a_narrow_grid_within_max_bins_is_refused_naming_min_bin_ratio(site):
    t = np.sort(_train_times(site))
    narrow = HistogramGrid(float(t[50]) * 0.999, float(t[50]) * 1.001, 500)
    assert "min-bin-ratio" in site.refusal(_followup(site, narrow))


def test_the_followup_histogram_merges_bins_until_each_holds_k_patients(exact_site):
    reply = _followup(exact_site, FOLLOWUP_GRID)
    assert not reply.has_error()
    got = from_record(reply.content[P.COUNTS])
    assert set(got) == {"counts", "first", "last"}
    assert (got["counts"] >= K).all() and got["counts"].sum() == len(_train_times(exact_site))
    fine = FOLLOWUP_GRID.counts(_train_times(exact_site))  # never released: what the site would have sent before
    assert (fine[fine > 0] < K).any()  # the plain histogram had bins below the floor
    for a, b, c in zip(got["first"], got["last"], got["counts"]):
        assert fine[a] > 0 and fine[b] > 0 and fine[a:b + 1].sum() == c


# ---- shifted grids and repeated queries ----------------------------------------------------------
def test_a_second_followup_query_with_a_shifted_grid_is_refused(exact_site):
    first = _followup(exact_site, FOLLOWUP_GRID)
    shifted = HistogramGrid(FOLLOWUP_GRID.low * 1.02, FOLLOWUP_GRID.high * 1.02, FOLLOWUP_GRID.n_bins)
    assert "one-grid-per-kind" in exact_site.refusal(_followup(exact_site, shifted))
    again = _followup(exact_site, FOLLOWUP_GRID)  # the same request: the same answer, nothing new
    assert {k: v.tolist() for k, v in from_record(again.content[P.COUNTS]).items()} == \
        {k: v.tolist() for k, v in from_record(first.content[P.COUNTS]).items()}


def test_a_second_final_tier1_with_other_weights_is_refused(site):
    assert not site.calibrate().has_error()
    assert not site.freeze().has_error()  # the same weights again: answered
    other = {k: v + 0.01 for k, v in site.weights().items()}
    reply = site.send(P.FREEZE_TIER1, P.FreezeRequest(other))
    assert "one-grid-per-kind" in site.refusal(reply)


def test_every_calibration_bin_holds_values_of_at_least_k_distinct_patients(exact_site):
    reply = exact_site.calibrate()
    got = from_record(reply.content[P.COUNTS])
    values = exact_site.session().calibration_values(exact_site.weights())
    who = pattern_patients(values, len(DIMS))
    grid = HistogramGrid(exact_site.cfg.hist_low, exact_site.cfg.hist_high, exact_site.cfg.hist_bins)
    fine = np.minimum(np.searchsorted(grid.edges(), values, side="right") - 1, grid.n_bins - 1)
    assert got["counts"].sum() == len(values) > 0
    for a, b in zip(got["first"], got["last"]):
        assert len(np.unique(who[(fine >= a) & (fine <= b)])) >= K


# ---- Breslow sums on a grid with one point per training time -------------------------------------
def test_breslow_sums_on_a_grid_of_every_training_time_release_groups_of_k_events_and_k_leavers(exact_site):
    exact_site.freeze()  # fixes Tier 1 at the site
    t = np.unique(_train_times(exact_site))
    grid = t + 1e-9  # one point per patient: each interval would hold one patient
    reply = exact_site.send(P.HAZARD, P.HazardRequest(grid))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    got = from_record(reply.content[P.HAZARD_RECORD])
    train = exact_site.session()._split("train")  # the tensors the site computes on (float32 times)
    keep = train.present.any(dim=1).numpy()
    time, event = train.time.numpy()[keep], train.event.numpy()[keep]
    j = np.searchsorted(grid, time, side="left")
    starts = got["hazard.first"]
    ends = np.append(starts[1:], len(grid))
    assert len(starts) < len(grid) / K + 1
    for a, b, events in zip(starts, ends, got["hazard.events"]):
        leaving = (j >= a) & (j < b)
        assert events >= K and leaving.sum() >= K and events == event[leaving].sum()
    tail = (j >= len(grid)).sum()
    assert got["hazard.risk-after"][0] == 0.0 or tail >= K


def test_a_breslow_grid_above_max_bins_is_refused(site):
    site.freeze()
    grid = time_grid(100.0, 600)
    reply = site.send(P.HAZARD, P.HazardRequest(grid))
    assert "max-bins" in site.refusal(reply)


# ---- floors the coordinator tries to lower -------------------------------------------------------
def test_min_stat_count_1_from_the_coordinator_still_gets_sums_over_k_patients_only(tmp_path):
    s = Site(tmp_path, n=60)  # 36 training patients: some blocks and gaps fall below 10
    sums = from_record(s.send(P.STATISTICS, P.StatsRequest(dict(DIMS), 1)).content[P.SUMS])
    ns = {k: float(v[0]) for k, v in sums.items() if k.endswith(".n")}
    assert all(n == 0 or n >= K for n in ns.values())
    assert any(n == 0 for n in ns.values())  # a block below the floor was withheld
    for m in DIMS:
        gap = ns[f"{m}.all.n"] - ns[f"{m}.complete.n"]
        assert ns[f"{m}.complete.n"] == 0 or gap == 0 or gap >= K
    for k, v in sums.items():
        if ns[k.rsplit(".", 1)[0] + ".n"] == 0:
            assert not v.any()


def test_a_tiny_site_refuses_a_calibration_histogram_below_the_floor(tmp_path):
    s = Site(tmp_path, n=40)  # 8 validation patients: too few for any merged bin
    s.join()
    reason = s.refusal(s.calibrate())
    assert "min-patients" in reason
    assert s.last_ledger_line()["policy_key"] == "min-patients"


def test_the_coordinators_histogram_min_count_can_only_raise_the_floor(tmp_path):
    s = Site(tmp_path, policy=EXACT_RELEASES, **{"dp.histogram-min-count": 30})
    s.join()
    got = from_record(_followup(s, FOLLOWUP_GRID).content[P.COUNTS])
    assert (got["counts"] >= 30).all()


# ---- DP and rounds the coordinator switches off ------------------------------------------------
DP_POLICY = "[dp]\nrequired = true\nmax-epsilon = 4.0\n"


def test_dp_switched_off_by_the_coordinator_is_refused_at_setup(tmp_path):
    s = Site(tmp_path, policy=DP_POLICY, **{"dp.enabled": False})
    reply = s.send(P.SETUP, P.SetupRequest(s.cfg.to_flat(), dict(DIMS), {}))
    assert "dp.required" in s.refusal(reply)
    assert s.last_ledger_line()["policy_key"] == "dp.required"


def test_a_target_epsilon_above_the_sites_maximum_is_refused(tmp_path):
    s = Site(tmp_path, policy=DP_POLICY, **{"dp.enabled": True, "dp.target-epsilon": 8.0, "dp.time-cuts": "5,10,20"})
    reply = s.send(P.SETUP, P.SetupRequest(s.cfg.to_flat(), dict(DIMS), {}))
    assert "dp.max-epsilon" in s.refusal(reply)


def test_a_training_round_past_max_rounds_is_refused(site):
    reply = site.send(P.TIER1_ROUND, P.RoundRequest(site.weights(), 101))
    assert "max-rounds" in site.refusal(reply)


def test_a_phase_the_site_left_out_is_refused(tmp_path):
    s = Site(tmp_path, policy='phases = ["statistics", "tier1", "calibration", "evaluation"]\n')
    s.join()
    assert "phases" in s.refusal(_followup(s, FOLLOWUP_GRID))
    assert not s.calibrate().has_error()


def test_the_default_policy_answers_no_exact_validation_of_weights_the_coordinator_chose(tmp_path):
    """Per-round validation is exact (pair counts, partial likelihood, Tier 2's error sums), and a lying
    coordinator picks every round's weights: over up to max-rounds rounds it could bisect a validation
    patient's value. So it is opt-in: the default policy refuses the validation messages, naming the key,
    and answers a training round that asks it to score the weights it received without any validation."""
    site = Site(tmp_path, **DP_CUTS)
    site.join()
    w = site.weights()
    for phase in (P.TIER1_VALIDATION, P.TIER2_VALIDATION):
        assert "phases" in site.refusal(site.send(phase, P.RoundRequest(w, 1)))
        assert site.last_ledger_line()["status"] == "refused"
    reply = site.send(P.TIER1_ROUND, P.RoundRequest(w, 2, validate_sent=True))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    sent = set(reply.content[P.METRICS])
    assert not sent & {M.N_VAL, M.VAL_PLL, M.VAL_EVENTS, *M.PAIRS.counts}, sent


def test_a_site_that_opts_into_validation_scores_the_weights_it_received(validating_site):
    reply = validating_site.send(P.TIER1_ROUND, P.RoundRequest(validating_site.weights(), 2, validate_sent=True))
    assert {M.N_VAL, M.VAL_PLL, *M.PAIRS.counts} <= set(reply.content[P.METRICS])


# ---- weights named or shaped to carry data -------------------------------------------------------
@pytest.mark.parametrize("change", ["extra-array-per-patient", "array-not-in-the-model", "reshaped-array"])
def test_weights_named_or_shaped_to_carry_data_are_refused(validating_site, change):
    site = validating_site
    w = site.weights()
    n_train = len(site.session().data.indices("train"))
    if change == "extra-array-per-patient":
        w["head.risk_per_patient"] = np.zeros(n_train, dtype=np.float32)
    elif change == "array-not-in-the-model":
        w["exfiltrate"] = np.zeros(3, dtype=np.float32)
    else:
        name = next(iter(w))
        w[name] = np.zeros((n_train, 4), dtype=np.float32)
    for phase in (P.TIER1_ROUND, P.TIER1_VALIDATION, P.TIER2_ROUND, P.TIER2_VALIDATION):
        assert "[weights]" in site.refusal(site.send(phase, P.RoundRequest(w, 1)))
    assert "[weights]" in site.refusal(site.send(P.FREEZE_TIER1, P.FreezeRequest(w)))
    assert "weights" in site.refusal(site.send(P.RISK_GROUPS, P.RiskGroupsRequest(w, RISK_GRID, P.FittedTwoTier(1e-3))))


# ---- the server goes on without a refusing site, and does not ask it again ---------------------
class _Grid:
    def __init__(self, reason: str) -> None:
        self.reason, self.calls = reason, []

    def send_and_receive(self, messages, *, timeout=None):
        from types import SimpleNamespace

        self.calls.append([m.metadata.dst_node_id for m in messages])
        for m in messages:
            node = m.metadata.dst_node_id
            err = node == 2
            yield SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), has_error=lambda e=err: e,
                                  error=SimpleNamespace(reason=self.reason, code=POLICY_REFUSED))


def test_a_policy_refusal_is_not_retried_and_the_other_sites_are_kept():
    grid = _Grid(refusal_reason("max-bins"))
    replies = _ask(grid, [1, 2], P.HAZARD, timeout=30.0, request=P.HazardRequest(np.array([1.0, 2.0])))
    assert sorted(replies) == [1]
    assert grid.calls == [[1, 2]]


# ---- repeated evaluation and validation queries ------------------------------------------------
def test_a_second_validation_of_the_same_round_with_other_weights_is_refused(validating_site):
    site = validating_site
    w = site.weights()
    first = site.send(P.TIER1_VALIDATION, P.RoundRequest(w, 1))
    assert not first.has_error()
    again = site.send(P.TIER1_VALIDATION, P.RoundRequest(w, 1))
    assert dict(again.content[P.METRICS]) == dict(first.content[P.METRICS])
    other = {k: v * 1.5 for k, v in w.items()}
    assert "one-grid-per-kind" in site.refusal(site.send(P.TIER1_VALIDATION, P.RoundRequest(other, 1)))
    assert not site.send(P.TIER1_VALIDATION, P.RoundRequest(other, 2)).has_error()


def test_the_test_evaluation_cannot_be_asked_again_with_another_theta(site):
    site.freeze()
    assert not site.send(P.EVALUATION, P.EvaluateRequest(None, P.FittedTwoTier(1e-3))).has_error()
    reply = site.send(P.EVALUATION, P.EvaluateRequest(None, P.FittedTwoTier(2e-3)))
    assert "one-grid-per-kind" in site.refusal(reply)


def test_the_risk_group_histogram_merges_bins_to_k_training_patients(exact_site):
    exact_site.freeze()
    reply = exact_site.send(P.RISK_GROUPS, P.RiskGroupsRequest(None, RISK_GRID, P.FittedTwoTier(1e-3)))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    got = from_record(reply.content[P.COUNTS])
    assert (got["counts"] >= K).all() and got["counts"].sum() == len(_train_times(exact_site))
    assert len(got["counts"]) < RISK_GRID.n_bins / K


def test_test_metrics_of_a_subgroup_below_the_floor_are_sent_as_empty(site):
    s = site.session()
    s.freeze(site.weights())
    full = s.evaluate(None, P.FittedTwoTier(1e-3), k=1)
    floored = s.evaluate(None, P.FittedTwoTier(1e-3), k=int(full["n-test"]) + 1)  # every subgroup smaller than k
    assert full["tier1-covered-pairs-comparable"] > 0 and full["recovery-n"] > 0
    assert floored["pairs-comparable"] == full["pairs-comparable"]  # the split itself: the ClientApp checks it
    assert floored["tier1-covered-pairs-comparable"] == 0 and floored["system-covered-pairs-comparable"] == 0
    assert floored["recovery-n"] == 0 and floored["recovery-sse-tier1"] == 0 and floored["masked-complete-n"] == 0


def test_an_evaluation_plan_with_thresholds_one_patient_apart_gets_the_second_level_as_zeros(tmp_path):
    """A lying coordinator places risk-coverage thresholds so that two kept groups differ by one test
    patient (it would difference their pair counts): the site sends the second level as empty."""
    from rmmfed.core.routing.routing_score import patient_scores

    site = Site(tmp_path / "s", n=400, policy="[dp]\nrequired = false\nrelease-epsilon = 0\n", **{"dp.enabled": False})
    site.join()
    site.freeze()
    s = site.session()
    s.freeze(site.weights())
    test = s.split("test")
    score = np.sort(patient_scores(s.model(site.weights()), test, s.cfg, seed=s.cfg.seed)[2])
    cut = int(np.searchsorted(score, score[score > 0][0]))  # complete patients score 0: go past them
    lo, hi = cut + 10, cut + 11
    assert hi < len(score) - 10, "the toy site needs enough patients with a modality missing"
    thresholds = ((score[lo - 1] + score[lo]) / 2, (score[hi - 1] + score[hi]) / 2, np.inf)
    reply = site.send(P.EVALUATION, P.EvaluateRequest(None, P.FittedTwoTier(1e9), thresholds))
    assert not reply.has_error(), reply.error.reason
    m = reply.content.metric_records[P.METRICS]
    assert m[M.kept_n(0)] == lo and m[M.kept_n(1)] == 0 and m[M.kept(1).comparable] == 0
    assert m[M.kept_n(2)] == len(score)
