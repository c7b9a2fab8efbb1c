"""``rmm-client``: what a hospital runs next to its data.

    rmm-client keygen --site A --dir keys/            # once: key pair; hand over keys/site-A.pub only
    rmm-client --site A --data /secure/site-A --check # validate the folder, print a summary, connect nothing
    rmm-client --site A --data /secure/site-A --superlink fl.example.org:9092 \\
               --root-cert ca.crt --key keys/site-A   # join the federation (TLS + node authentication)

The site folder is validated before anything connects: a bad folder exits 2 with the file, the
field and the fix. Joining runs Flower's ``flower-supernode`` as a child in its own process group
(telemetry and update checks off; started through :func:`launch_flower`, which shortens Flower's
fixed polls) with ``--isolation process`` and one long-lived ClientApp worker next to it
(:func:`run_worker`; ``--isolation subprocess`` gives Flower's process per message back);
SIGTERM/SIGINT end both groups, every Flower child included.

The Flower tuning helpers for the ServerApp side (:func:`tune_grid_polling`) and the packed
transport of ArrayRecords (:func:`pack_record`, :func:`packing_mod`) live here too; see
docs/deployment-performance.md.

The helpers for Flower child processes (:func:`flower_env`, :func:`run_supervised`,
:func:`end_group`) and for Flower's ``key=value`` strings (:func:`flower_kv`) are shared with
``rmm-server``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..core.errors import RmmError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NO_PHONE_HOME = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


_HINTS = {  # what flower-supernode printed -> what the hospital should do
    "[code: 2004]": "the SuperLink does not know this site's key. Fix: send site-{site}.pub (never the private "
                    "key) to the coordinator for 'rmm-server register'; if it is registered and this site just "
                    "restarted, wait about a minute until the old connection is marked offline, then start again.",
    "[code: 2001]": "the SuperLink requires node authentication. Fix: pass --key <private key from rmm-client keygen>.",
    "CERTIFICATE_VERIFY_FAILED": "the server certificate did not verify. Fix: pass the consortium's ca.crt as "
                                 "--root-cert and use a --superlink host name/address listed in the server "
                                 "certificate (rmm-server init-ca printed its SANs).",
    "Connection refused": "nothing answers at --superlink. Fix: check the address and port, that the server runs "
                          "(rmm-server start) and that the firewall lets this host through.",
}


class ClientCliError(RmmError):
    """A command-line value or a local file is unusable; the message says how to fix it."""


# ---- Flower child processes (shared with rmm-server) -------------------------------------------
def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with Flower's telemetry and update check off (and a 0.2 s SuperExec poll)."""
    env = dict(os.environ)
    env.update(NO_PHONE_HOME)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")  # Flower's SuperExec: 1 s between task polls
    env.update(extra or {})
    return env


def require_executable(name: str) -> str:
    """Absolute path of a Flower executable, preferring the one next to this Python."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ClientCliError(f"'{name}' was not found. Fix: install rmm with its dependencies "
                             "(pip install rmmfed, which pulls flwr~=1.41.0) and activate that environment")
    return found


def warn(text: str) -> None:
    """A loud, unmissable warning on stderr."""
    bar = "!" * 78
    print(f"{bar}\n!! WARNING: {text}\n{bar}", file=sys.stderr, flush=True)


def _scan() -> dict[int, tuple[str, int, int, int]]:
    """pid -> (state, ppid, pgid, start time) of every process, from /proc (Linux; {} elsewhere)."""
    table: dict[int, tuple[str, int, int, int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()  # fields after "pid (comm) "
        if len(f) > 19:
            table[int(entry.name)] = (f[0], int(f[1]), int(f[2]), int(f[19]))
    return table


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [pid for pid, (state, _, group, _) in _scan().items() if group == pgid and state != "Z"]


class ProcessTree:
    """Every process descended from one child, remembered by (pid, start time).

    Flower's children do not all stay in the child's process group: the SuperLink starts its
    ``flower-superexec`` in a new session, which then starts ``flwr-serverapp``. Watching the tree
    while it runs lets :func:`end_group` end those too, and the start time guards against PID reuse.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.root_start = _scan().get(root, ("Z", 0, 0, -1))[3]
        self.seen: dict[int, int] = {}

    def update(self) -> None:
        table = _scan()
        known = {self.root: self.root_start, **self.seen}
        parents = {p for p, start in known.items() if p in table and table[p][3] == start}
        changed = True
        while changed:
            changed = False
            for pid, (state, ppid, _, start) in table.items():
                if ppid in parents and pid not in parents and state != "Z":
                    self.seen[pid] = start
                    parents.add(pid)
                    changed = True

    def alive(self) -> list[int]:
        table = _scan()
        return [p for p, start in self.seen.items()
                if p in table and table[p][3] == start and table[p][0] != "Z"]


