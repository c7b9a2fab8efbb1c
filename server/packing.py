"""Packed weights at the coordinator: the Flower adapters of core/packed_arrays.py for the deployment Grid
(server/flower_internals.tune_grid). The sites' side is client/packing.py."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, RecordDict

from ..core.packed_arrays import PACKED_KEY, PACKED_STYPE, PackedEntry, pack, unpack


def pack_content(content: RecordDict) -> RecordDict | None:
    """Every ArrayRecord of two or more arrays as one array of the same bytes; None when nothing needed it."""
    out = {}
    for k, v in content.items():
        if isinstance(v, ArrayRecord) and len(v) >= 2:
            blob = pack([PackedEntry(n, a.dtype, tuple(a.shape), a.stype, a.data) for n, a in v.items()])
            v = ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)})
        out[k] = v
    return None if all(out[k] is v for k, v in content.items()) else RecordDict(out)


def unpack_content(content: RecordDict) -> tuple[RecordDict, bool]:
    """(the reply with packed ArrayRecords restored, whether any was packed)."""
    out, packed = {}, False
    for k, v in content.items():
        if isinstance(v, ArrayRecord) and list(v.keys()) == [PACKED_KEY] and v[PACKED_KEY].stype == PACKED_STYPE:
            v = ArrayRecord({e.key: Array(dtype=e.dtype, shape=e.shape, stype=e.stype, data=e.data)
                             for e in unpack(v[PACKED_KEY].data)})
            packed = True
        out[k] = v
    return (RecordDict(out), True) if packed else (content, False)
