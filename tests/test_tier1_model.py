"""Tier 1 model (seed 000 eq. 1-3): attention pooling, eq. 2 slots, switches, MC dropout."""

from __future__ import annotations

import pytest
import torch

from rmmfed.core.model.attention import GatedAttentionPool
from rmmfed.core.model.tier1 import Tier1Model, build_model

pytestmark = pytest.mark.usefixtures("single_thread")

SWITCHES = ("modality_prompts", "missing_prompts", "pseudo_embeddings", "estimator")


def _bags(batch: int = 4, n: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, n, d, generator=g)
    lengths = torch.tensor([n, 3, 1, 0])[:batch]
    mask = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    return feats, mask


def _pool(gated: bool = True, d: int = 5, seed: int = 0) -> GatedAttentionPool:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GatedAttentionPool(d, 4, gated=gated)


# ---- GatedAttentionPool (eq. 1) ----------------------------------------------------------------
@pytest.mark.parametrize("gated", [True, False])
def test_attention_gives_padded_instances_exactly_zero_weight(gated):
    feats, mask = _bags()
    pool = _pool(gated)

    _, attn = pool(feats, mask)

    assert torch.all(attn[~mask] == 0.0)


@pytest.mark.parametrize("gated", [True, False])
def test_attention_weights_sum_to_one_over_real_instances(gated):
    feats, mask = _bags()
    pool = _pool(gated)

    _, attn = pool(feats, mask)

    sums = (attn * mask).sum(dim=1)
    assert torch.allclose(sums[:3], torch.ones(3), atol=1e-6)
    assert torch.all(attn[mask] > 0)


@pytest.mark.parametrize("gated", [True, False])
def test_empty_bag_pools_to_zero_with_zero_weights_and_no_nan(gated):
    feats, mask = _bags()
    feats = feats.clone().requires_grad_(True)
    pool = _pool(gated)

    z, attn = pool(feats, mask)
    z.sum().backward()

    assert torch.equal(z[3], torch.zeros(5))
    assert torch.equal(attn[3], torch.zeros(6))
    assert torch.isfinite(z).all() and torch.isfinite(attn).all()
    assert torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters())


def test_ungated_attention_is_eq1_computed_by_hand():
    feats, mask = _bags()
    pool = _pool(gated=False)
    V, w = pool.V.weight.detach(), pool.w.weight.detach()  # [d', d], [1, d']

    z, attn = pool(feats, mask)

    assert pool.U is None
    for b in range(3):  # non-empty bags
        F_b = feats[b, mask[b]]  # [n_b, d]
        scores = (torch.tanh(F_b @ V.T) @ w.T).squeeze(-1)  # w^T tanh(V F_j)
        a = torch.softmax(scores, dim=0)
        assert torch.allclose(attn[b, mask[b]], a, atol=1e-6)
        assert torch.allclose(z[b], (a.unsqueeze(1) * F_b).sum(dim=0), atol=1e-6)


@pytest.mark.parametrize("gated", [True, False])
def test_attention_pooling_is_invariant_to_instance_permutation(gated):
    feats, mask = _bags(batch=3)
    mask = torch.ones_like(mask)
    pool = _pool(gated)
    perm = torch.randperm(feats.shape[1], generator=torch.Generator().manual_seed(3))

    z, attn = pool(feats, mask)
    z_p, attn_p = pool(feats[:, perm], mask[:, perm])

    assert torch.allclose(z, z_p, atol=1e-6)
    assert torch.allclose(attn[:, perm], attn_p, atol=1e-6)


@pytest.mark.parametrize("gated", [True, False])
def test_attention_pooling_is_invariant_to_added_padding(gated):
    feats, mask = _bags()
    pool = _pool(gated)
    junk = 100.0 * torch.randn(feats.shape[0], 5, feats.shape[2], generator=torch.Generator().manual_seed(4))
    feats_pad = torch.cat([feats, junk], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(mask.shape[0], 5, dtype=torch.bool)], dim=1)

    z, attn = pool(feats, mask)
    z_pad, attn_pad = pool(feats_pad, mask_pad)

    assert torch.allclose(z, z_pad, atol=1e-6)
    assert torch.allclose(attn, attn_pad[:, : feats.shape[1]], atol=1e-6)
    assert torch.all(attn_pad[:, feats.shape[1]:] == 0)


# ---- Tier1Model (eq. 2-3) ------------------------------------------------------------------
def _model(dims, cfg, seed: int = 0, **switches) -> Tier1Model:
    model = build_model(dims, cfg.model_copy(update=switches), seed)
    return model.eval()


