"""A site's privacy: its policy and the checks of every request against it, DP-SGD for both tiers, where DP noise comes from, noised releases and the lifetime budget held on the site's disk.

Modules: dp, dp_noise, privacy_budget, private_histogram, noised_release, site_policy, request_policy."""
