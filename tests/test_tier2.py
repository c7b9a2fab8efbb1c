"""Tier 2 (seed 000 eq. 6-8): diffusion pieces, inpainting recovery, multi-branch head, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from rmmfed.core.tier2.branches import MultiBranchHead, diversity_loss
from rmmfed.core.config import Tier1Config
from rmmfed.core.tier2.diffusion import LinearSchedule, ddim_sample, ddim_timesteps, ddpm_loss, q_sample
from rmmfed.core.data.tensors import SiteTensors
from rmmfed.core.model.tier1 import build_model
from rmmfed.core.tier2.tier2 import Tier2Model, build_tier2, concat_modalities, split_modalities
from rmmfed.core.tier2.tier2_config import Tier2Config
from rmmfed.core.tier2.tier2_context import tier2_inputs
from rmmfed.core.tier2.tier2_train import predict_tier2, train_tier2

TINY = dict(hidden_dim=32, time_dim=8, branches=3, branch_dim=8, samples=3, sample_steps=5)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster and steadier on one thread than on a contended pair."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_site(dims: dict[str, int], n: int, seed: int, present: torch.Tensor | None = None,
              W: torch.Tensor | None = None) -> SiteTensors:
    """One-instance bags equal to the targets; with ``W`` (2 modalities) b = W a + 0.1 noise."""
    g = torch.Generator().manual_seed(seed)
    k = len(dims)
    targets = [torch.randn(n, d, generator=g) for d in dims.values()]
    if W is not None:
        targets[1] = targets[0] @ W.T + 0.1 * torch.randn(n, W.shape[0], generator=g)
    if present is None:
        present = torch.ones(n, k, dtype=torch.bool)
    targets = [t * present[:, j : j + 1] for j, t in enumerate(targets)]
    time = torch.exp(-targets[0][:, 0] + 0.3 * torch.randn(n, generator=g))
    event = (torch.rand(n, generator=g) < 0.8).float()
    return SiteTensors(tuple(dims), tuple(t.unsqueeze(1) for t in targets), tuple(present[:, j : j + 1] for j in range(k)),
                       tuple(targets), present, time, event, ("",) * n)


def _inputs(model: Tier2Model, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d, k = sum(model.dims), len(model.dims)
    observed = torch.tensor([[True, False, True], [False, True, False], [True, True, True],
                             [True, False, False], [False, False, True], [True, True, False]])[:n]
    return torch.randn(n, d, generator=g), observed, torch.randn(n, d, generator=g), torch.rand(n, k, generator=g)


# ---- config and schedule ------------------------------------------------------------------------
def test_config_defaults_switches_and_validation():
    cfg = Tier2Config()
    assert (cfg.timesteps, cfg.sample_steps, cfg.samples, cfg.hidden_dim, cfg.time_dim) == (1000, 20, 8, 128, 32)
    assert (cfg.branches, cfg.branch_dim, cfg.alpha_cons, cfg.beta_div, cfg.lambda_task) == (4, 32, 0.5, 0.1, 1.0)
    assert cfg.diversity and not cfg.single_branch and cfg.n_branches == 4 and cfg.use_diversity
    assert not Tier2Config(diversity=False).use_diversity
    single = Tier2Config(single_branch=True)
    assert single.n_branches == 1 and not single.use_diversity
    with pytest.raises(ValidationError):
        Tier2Config(epochs=3)
    with pytest.raises(ValidationError):
        Tier2Config(sample_steps=20, timesteps=10)


def test_linear_schedule_values_and_not_in_state_dict(dims):
    s = LinearSchedule(1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alpha_bars, torch.cumprod(1 - s.betas.double(), 0).float(), rtol=1e-5)
    t, x0, noise = torch.tensor([0, 999]), torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.allclose(q_sample(x0, t, noise, s), s.alpha_bars[t].sqrt().unsqueeze(1).expand(2, 3))
    model = build_tier2(dims, Tier2Config(**TINY), seed=0)
    assert not any("alpha" in k or "beta" in k for k in model.state_dict())
    assert ddim_timesteps(1000, 10)[0] == 999 and ddim_timesteps(1000, 10)[-1] == 0
    assert len(ddim_timesteps(1000, 10)) == 10 and ddim_timesteps(1000, 1) == [999]


# ---- sampler and recovery (eq. 6) -----------------------------------------------------------------
def test_ddim_sampler_on_default_schedule_is_deterministic_per_seed(dims):
    cfg = Tier2Config(hidden_dim=32, time_dim=8, branch_dim=8)  # default 1000-step schedule, 10 DDIM steps
    model = build_tier2(dims, cfg, seed=0)
    x_obs, observed, x_hat, s2 = _inputs(model)
    cond = model.condition(x_obs, observed, x_hat, s2)
    shape = (len(cond), sum(dims.values()))

    def draw(seed):
        return ddim_sample(model.denoiser, cond, shape, cfg.sample_steps, torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert model.denoiser.schedule.timesteps == 1000
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all() and a.abs().max() <= 10.0 + 1e-4
    r1 = model.recover(x_obs, observed, x_hat, s2, samples=3, steps=10, generator=torch.Generator().manual_seed(1))
    r2 = model.recover(x_obs, observed, x_hat, s2, samples=3, steps=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])


def test_recover_preserves_observed_coordinates_exactly(dims):
    model = build_tier2(dims, Tier2Config(timesteps=50, **TINY), seed=0)
    x_obs, observed, x_hat, s2 = _inputs(model)
    x_rec, var = model.recover(x_obs, observed, x_hat, s2, samples=3, steps=5,
                               generator=torch.Generator().manual_seed(0))
    obs_c = model.coord_mask(observed)
    assert torch.equal(x_rec[obs_c], x_obs[obs_c])
    assert not torch.equal(x_rec[~obs_c], x_obs[~obs_c])
    assert torch.isfinite(x_rec).all() and var.shape == observed.shape
    assert [t.shape[1] for t in split_modalities(x_rec, model.dims)] == list(dims.values())
    assert torch.equal(concat_modalities(split_modalities(x_rec, model.dims)), x_rec)


def test_tier2_uncertainty_positive_with_samples_and_zero_when_nothing_hidden(dims):
    # the v head: an untrained x0-residual Tier 2 returns Tier 1's estimate on every draw (zero spread)
    model = build_tier2(dims, Tier2Config(timesteps=50, parametrisation="v", **TINY), seed=0)
    x_obs, observed, x_hat, s2 = _inputs(model)
    _, var = model.recover(x_obs, observed, x_hat, s2, samples=4, steps=5, generator=torch.Generator().manual_seed(0))
    patient = model.patient_uncertainty(var, observed)
    assert torch.all(var[~observed] > 0) and torch.all(var[observed] == 0)
    assert patient[2].item() == 0.0  # row 2: every modality observed
    assert torch.all(patient[[0, 1, 3, 4, 5]] > 0)
    _, var1 = model.recover(x_obs, observed, x_hat, s2, samples=1, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.all(var1 == 0)  # a single sample has no spread


def test_ddpm_loss_depends_only_on_hidden_coordinates(dims):
    model = build_tier2(dims, Tier2Config(timesteps=50, **TINY), seed=0)
    x_obs, observed, x_hat, s2 = _inputs(model)
    cond = model.condition(x_obs, observed, x_hat, s2)
    hidden = ~model.coord_mask(observed)
    x0 = torch.randn(x_obs.shape, generator=torch.Generator().manual_seed(3))

    def loss(target):
        return ddpm_loss(model.denoiser, target, hidden, cond, torch.Generator().manual_seed(11))

    changed_obs = torch.where(hidden, x0, x0 + 5.0)
    changed_hidden = torch.where(hidden, x0 + 1.0, x0)
    assert torch.equal(loss(x0), loss(changed_obs))
    assert not torch.equal(loss(x0), loss(changed_hidden))
    assert torch.equal(loss(x0), loss(x0))


# ---- multi-branch head and eq. 7 ------------------------------------------------------------------
def test_diversity_loss_matches_eq7_by_hand_and_is_zero_for_one_branch():
    o = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    pairs = list(itertools.combinations(range(3), 2))
    by_hand = torch.stack([
        -sum(1 - F.cosine_similarity(o[b, m], o[b, n], dim=0) for m, n in pairs) / len(pairs) for b in range(5)
    ]).mean()
    assert torch.allclose(diversity_loss(o), by_hand, atol=1e-6)
    one = torch.randn(5, 1, 4, requires_grad=True)
    zero = diversity_loss(one)
    assert zero.item() == 0.0 and zero.requires_grad


def test_single_branch_config_builds_one_branch(dims):
    model = build_tier2(dims, Tier2Config(single_branch=True, risk_head="branches", **TINY), seed=0)
    x = torch.randn(4, sum(dims.values()))
    risk, o, attn = model.head_outputs(x, torch.ones(4, 3, dtype=torch.bool))
    assert model.head.branches == 1 and o.shape == (4, 1, 8) and attn.shape == (4, 1, 3) and risk.shape == (4,)
    assert build_tier2(dims, Tier2Config(risk_head="branches", **TINY), seed=0).head.branches == 3
    assert build_tier2(dims, Tier2Config(**TINY), seed=0).head is None  # default: scored through Tier 1's head


def test_head_masks_absent_tokens(dims):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = MultiBranchHead(tuple(dims.values()), branch_dim=8, branches=3)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, d, generator=g) for d in dims.values()]
    avail = torch.tensor([[True, False, True], [False, True, False], [True, True, True], [False, False, False]])
    risk, _, attn = head(xs, avail)
    changed = [xs[0], xs[1] + 100.0 * torch.randn(4, 4, generator=g), xs[2]]  # modality b absent in rows 0, 3
    risk2, _, _ = head(changed, avail)
    assert torch.equal(risk[[0, 3]], risk2[[0, 3]]) and not torch.equal(risk[[1, 2]], risk2[[1, 2]])
    assert torch.all(attn[~avail.unsqueeze(1).expand_as(attn)] == 0)
    assert torch.allclose(attn[:3].sum(dim=2), torch.ones(3, 3)) and torch.all(attn[3] == 0)
    assert torch.isfinite(risk).all()


# ---- training and inference (eq. 8) ---------------------------------------------------------------
def test_train_tier2_leaves_tier1_untouched_and_global_rng_alone(dims, tier1_cfg):
    present = torch.rand(40, 3, generator=torch.Generator().manual_seed(0)) < 0.7
    present[:, 0] = True
    data = make_site(dims, 40, seed=0, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    tier1.train()
    before = {k: v.clone() for k, v in tier1.state_dict().items()}
    tier2 = build_tier2(dims, Tier2Config(timesteps=50, **TINY), seed=0)
    w2 = [p.detach().clone() for p in tier2.parameters()]
    rng = torch.get_rng_state()

    out = train_tier2(tier2, tier1, data, Tier2Config(timesteps=50, **TINY), epochs=2, lr=1e-3, batch_size=16, seed=0)

    assert set(out) == {"loss", "ddpm", "cons", "div", "task", "steps"} and all(map(math.isfinite, out.values()))
    assert out["steps"] >= Tier2Config().local_steps
    assert all(torch.equal(before[k], v) for k, v in tier1.state_dict().items())
    assert all(p.grad is None for p in tier1.parameters())
    assert all(p.requires_grad for p in tier1.parameters()) and tier1.training  # restored afterwards
    assert torch.equal(rng, torch.get_rng_state())
    assert any(not torch.equal(a, b) for a, b in zip(w2, tier2.parameters()))


def test_train_tier2_is_seeded_and_single_branch_has_no_diversity(dims, tier1_cfg):
    data = make_site(dims, 32, seed=1)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    cfg = Tier2Config(timesteps=50, single_branch=True, risk_head="branches", **TINY)
    runs = []
    for _ in range(2):
        model = build_tier2(dims, cfg, seed=3)
        runs.append((train_tier2(model, tier1, data, cfg, epochs=1, lr=1e-3, batch_size=16, seed=5), model))
    assert runs[0][0] == runs[1][0] and runs[0][0]["div"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].parameters(), runs[1][1].parameters()))


def test_tier2_inputs_and_predict_tier2(dims, tier1_cfg):
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [True, True, False]] * 3)
    data = make_site(dims, 12, seed=2, present=present)
    tier1 = build_model(dims, tier1_cfg, seed=0)
    cfg = Tier2Config(timesteps=50, parametrisation="v", **TINY)  # draws that spread before any training
    tier2 = build_tier2(dims, cfg, seed=0)
    rng = torch.get_rng_state()
    x_obs, x_hat, s2 = tier2_inputs(tier1, data, present, seed=4)
    again = tier2_inputs(tier1, data, present, seed=4)
    assert torch.equal(x_hat, again[1]) and torch.equal(s2, again[2]) and torch.equal(rng, torch.get_rng_state())
    assert torch.equal(x_obs, concat_modalities(data.target)) and s2.shape == (12, 3) and torch.all(s2 >= 0)

    risk, unc, x_rec, draws = predict_tier2(tier2, tier1, data, cfg, seed=0, batch=5)
    risk2, unc2, _, _ = predict_tier2(tier2, tier1, data, cfg, seed=0, batch=5)
    assert draws.shape == (12, cfg.samples)
    assert risk.shape == (12,) and unc.shape == (12,) and (risk == risk2).all() and (unc == unc2).all()
    complete = present.all(dim=1).numpy()
    assert (unc[complete] == 0).all() and (unc[~complete] > 0).all()
    for j, x in enumerate(x_rec):
        rows = present[:, j].numpy()
        assert x.shape == (12, list(dims.values())[j]) and (x[rows] == data.target[j][rows].numpy()).all()


def test_toy_recovery_beats_the_unconditional_mean():
    """b = W a + 0.1 noise: Tier 2 (default 1000-step schedule) recovers b from a far better than
    the training mean of b does. Tier 1 is left untrained, so the signal must come from x_avail."""
    dims = {"a": 6, "b": 4}
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(123)) / 6**0.5
    train, test = make_site(dims, 512, seed=0, W=W), make_site(dims, 256, seed=1, W=W)
    tier1 = build_model(dims, Tier1Config(embed_dim=8, prompt_dim=3, attn_dim=4, hidden_dim=16, mc_samples=4), 0)
    cfg = Tier2Config(hidden_dim=64, time_dim=16, branches=2, branch_dim=8)
    tier2 = build_tier2(dims, cfg, seed=0)
    train_tier2(tier2, tier1, train, cfg, epochs=40, lr=3e-3, batch_size=64, seed=0)

    observed = torch.tensor([[True, False]]).expand(len(test), -1)
    x_obs, x_hat, s2 = tier2_inputs(tier1, test, observed, seed=5)
    x_rec, _ = tier2.recover(x_obs, observed, x_hat, s2, samples=cfg.samples, steps=cfg.sample_steps,
                             generator=torch.Generator().manual_seed(0))
    b = test.target[1]
    mse_tier2 = ((tier2.split(x_rec)[1] - b) ** 2).mean().item()
    mse_mean = ((train.target[1].mean(dim=0) - b) ** 2).mean().item()
    assert mse_tier2 < 0.3 * mse_mean, (mse_tier2, mse_mean)
