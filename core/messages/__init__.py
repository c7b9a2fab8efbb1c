"""The rmm protocol, defined once: each phase's message type, its typed request and reply payloads, and the names of the records and metrics they carry.

Modules: protocol, protocol_requests, record_names, metric_names."""
