"""Under the default site policy every release after training is epsilon-DP on boundaries fixed before the
data is seen (core/privacy/noised_release.py): no merged bin edge, no order statistic, each release charged to
the site's lifetime budget once, repeats answered from what was sent, at most dp.release-grids grids per
kind. Through the real ClientApp, as a hostile coordinator would ask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from rmmfed.flower.records import from_record
from rmmfed.core.messages import metric_names as M
from rmmfed.core.messages import protocol as P
from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.privacy.noised_release import noised_hazard, noised_histogram, one_value_per_patient
from rmmfed.core.privacy.privacy_budget import BUDGET_FILE
from rmmfed.core.survival.risk_groups import RISK_GRID
from rmmfed.flower.refusal import refused_key
from rmmfed.server.phases import FOLLOWUP_GRID

from conftest import DIMS
from test_hostile_coordinator import Site

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


@pytest.fixture
def site(tmp_path) -> Site:
    s = Site(tmp_path, **{"dp.time-cuts": "5,10,20"})
    s.join()
    return s


def _counts(reply) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error.reason
    return from_record(reply.content[P.COUNTS])


def _budget(tmp_path) -> dict:
    return json.loads((tmp_path / BUDGET_FILE).read_text())["runs"]["1"]["items"]


def test_a_noised_histogram_has_a_count_on_every_bin_and_no_data_dependent_edge(site):
    got = _counts(site.send(P.FOLLOWUP, P.GridRequest(FOLLOWUP_GRID)))
    every = np.arange(FOLLOWUP_GRID.n_bins)
    assert np.array_equal(got["first"], every) and np.array_equal(got["last"], every)  # the grid's, not the data's
    d = site.session().data
    exact = FOLLOWUP_GRID.counts(d.time[d.indices("train")])
    assert not np.array_equal(got["counts"], exact)  # noised
    assert (got["counts"] < 0).any()  # unclipped: the server repairs the sum


def test_each_noised_release_is_charged_once_and_a_repeat_is_answered_from_what_was_sent(site, tmp_path):
    first = _counts(site.send(P.FOLLOWUP, P.GridRequest(FOLLOWUP_GRID)))
    again = _counts(site.send(P.FOLLOWUP, P.GridRequest(FOLLOWUP_GRID)))
    assert np.array_equal(first["counts"], again["counts"])  # no fresh draw to average away
    items = _budget(tmp_path)
    assert items["dp-sgd"] == 8.0
    assert [v for k, v in items.items() if k.startswith("release:followup")] == [1.0]


def test_a_third_grid_of_a_kind_is_refused_and_every_answered_grid_is_charged(site, tmp_path):
    grids = [HistogramGrid(FOLLOWUP_GRID.low * f, FOLLOWUP_GRID.high * f, 64) for f in (1.0, 1.3, 1.7)]
    assert not site.send(P.FOLLOWUP, P.GridRequest(grids[0])).has_error()
    assert not site.send(P.FOLLOWUP, P.GridRequest(grids[1])).has_error()
    reply = site.send(P.FOLLOWUP, P.GridRequest(grids[2]))
    assert reply.has_error() and refused_key(reply.error) == "one-grid-per-kind"
    assert sum(v for k, v in _budget(tmp_path).items() if k.startswith("release:followup")) == 2.0


def test_calibration_and_risk_groups_are_noised_too(site):
    site.freeze()
    cal = site.send(P.CALIBRATION, P.GridRequest(HistogramGrid(1e-8, 1e3, 24)))
    assert cal.content.metric_records[P.METRICS][M.NOISED] == 1.0
    assert M.N_VALUES not in cal.content.metric_records[P.METRICS]  # no exact count of values either
    risk = site.send(P.RISK_GROUPS, P.RiskGroupsRequest(None, RISK_GRID, P.FittedTwoTier(1e-3)))
    assert np.array_equal(_counts(risk)["first"], np.arange(RISK_GRID.n_bins))


def test_breslow_sums_on_a_grid_of_every_training_time_come_noised_on_every_interval(site):
    site.freeze()
    d = site.session().data
    grid = np.unique(d.time[d.indices("train")]) + 1e-9  # one point per patient: the merged rule's worst case
    reply = site.send(P.HAZARD, P.HazardRequest(grid))
    assert not reply.has_error(), reply.error.reason
    got = from_record(reply.content[P.HAZARD_RECORD])
    assert np.array_equal(got["hazard.first"], np.arange(len(grid)))
    assert not np.isin(got["hazard.events"], [0.0, 1.0]).all()  # no interval gives a patient's event flag


def test_a_crafted_histogram_of_one_patients_value_is_noise_at_the_default_epsilon():
    """The red team's case: weights that make the released value one patient's feature. With one
    patient alone in a bin, the noised count is as likely to read 0 or 2 as 1."""
    grid = HistogramGrid(1e-3, 1e3, 64)
    values, patients = np.array([0.5] + [50.0] * 30), np.arange(31)
    lone = grid.counts(values[:1]).argmax()
    reads = [noised_histogram(grid, values, patients, 1.0, np.random.default_rng(s)).counts[lone] for s in range(400)]
    assert 0.2 < np.mean(np.asarray(reads) == 1) < 0.5  # P(noise = 0) = tanh(1/2) = 0.46 at epsilon 1
    assert np.mean(np.asarray(reads) != 1) > 0.5


def test_one_value_per_patient_keeps_one_of_each_patients_values():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    patients = np.array([0, 1, 2, 0, 1, 2])
    chosen = one_value_per_patient(values, patients, seed=3)
    assert len(chosen) == 3 and all(v in (1, 2, 3, 4, 5, 6) for v in chosen)
    assert {int(v - 1) % 3 for v in chosen} == {0, 1, 2}


def test_noised_breslow_sums_are_unbiased_for_the_exact_ones():
    rng = np.random.default_rng(0)
    time, event, risk = rng.exponential(10, 300), rng.random(300) < 0.6, rng.normal(0, 0.5, 300)
    grid = np.linspace(1, 30, 10)
    draws = [noised_hazard(time, event, risk, grid, 1.0, np.random.default_rng(s)) for s in range(300)]
    exact_events = np.array([np.sum(event & (np.searchsorted(grid, time) == j)) for j in range(10)])
    mean_events = np.mean([d.events for d in draws], axis=0)
    assert np.abs(mean_events - exact_events).max() < 1.0


def test_route_counts_of_a_group_below_the_floor_are_sent_as_zero(site):
    """The red team read route counts of 1, 3 and 5 back and bisected a patient's value over runs."""
    s = site.session()
    s.freeze(site.weights())
    n = int(s.evaluate(None, P.FittedTwoTier(1e-3), k=1)["n-test"])
    for theta in (1e-6, 1e-3, 1e-1, 1.0, 1e3):
        m = s.evaluate(None, P.FittedTwoTier(theta), k=10)
        for key in (*M.ROUTED.values(), M.REFERRED, M.MASKED_REFERRED):
            c = m[key]
            total = m[M.MASKED_N] if key == M.MASKED_REFERRED else n
            assert c == 0 or (c >= 10 and total - c >= 10) or total - c == 0, (key, c, total)


