"""What both sides' Flower patches share, without importing Flower: the version they were written
for, its check, and the one patch both make (the object-pull back-off). Each side passes in the
Flower objects and its own fix text (client/flower_internals.py, server/flower_internals.py)."""

from __future__ import annotations

from .errors import RmmError

TESTED_FLOWER = (1, 41)  # major.minor the patches were written and measured against
PULL_BACKOFF_S = (0.05, 1.0)  # Flower 1.41: 1 s first wait for an object not yet uploaded, doubling up to 10 s
PULL_HELPERS = ("pull_objects", "pull_and_inflate_object_from_tree")  # in flwr.supercore.inflatable.inflatable_utils


class FlowerVersionError(RmmError):
    """The installed Flower is not the version rmm's Flower patches were written for."""


def check_flower_version(installed: str, what: str, fix: str) -> None:
    """Raise :class:`FlowerVersionError` unless ``installed`` has major.minor :data:`TESTED_FLOWER`."""
    if tuple(int(x) for x in installed.split(".")[:2]) != TESTED_FLOWER:
        want = ".".join(map(str, TESTED_FLOWER))
        raise FlowerVersionError(f"{what} patch non-public parts of Flower {want}, but flwr {installed} is installed. "
                                 f"Fix: install flwr~={want}.0 (the version rmmfed pins), or {fix}")


def shorten_pull_backoff(inflatable_utils, fix: str, initial: float = PULL_BACKOFF_S[0],
                         cap: float = PULL_BACKOFF_S[1]) -> None:
    """Set the keyword defaults of Flower's pull helpers (same tries, same time limit, shorter waits)."""
    for name in PULL_HELPERS:
        defaults = getattr(getattr(inflatable_utils, name, None), "__kwdefaults__", None) or {}
        if "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            raise FlowerVersionError(f"flwr.supercore.inflatable.inflatable_utils.{name} has no initial_backoff/"
                                     f"backoff_cap defaults any more. Fix: install flwr~=1.41.0, or {fix}")
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
