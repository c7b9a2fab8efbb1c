"""Tier 1's sigma^2 = epistemic (MC-dropout variance, eq. 3) + aleatoric (f_phi's predicted variance),
the switch between them, and the Gaussian NLL that trains the variance head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rmmfed.core.config import RunConfig
from rmmfed.core.errors import ConfigError
from rmmfed.core.data.tensors import SiteTensors
from rmmfed.core.model.tier1 import LOGVAR_MAX, LOGVAR_MIN, bounded_logvar, build_model
from rmmfed.core.model.tier1_loss import reconstruction_loss, variance_nll
from rmmfed.core.tier2.tier2_context import tier2_inputs
from rmmfed.core.routing.uncertainty import (aleatoric_variance, modality_sigma2, modality_variance, patient_uncertainty,
                                     risk_and_uncertainty, uncertainty)

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(tier1_cfg, definition: str):
    return tier1_cfg.model_copy(update={"uncertainty": definition})


def _tensors(dims, batch_factory, n: int = 6, seed: int = 0) -> SiteTensors:
    x, masks, _ = batch_factory(dims, batch=n, max_len=3, seed=seed, present=torch.ones(n, len(dims), dtype=torch.bool))
    target = tuple(torch.zeros(n, d) for d in dims.values())
    return SiteTensors(tuple(dims), tuple(x), tuple(masks), target, torch.ones(n, len(dims), dtype=torch.bool),
                       torch.arange(1, n + 1, dtype=torch.float32), torch.ones(n), tuple("" for _ in range(n)))


# ---- the switch --------------------------------------------------------------------------------
def test_epistemic_model_has_no_variance_head_and_otherwise_the_same_initial_weights(dims, tier1_cfg):
    total = build_model(dims, _cfg(tier1_cfg, "total"), 3).state_dict()
    epistemic = build_model(dims, _cfg(tier1_cfg, "epistemic"), 3).state_dict()

    head = {k for k in total if k.startswith("est_logvar.")}
    assert head == {f"est_logvar.{j}.{p}" for j in range(len(dims)) for p in ("weight", "bias")}
    assert set(epistemic) == set(total) - head
    assert all(torch.equal(epistemic[k], total[k]) for k in epistemic)


def test_epistemic_switch_reproduces_the_mc_dropout_only_sigma2(dims, tier1_cfg, batch_factory):
    model = build_model(dims, _cfg(tier1_cfg, "epistemic"), 0).eval()
    data = _tensors(dims, batch_factory)
    observed = torch.tensor([[True, False, False], [False, True, True]] * 3)

    got = uncertainty(model, data, observed, seed=5)
    torch.manual_seed(5)
    mc = model.mc_estimates(list(data.x), list(data.inst_mask), observed)
    expected = patient_uncertainty(modality_variance(mc), observed).numpy()

    np.testing.assert_array_equal(got, expected)


def test_total_sigma2_is_epistemic_plus_aleatoric_elementwise(dims, tier1_cfg, batch_factory):
    model = build_model(dims, _cfg(tier1_cfg, "total"), 0).eval()
    data = _tensors(dims, batch_factory)
    observed = torch.tensor([[True, False, True]] * 6)
    torch.manual_seed(0)
    passes = model.mc_passes(list(data.x), list(data.inst_mask), observed)

    epistemic = modality_sigma2(passes, "epistemic")
    aleatoric = modality_sigma2(passes, "aleatoric")
    total = modality_sigma2(passes, "total")

    assert passes.logvar.shape == (tier1_cfg.mc_samples, 6, len(dims))
    torch.testing.assert_close(aleatoric, passes.logvar.exp().mean(dim=0))
    torch.testing.assert_close(total, epistemic + aleatoric)
    assert (aleatoric > 0).all() and (epistemic > 0).all()


def test_total_or_aleatoric_sigma2_needs_the_variance_head(dims, tier1_cfg, batch_factory):
    model = build_model(dims, _cfg(tier1_cfg, "epistemic"), 0).eval()
    data = _tensors(dims, batch_factory, n=2)
    passes = model.mc_passes(list(data.x), list(data.inst_mask), torch.tensor([[True, False, False]] * 2))

    for definition in ("total", "aleatoric"):
        with pytest.raises(ConfigError, match="variance head"):
            modality_sigma2(passes, definition)
    with pytest.raises(ConfigError, match="not one of"):
        modality_sigma2(passes, "both")


def test_every_sigma2_caller_gives_the_same_values_for_the_same_seed(dims, tier1_cfg, batch_factory):
    model = build_model(dims, _cfg(tier1_cfg, "total"), 0)
    data = _tensors(dims, batch_factory, n=7)
    observed = torch.tensor([[False, True, True]] * 7)

    direct = uncertainty(model, data, observed, seed=11)
    _, with_risk = risk_and_uncertainty(model, data, observed, seed=11)
    _, _, var_k = tier2_inputs(model, data, observed, seed=11)
    torch.manual_seed(11)
    passes = model.mc_passes(list(data.x), list(data.inst_mask), observed)
    by_hand = patient_uncertainty(modality_variance(passes.x_hat) + aleatoric_variance(passes.logvar), observed)

    np.testing.assert_allclose(direct, by_hand.numpy(), rtol=1e-6)
    np.testing.assert_allclose(with_risk, direct, rtol=1e-6)
    np.testing.assert_allclose(patient_uncertainty(var_k, observed).numpy(), direct, rtol=1e-6)


def test_mc_passes_of_the_variance_head_come_from_the_one_batched_forward(dims, tier1_cfg, batch_factory):
    model = build_model(dims, _cfg(tier1_cfg, "total"), 0).eval()
    data = _tensors(dims, batch_factory, n=5)
    calls = []
    handle = model.est_logvar[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))

    passes = model.mc_passes(list(data.x), list(data.inst_mask), data.present, samples=9)
    handle.remove()

    assert calls == [9 * 5]
    assert passes.logvar.shape == (9, 5, len(dims))


# ---- the log-variance range ----------------------------------------------------------------------
def test_log_variance_is_bounded_increasing_and_the_identity_well_inside_the_range():
    raw = torch.tensor([-1e4, -50.0, -4.0, -2.0, 0.0, 50.0, 1e4])

    out = bounded_logvar(raw)

    assert (out >= LOGVAR_MIN).all() and (out <= LOGVAR_MAX + 1e-6).all()
    assert (out.diff() >= 0).all() and (out[1:-1].diff() > 0).all()
    torch.testing.assert_close(out[2:5], raw[2:5], atol=0.01, rtol=0.0)  # 5 or more from either bound


def test_calibration_histogram_grid_covers_the_aleatoric_range():
    cfg = RunConfig()

    assert cfg.hist_low < math.exp(LOGVAR_MIN)
    assert math.exp(LOGVAR_MAX) * 2 < cfg.hist_high  # room for the epistemic part on top


# ---- the Gaussian NLL ----------------------------------------------------------------------------
def test_variance_nll_trains_the_variance_and_never_the_estimate():
    x_hat = [torch.randn(4, 3, requires_grad=True)]
    logvar = torch.zeros(4, 1, requires_grad=True)
    target = (torch.randn(4, 3),)
    hidden = torch.tensor([[True], [True], [False], [True]])

    variance_nll(x_hat, logvar, target, hidden).backward()

    assert x_hat[0].grad is None or torch.equal(x_hat[0].grad, torch.zeros_like(x_hat[0]))
    assert logvar.grad[[0, 1, 3]].abs().min() > 0 and logvar.grad[2].item() == 0.0


def test_variance_nll_is_minimised_by_the_mean_squared_error():
    x_hat = [torch.zeros(2, 4)]
    target = (torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 0.0, 0.0]]),)  # MSE 1.0 and 1.0
    hidden = torch.ones(2, 1, dtype=torch.bool)
    grid = torch.linspace(-3, 3, 601)

    nll = torch.stack([variance_nll(x_hat, torch.full((2, 1), float(v)), target, hidden) for v in grid])

    assert abs(float(grid[nll.argmin()])) < 0.011  # log(1.0) = 0


def test_gaussian_nll_training_predicts_larger_variance_where_the_target_is_noisier(dims, tier1_cfg):
    """A real learning check: patients whose hidden modality b is noisy (std 1) vs quiet (std 0.1),
    told apart by the observed modality a; fresh noise every step, so only the variance can learn it."""
    torch.manual_seed(0)
    model = build_model(dims, _cfg(tier1_cfg, "total").model_copy(update={"dropout": 0.1}), 0)
    n, g = 64, torch.Generator().manual_seed(1)
    noisy = torch.arange(n) % 2 == 1
    x = [torch.zeros(n, 2, d) for d in dims.values()]
    x[0][:, :, 0] = torch.where(noisy, 2.0, -2.0).unsqueeze(1)
    masks = [torch.ones(n, 2, dtype=torch.bool) for _ in dims]
    observed = torch.tensor([True, False, False]).expand(n, -1)
    hidden = torch.tensor([False, True, False]).expand(n, -1)
    std = torch.where(noisy, 1.0, 0.1).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        target = tuple(torch.randn(n, d, generator=g) * std for d in dims.values())
        out = model(x, masks, observed)
        loss = reconstruction_loss(out.x_hat, target, hidden) + variance_nll(out.x_hat, out.logvar, target, hidden)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.manual_seed(2)
    var = aleatoric_variance(model.mc_passes(x, masks, observed).logvar)[:, 1]

    assert var[noisy].mean() > 10 * var[~noisy].mean()
    assert 0.5 < var[noisy].mean() < 2.0  # close to the true variance 1.0
