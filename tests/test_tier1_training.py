"""Tier 1 training (seed 000 eq. 4): augmentation, losses, the local loop, FedProx, SiteSession."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rmmfed.core.model.augment import hide_one, modality_dropout
from rmmfed.core.survival.concordance import concordance_counts
from rmmfed.core.config import DPConfig, RunConfig
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums
from rmmfed.core.routing.fitted_two_tier import FittedTwoTier
from rmmfed.core.aggregates.histogram import HistogramGrid
from rmmfed.core.data.site_data import load_site
from rmmfed.core.site.site_session import SiteSession
from rmmfed.core.data.tensors import build_tensors
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.model.tier1_loss import anatomical_loss, reconstruction_loss, task_loss
from rmmfed.core.model.train import predict_risk, train_tier1
from rmmfed.core.model.weights import get_weights, set_weights

pytestmark = pytest.mark.usefixtures("single_thread")

EVALUATE_KEYS = {"n-test", "n-events-test", "c-index", "pairs-concordant", "pairs-tied-risk", "pairs-comparable",
                 "routed-tier1", "routed-tier2", "routed-abstain", "referral-rate", "masked-complete-n",
                 "masked-complete-referred"}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_present(n: int, k: int, seed: int, rate: float = 0.6) -> torch.Tensor:
    return torch.rand(n, k, generator=_gen(seed)) < rate


# ---- augmentation ------------------------------------------------------------------------------
def test_modality_dropout_never_empties_a_patient_with_a_present_modality():
    present = _random_present(10_000, 4, seed=0)

    observed = modality_dropout(present, 0.9, _gen(1))

    has_any = present.any(dim=1)
    assert torch.all(observed[has_any].any(dim=1))
    assert not observed[~has_any].any()  # nothing present stays nothing
    assert (~has_any).any()  # the case was exercised


def test_modality_dropout_never_turns_on_an_absent_modality():
    present = _random_present(10_000, 4, seed=2)

    observed = modality_dropout(present, 0.9, _gen(3))

    assert not (observed & ~present).any()


def test_modality_dropout_with_zero_p_is_identity():
    present = _random_present(500, 3, seed=4)

    observed = modality_dropout(present, 0.0, _gen(5))

    assert torch.equal(observed, present)
    assert observed is not present


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_modality_dropout_drops_at_rate_p_for_patients_with_many_modalities(p):
    present = torch.ones(4_000, 12, dtype=torch.bool)

    observed = modality_dropout(present, p, _gen(6))

    rate = 1.0 - observed.float().mean().item()
    assert abs(rate - p) < 0.02


def test_modality_dropout_is_reproducible_with_the_same_generator():
    present = _random_present(300, 3, seed=7)

    a = modality_dropout(present, 0.5, _gen(8))
    b = modality_dropout(present, 0.5, _gen(8))

    assert torch.equal(a, b)


def test_hide_one_hides_exactly_one_modality_when_two_or_more_present():
    present = _random_present(5_000, 4, seed=9)

    observed = hide_one(present, _gen(10))

    n_present = present.sum(dim=1)
    hidden = (present & ~observed).sum(dim=1)
    assert not (observed & ~present).any()
    assert torch.all(hidden[n_present >= 2] == 1)
    assert torch.all(hidden[n_present < 2] == 0)
    assert torch.equal(observed[n_present < 2], present[n_present < 2])


def test_hide_one_picks_each_present_modality_roughly_uniformly():
    present = torch.ones(6_000, 3, dtype=torch.bool)

    hidden = ~hide_one(present, _gen(11))

    freq = hidden.float().mean(dim=0)
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.03)


# ---- losses --------------------------------------------------------------------------------------
def test_reconstruction_loss_is_zero_when_estimates_equal_target():
    target = (torch.randn(4, 3, generator=_gen(0)), torch.randn(4, 2, generator=_gen(1)))
    hidden = torch.tensor([[True, False], [False, True], [True, True], [False, False]])

    loss = reconstruction_loss([t.clone() for t in target], target, hidden)

    assert loss.item() == 0.0


def test_reconstruction_loss_only_counts_hidden_modalities():
    target = (torch.zeros(3, 2), torch.zeros(3, 4))
    hidden = torch.tensor([[True, False], [False, False], [False, True]])
    est = [torch.full((3, 2), 100.0), torch.full((3, 4), 100.0)]
    est[0][0] = torch.tensor([1.0, 3.0])  # hidden: mse = (1 + 9) / 2 = 5
    est[1][2] = torch.tensor([2.0, 2.0, 2.0, 2.0])  # hidden: mse = 4

    loss = reconstruction_loss(est, target, hidden)

    assert loss.item() == pytest.approx((5.0 + 4.0) / 2)


def test_reconstruction_loss_is_zero_when_nothing_hidden():
    est = [torch.randn(3, 2)]

    loss = reconstruction_loss(est, (torch.zeros(3, 2),), torch.zeros(3, 1, dtype=torch.bool))

    assert loss.item() == 0.0


def _anat_stats(mu, sigma, partitions=2) -> FeatureStats:
    return FeatureStats(mean={}, std={}, anat_mu={"a": np.asarray(mu, dtype=float)},
                        anat_sigma={"a": np.asarray(sigma, dtype=float)}, partitions=partitions, anat_source={})


def test_anatomical_loss_exact_value_on_hand_example():
    stats = _anat_stats(mu=[0.0, 0.0, 1.0, 1.0], sigma=[1.0, 0.5])
    est = torch.tensor([[3.0, 4.0, 1.0, 1.5],    # r0: ||(3,4)|| = 5 -> 5 - 2 = 3; r1: 0.5 <= 1 -> 0
                        [1.0, 1.0, 1.0, 1.0],    # inside both balls -> 0
                        [0.0, 0.0, 4.0, 5.0],    # r0: 0; r1: ||(3,4)|| = 5 -> 5 - 1 = 4
                        [90.0, 90.0, 90.0, 90.0]])  # not hidden: ignored
    hidden = torch.tensor([[True], [True], [True], [False]])

    loss = anatomical_loss([est], hidden, stats, ("a",), kappa=2.0)

    assert loss.item() == pytest.approx((3.0 + 0.0 + 4.0) / 3)


def test_anatomical_loss_is_zero_inside_the_kappa_sigma_ball():
    stats = _anat_stats(mu=[0.5, -0.5, 2.0], sigma=[1.0, 2.0])  # partitions [0:2], [2:3]
    g = _gen(3)
    direction = torch.randn(200, 3, generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True)
    est = torch.tensor([0.5, -0.5, 2.0]) + 0.99 * 2.0 * 1.0 * direction  # norm per partition <= 1.98 < 2

    loss = anatomical_loss([est], torch.ones(200, 1, dtype=torch.bool), stats, ("a",), kappa=2.0)

    assert loss.item() == 0.0


def test_anatomical_loss_grows_linearly_outside_the_ball():
    stats = _anat_stats(mu=[0.0, 0.0], sigma=[1.0], partitions=1)
    direction = torch.tensor([[0.6, 0.8]])
    hidden = torch.ones(1, 1, dtype=torch.bool)

    values = [anatomical_loss([t * direction], hidden, stats, ("a",), kappa=1.5).item() for t in (1.0, 2.0, 4.0, 6.0)]

    assert values[0] == 0.0
    assert values[1] == pytest.approx(0.5)
    assert values[2] == pytest.approx(2.5)
    assert values[3] - values[2] == pytest.approx(2.0)  # slope 1 in distance


def test_task_loss_prefers_correct_risk_ordering():
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    correct = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])  # earlier death = higher risk

    good = task_loss(correct, time, event)
    bad = task_loss(-correct, time, event)

    assert good.item() < bad.item()


# ---- training ------------------------------------------------------------------------------------
@pytest.fixture
def train_setup(site_factory, dims, tier1_cfg):
    site = load_site(site_factory(n=80, seed=0, absent_rate=0.4), expected=dims)
    sums = add_sums([local_feature_sums(site, site.indices("train"), 5)])
    stats = FeatureStats.from_sums(sums, dims, tier1_cfg.anat_partitions)
    data = build_tensors(site, stats, max_instances=tier1_cfg.max_instances, seed=0).subset(site.indices("train"))
    cfg = RunConfig(seed=0, batch_size=16, lr=1e-2, model=tier1_cfg)
    return data, stats, cfg


def _cox(model, data) -> float:
    risk = torch.as_tensor(predict_risk(model, data))
    return task_loss(risk, data.time, data.event).item()


def test_train_tier1_lowers_cox_loss_and_learns_the_signal(train_setup, dims):
    data, stats, cfg = train_setup
    model = build_model(dims, cfg.model, cfg.seed)
    before = _cox(model, data)

    result = train_tier1(model, data, stats, cfg, epochs=8, seed=1)

    after = _cox(model, data)
    c = concordance_counts(data.time.numpy(), predict_risk(model, data), data.event.numpy()).c_index()
    assert after < before
    assert c > 0.6
    assert result.n_examples == len(data)
    assert all(math.isfinite(v) for v in result.metrics().values())
    assert set(result.metrics()) == {"train-loss", "train-task", "train-rec", "train-anat", "train-nll"}


@pytest.mark.parametrize("modality_dropout", [0.3, 0.0])
def test_train_tier1_is_deterministic_for_a_seed(train_setup, dims, modality_dropout):
    data, stats, cfg = train_setup
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"modality_dropout": modality_dropout})})
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    runs = []
    for _ in range(2):
        model = build_model(dims, cfg.model, cfg.seed)
        train_tier1(model, data, stats, cfg, epochs=2, seed=5)
        runs.append(get_weights(model))
    other = build_model(dims, cfg.model, cfg.seed)
    train_tier1(other, data, stats, cfg, epochs=2, seed=6)

    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], v) for k, v in get_weights(other).items())


def _distance(w: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((w[k] - ref[k]) ** 2).sum() for k in ref)))


def test_fedprox_term_keeps_weights_close_to_the_start(train_setup, dims):
    data, stats, cfg = train_setup
    start = get_weights(build_model(dims, cfg.model, cfg.seed))
    distances = {}
    for mu in (0.0, 1e4):
        model = build_model(dims, cfg.model, cfg.seed)
        train_tier1(model, data, stats, cfg, epochs=3, seed=2, proximal_mu=mu)
        distances[mu] = _distance(get_weights(model), start)

    assert distances[1e4] < 0.5 * distances[0.0]
    assert distances[0.0] > 0


def test_weights_round_trip_through_numpy(dims, tier1_cfg):
    a = build_model(dims, tier1_cfg, 1)
    b = build_model(dims, tier1_cfg, 2)

    set_weights(b, get_weights(a))

    assert all(np.array_equal(v, get_weights(a)[k]) for k, v in get_weights(b).items())
    with pytest.raises(ValueError, match="do not match"):
        set_weights(b, {k: v for k, v in get_weights(a).items() if not k.startswith("head")})


# ---- SiteSession end to end ----------------------------------------------------------------
def test_site_session_runs_every_phase_and_returns_only_scalars(site_factory, dims, tier1_cfg):
    path = site_factory(n=50, seed=3, n_empty=2)
    session = SiteSession(path, device="cpu")
    cfg = RunConfig(seed=0, batch_size=16, local_epochs=1, model=tier1_cfg, hist_bins=64, dp=DPConfig(enabled=False))  # the non-DP path (DP-SGD: tests/test_dp.py)
    grid = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)

    session.bind_schema(dims)
    sums = session.feature_sums(cfg.min_stat_count)
    stats = FeatureStats.from_sums(add_sums([sums]), dims, cfg.model.anat_partitions)
    session.setup(cfg, FeatureStats.from_arrays(stats.to_arrays(), cfg.model.anat_partitions))
    start = get_weights(build_model(dims, cfg.model, cfg.seed))
    weights, result = session.train(start, server_round=1)
    weights_again, _ = session.train(start, server_round=1)
    session.freeze(weights)
    counts, n_values = session.histogram(grid)
    metrics = session.evaluate(None, FittedTwoTier(1e-3))  # Tier 1 only; its weights were fixed by histogram()

    assert all(isinstance(v, np.ndarray) for v in sums.values())
    assert set(weights) == set(start)
    assert any(not np.array_equal(weights[k], start[k]) for k in start)
    assert all(np.array_equal(weights[k], weights_again[k]) for k in start)  # seeded per site and round
    assert result.n_examples == len(session.data.indices("train"))
    assert len(counts) == grid.n_bins
    assert int(counts.sum()) == n_values > 0
    assert EVALUATE_KEYS <= set(metrics)
    assert all(type(v) is float for v in metrics.values()), {k: type(v) for k, v in metrics.items()}
    n = metrics["n-test"]
    assert n == len(session.data.indices("test"))
    assert metrics["routed-tier1"] + metrics["routed-tier2"] + metrics["routed-abstain"] == n
    assert metrics["routed-abstain"] >= 1  # the patient without any modality
    assert metrics["masked-complete-referred"] <= metrics["masked-complete-n"]
    assert 0.0 <= metrics["referral-rate"] <= 1.0


def test_site_session_runs_the_tier2_phases_with_tier1_kept_frozen(site_factory, dims, tier1_cfg):
    from rmmfed.core.tier2.tier2 import build_tier2
    from rmmfed.core.tier2.tier2_config import Tier2Config
    from rmmfed.core.routing.risk_scale import RiskScale

    path = site_factory(n=50, seed=4, n_empty=2)
    session = SiteSession(path, device="cpu")
    t2 = Tier2Config(timesteps=100, sample_steps=4, samples=2, hidden_dim=32, branches=2, branch_dim=8, local_epochs=1)
    cfg = RunConfig(seed=0, batch_size=16, model=tier1_cfg, tier2=t2, hist_bins=64, dp=DPConfig(enabled=False))  # the non-DP path (DP-SGD: tests/test_dp.py)
    grid = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    session.bind_schema(dims)
    stats = FeatureStats.from_sums(add_sums([session.feature_sums(cfg.min_stat_count)]), dims, cfg.model.anat_partitions)
    session.setup(cfg, stats)
    tier1, _ = session.train(get_weights(build_model(dims, cfg.model, cfg.seed)), server_round=1)
    session.freeze(tier1)
    session.histogram(grid)

    tier2, losses = session.train_tier2(get_weights(build_tier2(dims, t2, 0, tier1=cfg.model)), server_round=1)
    counts, sums = session.tier2_calibration(tier2, grid)
    metrics = session.evaluate(tier2, FittedTwoTier(0.0, float("inf"), RiskScale()))

    assert all(np.array_equal(session.tier1_frozen[k], tier1[k]) for k in tier1)
    assert np.isfinite(losses["tier2-loss"]) and losses["num-examples"] == len(session.data.indices("train"))
    assert int(counts.sum()) == sums["n-values"] > 0
    assert metrics["referred"] == metrics["routed-tier2"] > 0  # theta = 0: every patient with a gap is referred
    assert np.isfinite(metrics["recovery-sse-tier2"])
    assert all(type(v) is float for v in metrics.values())