def test_forward_returns_risk_per_patient_and_estimate_per_modality(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg)
    x, masks, present = batch_factory(dims, batch=7, max_len=4, seed=1)

    out = model(x, masks, present)

    assert out.risk.shape == (7,)
    assert [tuple(e.shape) for e in out.x_hat] == [(7, d) for d in dims.values()]
    assert [tuple(a.shape) for a in out.attention] == [(7, 4)] * len(dims)
    assert torch.isfinite(out.risk).all()


@pytest.mark.parametrize("switch", [None, *SWITCHES])
def test_absent_modality_bag_content_does_not_affect_risk(dims, tier1_cfg, batch_factory, switch):
    model = _model(dims, tier1_cfg, **({switch: False} if switch else {}))
    present = torch.tensor([[True, False, True], [True, True, False], [False, False, True]])
    x, masks, _ = batch_factory(dims, batch=3, max_len=4, seed=2, present=torch.ones(3, 3, dtype=torch.bool))
    # the unobserved modalities carry real-looking bags; replace them by something else entirely
    x2 = [t.clone() for t in x]
    for j in range(3):
        x2[j][~present[:, j]] = 50.0 * torch.randn_like(x2[j][~present[:, j]])

    with torch.no_grad():
        risk = model(x, masks, present).risk
        risk2 = model(x2, masks, present).risk
        risk_obs_changed = model([t * 3 for t in x], masks, present).risk

    assert torch.allclose(risk, risk2, atol=1e-6)
    assert not torch.allclose(risk, risk_obs_changed)  # observed content does matter


def test_pseudo_embeddings_off_fills_absent_slot_with_zeros(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, pseudo_embeddings=False)
    x, masks, _ = batch_factory(dims, batch=2, max_len=3, seed=3, present=torch.ones(2, 3, dtype=torch.bool))
    observed = torch.tensor([[True, False, True], [False, True, True]])
    d = tier1_cfg.embed_dim

    with torch.no_grad():
        zs, _ = model.encode(x, masks)
        slots = model.slots(zs, observed)

    assert torch.equal(slots[1][0, :d], torch.zeros(d))
    assert torch.equal(slots[0][1, :d], torch.zeros(d))
    assert torch.equal(slots[0][0, :d], zs[0][0])  # observed: z_k itself


def test_pseudo_embeddings_on_fills_absent_slot_with_learned_parameter(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, pseudo_embeddings=True)
    x, masks, _ = batch_factory(dims, batch=2, max_len=3, seed=3, present=torch.ones(2, 3, dtype=torch.bool))
    observed = torch.tensor([[True, False, True], [False, True, True]])
    d = tier1_cfg.embed_dim

    with torch.no_grad():
        zs, _ = model.encode(x, masks)
        slots = model.slots(zs, observed)

    assert torch.equal(slots[1][0, :d], model.pseudo[1].detach())
    assert torch.equal(slots[0][1, :d], model.pseudo[0].detach())
    assert not torch.equal(model.pseudo[1].detach(), torch.zeros(d))


@pytest.mark.parametrize("on", [True, False])
def test_modality_prompts_switch_controls_prompt_part_of_slot(dims, tier1_cfg, batch_factory, on):
    model = _model(dims, tier1_cfg, modality_prompts=on)
    x, masks, observed = batch_factory(dims, batch=3, max_len=3, seed=4)
    d, dp = tier1_cfg.embed_dim, tier1_cfg.prompt_dim

    with torch.no_grad():
        zs, _ = model.encode(x, masks)
        slots = model.slots(zs, observed)

    for j, s in enumerate(slots):
        assert s.shape == (3, d + dp + 1)
        expected = model.modality_prompt[j].detach().expand(3, -1) if on else torch.zeros(3, dp)
        assert torch.equal(s[:, d:d + dp], expected)


@pytest.mark.parametrize("on", [True, False])
def test_missing_prompts_switch_controls_observed_flag(dims, tier1_cfg, batch_factory, on):
    model = _model(dims, tier1_cfg, missing_prompts=on)
    x, masks, _ = batch_factory(dims, batch=2, max_len=3, seed=5, present=torch.ones(2, 3, dtype=torch.bool))
    observed = torch.tensor([[True, False, True], [False, True, False]])

    with torch.no_grad():
        zs, _ = model.encode(x, masks)
        flags = torch.stack([s[:, -1] for s in model.slots(zs, observed)], dim=1)

    assert torch.equal(flags, observed.float() if on else torch.zeros(2, 3))


