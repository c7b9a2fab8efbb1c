"""Tier 2: the conditional diffusion model that recovers missing modalities with Tier 1 frozen, its multi-branch head, its DP training, its scoring and the gate that decides whether it answers.

Modules: tier2, tier2_config, tier2_context, tier2_train, tier2_dp, tier2_scoring, tier2_gate, diffusion, branches."""
