"""Packed weights: all arrays of a message as one array (fewer requests per round in deployment).

A ClientApp mod and helpers; the bytes of every array are unchanged and the header is checked on
arrival. Used by every ClientApp (client_app.py) and by the deployment ServerApp grid (flower_tuning.tune_grid_polling).
"""

from __future__ import annotations

import re

PACKED_KEY = "rmm.packed"         # the one array of a packed ArrayRecord
PACKED_STYPE = "rmm.packed.v1"
_PACK_MAGIC = b"RMMPACK1"
_PACK_DTYPES = re.compile(r"^(float(16|32|64)|u?int(8|16|32|64)|bool)$")


def pack_record(record):
    """An ArrayRecord of several arrays -> one ArrayRecord holding a single array (same bytes, one object).

    Flower sends every array (and every 5 MB chunk of it) as a separate object, each its own HTTP
    request per hop; rmm's Tier 1 weights are 31 arrays. Packed, a message is a handful of objects.
    Records with fewer than two arrays are returned as they are.
    """
    import json as _json

    from flwr.app import Array, ArrayRecord

    if len(record) < 2:
        return record
    header, chunks = [], []
    for key, arr in record.items():
        header.append({"k": key, "d": arr.dtype, "s": list(arr.shape), "t": arr.stype, "n": len(arr.data)})
        chunks.append(arr.data)
    head = _json.dumps(header, separators=(",", ":")).encode()
    blob = b"".join([_PACK_MAGIC, len(head).to_bytes(4, "little"), head, *chunks])
    return ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)})


def unpack_record(record):
    """Inverse of :func:`pack_record`; anything that is not a packed record is returned as it is.

    A malformed packed record raises ValueError (the header is checked: sizes, numeric dtypes,
    NumPy serialisation only, so nothing in it is executed or unpickled).
    """
    import json as _json

    from flwr.app import Array, ArrayRecord

    if list(record.keys()) != [PACKED_KEY] or record[PACKED_KEY].stype != PACKED_STYPE:
        return record
    blob = record[PACKED_KEY].data
    if blob[:8] != _PACK_MAGIC:
        raise ValueError("packed ArrayRecord: bad magic")
    size = int.from_bytes(blob[8:12], "little")
    header = _json.loads(blob[12:12 + size])
    offset, arrays = 12 + size, {}
    for item in header:
        key, dtype, shape, stype, n = item["k"], item["d"], item["s"], item["t"], int(item["n"])
        if (not isinstance(key, str) or key in arrays or not _PACK_DTYPES.match(str(dtype))
                or stype != "numpy.ndarray" or n < 0 or offset + n > len(blob)
                or not all(isinstance(x, int) and x >= 0 for x in shape)):
            raise ValueError(f"packed ArrayRecord: bad entry {str(item)[:200]}")
        arrays[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=blob[offset:offset + n])
        offset += n
    if offset != len(blob):
        raise ValueError("packed ArrayRecord: trailing bytes")
    return ArrayRecord(arrays)


def pack_content(content):
    """A RecordDict with every multi-array ArrayRecord packed; None when nothing needed packing."""
    from flwr.app import ArrayRecord, RecordDict

    packed = {k: pack_record(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()}
    if all(packed[k] is v for k, v in content.items()):
        return None
    return RecordDict(packed)


def unpack_content(content):
    """(RecordDict with packed ArrayRecords restored, whether any was packed)."""
    from flwr.app import ArrayRecord, RecordDict

    restored = {k: unpack_record(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()}
    if all(restored[k] is v for k, v in content.items()):
        return content, False
    return RecordDict(restored), True


def packing_mod(msg, context, call_next):
    """ClientApp mod: unpack a packed request; pack the reply the same way (only when the request was).

    Put it first in ``ClientApp(mods=[packing_mod, egress_guard])`` so that the egress guard checks
    the plain reply. A server that does not pack (simulation) gets plain replies.
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
