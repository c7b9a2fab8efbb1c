"""Everything one hospital computes for the federation, without Flower: the SiteSession the ClientApp calls (its data, setup and models), its releases, its Tier 2 round, its evaluation, its DP-SGD rounds, its part of the Cox core, and the seed of its draws.

Modules: site_session, site_releases, site_tier2, site_evaluation, site_dp, site_cox, site_seed."""
