"""Tier 1's linear Cox path, token fusion and training schedule."""

from __future__ import annotations

import math

import pytest
import torch

from rmmfed.core.config import RunConfig
from rmmfed.core.model.tier1 import bag_means, build_model
from rmmfed.core.model.train import local_epoch_count, round_lr

pytestmark = pytest.mark.usefixtures("single_thread")


def _zero_neural_head(model):
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()


def test_with_the_neural_head_silent_the_risk_is_a_linear_cox_model_of_means_and_flags(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg.model_copy(update={"estimator": False}), 0).eval()
    _zero_neural_head(model)
    beta = torch.randn(model.linear.weight.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.linear.weight.copy_(beta)
    x, mask, present = batch_factory(dims, 10, 4, seed=1)
    present[0] = torch.tensor([True, False, False])
    with torch.no_grad():
        risk = model(x, mask, present).risk
    cols = []
    for j, m in enumerate(bag_means(x, mask)):
        p = present[:, j : j + 1].float()
        cols += [m * p, p]  # mean imputation (0) for an absent modality, and its flag
    expected = torch.cat(cols, dim=1) @ beta.squeeze(0)
    torch.testing.assert_close(risk, expected)


def test_with_the_estimator_an_absent_modality_enters_the_linear_path_as_its_estimate(dims, tier1_cfg, batch_factory):
    model = build_model(dims, tier1_cfg, 0).eval()
    _zero_neural_head(model)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.weight[0, 6:10] = 1.0  # the features of modality b (a's 5 columns and its flag come first)
    x, mask, present = batch_factory(dims, 6, 4, seed=2)
    present[:, 1] = False
    with torch.no_grad():
        out = model(x, mask, present)
    torch.testing.assert_close(out.risk, out.x_hat[1].sum(dim=1))


def test_the_linear_path_starts_at_zero_and_its_ridge_penalty_is_half_l2_beta_squared(dims, tier1_cfg):
    model = build_model(dims, tier1_cfg.model_copy(update={"linear_l2": 0.4}), 0)
    assert float(model.linear.weight.detach().abs().sum()) == 0.0
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    k = sum(dims.values()) + len(dims)
    assert float(model.linear_penalty()) == pytest.approx(0.5 * 0.4 * k)
    off = build_model(dims, tier1_cfg.model_copy(update={"linear_path": False}), 0)
    assert off.linear is None and off.linear_penalty() == 0.0


def test_attention_fusion_lets_the_modality_prompt_act_beyond_a_bias(dims, tier1_cfg, batch_factory):
    """With concatenation, moving a prompt shifts the head's first pre-activation by the same vector for
    every patient (a bias); with token fusion the shift differs between patients."""
    x, mask, present = batch_factory(dims, 8, 4, seed=3)

    def first_layer_shift(fusion: str) -> torch.Tensor:
        model = build_model(dims, tier1_cfg.model_copy(update={"fusion": fusion, "linear_path": False, "estimator": False}), 0).eval()
        seen = []
        hook = model.head[0].register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
        with torch.no_grad():
            model(x, mask, present)
            model.modality_prompt[0] += 0.5
            model(x, mask, present)
        hook.remove()
        return seen[1] - seen[0]  # [B, hidden]

    concat, attention = first_layer_shift("concat"), first_layer_shift("attention")
    torch.testing.assert_close(concat, concat[:1].expand_as(concat))
    assert (attention - attention[:1]).abs().max() > 1e-4


def test_cosine_schedule_runs_from_lr_to_the_floor_over_the_rounds():
    cfg = RunConfig(rounds=5, lr=1e-3, lr_min_ratio=0.1)
    lrs = [round_lr(cfg, r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[2] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 2)))
    assert round_lr(cfg.model_copy(update={"lr_schedule": "constant"}), 4) == 1e-3


def test_small_sites_run_enough_epochs_for_the_minimum_local_steps():
    assert local_epoch_count(56, 64, 1, 10) == 10  # one batch per epoch
    assert local_epoch_count(250, 64, 1, 10) == 3  # four batches per epoch
    assert local_epoch_count(250, 64, 5, 10) == 5  # local-epochs already enough
    assert local_epoch_count(65, 64, 1, 10) == 10  # a last batch of one patient is skipped
    assert local_epoch_count(56, 64, 2, 0) == 2  # 0 = local-epochs exactly


@pytest.mark.parametrize("flat, fix", [
    ({"dp.enabled": True, "dp.time-cuts": "10,5"}, "dp.time-cuts"),
    ({"dp.enabled": True, "dp.time-cuts": "5,10", "strategy": "fedprox"}, "use strategy 'fedavg'"),
    ({"model.reduce-dim": 80, "model.reduce-above": 64}, "reduce-dim <= reduce-above"),
])
def test_cross_field_config_errors_are_found_before_round_one(flat, fix):
    from rmmfed.core.errors import ConfigError

    with pytest.raises(ConfigError, match=fix):
        RunConfig().with_overrides(flat)


def test_with_pseudo_in_head_the_pseudo_embedding_reaches_the_fused_head_beside_the_estimate(dims, tier1_cfg):
    x_hat = torch.randn(4, dims["b"], generator=torch.Generator().manual_seed(0))
    attention = build_model(dims, tier1_cfg.model_copy(update={"fusion": "attention", "pseudo_in_head": True}), 0)
    concat = build_model(dims, tier1_cfg.model_copy(update={"fusion": "concat", "pseudo_in_head": True}), 0)
    zero_fill = build_model(dims, tier1_cfg.model_copy(update={"pseudo_embeddings": False, "pseudo_in_head": True}), 0)
    default = build_model(dims, tier1_cfg, 0)
    with torch.no_grad():
        torch.testing.assert_close(attention.absent_encoding(1, x_hat), attention.encoders[1](x_hat) + attention.pseudo[1])
        torch.testing.assert_close(concat.absent_encoding(1, x_hat), concat.encoders[1](x_hat))
        torch.testing.assert_close(zero_fill.absent_encoding(1, x_hat), zero_fill.encoders[1](x_hat))
        torch.testing.assert_close(default.absent_encoding(1, x_hat), default.encoders[1](x_hat))


def test_auto_widths_follow_the_training_patients_and_are_resolved_to_numbers():
    from rmmfed.core.config import scaled_widths

    assert scaled_widths(1000)["model.hidden-dim"] == 128  # the default cohort: the fixed defaults
    assert {k: scaled_widths(250)[k] for k in ("model.hidden-dim", "model.embed-dim", "model.attn-dim")} == \
        {"model.hidden-dim": 64, "model.embed-dim": 32, "model.attn-dim": 16}
    assert scaled_widths(10)["model.hidden-dim"] == 32 and scaled_widths(10**6)["model.hidden-dim"] == 128
    cfg = RunConfig().with_overrides({"model.widths": "auto"}).resolve_widths(250)
    assert (cfg.model.widths, cfg.model.hidden_dim, cfg.model.embed_dim) == ("fixed", 64, 32)
    assert RunConfig().resolve_widths(250) == RunConfig()  # fixed: untouched
