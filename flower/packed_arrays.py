"""The packed-weights wire format: several arrays as one byte string (no Flower import).

Flower sends every array of an ArrayRecord (and every 5 MB chunk of one) as a separate object, each
its own HTTP request per hop; rmm's Tier 1 weights are some 30 arrays. Packed, a message is a
handful of objects. flower/packing.py wraps this format in Flower records for both sides.
Layout: ``RMMPACK1``, a 4-byte little-endian header length, a JSON header (one entry per array:
key, dtype, shape, stype, byte count), then the arrays' bytes, unchanged. Nothing in it is
executed or unpickled; :func:`unpack` checks every entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PACKED_KEY = "rmm.packed"  # the one array of a packed ArrayRecord
PACKED_STYPE = "rmm.packed.v1"
MAGIC = b"RMMPACK1"
ARRAY_STYPE = "numpy.ndarray"  # the only serialisation a packed entry may name
_DTYPES = re.compile(r"^(float(16|32|64)|u?int(8|16|32|64)|bool)$")


@dataclass(frozen=True)
class PackedEntry:
    key: str
    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes


def pack(entries: list[PackedEntry]) -> bytes:
    header = [{"k": e.key, "d": e.dtype, "s": list(e.shape), "t": e.stype, "n": len(e.data)} for e in entries]
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head, *(e.data for e in entries)])


def unpack(blob: bytes) -> list[PackedEntry]:
    """Inverse of :func:`pack`; a malformed blob raises ValueError naming what is wrong."""
    if blob[:8] != MAGIC:
        raise ValueError("packed ArrayRecord: bad magic")
    size = int.from_bytes(blob[8:12], "little")
    header = json.loads(blob[12:12 + size])
    offset, out, seen = 12 + size, [], set()
    for item in header:
        key, dtype, shape, stype, n = item["k"], item["d"], item["s"], item["t"], int(item["n"])
        if (not isinstance(key, str) or key in seen or not _DTYPES.match(str(dtype)) or stype != ARRAY_STYPE
                or n < 0 or offset + n > len(blob) or not all(isinstance(x, int) and x >= 0 for x in shape)):
            raise ValueError(f"packed ArrayRecord: bad entry {str(item)[:200]}")
        seen.add(key)
        out.append(PackedEntry(key, dtype, tuple(shape), stype, blob[offset:offset + n]))
        offset += n
    if offset != len(blob):
        raise ValueError("packed ArrayRecord: trailing bytes")
    return out