def test_the_conformal_release_is_noised_like_calibration_and_sends_no_exact_count(site):
    """Each tier's conformal-score histogram (core/routing/conformal.py) is a release like theta's: counts on every
    bin with noise; no exact number of values, and no sum of risk SDs beside it (only exact releases send one)."""
    site.freeze()
    reply = site.send(P.CONFORMAL, P.ConformalRequest("tier1", HistogramGrid(1e-3, 1e3, 24)))
    assert not reply.has_error(), reply.error.reason
    metrics = reply.content.metric_records[P.METRICS]
    assert metrics[M.NOISED] == 1.0 and M.N_VALUES not in metrics
    assert M.CONFORMAL_SD_SUM not in metrics and M.CONFORMAL_SD_N not in metrics
    assert np.array_equal(_counts(reply)["first"], np.arange(24))
    refused = site.send(P.CONFORMAL, P.ConformalRequest("tier2", HistogramGrid(1e-3, 1e3, 24)))  # no Tier 2 weights
    assert refused.has_error()


def _tier2_weights(site: Site) -> dict[str, np.ndarray]:
    from rmmfed.core.model.weights import get_weights
    from rmmfed.core.tier2.tier2 import build_tier2

    return get_weights(build_tier2(site.stats.model_dims(dict(DIMS)), site.cfg.tier2, site.cfg.seed,
                                   tier1=site.cfg.model))


def test_the_tier2_gate_release_is_noised_charged_once_and_answered_once_per_run(site, tmp_path):
    """The gate's release under the default policy (no per-round validation): clipped per-case differences
    with Laplace noise, no exact count, charged once; the same request again gets the same reply, other weights
    are refused."""
    site.freeze()
    w = _tier2_weights(site)
    first = site.send(P.TIER2_GATE, P.Tier2GateRequest(w))
    assert not first.has_error(), first.error.reason
    got = dict(first.content.metric_records[P.METRICS])
    assert set(got) == {*M.GATE_SUMS, M.NOISED} and got[M.NOISED] == 1.0
    assert got[M.GATE_N] != round(got[M.GATE_N])  # a noised count, not the number of cases
    again = site.send(P.TIER2_GATE, P.Tier2GateRequest(w))
    assert dict(again.content.metric_records[P.METRICS]) == got  # no fresh draw to average away
    other = site.send(P.TIER2_GATE, P.Tier2GateRequest({k: v * 1.5 for k, v in w.items()}))
    assert other.has_error() and refused_key(other.error) == "one-grid-per-kind"
    assert [v for k, v in _budget(tmp_path).items() if k.startswith("release:tier2-gate")] == [1.0]


