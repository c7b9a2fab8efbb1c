"""Privacy building blocks: discrete-time likelihood, DP-SGD Tier 1 training, private histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rmmfed.core.config import RunConfig
from rmmfed.core.survival.cox import cox_loss
from rmmfed.core.survival.discrete_time import (DiscreteTimeBaseline, discrete_time_loss, discrete_time_nll, interval_index,
                                       quantile_cuts)
from rmmfed.core.privacy.dp import (DPConfig, DPError, DPModelError, PerSampleTier1Loss, PrivacyBudgetExhausted,
                            SiteAccountant, per_sample_fn, train_tier1_dp, unwrap_state_dict, validate_for_dp)
from rmmfed.core.errors import ConfigError, HistogramError, SurvivalInputError
from rmmfed.core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums
from rmmfed.core.aggregates.histogram import HistogramGrid, quantile_from_counts
from rmmfed.core.privacy.private_histogram import (monotone_counts, noise_std, privatize_counts, suppress_small_bins,
                                           theta_error)
from rmmfed.core.data.site_data import load_site
from rmmfed.core.data.tensors import build_tensors
from rmmfed.core.model.tier1 import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus: secure RNG off, alpha range


# ---- discrete-time likelihood ------------------------------------------------------------------
def _naive_nll(risk, time, event, cuts, b):
    """Reference: loop over patients and intervals, plain Python floats."""
    out = []
    for r, t, e in zip(risk, time, event):
        k = sum(1 for c in cuts if t >= c)
        ll = 0.0
        for j in range(k):
            ll += math.log(1.0 - 1.0 / (1.0 + math.exp(-(b[j] + r))))
        h = 1.0 / (1.0 + math.exp(-(b[k] + r)))
        ll += math.log(h) if e else 0.5 * math.log(1.0 - h)
        out.append(-ll)
    return out


def _survival_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    risk = torch.randn(n, generator=g, dtype=torch.float64)
    time = torch.rand(n, generator=g, dtype=torch.float64) * 10 + 0.1
    event = (torch.rand(n, generator=g) < 0.6).to(torch.float64)
    return risk, time, event


def test_discrete_time_nll_equals_naive_loop():
    risk, time, event = _survival_batch(40, seed=0)
    cuts = torch.tensor([1.0, 2.5, 4.0, 7.0])
    time[:3] = torch.tensor([1.0, 7.0, 0.5], dtype=torch.float64)  # on a cut, on the last cut, first interval
    b = torch.tensor([-2.0, -1.5, -1.0, -0.5, 0.3], dtype=torch.float64)

    fast = discrete_time_nll(risk, time, event, cuts, b)

    ref = _naive_nll(risk.tolist(), time.tolist(), event.tolist(), cuts.tolist(), b.tolist())
    np.testing.assert_allclose(fast.numpy(), ref, rtol=1e-10)
    assert torch.isclose(discrete_time_loss(risk, time, event, cuts, b), fast.mean())


def test_a_time_on_a_cut_goes_to_the_upper_interval():
    assert interval_index(torch.tensor([0.5, 1.0, 2.0, 9.0]), torch.tensor([1.0, 2.0])).tolist() == [0, 1, 2, 2]


def test_per_sample_losses_are_independent_of_other_patients():
    risk, time, event = _survival_batch(12, seed=1)
    cuts, base = torch.tensor([2.0, 5.0]), DiscreteTimeBaseline(3).double()
    before = discrete_time_nll(risk, time, event, cuts, base).detach()
    risk2, time2, event2 = risk.clone(), time.clone(), event.clone()
    risk2[5], time2[5], event2[5] = 4.0, 0.2, 1.0 - event[5]

    after = discrete_time_nll(risk2, time2, event2, cuts, base).detach()

    changed = torch.arange(12) == 5
    assert torch.equal(before[~changed], after[~changed])
    assert not torch.equal(before[changed], after[changed])
    jac = torch.autograd.functional.jacobian(lambda r: discrete_time_nll(r, time, event, cuts, base), risk)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0  # d loss_i / d risk_j = 0, i != j


def test_cox_loss_couples_patients_unlike_the_discrete_time_loss():
    risk, time, event = _survival_batch(12, seed=2)
    risk.requires_grad_(True)
    grad_i = torch.autograd.grad(cox_loss(risk, time, event), risk)[0]
    risk2 = risk.detach().clone()
    risk2[0] += 3.0
    grad_i2 = torch.autograd.grad(cox_loss(risk2.requires_grad_(True), time, event), risk2)[0]
    assert not torch.allclose(grad_i[1:], grad_i2[1:])  # patient 0 moved everyone's Cox gradient


def test_discrete_time_gradients_pass_gradcheck_and_have_the_survival_sign():
    risk, time, event = _survival_batch(8, seed=3)
    cuts = torch.tensor([2.0, 5.0])
    b = torch.tensor([-1.0, -0.5, 0.0], dtype=torch.float64, requires_grad=True)
    r = risk.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda rr, bb: discrete_time_nll(rr, time, event, cuts, bb), (r, b))
    early_death = discrete_time_nll(r[:1], torch.tensor([1.0]), torch.tensor([1.0]), cuts, b)
    late_censored = discrete_time_nll(r[1:2], torch.tensor([9.0]), torch.tensor([0.0]), cuts, b)
    assert torch.autograd.grad(early_death.sum(), r)[0][0] < 0  # raise risk for an early death
    assert torch.autograd.grad(late_censored.sum(), r)[0][1] > 0  # lower risk for a long survivor


def test_a_correct_ranking_gives_a_lower_loss():
    time = torch.linspace(0.5, 9.5, 30)
    event = torch.ones(30)
    cuts, b = quantile_cuts(time.numpy(), 5), torch.full((5,), -1.5)
    correct = -torch.linspace(-2, 2, 30)  # high risk for short times
    assert discrete_time_loss(correct, time, event, cuts, b) < discrete_time_loss(-correct, time, event, cuts, b)


@pytest.mark.parametrize("cuts, baseline, match", [
    pytest.param(torch.tensor([2.0, 1.0]), torch.zeros(3), "increasing", id="unsorted-cuts"),
    pytest.param(torch.tensor([1.0, 2.0]), torch.zeros(4), "len\\(cuts\\) \\+ 1", id="baseline-length"),
])
def test_bad_discrete_time_inputs_say_the_fix(cuts, baseline, match):
    with pytest.raises(SurvivalInputError, match=match):
        discrete_time_nll(torch.zeros(3), torch.ones(3), torch.ones(3), cuts, baseline)


# ---- DP-SGD training -----------------------------------------------------------------------------
@pytest.fixture
def dp_setup(site_factory, dims, tier1_cfg, single_thread):
    site = load_site(site_factory(n=60, seed=0), expected=dims)
    stats = FeatureStats.from_sums(add_sums([local_feature_sums(site, site.indices("train"), 1)]), dims,
                                   tier1_cfg.anat_partitions)
    data = build_tensors(site, stats, max_instances=tier1_cfg.max_instances, seed=0).subset(site.indices("train"))
    cfg = RunConfig(batch_size=8, model=tier1_cfg)
    return data, stats, cfg, quantile_cuts(data.time.numpy(), 4)


def _train(dp_setup, dims, acc, *, rounds=1, seed=0, budget=3, model=None, dp=DPConfig(enabled=True),
           noise_seed=None):
    data, stats, cfg, cuts = dp_setup
    model = model or build_model(dims, cfg.model, 0)
    out = []
    for r in range(rounds):
        out.append(train_tier1_dp(model, data, stats, cfg, dp, cuts=cuts, accountant=acc, epochs=1,
                                  seed=seed + r, total_epochs_budget=budget,
                                  noise_seed=None if noise_seed is None else noise_seed + r))
    return model, out


def test_dp_training_spends_epsilon_round_by_round_up_to_the_target(dp_setup, dims):
    acc = SiteAccountant()

    model, out = _train(dp_setup, dims, acc, rounds=3, budget=3)

    totals = [eps for _, eps in out]
    assert all(math.isfinite(e) and e > 0 for e in totals)
    assert totals[0] < totals[1] < totals[2] <= 8.0
    assert totals[2] > 7.5  # the plan uses (almost) all of the budget
    assert out[0][0].epsilon_round == pytest.approx(totals[0])
    assert all(np.isfinite(v).all() for v in out[-1][0].weights.values())
    assert out[-1][0].metrics()["dp-epsilon"] == totals[2]


def test_a_site_that_lost_its_accountant_counts_the_earlier_rounds_as_spent(dp_setup, dims):
    data, stats, cfg, cuts = dp_setup
    _, straight = _train(dp_setup, dims, SiteAccountant(), rounds=3, budget=3)
    per_round = straight[0][0].steps
    steps = lambda acc: sum(k for _, _, k in acc.history)  # noqa: E731 - Opacus merges equal rows
    # Round 3 of a resumed run: the site's state (accountant) is fresh, two rounds came before.
    fresh = SiteAccountant()
    _, eps = train_tier1_dp(build_model(dims, cfg.model, 0), data, stats, cfg, DPConfig(enabled=True), cuts=cuts,
                            accountant=fresh, epochs=1, seed=2, total_epochs_budget=3, rounds_before=2)
    assert steps(fresh) == 3 * per_round
    assert eps == pytest.approx(straight[2][1])  # the same cumulative epsilon as without the restart
    # Only an empty accountant is filled in: a site that kept its history is not charged twice.
    kept = SiteAccountant()
    _train(dp_setup, dims, kept, rounds=1, budget=3)
    train_tier1_dp(build_model(dims, cfg.model, 0), data, stats, cfg, DPConfig(enabled=True), cuts=cuts,
                   accountant=kept, epochs=1, seed=1, total_epochs_budget=3, rounds_before=1)
    assert steps(kept) == 2 * per_round


def test_returned_weights_are_unwrapped_with_the_original_keys_and_shapes(dp_setup, dims):
    data, stats, cfg, cuts = dp_setup
    original = {k: tuple(v.shape) for k, v in build_model(dims, cfg.model, 0).state_dict().items()}

    model, out = _train(dp_setup, dims, SiteAccountant())

    weights = out[0][0].weights
    assert {k: v.shape for k, v in weights.items()} == original
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(weights[k], v.numpy())
    assert unwrap_state_dict({"_module._module.tier1.head.0.weight": torch.zeros(2),
                              "_module.baseline.logit": torch.zeros(3)}).keys() == {"head.0.weight"}


def test_accountant_state_survives_serialisation_between_rounds(dp_setup, dims):
    acc = SiteAccountant()
    model, _ = _train(dp_setup, dims, acc, rounds=1, budget=3)
    restored = SiteAccountant.from_arrays({k: v.copy() for k, v in acc.to_arrays().items()})

    _, out = _train(dp_setup, dims, restored, rounds=1, seed=1, budget=3, model=model)

    assert restored.epsilon(1e-5) == pytest.approx(out[0][1])
    assert out[0][1] > acc.epsilon(1e-5)
    assert SiteAccountant().epsilon(1e-5) == 0.0


def test_dp_batch_size_sets_tier1s_poisson_sample_rate_and_the_run_batch_size_applies_without_it(dp_setup, dims):
    data, _, cfg, _ = dp_setup
    n = len(data)
    for dp, batch in ((DPConfig(enabled=True), cfg.batch_size), (DPConfig(enabled=True, batch_size=16), 16)):
        acc = SiteAccountant()
        _, out = _train(dp_setup, dims, acc, rounds=2, budget=2, dp=dp)
        batches = -(-n // batch)  # one epoch of the loader
        assert [q for _, q, _ in acc.history] == pytest.approx([1.0 / batches] * len(acc.history))
        assert sum(k for _, _, k in acc.history) == 2 * batches and out[-1][1] <= 8.0 + 1e-6


def test_a_round_beyond_the_planned_budget_is_refused(dp_setup, dims):
    acc = SiteAccountant()
    model, _ = _train(dp_setup, dims, acc, rounds=1, budget=1)
    with pytest.raises(PrivacyBudgetExhausted, match="Fix"):
        _train(dp_setup, dims, acc, rounds=1, seed=1, budget=1, model=model)


def test_dp_training_is_reproducible_only_with_an_explicit_noise_seed(dp_setup, dims):
    _, a = _train(dp_setup, dims, SiteAccountant(), seed=4, noise_seed=11)
    _, b = _train(dp_setup, dims, SiteAccountant(), seed=4, noise_seed=11)
    for k in a[0][0].weights:
        np.testing.assert_array_equal(a[0][0].weights[k], b[0][0].weights[k])


def test_dp_noise_is_not_a_function_of_the_coordinators_seed(dp_setup, dims):
    """The run's seed and round are the coordinator's: the noise comes from OS entropy instead."""
    _, a = _train(dp_setup, dims, SiteAccountant(), seed=4)
    _, b = _train(dp_setup, dims, SiteAccountant(), seed=4)
    differ = [k for k in a[0][0].weights if not np.array_equal(a[0][0].weights[k], b[0][0].weights[k])]
    assert len(differ) == len(a[0][0].weights)


def test_a_dp_round_sends_the_accountants_figures_and_no_training_loss(dp_setup, dims):
    _, out = _train(dp_setup, dims, SiteAccountant())
    assert set(out[0][0].metrics()) == {"dp-epsilon-round", "dp-epsilon", "dp-delta", "dp-noise-multiplier"}


def test_per_sample_gradients_match_single_patient_autograd(dp_setup, dims, tier1_cfg):
    data, stats, cfg, cuts = dp_setup
    model = build_model(dims, tier1_cfg.model_copy(update={"dropout": 0.0, "input_dropout": 0.0}), 0)
    net = PerSampleTier1Loss(model, DiscreteTimeBaseline(len(cuts) + 1), cuts, stats, 2.0, separate_rec_view=False)
    w = torch.tensor([1.0, 0.1, 1.0, 1.0])  # rec, anat, task, nll (the variance head's weights too)
    b = data.subset(np.arange(5))
    obs = b.present.clone()
    obs[:, 0] = False  # hide modality a where present
    batch = (*b.x, *b.inst_mask, *b.target, obs, obs, b.present, b.time, b.event)
    params = dict(net.named_parameters())

    grads, _ = per_sample_fn(net, w)(params, *batch)

    for i in (0, 3):
        net.zero_grad()
        (net(*(t[i:i + 1] for t in batch))[0] * w).sum().backward()
        for name, p in params.items():
            torch.testing.assert_close(grads[name][i], p.grad if p.grad is not None else torch.zeros_like(p),
                                       rtol=1e-4, atol=1e-6)


def test_an_unsupported_layer_is_refused_before_training_with_the_fix(dp_setup, dims):
    data, stats, cfg, cuts = dp_setup
    model = build_model(dims, cfg.model, 0)
    model.norm = nn.BatchNorm1d(4)
    with pytest.raises(DPModelError, match="BatchNorm.*Fix: .*ModuleValidator.fix"):
        _train(dp_setup, dims, SiteAccountant(), model=model)
    with pytest.raises(DPModelError, match="training mode"):
        validate_for_dp(nn.Linear(2, 2).eval())


@pytest.mark.parametrize("text", [pytest.param("", id="empty"), pytest.param("365,180", id="decreasing"),
                                  pytest.param("0,180", id="zero"), pytest.param("a,b", id="not-numbers")])
def test_configured_time_cuts_must_be_increasing_positive_times(text):
    with pytest.raises(ConfigError, match="Fix: set e.g. dp.time-cuts"):
        DPConfig(time_cuts=text).cuts()


def test_dp_training_takes_the_cuts_from_the_config(dp_setup, dims):
    data, stats, cfg, _ = dp_setup
    dp = DPConfig(enabled=True, time_cuts="5, 10, 20")
    assert DPConfig(time_cuts="5, 10, 20").cuts() == (5.0, 10.0, 20.0)
    result, eps = train_tier1_dp(build_model(dims, cfg.model, 0), data, stats, cfg, dp, accountant=SiteAccountant(),
                                 epochs=1, seed=0, total_epochs_budget=2)
    assert result.baseline.shape == (4,) and 0 < eps <= 8.0 and result.n_examples == len(data)


def test_a_delta_not_below_one_over_n_is_refused(dp_setup, dims):
    with pytest.raises(DPError, match="target-delta"):
        _train(dp_setup, dims, SiteAccountant(), dp=DPConfig(enabled=True, target_delta=0.5))


# ---- private histograms --------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["geometric", "laplace"])
def test_histogram_noise_has_the_calibrated_scale(mechanism):
    counts = np.full(40_000, 1_000)
    eps, sens = 0.5, 2.0

    noise = privatize_counts(counts, eps, np.random.default_rng(0), sensitivity=sens, mechanism=mechanism) - counts

    assert abs(noise.mean()) < 0.1
    assert noise.std() == pytest.approx(noise_std(eps, sens, mechanism), rel=0.03)
    assert noise_std(eps, sens, mechanism) == pytest.approx(math.sqrt(2) * sens / eps, rel=0.05)
    assert np.abs(noise).mean() == pytest.approx(sens / eps, rel=0.05)


def test_noisy_counts_are_non_negative_integers_and_seeded():
    counts = np.zeros(500, dtype=np.int64)
    a = privatize_counts(counts, 0.1, np.random.default_rng(3))
    b = privatize_counts(counts, 0.1, np.random.default_rng(3))
    c = privatize_counts(counts, 0.1, np.random.default_rng(4))
    assert a.dtype == np.int64 and (a >= 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (privatize_counts(counts, 0.1, np.random.default_rng(3), clip=False) < 0).any()


def test_small_bins_merge_toward_the_median_keeping_the_total():
    counts = np.array([1, 0, 2, 10, 20, 10, 3, 0, 1])

    out = suppress_small_bins(counts, 5)

    np.testing.assert_array_equal(out, [0, 0, 0, 13, 20, 14, 0, 0, 0])
    assert not ((out > 0) & (out < 5)).any()
    grid = HistogramGrid(1e-3, 1e3, 9)
    assert quantile_from_counts(grid, out, 0.95) <= quantile_from_counts(grid, counts, 0.95)  # safe side


def test_monotone_counts_are_non_negative_with_a_monotone_cdf():
    noisy = np.array([3, -2, 0, 5, -4, 1])
    out = monotone_counts(noisy)
    assert (out >= 0).all() and out.sum() == np.maximum.accumulate(np.clip(np.cumsum(noisy), 0, None))[-1]


def test_theta_error_grows_as_epsilon_shrinks():
    grid = HistogramGrid(1e-3, 10.0, 32)
    values = np.exp(np.random.default_rng(0).normal(np.log(0.05), 0.8, size=900))
    counts = grid.counts(values)

    e_inf = theta_error(grid, counts, 0.95, 1e6, trials=20, seed=0)
    e1 = theta_error(grid, counts, 0.95, 1.0, trials=200, seed=0)
    e01 = theta_error(grid, counts, 0.95, 0.1, trials=200, seed=0)

    assert e_inf < 1e-9
    assert 0 < e1 < e01
    assert e1 == theta_error(grid, counts, 0.95, 1.0, trials=200, seed=0)  # seeded
    assert theta_error(grid, counts, 0.95, 1.0, sensitivity=3, trials=200, seed=0) > e1


@pytest.mark.parametrize("kwargs, match", [
    pytest.param({"epsilon": 0.0}, "epsilon", id="zero-epsilon"),
    pytest.param({"epsilon": 1.0, "sensitivity": 0.5}, "sensitivity", id="sensitivity-below-one"),
])
def test_bad_privacy_parameters_say_the_fix(kwargs, match):
    with pytest.raises(HistogramError, match=match):
        privatize_counts(np.ones(4), rng=np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize("definition", ["total", "epistemic"])
def test_dp_sgd_gives_the_variance_head_per_patient_gradients_when_there_is_one(dp_setup, dims, definition):
    data, stats, cfg, cuts = dp_setup
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"uncertainty": definition})})
    model = build_model(dims, cfg.model, 0)
    net = PerSampleTier1Loss(model, DiscreteTimeBaseline(len(cuts) + 1), cuts, stats, 2.0, separate_rec_view=False)
    b = data.subset(np.arange(6))
    obs = b.present.clone()
    obs[:, 0] = False  # hide modality a where present
    grads, comp = per_sample_fn(net, torch.tensor([1.0, 0.1, 1.0, 1.0]))(
        dict(net.named_parameters()), *b.x, *b.inst_mask, *b.target, obs, obs, b.present, b.time, b.event)

    _, out = _train((data, stats, cfg, cuts), dims, SiteAccountant(), model=model)

    head = [k for k in grads if ".est_logvar." in k]
    hid_a = b.present[:, 0]
    if definition == "epistemic":
        assert not head and out[0][0].train.nll is None and torch.equal(comp[:, 3], torch.zeros(6))
    else:
        assert len(head) == 2 * len(dims) and math.isfinite(out[0][0].train.nll)
        bias_a = grads["tier1.est_logvar.0.bias"].reshape(6)
        assert (bias_a[hid_a] != 0).all() and (bias_a[~hid_a] == 0).all()  # only where a was hidden


def test_linear_train_parts_move_only_the_linear_path_and_leave_the_zeroed_head_at_zero(dp_setup, dims):
    from rmmfed.core.privacy.dp import zero_risk_head
    from rmmfed.core.model.weights import get_weights, set_weights

    data, stats, cfg, cuts = dp_setup
    model = build_model(dims, cfg.model, 0)
    set_weights(model, zero_risk_head(get_weights(model)))
    before = {k: v.copy() for k, v in get_weights(model).items()}
    dp = DPConfig(enabled=True, train_parts="linear")
    _, out = _train(dp_setup, dims, SiteAccountant(), rounds=2, budget=2, model=model, dp=dp, noise_seed=5)
    after = out[-1][0].weights
    moved = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert moved == ["linear.weight"], moved
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone after the round
    model.eval()
    with torch.no_grad():  # the network adds nothing: the risk is the linear path's alone
        model.linear.weight.zero_()
        x, m = data.x, data.inst_mask
        assert torch.count_nonzero(model(x, m, data.present).risk) == 0


def test_linear_train_parts_need_the_linear_path(dp_setup, dims, tier1_cfg):
    data, stats, cfg, cuts = dp_setup
    cfg = RunConfig(batch_size=8, model=tier1_cfg.model_copy(update={"linear_path": False}))
    with pytest.raises(DPError, match="linear-path"):
        train_tier1_dp(build_model(dims, cfg.model, 0), data, stats, cfg, DPConfig(enabled=True, train_parts="linear"),
                       cuts=cuts, accountant=SiteAccountant(), epochs=1, seed=0, total_epochs_budget=1)


def test_a_run_config_asking_linear_dp_without_the_linear_path_is_refused_before_round_1():
    with pytest.raises(ConfigError, match="model.linear-path = true"):
        RunConfig().with_overrides({"dp.train-parts": "linear", "model.linear-path": False})


@pytest.mark.parametrize("dp_lr, expected", [(0.0, 0.002), (0.01, 0.01)])
def test_a_tier1_dp_round_steps_at_dp_lr_and_at_the_runs_lr_when_it_is_zero(site_factory, dims, tier1_cfg, monkeypatch,
                                                                            dp_lr, expected):
    """dp.lr is Tier 1's peak rate under DP-SGD (round 1 of the cosine schedule is the peak); 0 keeps lr."""
    from rmmfed.core.site import site_dp
    from rmmfed.core.site.site_session import SiteSession

    seen = {}

    def record(*args, **kwargs):
        seen["lr"] = kwargs["lr"]
        raise RuntimeError("recorded")

    monkeypatch.setattr(site_dp, "train_tier1_dp", record)
    s = SiteSession(site_factory(n=60, seed=0), device="cpu")
    s.bind_schema(dims)
    stats = FeatureStats.from_sums(add_sums([s.feature_sums(1)]), dims, tier1_cfg.anat_partitions)
    s.setup(RunConfig(batch_size=8, lr=0.002, model=tier1_cfg).with_overrides(
        {"dp.lr": dp_lr, "dp.time-cuts": "5,10,20"}), stats)
    with pytest.raises(RuntimeError, match="recorded"):
        site_dp.train_tier1_round_dp(s, s.model(), seed=0, proximal_mu=0.0, server_round=1)
    assert seen["lr"] == pytest.approx(expected)