def _signal_all(pgid: int, pids: list[int], sig: int) -> None:
    own = os.getpgid(0)
    for target in {pgid} | {p for p in pids}:
        try:
            if target == pgid:
                if pgid != own:
                    os.killpg(pgid, sig)
            else:
                os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_group(proc: subprocess.Popen, grace: float = 10.0, tree: ProcessTree | None = None) -> None:
    """End a child started with ``start_new_session=True``, its process group and its descendants.

    SIGTERM to the group and every known descendant, up to ``grace`` seconds for the child, then
    SIGKILL to whatever is left (Flower's superexec children otherwise linger 20-25 s after their
    parent), until no live member or descendant remains (5 s at most).
    """
    tree = tree or ProcessTree(proc.pid)
    tree.update()
    _signal_all(proc.pid, tree.alive(), signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while True:
        tree.update()
        left = tree.alive() + _group_members(proc.pid)
        if proc.poll() is not None and not left:
            break
        if time.monotonic() > deadline:
            break
        _signal_all(proc.pid, left, signal.SIGKILL)
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass


class _Companion:
    """A helper process that lives as long as the main child (the ClientApp worker), restarted if it dies."""

    def __init__(self, cmd: Sequence[str], name: str) -> None:
        self.cmd, self.name = list(cmd), name
        self.proc: subprocess.Popen | None = None
        self.tree: ProcessTree | None = None
        self.started = 0.0
        self.restarts = 0
        self.next_start = 0.0
        self.readers: list[threading.Thread] = []

    def start(self, env: Mapping[str, str], on_line: Callable[[str], None] | None) -> None:
        pipe = subprocess.PIPE if on_line else None
        self.proc = subprocess.Popen(self.cmd, env=dict(env), start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=pipe, stderr=subprocess.STDOUT if on_line else None, text=bool(on_line),
                                     bufsize=1 if on_line else -1)
        self.tree = ProcessTree(self.proc.pid)
        self.started = time.monotonic()
        if on_line:
            proc = self.proc

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    on_line(line.rstrip("\n"))

            reader = threading.Thread(target=read, name=f"rmm-{self.name}-output", daemon=True)
            reader.start()
            self.readers.append(reader)

    def check(self, env: Mapping[str, str], on_line: Callable[[str], None] | None) -> None:
        """Restart the helper when it died (backoff 1, 2, 4 ... 30 s; reset after a minute of uptime)."""
        if self.proc is None or self.proc.poll() is None:
            if self.tree is not None:
                self.tree.update()
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            if now - self.started > 60:
                self.restarts = 0
            delay = min(30.0, 2.0 ** self.restarts)
            self.next_start = now + delay
            say = on_line or (lambda text: print(text, file=sys.stderr, flush=True))
            say(f"[rmm-client] the {self.name} exited with code {self.proc.returncode}; restarting it in {delay:.0f} s")
            end_group(self.proc, 1.0, self.tree)
        elif now >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.start(env, on_line)

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            end_group(self.proc, grace, self.tree)
        for reader in self.readers:
            reader.join(timeout=5)


def run_supervised(cmd: Sequence[str], env: Mapping[str, str], *,
                   on_line: Callable[[str], None] | None = None, grace: float = 10.0,
                   launcher: Sequence[str] = (), companions: Mapping[str, Sequence[str]] | None = None) -> int:
    """Run ``cmd`` in its own session until it exits; return its exit code.

    SIGTERM/SIGINT received meanwhile are passed on to the child's group (exit code 128 + signal).
    With ``on_line`` the child's stdout+stderr are read line by line and handed to it; otherwise
    the child writes straight to this process's stdout/stderr. Its descendants are watched while it
    runs, and the group and every descendant are always ended (see :func:`end_group`).

    ``launcher`` is put in front of ``cmd`` (rmm's tuned Flower launcher, :func:`flower_launcher`).
    ``companions`` (name -> command) are helper processes started after the child, each in its own
    session, restarted with backoff whenever they die while the child runs, and ended before it.
    """
    received: list[int] = []
    child: list[subprocess.Popen] = []
    helpers = [_Companion(c, name) for name, c in (companions or {}).items()]

    def forward(signum, _frame) -> None:
        received.append(signum)
        if child:
            try:
                os.killpg(child[0].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # handlers first: a signal that arrives while the child starts must still reach it
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        pipe = subprocess.PIPE if on_line else None
        proc = subprocess.Popen([*launcher, *cmd], env=dict(env), start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=pipe, stderr=subprocess.STDOUT if on_line else None, text=bool(on_line),
                                bufsize=1 if on_line else -1)
        child.append(proc)
        tree = ProcessTree(proc.pid)
        done = threading.Event()
        for helper in helpers:
            helper.start(env, on_line)

        def watch() -> None:
            while not done.wait(1.0):
                tree.update()
                if not received and proc.poll() is None:
                    for helper in helpers:
                        helper.check(env, on_line)

        def read() -> None:  # a thread: a grandchild holding the pipe must not block the wait
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))

        threads = [threading.Thread(target=watch, name="rmm-process-tree", daemon=True)]
        if on_line:
            threads.append(threading.Thread(target=read, name="rmm-child-output", daemon=True))
        for thread in threads:
            thread.start()
        try:
            if received:
                os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait()
        finally:
            done.set()
            threads[0].join()
            for helper in helpers:  # first: a worker mid-task still reports to the SuperNode
                helper.stop(min(grace, 5.0))
            end_group(proc, grace, tree)
            if on_line:
                threads[1].join(timeout=5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else code


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a SuperNode's local Runtime API)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- tuned Flower launcher and the warm ClientApp worker ------------------------------------------
SUPERNODE_IDLE_POLL_S = 0.5   # Flower 1.41 sleeps 3 s between empty pulls from the SuperLink
SUPERNODE_REPLY_POLL_S = 0.05  # ... and 0.5 s while it waits for the ClientApp's reply
WORKER_POLL_S = 0.1            # the warm worker asks the SuperNode for a task this often (SuperExec: 1 s)


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


from .packing import PACKED_KEY, PACKED_STYPE, pack_content, pack_record, packing_mod, unpack_content, unpack_record  # noqa: E402,F401


GRID_POLL_S = 0.2  # the ServerApp's deployment Grid polls for replies every 3 s in Flower 1.41


def tune_grid_polling(grid, poll_s: float | None = None, *, pack: bool = True):
    """Make a deployment Grid (Flower's ``HttpGrid``) look for replies every ``poll_s`` s instead of 3 s.

    For the ServerApp: ``grid = tune_grid_polling(grid)`` at the top of its main. Same semantics as
    Flower's ``send_and_receive`` (push, then pull until every reply is in or ``timeout`` passed).
    Also shortens the ServerApp's waits for reply objects still being uploaded (:func:`tune_flower_pulls`)
    and, with ``pack``, sends every multi-array ArrayRecord packed as one array (:func:`pack_record`;
    the ClientApp needs :func:`packing_mod`) and unpacks packed replies, so strategies see plain records.
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_worker(runtime_address: str, *, secret_file: str | None = None, parent_pid: int | None = None,
               poll_s: float = WORKER_POLL_S, site: str = "") -> int:
    """A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

    Flower's own SuperExec starts a fresh ``flwr-clientapp`` for every message (PyTorch import and
    site loading each time). This loop asks the SuperNode's Runtime API for ClientApp tasks itself
    and runs each one here, exactly as ``flwr-clientapp`` would (pull the message, context and app;
    run the ClientApp; push the reply and the context), so modules, the site's data and the model
    stay loaded between messages. A task that raises is answered with Flower's error reply, as
    ``flwr-clientapp`` does, and the loop goes on.
    """
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stop.is_set():  # a second SIGTERM (group and process) while exiting: already on the way out
            return
        stop.set()
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    if parent_pid:
        def watch_parent() -> None:
            while not stop.wait(0.5):
                if not _pid_alive(parent_pid):
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
        threading.Thread(target=watch_parent, name="rmm-parent-watch", daemon=True).start()

    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    t0 = time.perf_counter()
    from . import client_app  # noqa: F401  (PyTorch and rmm load now, not with the first message)

    tune_flower_pulls()
    label = f"[rmm-worker{' ' + site if site else ''}]"
    print(f"{label} ready in {time.perf_counter() - t0:.1f} s; taking ClientApp tasks from {runtime_address}",
          flush=True)
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret_file:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=Path(secret_file).read_bytes(),
                                                         protected_methods={"/flwr.proto.Runtime/AcquireTask"}))
    client = RuntimeHttpClient.from_server_address(server_address=runtime_address, insecure=True,
                                                   root_certificates=None, interceptors=interceptors,
                                                   retry_invoker=make_simple_http_retry_invoker())
    installed: set[str] = set()
    app_lock = threading.Lock()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    failures = 0
    current: _Task | None = None
    queued: list[_Task] = []
    try:
        while not stop.is_set():
            if current is not None and not current.is_alive():
                print(f"{label} {current.summary}", flush=True)
                current = None
            if current is None and queued:
                current = queued.pop(0)
                current.start()
                continue
            try:
                res = client.AcquireTask(request)
                failures = 0
            except Exception as err:  # noqa: BLE001 - the SuperNode may be (re)starting
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    print(f"{label} cannot reach the SuperNode's Runtime API yet ({type(err).__name__}); retrying",
                          flush=True)
                time.sleep(min(5.0, poll_s * failures))
                continue
            if not (res.HasField("task") and res.token):
                time.sleep(poll_s)
                continue
            task = _Task(runtime_address, res.token, installed, app_lock)
            # The SuperNode hands out one message at a time and waits for its reply; a new task while
            # the current one still waits for its message means the SuperNode gave up on that message
            # (e.g. its run ended while it was being received) and the wait would never end.
            if current is not None and current.abandon():
                print(f"{label} a task still waiting for its message was superseded by a new one; abandoned it",
                      flush=True)
                current = None
            if current is None:
                current = task
                task.start()
            else:
                queued.append(task)
    finally:
        stop.set()
        client.close()
    return 0


def _stop_heartbeat(heartbeat) -> None:
    try:
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
    except RuntimeError:  # stopped meanwhile by the other thread
        pass


class _Task(threading.Thread):
    """One ClientApp task, run as Flower's ``run_clientapp`` runs it, without leaving the process."""

    def __init__(self, runtime_address: str, token: str, installed: set[str], app_lock: threading.Lock) -> None:
        super().__init__(name="rmm-clientapp-task", daemon=True)
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker())
        self.installed, self.app_lock = installed, app_lock
        self.lock = threading.Lock()
        self.phase = "input"  # input -> app -> done; only an "input" task can be abandoned
        self.abandoned = False
        self.cancelled = threading.Event()
        self.heartbeat = None
        self.summary = "task: not run"

    def abandon(self) -> bool:
        """Give up a task still waiting for its message: stop its heartbeat and report it failed."""
        from flwr.common.constant import SubStatus
        from flwr.supernode.runtime.run_clientapp import push_task_output

        with self.lock:
            if self.phase != "input" or self.abandoned:
                return False
            self.abandoned = True
            heartbeat = self.heartbeat
        _stop_heartbeat(heartbeat)
        push_task_output(client=self.client, context=None, sub_status=SubStatus.FAILED,
                         details="abandoned: its message never arrived (the SuperNode moved on)")
        return True

    def _beat(self) -> bool:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        try:
            res = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except Exception:  # noqa: BLE001 - transient; the sender retries with backoff
            return False
        if not res.success:
            self.cancelled.set()  # the run was stopped; the reply would be refused
        return True

    def run(self) -> None:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        t0 = time.perf_counter()
        message = context = reply = None
        status, details, kind, app_s = SubStatus.FAILED, "ClientApp task failed due to unknown reason", "?", 0.0
        try:
            with self.lock:
                if self.abandoned:
                    return
                self.heartbeat = HeartbeatSender(self._beat)
                self.heartbeat.start()
            message, context, run, fab = pull_task_input(self.client)
            kind = message.metadata.message_type
            with self.lock:
                if self.abandoned:
                    return
                self.phase = "app"
            with self.app_lock:
                if fab.hash_str not in self.installed:
                    install_from_fab(fab.content, skip_prompt=True)
                    self.installed.add(fab.hash_str)
                client_app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
                    run.fab_id, run.fab_version, fab.hash_str)
                t_app = time.perf_counter()
                reply = client_app(message=message, context=context)
                app_s = time.perf_counter() - t_app
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - answered with Flower's error reply, as flwr-clientapp does
            if self.abandoned:
                return
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError) \
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            status, details = SubStatus.FAILED, reason
            print(f"[rmm-worker] ClientApp raised an exception: {reason}", file=sys.stderr, flush=True)
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            if not self.abandoned:
                try:
                    if reply is not None and context is not None and not self.cancelled.is_set():
                        push_message(self.client, reply, context)
                except Exception as ex:  # noqa: BLE001
                    print(f"[rmm-worker] failed to push the reply: {ex}", file=sys.stderr, flush=True)
                finally:
                    push_task_output(client=self.client, context=context, sub_status=status, details=details)
            _stop_heartbeat(self.heartbeat)
            self.client.close()
            self.phase = "done"
            self.summary = f"{kind}: {status} in {time.perf_counter() - t0:.2f} s (ClientApp {app_s:.2f} s)"


