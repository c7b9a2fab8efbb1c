"""The coordinator's deployment Grid, tuned, for Flower 1.41 only (the sites' side is flower/supernode.py).

:func:`tune_grid` makes the ServerApp's deployment Grid (Flower's ``HttpGrid``) poll for replies
every ``poll_s`` s instead of 3 s, shortens its waits for reply objects still being uploaded
(flower/pulls.py) and, with ``pack``, sends every multi-array ArrayRecord packed as one array
(flower/packing.py; the sites' ClientApp unpacks). Both are switched by the run config
(``flower-tuning``, ``pack-weights``; server/server_app.py). flower/version.py refuses another
Flower major.minor loudly, and tests/test_flower_internals.py checks each patched attribute;
figures in docs/deployment-performance.md.
"""

from __future__ import annotations

import time

from .packing import pack_content, unpack_content
from .pulls import tune_flower_pulls
from .version import COORDINATOR_FIX, FlowerVersionError, require_tested_flower

GRID_POLL_S = 0.2  # Flower 1.41's HttpGrid polls for replies every 3 s


def tune_grid(grid, *, poll_s: float = GRID_POLL_S, pack: bool = True):
    """The deployment Grid with faster reply polls (and packed weights); any other Grid is returned as it is.

    ``grid = tune_grid(grid)`` at the top of the ServerApp's main. Same semantics as Flower's
    ``send_and_receive``: push, then pull until every reply is in or ``timeout`` passed; packed
    replies are unpacked, so strategies see plain records.
    """
    if type(grid).__name__ != "HttpGrid" or getattr(grid, "_rmm_tuned", False):
        return grid  # simulation and in-process Grids poll in memory
    require_tested_flower("the coordinator's Grid tuning", COORDINATOR_FIX)
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        raise FlowerVersionError("Flower's HttpGrid has no push_messages/pull_messages. Fix: install "
                                 "flwr~=1.41.0, or set flower-tuning = false in the consortium config")
    tune_flower_pulls(COORDINATOR_FIX)

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