def test_a_lone_patients_gate_difference_is_noise_at_the_default_epsilon():
    """One patient changes each clipped sum by at most GATE_BOUND; at epsilon 1 split over the five released
    numbers, the noise on a sum has sd 5 * sqrt(2) = 7 of those bounds."""
    from rmmfed.core.privacy.noised_release import noised_sums
    from rmmfed.core.tier2.tier2_gate import GATE_BOUND

    both = [np.r_[np.zeros(30), GATE_BOUND], np.zeros(31)]  # the release's two columns
    sums = [noised_sums(both, 1.0, np.random.default_rng(s), bound=GATE_BOUND)[1][0][0] for s in range(400)]
    assert 6 * GATE_BOUND < np.std(sums) < 8 * GATE_BOUND


def test_the_gate_opens_only_for_a_win_that_stands_above_sampling_and_noise():
    from rmmfed.core.tier2.tier2_gate import NoisedGateSums, decide_noised

    exact = {M.GATE_N: 400.0, M.GATE_RECOVERY_SUM: 40.0, M.GATE_RECOVERY_SUMSQ: 44.0, M.GATE_RISK_SUM: 10.0,
             M.GATE_RISK_SUMSQ: 30.0}
    assert decide_noised(NoisedGateSums.of_sites([exact])).open  # exact sums, a clear win on both
    noised = {**exact, M.NOISED: 1.0}  # the same sums, with the default epsilon's noise to stand out of
    assert not decide_noised(NoisedGateSums.of_sites([noised])).open
    worse = {**exact, M.GATE_RISK_SUM: -10.0}
    assert not decide_noised(NoisedGateSums.of_sites([worse])).open  # recovery alone is not enough


class _NoNoise:
    """An rng whose Laplace draws are 0 and which keeps the scales it was asked for."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    def laplace(self, loc, scale, size=None):
        self.scales.append(float(scale))
        return np.zeros(size) if size is not None else 0.0


@pytest.mark.parametrize("bound", [0.25, 0.5, 2.0])
def test_one_patient_moves_a_noised_breslow_risk_sum_by_at_most_exp_of_the_bound_and_the_noise_scales_with_it(bound):
    """Whatever risk a crafted Tier 1 gives one patient, and whatever centre the coordinator sends, the
    patient's term is exp(clip(risk - centre)) <= exp(bound): the Laplace scale of the leaving sums."""
    rng = np.random.default_rng(0)
    time, event, risk = rng.exponential(10, 50), rng.random(50) < 0.5, rng.normal(0, 1, 50)
    grid = np.linspace(2, 20, 8)
    low, high = risk.copy(), risk.copy()
    low[0], high[0] = -1e6, 1e6
    for center in (-3.0, 0.0, 4.0):
        a = noised_hazard(time, event, low - center, grid, 1.0, _NoNoise(), bound=bound)
        b = noised_hazard(time, event, high - center, grid, 1.0, _NoNoise(), bound=bound)
        moved = np.abs(a.risk_sum - b.risk_sum).max()
        assert moved <= np.exp(bound) - np.exp(-bound) + 1e-9
    fake = _NoNoise()
    noised_hazard(time, event, risk, grid, 1.0, fake, bound=bound)
    assert fake.scales == [pytest.approx(2.0), pytest.approx(np.exp(bound) / 0.5)]  # events, then leaving sums


def test_the_site_clips_its_breslow_sums_at_its_own_policys_bound_around_the_coordinators_centre(tmp_path, monkeypatch):
    import rmmfed.core.site.site_releases as releases

    seen = {}

    def spy(time, event, risk, grid, epsilon, rng, bound):
        seen.update(risk=np.asarray(risk), bound=bound)
        return noised_hazard(time, event, risk, grid, epsilon, rng, bound=bound)

    monkeypatch.setattr(releases, "noised_hazard", spy)
    s = Site(tmp_path, policy="[dp]\nhazard-risk-bound = 0.3\n", **{"dp.time-cuts": "5,10,20"})
    s.join()
    s.freeze()
    reply = s.send(P.HAZARD, P.HazardRequest(np.linspace(1, 30, 8), 1.5))
    assert not reply.has_error(), reply.error.reason
    assert seen["bound"] == 0.3  # the site's policy, not the coordinator, sets the clipping
    train = s.session()._split("train")
    keep = train.present.any(dim=1).numpy()
    from rmmfed.core.model.train import predict_risk
    exact = predict_risk(s.session().model(s.weights()), train)[keep]
    assert np.allclose(seen["risk"], exact - 1.5, atol=1e-5)


@pytest.mark.parametrize("center", [float("nan"), float("inf"), 1e7])
def test_a_breslow_centre_that_is_not_a_finite_number_within_max_weight_is_refused(site, center):
    site.freeze()
    reply = site.send(P.HAZARD, P.HazardRequest(np.linspace(1, 30, 8), center))
    assert "training.max-weight" in site.refusal(reply)
