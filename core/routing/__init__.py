"""Uncertainty and routing: sigma^2 and the risk distribution of a patient with a modality missing, the routing score and theta, conformal intervals, which exam to order, and the two-tier prediction that puts them together.

Modules: routing, routing_score, uncertainty, uncertainty_quality, risk_interval, risk_uncertainty_evaluation, conformal, value_of_information, two_tier, fitted_two_tier, risk_scale."""
