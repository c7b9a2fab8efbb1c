"""The site's Flower SuperNode, tuned, for Flower 1.41 only (the coordinator's side is flower/grid.py).

- :func:`launch_flower` (``rmm-client _flower``, prefix :func:`flower_launcher`): the SuperNode's idle
  and reply polls become shorter (its module's ``time`` is swapped for one whose 3 s / 0.5 s sleeps
  are shorter), and so do its waits for message objects still being uploaded (flower/pulls.py);
- the long-lived ClientApp worker (client/worker.py) runs tasks through the SuperNode's Runtime API
  with the names listed in :data:`WORKER_SURFACE`.

Each patch needs the Flower it was written against (flower/version.py refuses any other major.minor
with a message that names the fix), and tests/test_flower_internals.py checks, attribute by
attribute, that the patched objects still look as the patches expect. Measured effect:
docs/deployment-performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .pulls import tune_flower_pulls
from .version import SITE_FIX, FlowerVersionError, require_tested_flower

SUPERNODE_IDLE_POLL_S = 0.5   # Flower 1.41 sleeps 3 s between empty pulls from the SuperLink
SUPERNODE_REPLY_POLL_S = 0.05  # ... and 0.5 s while it waits for the ClientApp's reply


# Non-public Flower names the long-lived worker (client/worker.py) uses: (module, attribute).
WORKER_SURFACE = (
    ("flwr.proto.runtime_pb2", "AcquireTaskRequest"), ("flwr.proto.runtime_pb2", "SendTaskHeartbeatRequest"),
    ("flwr.supercore.constant", "TaskType"), ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor"),
    ("flwr.supercore.interceptors", "SuperExecAuthHttpInterceptor"),
    ("flwr.supercore.interceptors", "RuntimeTokenHttpInterceptor"),
    ("flwr.supercore.retry", "make_simple_http_retry_invoker"), ("flwr.supercore.runtime", "RuntimeHttpClient"),
    ("flwr.supernode.runtime.run_clientapp", "pull_task_input"),
    ("flwr.supernode.runtime.run_clientapp", "push_message"),
    ("flwr.supernode.runtime.run_clientapp", "push_task_output"), ("flwr.supercore.heartbeat", "HeartbeatSender"),
    ("flwr.cli.install", "install_from_fab"), ("flwr.clientapp.client_app", "LoadClientAppError"),
    ("flwr.clientapp.utils", "get_load_client_app_fn"), ("flwr.common.constant", "SubStatus"),
)


class _TunedTime:
    """Stands in for the ``time`` module inside one Flower module: its fixed sleeps become shorter."""

    def __init__(self, module, sleeps: Mapping[float, float]) -> None:
        self._module, self._sleeps = module, dict(sleeps)

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def sleep(self, seconds: float) -> None:
        self._module.sleep(self._sleeps.get(seconds, seconds))


def flower_launcher(poll_s: float = SUPERNODE_IDLE_POLL_S) -> list[str]:
    """Command prefix that runs a Flower daemon through :func:`launch_flower` (tuned polls, parent watch)."""
    return [sys.executable, "-m", "rmmfed.client.cli", "_flower", "--parent-pid", str(os.getpid()),
            "--poll", str(poll_s), "--"]


def launch_flower(argv: Sequence[str]) -> int:
    """``rmm-client _flower [--parent-pid P] [--poll S] -- /path/flower-supernode ARGS``: run it in this process.

    Flower 1.41's SuperNode sleeps a fixed 3 s after every empty pull and 0.5 s while it waits for a
    reply; here those become ``--poll`` (default 0.5 s) and 0.05 s, and waits for message objects
    still being uploaded start at 0.05 s instead of 1 s (flower/pulls.py). Everything else
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
    require_tested_flower("rmm-client's tuned SuperNode polls", SITE_FIX)
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli import flower_supernode

    if getattr(sci, "time", None) is not time:
        raise FlowerVersionError("flwr.supernode.start_client_internal no longer uses the time module as rmm "
                                 "expects. Fix: install flwr~=1.41.0, or start rmm-client with --no-flower-tuning")
    sci.time = _TunedTime(time, {3: max(0.05, args.poll), 0.5: SUPERNODE_REPLY_POLL_S})
    tune_flower_pulls(SITE_FIX)
    if args.parent_pid:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    sys.argv = list(command)
    flower_supernode()
    return 0