def test_estimator_off_makes_risk_ignore_f_phi(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, estimator=False)
    x, masks, _ = batch_factory(dims, batch=4, max_len=3, seed=6, present=torch.ones(4, 3, dtype=torch.bool))
    observed = torch.tensor([[True, False, False], [False, True, True], [True, True, False], [True, True, True]])

    with torch.no_grad():
        risk = model(x, masks, observed).risk
        for layer in model.est_out:
            layer.weight.add_(torch.randn_like(layer.weight))
            layer.bias.add_(1.0)
        model.est_in.weight.mul_(-2.0)
        risk_perturbed = model(x, masks, observed).risk

    assert torch.equal(risk, risk_perturbed)


def test_estimator_on_lets_f_phi_fill_absent_modalities(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg, estimator=True)
    x, masks, _ = batch_factory(dims, batch=4, max_len=3, seed=6, present=torch.ones(4, 3, dtype=torch.bool))
    observed = torch.tensor([[True, False, False], [False, True, True], [True, True, False], [True, True, True]])

    with torch.no_grad():
        risk = model(x, masks, observed).risk
        for layer in model.est_out:
            layer.weight.add_(torch.randn_like(layer.weight))
        risk_perturbed = model(x, masks, observed).risk

    assert not torch.allclose(risk[:3], risk_perturbed[:3])
    assert torch.allclose(risk[3], risk_perturbed[3])  # complete case: nothing estimated for the head


@pytest.mark.parametrize("switch", [*SWITCHES, "modality_dropout"])
def test_switches_leave_parameter_shapes_identical(dims, tier1_cfg, switch):
    off = {switch: 0.0 if switch == "modality_dropout" else False}
    full = build_model(dims, tier1_cfg, 0)
    ablated = build_model(dims, tier1_cfg.model_copy(update=off), 0)

    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    ablated_shapes = {k: tuple(v.shape) for k, v in ablated.state_dict().items()}

    assert shapes == ablated_shapes
    ablated.load_state_dict(full.state_dict())  # ablations exchange the same weights


# ---- MC dropout (eq. 3) --------------------------------------------------------------------
def test_mc_estimates_come_from_one_batched_forward(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg)
    x, masks, observed = batch_factory(dims, batch=5, max_len=3, seed=7)
    calls = []
    handle = model.est_in.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))

    torch.manual_seed(0)
    mc = model.mc_estimates(x, masks, observed, samples=20)
    handle.remove()

    assert calls == [20 * 5]
    assert [tuple(e.shape) for e in mc] == [(20, 5, d) for d in dims.values()]


def test_mc_estimates_default_to_configured_sample_count(dims, tier1_cfg, batch_factory):
    model = _model(dims, tier1_cfg)
    x, masks, observed = batch_factory(dims, batch=2, max_len=3, seed=7)

    mc = model.mc_estimates(x, masks, observed)

    assert mc[0].shape[0] == tier1_cfg.mc_samples


def test_mc_estimates_vary_with_dropout_and_not_without(dims, tier1_cfg, batch_factory):
    x, masks, observed = batch_factory(dims, batch=5, max_len=3, seed=8)
    with_dropout = _model(dims, tier1_cfg.model_copy(update={"dropout": 0.3}))
    no_dropout = _model(dims, tier1_cfg.model_copy(update={"dropout": 0.0}))

    torch.manual_seed(0)
    mc_on = with_dropout.mc_estimates(x, masks, observed, samples=10)
    mc_off = no_dropout.mc_estimates(x, masks, observed, samples=10)

    assert all(e.var(dim=0).sum(dim=1).min() > 0 for e in mc_on)
    assert all(torch.allclose(e.var(dim=0), torch.zeros_like(e[0]), atol=1e-12) for e in mc_off)
    assert all(torch.equal(e, e[:1].expand_as(e)) for e in mc_off)  # every sample identical


def test_mc_estimates_sample_t_matches_single_pass_per_patient_in_eval_mode(dims, tier1_cfg, batch_factory):
    """The [T, B] layout is sample-major: without dropout every sample equals the plain forward."""
    model = _model(dims, tier1_cfg.model_copy(update={"dropout": 0.0}))
    x, masks, observed = batch_factory(dims, batch=4, max_len=3, seed=9)

    mc = model.mc_estimates(x, masks, observed, samples=3)
    with torch.no_grad():
        single = model(x, masks, observed).x_hat

    for e, s in zip(mc, single):
        assert torch.allclose(e, s.unsqueeze(0).expand_as(e), atol=1e-6)


def test_build_model_same_seed_same_weights_and_global_rng_untouched(dims, tier1_cfg):
    torch.manual_seed(123)
    before = torch.get_rng_state()

    m1 = build_model(dims, tier1_cfg, 7)
    m2 = build_model(dims, tier1_cfg, 7)
    m3 = build_model(dims, tier1_cfg, 8)

    assert torch.equal(torch.get_rng_state(), before)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