def flower_value(value: bool | int | float | str) -> str:
    """A scalar as Flower's ``key=value`` parser (TOML) reads it; strings as TOML literal strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ClientCliError(f"value {value!r} spans several lines; Flower's key=value config cannot carry it. "
                                 "Fix: use a single-line value")
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise ClientCliError(f"value {value!r} holds both quote characters (or a quote and a backslash); "
                             "Flower's key=value config cannot carry it. Fix: rename the path or value")
    raise ClientCliError(f"value {value!r} ({type(value).__name__}) is not a bool, int, float or str; "
                         "Flower's config is flat scalars. Fix: write lists as comma-separated text")


def flower_kv(items: Mapping[str, bool | int | float | str]) -> list[str]:
    """``{"rounds": 2, "out-dir": "/x"}`` -> ``["rounds=2", "out-dir='/x'"]`` (one item per key)."""
    return [f"{k}={flower_value(v)}" for k, v in items.items()]


# ---- keys ----------------------------------------------------------------------------------------
def check_site_name(site: str) -> str:
    if not _SITE_NAME.match(site):
        raise ClientCliError(f"site name {site!r} is not usable. Fix: use letters, digits, '-', '_' or '.', "
                             "starting with a letter or digit (e.g. A or st-marys)")
    return site


def ssh_fingerprint(pub_path: str | Path) -> str:
    """``SHA256:...`` of an OpenSSH public key line, as ``ssh-keygen -l`` prints it."""
    parts = Path(pub_path).read_text(encoding="ascii", errors="replace").split()
    if len(parts) < 2:
        raise ClientCliError(f"{pub_path}: not an OpenSSH public key line. Fix: use the .pub file "
                             "that 'rmm-client keygen' wrote")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ClientCliError(f"{pub_path}: the key data is not valid base64. Fix: use the .pub file "
                             "exactly as 'rmm-client keygen' wrote it") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def keygen(site: str, directory: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create ``<dir>/site-<site>`` (private, mode 600) and ``.pub`` (ECDSA P-384, OpenSSH format)."""
    check_site_name(site)
    folder = Path(directory)
    private = folder / f"site-{site}"
    public = private.with_name(private.name + ".pub")
    if (private.exists() or public.exists()) and not force:
        raise ClientCliError(f"{private} already exists. Fix: keep it (the coordinator registered its .pub), "
                             "or pass --force to replace it and hand the new .pub to the coordinator again")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for p in (private, public):
        p.unlink(missing_ok=True)
    tool = shutil.which("ssh-keygen")
    if tool:
        done = subprocess.run([tool, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"rmm-site-{site}",
                               "-f", str(private)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClientCliError(f"ssh-keygen failed ({done.stderr.strip() or done.returncode}). "
                                 f"Fix: check that {folder} is writable")
    else:  # same key type and file formats, through the cryptography package
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        public.write_bytes(line + f" rmm-site-{site}\n".encode())
    os.chmod(private, 0o600)
    os.chmod(public, 0o644)
    return private, public


# ---- site folder -----------------------------------------------------------------------------
def format_summary(summary: dict, root: str | Path) -> str:
    """The readable ``--check`` report of ``SiteData.summary()``."""
    n = summary["patients"]
    lines = [f"site folder  {root}  (site '{summary['site']}')",
             f"patients     {n}",
             f"events       {summary['events']} ({100 * summary['event_rate']:.1f}%)",
             "splits       " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())]
    mods = summary["modalities"]
    if mods:
        width = max(10, *(len(m) for m in mods))
        lines.append(f"{'modality':<{width}}  {'dim':>5}  {'present':>7}  {'missing':>7}")
        for m, v in mods.items():
            dim = "-" if v["dim"] is None else str(v["dim"])
            lines.append(f"{m:<{width}}  {dim:>5}  {v['present']:>7}  {v['missing']:>7}"
                         + ("   (folder has no files)" if v["present"] == 0 else ""))
    else:
        lines.append("modalities   none (no modality folders: every patient abstains)")
    lines.append(f"patients with no modality  {summary['no_modality']}"
                 + ("  (kept: they are the abstention case)" if summary["no_modality"] else ""))
    return "\n".join(lines)


def validate_site(data: str | Path):
    """load_site or raise its SiteDataError / SchemaMismatchError (message: file, field, fix)."""
    from ..core.site_data import load_site

    return load_site(data)


# ---- joining the federation ----------------------------------------------------------------------
def supernode_command(args: argparse.Namespace, data: Path, runtime_port: int) -> list[str]:
    """The ``flower-supernode`` command line for these arguments (no process started).

    With ``--isolation process`` (the default) the SuperNode starts no ClientApp processes itself:
    rmm-client runs one long-lived worker next to it (:func:`worker_command`).
    """
    cmd = [require_executable("flower-supernode"), "--superlink", args.superlink]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(args.root_cert).resolve()),
                "--auth-supernode-private-key", str(Path(args.key).resolve())]
    cmd += ["--host", "127.0.0.1", "--port", str(runtime_port),
            "--max-retries", str(args.max_retries), "--max-wait-time", str(args.max_wait)]
    if getattr(args, "isolation", "subprocess") == "process":
        cmd += ["--isolation", "process"]
    cmd += [
            "--node-config", " ".join(flower_kv({"data-dir": str(data.resolve()), "device": args.device,
                                                 "site": args.site}))]
    return cmd


