"""Every use of Flower's non-public parts by the coordinator, in one place, for Flower 1.41 only.

:func:`tune_grid` makes the ServerApp's deployment Grid (Flower's ``HttpGrid``) poll for replies
every ``poll_s`` s instead of 3 s, shortens its waits for reply objects still being uploaded (the
keyword defaults of Flower's pull helpers) and, with ``pack``, sends every multi-array ArrayRecord
packed as one array (server/packing.py; the sites' ClientApp unpacks). Both are switched by the run
config (``flower-tuning``, ``pack-weights``; server/server_app.py). :func:`require_tested_flower`
refuses another Flower major.minor loudly, and tests/test_flower_internals.py checks each patched
attribute. The sites' side is client/flower_internals.py; figures in docs/deployment-performance.md.
"""

from __future__ import annotations

import time

from ..core.errors import RmmError
from .packing import pack_content, unpack_content

TESTED_FLOWER = (1, 41)
GRID_POLL_S = 0.2  # Flower 1.41's HttpGrid polls for replies every 3 s
PULL_BACKOFF_S = (0.05, 1.0)  # Flower 1.41: 1 s first wait for an object not yet uploaded, doubling up to 10 s
PULL_HELPERS = ("pull_objects", "pull_and_inflate_object_from_tree")  # in flwr.supercore.inflatable.inflatable_utils


class FlowerVersionError(RmmError):
    """The installed Flower is not the version the coordinator's Flower patches were written for."""


def require_tested_flower() -> None:
    import flwr

    have = tuple(int(x) for x in flwr.__version__.split(".")[:2])
    if have != TESTED_FLOWER:
        want = ".".join(map(str, TESTED_FLOWER))
        raise FlowerVersionError(
            f"the coordinator's Grid tuning patches non-public parts of Flower {want}, but flwr {flwr.__version__} "
            f"is installed. Fix: install flwr~={want}.0 (the version rmmfed pins), or set flower-tuning = false "
            "in the consortium config's [run] table")


def tune_flower_pulls(initial: float = PULL_BACKOFF_S[0], cap: float = PULL_BACKOFF_S[1]) -> None:
    """Shorter waits for message objects that are still being uploaded (same tries, same time limit)."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    for name in PULL_HELPERS:
        defaults = getattr(getattr(iu, name, None), "__kwdefaults__", None) or {}
        if "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            raise FlowerVersionError(f"flwr.supercore.inflatable.inflatable_utils.{name} has no initial_backoff/"
                                     "backoff_cap defaults any more. Fix: install flwr~=1.41.0, or set "
                                     "flower-tuning = false in the consortium config")
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap


def tune_grid(grid, *, poll_s: float = GRID_POLL_S, pack: bool = True):
    """The deployment Grid with faster reply polls (and packed weights); any other Grid is returned as it is.

    ``grid = tune_grid(grid)`` at the top of the ServerApp's main. Same semantics as Flower's
    ``send_and_receive``: push, then pull until every reply is in or ``timeout`` passed; packed
    replies are unpacked, so strategies see plain records.
    """
    if type(grid).__name__ != "HttpGrid" or getattr(grid, "_rmm_tuned", False):
        return grid  # simulation and in-process Grids poll in memory
    require_tested_flower()
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        raise FlowerVersionError("Flower's HttpGrid has no push_messages/pull_messages. Fix: install "
                                 "flwr~=1.41.0, or set flower-tuning = false in the consortium config")
    tune_flower_pulls()

    def send_and_receive(messages, *, timeout: float | None = None):
        messages = list(messages)
        if pack:
            packed: dict[int, object] = {}  # id(content) -> packed content: one pack per distinct content
            for msg in messages:
                if msg.has_content():
                    key = id(msg.content)
                    if key not in packed:
                        packed[key] = pack_content(msg.content)
                    if packed[key] is not None:
                        msg.content = packed[key]
            del packed
        pending = set(grid.push_messages(messages))
        del messages
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies = []
        while timeout is None or time.time() < end:
            got = list(grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            time.sleep(poll_s)
        for reply in replies:
            if reply.has_content():
                content, was_packed = unpack_content(reply.content)
                if was_packed:
                    reply.content = content
        return replies

    grid.send_and_receive = send_and_receive
    grid._rmm_tuned = True
    return grid
