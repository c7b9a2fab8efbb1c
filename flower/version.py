"""The Flower version guard: rmm's Flower patches (flower/supernode.py, flower/grid.py, flower/pulls.py)
were written for one Flower major.minor, and any other is refused with a message that names the fix."""

from __future__ import annotations

from ..core.errors import RmmError

TESTED_FLOWER = (1, 41)  # major.minor the patches were written and measured against
# What each side tells its user to do when its Flower is not the tested one (the rest of the message is shared).
SITE_FIX = "start rmm-client with --isolation subprocess --no-flower-tuning (Flower as it ships)"
COORDINATOR_FIX = "set flower-tuning = false in the consortium config's [run] table"


class FlowerVersionError(RmmError):
    """The installed Flower is not the version rmm's Flower patches were written for."""


def check_flower_version(installed: str, what: str, fix: str) -> None:
    """Raise :class:`FlowerVersionError` unless ``installed`` has major.minor :data:`TESTED_FLOWER`."""
    if tuple(int(x) for x in installed.split(".")[:2]) != TESTED_FLOWER:
        want = ".".join(map(str, TESTED_FLOWER))
        raise FlowerVersionError(f"{what} patch non-public parts of Flower {want}, but flwr {installed} is installed. "
                                 f"Fix: install flwr~={want}.0 (the version rmmfed pins), or {fix}")


def require_tested_flower(what: str, fix: str) -> None:
    """Raise :class:`FlowerVersionError` unless the installed flwr's major.minor is :data:`TESTED_FLOWER`.

    ``what`` names the patch that needs it, ``fix`` the side's way around it (:data:`SITE_FIX`,
    :data:`COORDINATOR_FIX`).
    """
    import flwr

    check_flower_version(flwr.__version__, what, fix)
