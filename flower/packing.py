"""Packed weights in Flower records: the adapters of flower/packed_arrays.py, used by both sides.

The coordinator's deployment Grid packs its requests (flower/grid.py: tune_grid) and unpacks the
replies; the site's ClientApp mod (:func:`packing_mod`) unpacks a packed request and packs its reply
the same way. A server that does not pack (simulation) gets plain replies. The bytes of every array
are unchanged.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, RecordDict

from .packed_arrays import PACKED_KEY, PACKED_STYPE, PackedEntry, pack, unpack


def pack_record(record: ArrayRecord) -> ArrayRecord:
    """Several arrays -> one array of the same bytes; records with fewer than two arrays are returned as they are."""
    if len(record) < 2:
        return record
    blob = pack([PackedEntry(k, a.dtype, tuple(a.shape), a.stype, a.data) for k, a in record.items()])
    return ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)})


def unpack_record(record: ArrayRecord) -> ArrayRecord:
    """Inverse of :func:`pack_record`; anything that is not packed is returned as it is."""
    if list(record.keys()) != [PACKED_KEY] or record[PACKED_KEY].stype != PACKED_STYPE:
        return record
    return ArrayRecord({e.key: Array(dtype=e.dtype, shape=e.shape, stype=e.stype, data=e.data)
                        for e in unpack(record[PACKED_KEY].data)})


def pack_content(content: RecordDict) -> RecordDict | None:
    """A RecordDict with every multi-array ArrayRecord packed; None when nothing needed packing."""
    packed = {k: pack_record(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()}
    return None if all(packed[k] is v for k, v in content.items()) else RecordDict(packed)


def unpack_content(content: RecordDict) -> tuple[RecordDict, bool]:
    """(RecordDict with packed ArrayRecords restored, whether any was packed)."""
    restored = {k: unpack_record(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()}
    if all(restored[k] is v for k, v in content.items()):
        return content, False
    return RecordDict(restored), True


def packing_mod(msg, context, call_next):
    """ClientApp mod: unpack a packed request; pack the reply the same way (only when the request was).

    First in ``ClientApp(mods=[packing_mod, ledger, egress_guard, ...])``, so the egress guard and the
    ledger see plain records.
    """
    packed = False
    if msg.has_content():
        content, packed = unpack_content(msg.content)
        if packed:
            msg.content = content
    reply = call_next(msg, context)
    if packed and reply.has_content():
        content = pack_content(reply.content)
        if content is not None:
            reply.content = content
    return reply
