"""Flower's wait for message objects still being uploaded, shortened (the one patch both sides make).

Every message is a tree of objects (one per array, one per 5 MB chunk...) that the receiver pulls
one by one; a receiver that sees the message before its sender finished uploading waits 1 s, then
2, 4 ... 10 s per missing object. On loopback that race happens at every hop and costs about a
second each time. :func:`tune_flower_pulls` changes only the keyword defaults of Flower's pull
helpers (same number of tries, same time limit); tests/test_flower_internals.py checks them.
"""

from __future__ import annotations

from .version import FlowerVersionError

PULL_BACKOFF_S = (0.05, 1.0)  # Flower 1.41: 1 s first wait for an object not yet uploaded, doubling up to 10 s
PULL_HELPERS = ("pull_objects", "pull_and_inflate_object_from_tree")  # in flwr.supercore.inflatable.inflatable_utils


def tune_flower_pulls(fix: str, initial: float = PULL_BACKOFF_S[0], cap: float = PULL_BACKOFF_S[1]) -> None:
    """Set the keyword defaults of Flower's pull helpers, in this process.

    A Flower without them raises :class:`FlowerVersionError` ending in ``fix`` (the side's way around
    it: flower/version.py SITE_FIX or COORDINATOR_FIX).
    """
    from flwr.supercore.inflatable import inflatable_utils

    for name in PULL_HELPERS:
        defaults = getattr(getattr(inflatable_utils, name, None), "__kwdefaults__", None) or {}
        if "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            raise FlowerVersionError(f"flwr.supercore.inflatable.inflatable_utils.{name} has no initial_backoff/"
                                     f"backoff_cap defaults any more. Fix: install flwr~=1.41.0, or {fix}")
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
