"""The seed of one site's random draws in one round: a stable function of the run's seed, the site's
name and the round (and any further salt), the same on every machine.

It governs data-independent choices only (initialisation, batching, masking patterns); DP noise never
comes from it (core/privacy/dp_noise.py).
"""

from __future__ import annotations

import zlib


def site_seed(seed: int, site: str, *salt: int) -> int:
    """A stable per-site, per-round seed (crc32, not Python's salted hash)."""
    return (seed * 1_000_003 + zlib.crc32(site.encode()) + sum(s * 7919 ** (i + 1) for i, s in enumerate(salt))) % 2**31
