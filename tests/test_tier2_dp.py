"""Tier 2 under DP-SGD (core/tier2/tier2_dp.py): per-patient gradients, clipping, noise source, accounting."""

from __future__ import annotations

import math

import pytest
import torch

from rmmfed.core.config import DPConfig, Tier1Config
from rmmfed.core.privacy.dp import DPError, PrivacyBudgetExhausted, SiteAccountant
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2 import build_tier2, concat_modalities
from rmmfed.core.tier2.tier2_config import Tier2Config
from rmmfed.core.tier2.tier2_context import PatternBank, bag_encodings, tier1_slots
from rmmfed.core.tier2.tier2_dp import (PerSampleTier2Loss, Tier2DPConfigError, batch_inputs, per_sample_fn,
                                  train_tier2_dp)
from rmmfed.core.tier2.tier2_context import tier2_inputs

from test_tier2 import TINY, make_site

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),  # Opacus: secure RNG off, alpha range
              pytest.mark.usefixtures("single_thread")]

CFG = Tier2Config(timesteps=50, **TINY)
DP = DPConfig(enabled=True, target_delta=1e-3, max_grad_norm=1.0)
KEYS = {"loss", "ddpm", "cons", "div", "task", "steps"}


def _site(dims, n=40, seed=0):
    present = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) < 0.7
    present[:, 0] = True
    return make_site(dims, n, seed=seed, present=present)


def _models(dims, tier1_cfg, cfg=CFG):
    return build_model(dims, tier1_cfg, seed=0), build_tier2(dims, cfg, seed=0, tier1=tier1_cfg)


def _round(tier2, tier1, data, *, cfg=CFG, dp=DP, accountant=None, eps=5.0, steps=4, budget=12, lr=1e-3,
           batch_size=16, seed=0, **kw):
    accountant = SiteAccountant() if accountant is None else accountant
    return train_tier2_dp(tier2, tier1, data, cfg, dp, accountant=accountant, target_epsilon=eps, steps=steps,
                          total_steps_budget=budget, lr=lr, batch_size=batch_size, seed=seed, **kw)


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_dp_round_changes_weights_spends_epsilon_within_target_and_accounts_its_steps(dims, tier1_cfg):
    data = _site(dims)
    tier1, tier2 = _models(dims, tier1_cfg)
    before, acc = _weights(tier2), SiteAccountant()

    metrics, eps = _round(tier2, tier1, data, accountant=acc)

    assert set(metrics) == KEYS and metrics["steps"] == 4.0
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["div"] == metrics["task"] == 0.0
    assert metrics["loss"] == pytest.approx(metrics["ddpm"] + CFG.alpha_cons * metrics["cons"])
    assert all(torch.isfinite(p).all() for p in tier2.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tier2.parameters()))
    assert 0.0 < eps <= 5.0 and eps == acc.epsilon(DP.target_delta)
    n_pool = int((data.present.sum(dim=1) >= 2).sum())
    (sigma, q, steps), = acc.history
    assert q == pytest.approx(16 / n_pool) and steps == 4 and sigma > 0
    assert all(not hasattr(p, "grad_sample") and p.grad is None for p in tier2.parameters())

    _, eps2 = _round(tier2, tier1, data, accountant=acc, seed=1)  # the second round of the plan
    assert acc.history == [(sigma, q, 8)] and eps < eps2 <= 5.0 * 1.001


def test_round_is_refused_before_training_when_the_budget_is_spent(dims, tier1_cfg):
    data = _site(dims)
    tier1, tier2 = _models(dims, tier1_cfg)
    acc = SiteAccountant()
    for r in range(3):  # the whole plan: 3 rounds of 4 steps
        _round(tier2, tier1, data, accountant=acc, seed=r)
    spent, history, before = acc.epsilon(DP.target_delta), list(acc.history), _weights(tier2)

    with pytest.raises(PrivacyBudgetExhausted):
        _round(tier2, tier1, data, accountant=acc, seed=3)

    assert spent <= 5.0 * 1.001 and acc.history == history
    assert all(torch.equal(a, b) for a, b in zip(before, tier2.parameters()))


