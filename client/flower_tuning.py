"""Shorter fixed waits inside Flower 1.41, for faster rounds in deployment.

The SuperNode runs through :func:`launch_flower` (started as ``rmm-client _flower``, see
:func:`flower_launcher`), whose idle and reply polls become shorter; :func:`tune_flower_pulls`
shortens the waits for message objects still being uploaded; :func:`tune_grid_polling` makes
the ServerApp's deployment Grid poll for replies more often and pack its ArrayRecords
(:mod:`rmmfed.client.packing`). Each change is skipped when Flower's layout differs.
See docs/deployment-performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .packing import pack_content, unpack_content

SUPERNODE_IDLE_POLL_S = 0.5   # Flower 1.41 sleeps 3 s between empty pulls from the SuperLink
SUPERNODE_REPLY_POLL_S = 0.05  # ... and 0.5 s while it waits for the ClientApp's reply


class _TunedTime:
    """Stands in for the ``time`` module inside one Flower module: its fixed sleeps become shorter."""

    def __init__(self, module, sleeps: Mapping[float, float]) -> None:
        self._module, self._sleeps = module, dict(sleeps)

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def sleep(self, seconds: float) -> None:
        self._module.sleep(self._sleeps.get(seconds, seconds))


PULL_BACKOFF_S = (0.05, 1.0)  # Flower 1.41: 1 s first wait for an object not yet uploaded, doubling up to 10 s


def tune_flower_pulls(initial: float = PULL_BACKOFF_S[0], cap: float = PULL_BACKOFF_S[1]) -> bool:
    """Shorten Flower's wait for message objects that are still being uploaded, in this process.

    Every message is a tree of objects (one per array, one per 5 MB chunk...) that the receiver
    pulls one by one; a receiver that sees the message before its sender finished uploading waits
    1 s, then 2, 4 ... 10 s per missing object. On loopback that race happens at every hop and
    costs about a second each time. Only the defaults of Flower's pull helpers change (same number
    of tries, same time limit). Returns False when this Flower has no such defaults (left as it is).
    """
    try:
        from flwr.supercore.inflatable import inflatable_utils as iu
    except ImportError:
        return False
    done = False
    for fn in (getattr(iu, "pull_objects", None), getattr(iu, "pull_and_inflate_object_from_tree", None)):
        defaults = getattr(fn, "__kwdefaults__", None)
        if defaults and "initial_backoff" in defaults and "backoff_cap" in defaults:
            defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
            done = True
    return done



GRID_POLL_S = 0.2  # the ServerApp's deployment Grid polls for replies every 3 s in Flower 1.41


def tune_grid_polling(grid, poll_s: float | None = None, *, pack: bool = True):
    """Make a deployment Grid (Flower's ``HttpGrid``) look for replies every ``poll_s`` s instead of 3 s.

    For the ServerApp: ``grid = tune_grid_polling(grid)`` at the top of its main. Same semantics as
    Flower's ``send_and_receive`` (push, then pull until every reply is in or ``timeout`` passed).
    Also shortens the ServerApp's waits for reply objects still being uploaded (:func:`tune_flower_pulls`)
    and, with ``pack``, sends every multi-array ArrayRecord packed as one array (:func:`~rmmfed.client.packing.pack_record`;
    the ClientApp needs :func:`~rmmfed.client.packing.packing_mod`) and unpacks packed replies, so strategies see plain records.
    For benchmarks, ``RMM_FLOWER_TUNING=0`` leaves the Grid exactly as Flower made it and
    ``RMM_PACK=0`` turns packing off. Other Grids (simulation) are left alone.
    """
    if type(grid).__name__ != "HttpGrid" or not hasattr(grid, "push_messages") or not hasattr(grid, "pull_messages"):
        return grid
    if getattr(grid, "_rmm_tuned", False) or os.environ.get("RMM_FLOWER_TUNING", "1") == "0":
        return grid
    tune_flower_pulls()
    interval = GRID_POLL_S if poll_s is None else poll_s
    pack = pack and os.environ.get("RMM_PACK", "1") != "0"

    def send_and_receive(messages, *, timeout: float | None = None):
        messages = list(messages)
        if pack:
            packed: dict[int, tuple[object, object]] = {}  # id(content) -> (content, packed): one pack per content
            for msg in messages:
                if msg.has_content():
                    key = id(msg.content)
                    if key not in packed:
                        packed[key] = (msg.content, pack_content(msg.content))
                    if packed[key][1] is not None:
                        msg.content = packed[key][1]
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
            time.sleep(interval)
        for reply in replies:
            if reply.has_content():
                content, was_packed = unpack_content(reply.content)
                if was_packed:
                    reply.content = content
        return replies

    grid.send_and_receive = send_and_receive
    grid._rmm_tuned = True
    return grid


def flower_launcher(poll_s: float = SUPERNODE_IDLE_POLL_S) -> list[str]:
    """Command prefix that runs a Flower daemon through :func:`launch_flower` (tuned polls, parent watch)."""
    return [sys.executable, "-m", "rmmfed.client.cli", "_flower", "--parent-pid", str(os.getpid()),
            "--poll", str(poll_s), "--"]


def launch_flower(argv: Sequence[str]) -> int:
    """``rmm-client _flower [--parent-pid P] [--poll S] -- /path/flower-supernode ARGS``: run it in this process.

    Flower 1.41's SuperNode sleeps a fixed 3 s after every empty pull and 0.5 s while it waits for a
    reply; here those become ``--poll`` (default 0.5 s) and 0.05 s, and waits for message objects
    still being uploaded start at 0.05 s instead of 1 s (:func:`tune_flower_pulls`). Everything else
    is Flower's own ``flower-supernode``. With ``--parent-pid`` the SuperNode stops when that process is gone.
    """
    p = argparse.ArgumentParser(prog="rmm-client _flower")
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--poll", type=float, default=SUPERNODE_IDLE_POLL_S)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or Path(command[0]).name != "flower-supernode":
        p.error("expected: -- /path/to/flower-supernode ARGS")
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli import flower_supernode

    if getattr(sci, "time", None) is time:  # Flower as tested (1.41); otherwise leave it as it is
        sci.time = _TunedTime(time, {3: max(0.05, args.poll), 0.5: SUPERNODE_REPLY_POLL_S})
    tune_flower_pulls()
    if args.parent_pid:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    sys.argv = list(command)
    flower_supernode()
    return 0

