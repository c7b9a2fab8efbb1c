"""The protocol's vocabulary: the registry of phases (protocol; each phase is a module of core/phases/), the
names of the records and metrics messages carry, and the payloads several phases share.

Modules: protocol, record_names, metric_names, replies, round_request."""