def test_a_site_that_lost_its_accountant_counts_the_earlier_rounds_as_spent(dims, tier1_cfg):
    data = _site(dims)
    tier1, tier2 = _models(dims, tier1_cfg)
    acc = SiteAccountant()
    _, eps = _round(tier2, tier1, data, accountant=acc, rounds_before=2)  # the plan's last round
    assert sum(k for _, _, k in acc.history) == 12 and eps <= 5.0 * 1.001
    with pytest.raises(PrivacyBudgetExhausted):
        _round(tier2, tier1, data, accountant=SiteAccountant(), rounds_before=3)


def test_tier1_is_unchanged_and_its_flags_and_the_global_rng_are_restored(dims, tier1_cfg):
    data = _site(dims)
    tier1, tier2 = _models(dims, tier1_cfg)
    tier1.train()
    next(iter(tier1.parameters())).requires_grad_(False)  # a mixed set of flags comes back as it was
    flags = [p.requires_grad for p in tier1.parameters()]
    state = {k: v.clone() for k, v in tier1.state_dict().items()}
    rng = torch.get_rng_state()

    _round(tier2, tier1, data)

    assert all(torch.equal(state[k], v) for k, v in tier1.state_dict().items())
    assert [p.requires_grad for p in tier1.parameters()] == flags and tier1.training
    assert all(p.grad is None for p in tier1.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_noise_comes_from_os_entropy_unless_an_explicit_noise_seed_is_given(dims, tier1_cfg):
    data = _site(dims)
    tier1 = build_model(dims, tier1_cfg, seed=0)

    def run(noise_seed):
        tier2 = build_tier2(dims, CFG, seed=0, tier1=tier1_cfg)
        _round(tier2, tier1, data, seed=7, noise_seed=noise_seed)
        return _weights(tier2)

    a, b = run(None), run(None)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))  # same seed, fresh noise
    c, d = run(11), run(11)
    assert all(torch.equal(x, y) for x, y in zip(c, d))  # the reproducible-simulation switch
    assert any(not torch.equal(x, y) for x, y in zip(c, run(12)))


def test_per_sample_gradients_equal_each_patients_own_gradient(dims, tier1_cfg):
    data = _site(dims, n=12)
    tier1, tier2 = _models(dims, tier1_cfg)
    torch.nn.init.normal_(tier2.denoiser.outp.weight, std=0.1)  # x0-residual starts at 0: make every layer count
    for p in tier1.parameters():
        p.requires_grad_(False)
    tier1.eval()
    bank = PatternBank.build(tier1, data, seed=0)
    pool = bank.trainable()[:5]
    g = torch.Generator().manual_seed(0)
    pattern = bank.draw(pool, g)
    ts = torch.randint(0, CFG.timesteps, (len(pool),), generator=g)
    noise = torch.randn(len(pool), sum(dims.values()), generator=g)
    batch = batch_inputs(tier2, tier1, bank, concat_modalities(data.target), pool, pattern, ts, noise)
    net = PerSampleTier2Loss(tier2, tier1, CFG)
    params = dict(net.named_parameters())
    assert set(params) == {f"tier2.{k}" for k, _ in tier2.named_parameters()}  # Tier 1 is not trained
    weights = torch.tensor([1.0, CFG.alpha_cons])

    grads, comp = per_sample_fn(net, weights)(params, *batch)

    for i in range(len(pool)):
        loss = (net(*(x[i:i + 1] for x in batch))[0] * weights).sum()
        own = torch.autograd.grad(loss, list(params.values()))
        for (name, _), ref in zip(params.items(), own):
            assert torch.allclose(grads[name][i], ref, atol=1e-5, rtol=1e-4), name
    assert comp.shape == (len(pool), 2) and torch.all(comp >= 0)


