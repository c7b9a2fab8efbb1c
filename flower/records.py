"""core/messages/protocol.py record dicts <-> Flower records (one copy: the sites and the coordinator both use it)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..core.messages.protocol import CONFIG, METRICS, Records


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def to_content(records: Records) -> RecordDict:
    """A payload's record dicts as a Flower RecordDict (config and metrics as scalars, the rest as arrays)."""
    out = {}
    for name, items in records.items():
        if name == CONFIG:
            out[name] = ConfigRecord(dict(items))
        elif name == METRICS:
            out[name] = MetricRecord(dict(items))
        else:
            out[name] = to_record(items)
    return RecordDict(out)


def records_of(content: RecordDict) -> Records:
    """A Flower RecordDict as record dicts (arrays as numpy)."""
    return {name: from_record(rec) if isinstance(rec, ArrayRecord) else dict(rec) for name, rec in content.items()}