def worker_command(args: argparse.Namespace, runtime_port: int, secret_file: Path | None) -> list[str]:
    """The long-lived ClientApp worker serving the SuperNode's Runtime API on ``runtime_port``."""
    cmd = [sys.executable, "-m", "rmmfed.client.cli", "_worker", "--runtime-api-address",
           f"127.0.0.1:{runtime_port}", "--parent-pid", str(os.getpid()), "--site", args.site]
    if secret_file is not None:
        cmd += ["--secret-file", str(secret_file)]
    return cmd


def main_worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rmm-client _worker", description="long-lived ClientApp (internal; "
                                "rmm-client starts it next to a SuperNode run with --isolation process)")
    p.add_argument("--runtime-api-address", required=True)
    p.add_argument("--secret-file")
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--poll", type=float, default=WORKER_POLL_S)
    p.add_argument("--site", default="")
    a = p.parse_args(list(argv))
    return run_worker(a.runtime_api_address, secret_file=a.secret_file, parent_pid=a.parent_pid, poll_s=a.poll,
                      site=a.site)


def check_connection_args(args: argparse.Namespace) -> None:
    """Refuse missing or unsafe connection settings before anything starts."""
    if not args.superlink:
        raise ClientCliError("--superlink is required to join. Fix: pass the coordinator's address, "
                             "e.g. --superlink fl.consortium.org:9092 (or use --check to validate only)")
    host, sep, port = args.superlink.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClientCliError(f"--superlink {args.superlink!r} is not HOST:PORT. Fix: e.g. --superlink 10.0.0.5:9092")
    if args.insecure:
        return
    for flag, value, what in (("--root-cert", args.root_cert, "the consortium's ca.crt from the coordinator"),
                              ("--key", args.key, f"the private key from 'rmm-client keygen --site {args.site}'")):
        if not value:
            raise ClientCliError(f"{flag} is required (TLS and node authentication are on by default). "
                                 f"Fix: pass {flag} <{what}>; --insecure exists only for local trials")
        if not Path(value).is_file():
            raise ClientCliError(f"{flag} {value}: file not found. Fix: pass the path of {what}")
    head = Path(args.key).read_text(encoding="ascii", errors="replace")[:64]
    if head.startswith(("ssh-", "ecdsa-")):
        raise ClientCliError(f"--key {args.key} is a PUBLIC key. Fix: pass the private key file (the one "
                             "without .pub) that keygen wrote")
    if Path(args.key).stat().st_mode & 0o077:
        warn(f"{args.key} is readable by other users; run: chmod 600 {args.key}")


