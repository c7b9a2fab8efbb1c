"""A site's DP-SGD rounds for both tiers: the SiteSession's training under differential privacy.

Tier 1 (core/privacy/dp.py) and Tier 2 (core/tier2/tier2_dp.py) each spend their share of the run's
``dp.target-epsilon`` (:func:`~rmmfed.core.privacy.dp.tier_budgets`); their accountants' histories and Tier 1's
discrete-time baseline live in the session's ``dp_state`` (kept in Flower's per-run state, never sent).
Noise is drawn from OS entropy unless the run asked for seeded noise and the site's policy allowed it
(checked at setup, core/privacy/request_policy.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..messages import metric_names as M
from ..survival.discrete_time import DiscreteTimeBaseline
from ..privacy.dp import DPError, SiteAccountant, tier_budgets, train_tier1_dp
from ..tier2.tier2_dp import train_tier2_dp
from .site_seed import site_seed
from ..model.train import round_lr
from ..model.weights import get_weights

if TYPE_CHECKING:
    from .site_session import SiteSession
    from ..model.tier1 import Tier1Model
    from ..tier2.tier2 import Tier2Model


def train_tier1_round_dp(s: "SiteSession", model: "Tier1Model", seed: int, proximal_mu: float, server_round: int):
    """One Tier 1 DP-SGD round: (weights to send, DPTrainResult)."""
    cfg = s.cfg
    if proximal_mu > 0:
        raise DPError("FedProx's proximal term is not part of the DP-SGD loss. Fix: use strategy 'fedavg' "
                      "(or a robust strategy) with dp.enabled.")
    cuts = torch.tensor(cfg.dp.cuts())
    baseline = DiscreteTimeBaseline(len(cuts) + 1)
    if "dp-baseline" in s.dp_state:
        baseline.logit.data.copy_(torch.as_tensor(s.dp_state["dp-baseline"], dtype=torch.float32))
    accountant = SiteAccountant.from_arrays(s.dp_state)
    # DP-SGD's per-sample gradients: one fresh instance subsample per round (not per epoch)
    gen = torch.Generator(device="cpu").manual_seed(seed + 3)
    train = s._split("train").sample_instances(cfg.model.max_instances, gen)
    # local-epochs per round (min-local-steps is not applied under DP: on the default cohort raising the
    # steps to it gave 0.716 against 0.715 and took 1.7x longer); the run's learning-rate schedule, peaking at
    # dp.lr (docs/evidence/privacy/README.md: the DP learning rate)
    epochs = cfg.local_epochs
    result, _ = train_tier1_dp(model, train, s.stats, cfg, cfg.dp, accountant=accountant,
                               epochs=epochs, seed=seed, cuts=cuts, baseline=baseline,
                               total_epochs_budget=cfg.rounds * epochs,
                               rounds_before=server_round - 1, target_epsilon=tier_budgets(cfg)[0],
                               noise_seed=seed + 7 if cfg.dp.seeded_noise else None,
                               lr=round_lr(cfg, server_round, cfg.dp.lr or None))
    s.dp_state = {**s.dp_state, **accountant.to_arrays(), "dp-baseline": result.baseline}
    return result.weights, result


def train_tier2_round_dp(s: "SiteSession", tier2: "Tier2Model", server_round: int
                         ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One Tier 2 DP-SGD round: (weights, metrics: num-examples and the accountant's figures only)."""
    cfg, train = s.cfg, s._split("train")
    steps = cfg.dp.tier2_local_steps  # the same every round, so the plan's accounting holds
    acc = SiteAccountant.from_arrays({"dp-history": s.dp_state.get("dp-tier2-history", np.zeros((0, 3)))})
    seed = site_seed(cfg.seed, s.data.site, 10_000 + server_round)
    _, eps = train_tier2_dp(tier2, s._tier1(), train, cfg.tier2, cfg.dp, accountant=acc,
                            target_epsilon=tier_budgets(cfg)[1], steps=steps,
                            total_steps_budget=cfg.tier2.rounds * steps, lr=cfg.tier2.lr, batch_size=cfg.batch_size,
                            seed=seed, weight_decay=cfg.weight_decay, mc_samples=cfg.model.mc_samples,
                            noise_seed=seed + 7 if cfg.dp.seeded_noise else None, rounds_before=server_round - 1)
    s.dp_state = {**s.dp_state, "dp-tier2-history": acc.to_arrays()["dp-history"]}
    return get_weights(tier2), {M.NUM_EXAMPLES: float(len(s.data.indices("train"))), M.DP_EPSILON: eps,
                                M.DP_DELTA: cfg.dp.target_delta}
