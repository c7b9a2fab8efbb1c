"""Tier 2 configuration (seed 000 eq. 6-8): conditional diffusion recovery + multi-branch head.

Fields are snake_case; a RunConfig that nests this model flattens them as ``tier2.<field-with-dashes>``
(e.g. ``tier2.sample-steps``). Optimisation knobs (epochs, lr, batch size) are passed by the caller.
Ablation rows of the paper are configs: ``diversity=False`` is "w/o diversity loss",
``single_branch=True`` is "single-branch" (one attention branch and hence no diversity term).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Tier2Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timesteps: int = Field(1000, ge=2, description="T: DDPM training steps (linear beta 1e-4..0.02)")
    sample_steps: int = Field(20, ge=1, description="DDIM steps (eta = 0, deterministic) at inference")
    samples: int = Field(8, ge=1, description="S: diffusion samples per patient (their spread = Tier 2 uncertainty)")
    hidden_dim: int = Field(256, ge=4, description="width of the denoiser eps_psi")
    time_dim: int = Field(32, ge=2, description="width of the sinusoidal time embedding")
    branches: int = Field(4, ge=1, description="M: attention branches of the survival head")
    branch_dim: int = Field(32, ge=1, description="width of modality tokens and branch outputs o^(m)")
    alpha_cons: float = Field(0.5, ge=0.0, description="alpha: weight of the consistency term L_cons (eq. 8)")
    beta_div: float = Field(0.1, ge=0.0, description="beta: weight of the diversity loss L_div (eq. 7-8)")
    lambda_task: float = Field(1.0, ge=0.0, description="weight of the Cox task loss (eq. 8)")
    diversity: bool = Field(True, description="off = 'w/o diversity loss' ablation")
    single_branch: bool = Field(False, description="'single-branch' ablation: M = 1, no diversity loss")

    @model_validator(mode="after")
    def _check(self) -> "Tier2Config":
        if self.sample_steps > self.timesteps:
            raise ValueError("sample-steps must not exceed timesteps")
        if self.time_dim % 2:
            raise ValueError("time-dim must be even (sin and cos halves)")
        return self

    @property
    def n_branches(self) -> int:
        """M actually built: 1 under ``single_branch``."""
        return 1 if self.single_branch else self.branches

    @property
    def use_diversity(self) -> bool:
        """Whether L_div enters eq. 8 (needs the switch on and at least two branches)."""
        return self.diversity and self.n_branches > 1