def check_device(device: str) -> str:
    """Resolve auto/cpu/cuda here (ConfigError if CUDA was asked for but is absent)."""
    from ..core.device import resolve_device

    return str(resolve_device(device))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmm-client", description="Validate this hospital's site folder and join the federation (TLS + node key).",
                                epilog="Key pair: rmm-client keygen --site A --dir keys/ (see rmm-client keygen -h)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", required=True, help="this hospital's site name, as the consortium agreed (e.g. A)")
    p.add_argument("--data", required=True, type=Path, help="the site folder (patients.csv + modality folders)")
    p.add_argument("--superlink", help="coordinator address HOST:PORT (e.g. fl.consortium.org:9092)")
    p.add_argument("--root-cert", help="the consortium CA certificate (ca.crt) from the coordinator")
    p.add_argument("--key", help="this site's private key from 'rmm-client keygen' (keys/site-A)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device (default auto)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication: local trials ONLY")
    p.add_argument("--check", action="store_true", help="validate the site folder, print a summary, connect nothing")
    p.add_argument("--runtime-port", type=int, default=0,
                   help="local port of the SuperNode's Runtime API (default: a free port, so several nodes can share a host)")
    p.add_argument("--max-retries", type=int, default=60, help="connection attempts before giving up (default 60)")
    p.add_argument("--max-wait", type=float, default=600.0,
                   help="seconds to keep retrying an unreachable SuperLink before giving up (default 600)")
    p.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                   help="process (default): one long-lived ClientApp worker keeps PyTorch, the site's data and the "
                        "model loaded between messages; subprocess: Flower's default, a new ClientApp process per "
                        "message (slower: 5-10 s per message on a small machine)")
    p.add_argument("--poll-interval", type=float, default=SUPERNODE_IDLE_POLL_S,
                   help=f"seconds between the SuperNode's polls of the server when idle (default "
                        f"{SUPERNODE_IDLE_POLL_S}; Flower's own is 3)")
    args = p.parse_args(list(argv))
    if args.max_retries < 1 or args.max_wait <= 0:
        p.error("--max-retries must be >= 1 and --max-wait > 0 (retries are bounded on purpose)")
    if not 0.05 <= args.poll_interval <= 60:
        p.error("--poll-interval must be between 0.05 and 60 seconds")
    return args


