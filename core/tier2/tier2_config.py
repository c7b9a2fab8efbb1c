"""Tier 2 configuration (seed 000 eq. 6-8): conditional diffusion recovery + multi-branch head.

Fields are snake_case; a RunConfig that nests this model flattens them as ``tier2.<field-with-dashes>``
(e.g. ``tier2.sample-steps``). The federated training knobs (``rounds``, ``local_epochs``, ``lr``, ``gate``,
``select_best``, ``abstain_quantile``) live here too; the batch size and weight decay are the run's
(``batch-size``, ``weight-decay``), and Tier 2's DP-SGD knobs are in the dp section (``dp.tier2-local-steps``,
``dp.tier2-share``).
Defaults were chosen from the method's needs, not tuned on a cohort: Tier 2 must see at least what
Tier 1 sees (its head and its encodings), train on the masks it will meet, and spend its gradient on
every diffusion step. Ablation rows of the paper are configs: ``diversity=False`` is "w/o diversity loss",
``single_branch=True`` is "single-branch" (one attention branch and hence no diversity term).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Tier2Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # federated training (the flat keys tier2-rounds, tier2-lr, ... of older configs map here: core/config.py)
    rounds: int = Field(10, ge=0, description="Tier 2 federated rounds, after Tier 1 is frozen and calibrated "
                        "(0 = Tier 1 only: no Tier 2 phase, and dp.tier2-share is not spent)")
    local_epochs: int = Field(2, ge=1, description="passes over a site's training split per round, without DP "
                              "(raised until local-steps optimiser steps are made)")
    lr: float = Field(1e-3, gt=0.0, description="Tier 2's local learning rate (with and without DP); the site "
                      "policy caps it at training.max-lr")
    gate: bool = Field(True, description="Tier 2 answers the referred only if it beat Tier 1 on federated masked "
                       "validation (recovery MSE and C-index, core/tier2/tier2_gate.py); false = always (research)")
    select_best: bool = Field(True, description="keep the Tier 2 round with the lowest federated masked validation "
                              "recovery MSE (false = the last round)")
    abstain_quantile: float = Field(0.99, gt=0.0, lt=1.0, description="abstain bound = this quantile of Tier 2's "
                                    "uncertainty on the validation splits (a federated histogram, like theta)")
    # model and loss
    timesteps: int = Field(1000, ge=2, description="T: DDPM training steps (linear beta 1e-4..0.02)")
    sample_steps: int = Field(20, ge=1, description="DDIM steps (eta = 0, deterministic) at inference")
    samples: int = Field(8, ge=1, description="S: diffusion samples per patient (their spread = Tier 2 uncertainty)")
    hidden_dim: int = Field(128, ge=4, description="width of the denoiser eps_psi (128 since 0.10.0: as good as 256 "
                            "on every cohort under DP-SGD, in half the time; docs/evidence/history.md)")
    time_dim: int = Field(32, ge=2, description="width of the sinusoidal time embedding")
    branches: int = Field(4, ge=1, description="M: attention branches of the survival head")
    branch_dim: int = Field(32, ge=1, description="width of modality tokens and branch outputs o^(m)")
    alpha_cons: float = Field(0.5, ge=0.0, description="alpha: weight of the consistency term L_cons (eq. 8)")
    beta_div: float = Field(0.1, ge=0.0, description="beta: weight of the diversity loss L_div (eq. 7-8)")
    lambda_task: float = Field(1.0, ge=0.0, description="weight of the Cox task loss (eq. 8)")
    diversity: bool = Field(True, description="off = 'w/o diversity loss' ablation")
    single_branch: bool = Field(False, description="'single-branch' ablation: M = 1, no diversity loss")
    risk_head: Literal["tier1", "branches"] = Field(
        "tier1", description="tier1: score recovered features through the frozen Tier 1 survival head (observed "
        "modalities from their bags); branches: the multi-branch head of eq. 7 on mean-pooled features")
    condition_on_encodings: bool = Field(True, description="add Tier 1's encodings of the observed bags (eq. 2 "
                                         "slots) to the denoiser's condition")
    masking: Literal["all-patterns", "one"] = Field(
        "all-patterns", description="training masks: a random observed subset per patient from every pattern its "
        "modalities allow (all-patterns), or hide one present modality (one)")
    loss_weighting: Literal["min-snr", "eps"] = Field("min-snr", description="min-snr: x0-MSE weighted by "
                                                      "min(SNR+1, gamma); eps: eq. 6's eps-MSE verbatim")
    parametrisation: Literal["x0-residual", "v"] = Field(
        "x0-residual", description="x0-residual: the denoiser predicts a correction of Tier 1's estimate "
        "(x0 = x_hat + r); v: a velocity")
    snr_gamma: float = Field(5.0, gt=0.0, description="gamma of the min-snr weighting")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0, description="EMA of the local Tier 2 weights, sent instead "
                             "of the last step's (0 = off)")
    local_steps: int = Field(150, ge=1, description="minimum optimiser steps per site and round (epochs are "
                             "repeated until reached)")

    @model_validator(mode="after")
    def _check(self) -> "Tier2Config":
        if self.sample_steps > self.timesteps:
            raise ValueError("sample-steps must not exceed timesteps")
        if self.time_dim % 2:
            raise ValueError("time-dim must be even (sin and cos halves)")
        return self

    @property
    def uses_branches(self) -> bool:
        """Whether the multi-branch head of eq. 7 is built and trained (risk_head = branches)."""
        return self.risk_head == "branches"

    @property
    def n_branches(self) -> int:
        """M actually built: 1 under ``single_branch``."""
        return 1 if self.single_branch else self.branches

    @property
    def use_diversity(self) -> bool:
        """Whether L_div enters eq. 8 (needs the switch on and at least two branches)."""
        return self.diversity and self.n_branches > 1