@pytest.mark.parametrize("clip, bounded", [(1e-10, True), (1e3, False)])
def test_per_patient_clipping_bounds_the_first_adam_step(dims, tier1_cfg, clip, bounded):
    """One step over the whole pool (q = 1): the noised mean gradient has |g| <= C (1 + 6 sigma / N) per
    coordinate, and Adam's first step is lr g / (|g| + eps), so a tiny C moves no weight by more than
    lr C' / (C' + eps); without effective clipping the step is about lr."""
    data = _site(dims)
    cfg = Tier2Config(timesteps=50, ema_decay=0.0, **TINY)
    tier1, tier2 = _models(dims, tier1_cfg, cfg)
    before, lr, n_pool = _weights(tier2), 1e-2, int((data.present.sum(dim=1) >= 2).sum())
    dp = DPConfig(enabled=True, target_delta=1e-3, max_grad_norm=clip, noise_multiplier=1.0)

    _round(tier2, tier1, data, cfg=cfg, dp=dp, eps=10.0, steps=1, budget=1, lr=lr, batch_size=10_000,
           weight_decay=0.0)

    step = max(float((a - b).abs().max()) for a, b in zip(before, tier2.parameters()))
    c = clip * (1 + 6 * 1.0 / n_pool)
    if bounded:
        assert 0 < step <= lr * c / (c + 1e-8)
    else:
        assert step > 0.5 * lr


def test_empty_poisson_batches_are_noise_only_steps(dims, tier1_cfg):
    data = _site(dims)
    tier1, tier2 = _models(dims, tier1_cfg)
    acc = SiteAccountant()
    metrics, _ = _round(tier2, tier1, data, accountant=acc, batch_size=1, steps=8, budget=8, eps=50.0,
                        noise_seed=0)  # q = 1 / N: about a third of the steps sample nobody
    assert metrics["steps"] == 8.0 and acc.history[0][2] == 8
    assert all(torch.isfinite(p).all() for p in tier2.parameters())


def test_branches_head_is_refused_with_a_typed_error_naming_the_fix(dims, tier1_cfg):
    cfg = Tier2Config(timesteps=50, risk_head="branches", **TINY)
    tier1, tier2 = _models(dims, tier1_cfg, cfg)
    with pytest.raises(Tier2DPConfigError, match="risk-head='tier1'") as info:
        _round(tier2, tier1, _site(dims), cfg=cfg)
    assert isinstance(info.value, DPError)


def test_three_dp_rounds_at_large_epsilon_reduce_the_recovery_error():
    """b = W a + 0.1 noise, Tier 1 untrained: the untrained Tier 2 (x0-residual) returns Tier 1's poor
    estimate; three DP rounds (epsilon 50 over the plan, OS-entropy noise) must learn b from a."""
    dims = {"a": 6, "b": 4}
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(123)) / 6**0.5
    train, test = make_site(dims, 256, seed=0, W=W), make_site(dims, 128, seed=1, W=W)
    t1cfg = Tier1Config(embed_dim=8, prompt_dim=3, attn_dim=4, hidden_dim=16, mc_samples=4)
    tier1 = build_model(dims, t1cfg, 0)
    cfg = Tier2Config(hidden_dim=32, time_dim=16, branch_dim=8, samples=2, sample_steps=4)
    tier2 = build_tier2(dims, cfg, seed=0, tier1=t1cfg)
    observed = torch.tensor([[True, False]]).expand(len(test), -1)
    x_obs, x_hat, s2 = tier2_inputs(tier1, test, observed, seed=5)
    enc = tier1_slots(tier1, bag_encodings(tier1, test), observed)

    def error() -> float:
        x_rec, _ = tier2.recover(x_obs, observed, x_hat, s2, samples=cfg.samples, steps=cfg.sample_steps,
                                 generator=torch.Generator().manual_seed(0), enc=enc)
        return float(((tier2.split(x_rec)[1] - test.target[1]) ** 2).mean())

    untrained, acc, ddpm = error(), SiteAccountant(), []
    for r in range(3):
        metrics, eps = _round(tier2, tier1, train, cfg=cfg, accountant=acc, eps=50.0, steps=40, budget=120,
                              lr=1e-2, batch_size=64, seed=r)
        ddpm.append(metrics["ddpm"])
    assert eps <= 50.0 * 1.001 and acc.history[0][0] < 1.0  # sigma: a real, if mild, amount of noise
    assert error() < 0.5 * untrained and ddpm[-1] < ddpm[0]
