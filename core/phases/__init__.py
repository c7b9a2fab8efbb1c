"""The protocol's phases, one module each: a phase's message type and records, its typed request, the
request checks a site runs before computing (core/privacy/request_checks.py), and the site's answer,
written against :class:`~rmmfed.core.phases.site_call.SiteCall` (which the ClientApp implements over
Flower). The ClientApp serves every phase with one generic handler, and the coordinator asks with the
same definition, so following a phase end to end takes its module here, the coordinator's module that
asks it (server/), and the SiteSession method that computes it (core/site/).

The registry of all phases, the record names and the shared reply payloads: core/messages/protocol.py.

Modules: phase, site_call, and one per phase: schema, statistics, setup, cox, tier1_round,
tier1_validation, freeze_tier1, calibration, followup, hazard, tier2_round, tier2_validation,
tier2_calibration, conformal, risk_groups, evaluation."""
