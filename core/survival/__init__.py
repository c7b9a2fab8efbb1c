"""Survival statistics: Cox partial likelihood and the exact federated Cox core, the discrete-time likelihood used under DP, Breslow baselines, C-index pair counts, risk groups and the statistician's evaluation sums.

Modules: concordance, cox, cox_core, cox_newton, baseline_hazard, merged_hazard, discrete_time, survival_metrics, risk_groups."""