def parse_keygen_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmm-client keygen",
                                description="Create this site's key pair (ECDSA P-384, OpenSSH format, via ssh-keygen).")
    p.add_argument("--site", required=True, help="site name (e.g. A): writes <dir>/site-A and <dir>/site-A.pub")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="folder for the key files (default keys/)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    return p.parse_args(list(argv))


def main_keygen(argv: Sequence[str]) -> int:
    args = parse_keygen_args(argv)
    try:
        private, public = keygen(args.site, args.dir, force=args.force)
        fp = ssh_fingerprint(public)
    except RmmError as err:
        print(f"rmm-client keygen: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key  {private}   (mode 600) KEEP IT HERE: never send it, never copy it off this machine")
    print(f"public key   {public}")
    print(f"fingerprint  {fp}")
    print(f"\nHand over ONLY {public} to the coordinator, and confirm the fingerprint with them by phone.")
    print(f"Then join with: rmm-client --site {args.site} --data <site folder> --superlink <host:port> "
          f"--root-cert ca.crt --key {private}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        return main_keygen(argv[1:])
    if argv[:1] == ["_flower"]:
        return launch_flower(argv[1:])
    if argv[:1] == ["_worker"]:
        return main_worker(argv[1:])
    args = parse_args(argv)
    try:
        check_site_name(args.site)
    except RmmError as err:
        print(f"rmm-client: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        site = validate_site(args.data)  # first: a bad folder never connects
    except (RmmError, OSError) as err:
        print(f"rmm-client: site folder is not valid: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(format_summary(site.summary(), args.data))
        try:
            print(f"device       {check_device(args.device)}")
        except RmmError as err:
            print(f"rmm-client: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        print(f"\nOK: {args.data} is a valid site folder. Nothing was sent anywhere.")
        return EXIT_OK
    try:
        check_connection_args(args)
        check_device(args.device)
        if args.insecure:
            warn("--insecure: NO TLS and NO node authentication. Weights and metrics travel in clear text "
                 "and anyone can pose as the server. Use this only for local trials with synthetic data.")
            if args.key or args.root_cert:
                warn("--insecure ignores --key and --root-cert")
        port = args.runtime_port or free_port()
        cmd = supernode_command(args, args.data, port)
    except RmmError as err:
        print(f"rmm-client: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[rmm-client] site {args.site}: {len(site)} patients validated; joining {args.superlink} "
          f"({'INSECURE' if args.insecure else 'TLS + node key'}; "
          f"{'long-lived ClientApp worker' if args.isolation == 'process' else 'a ClientApp process per message'})",
          flush=True)
    seen: list[str] = []

    def relay(line: str) -> None:
        print(line, flush=True)
        seen.extend(marker for marker in _HINTS if marker in line and marker not in seen)

    companions: dict[str, list[str]] = {}
    secrets_dir: Path | None = None
    if args.isolation == "process":
        # Only a holder of this secret may take tasks from the SuperNode's local Runtime API.
        import tempfile

        secrets_dir = Path(tempfile.mkdtemp(prefix="rmm-client-"))
        secret = secrets_dir / "superexec.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
        cmd += ["--superexec-auth-secret-file", str(secret)]
        companions["ClientApp worker"] = worker_command(args, port, secret)
    try:
        code = run_supervised(cmd, flower_env(), on_line=relay, launcher=flower_launcher(args.poll_interval),
                              companions=companions)
    finally:
        if secrets_dir is not None:
            shutil.rmtree(secrets_dir, ignore_errors=True)
    if code != 0 and code < 128:
        hints = [_HINTS[m].format(site=args.site, key=args.key) for m in seen] or [
            "see the 'Exit Code:' message above (https://flower.ai/docs/framework/ref-exit-codes.html)"]
        print(f"rmm-client: flower-supernode exited with code {code}: " + " ".join(hints), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
