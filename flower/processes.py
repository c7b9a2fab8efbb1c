"""Supervision of Flower child processes (no Flower import), shared by ``rmm-client`` and ``rmm-server``.

A child runs in its own session with Flower's telemetry and update check off
(:func:`flower_env`); :func:`run_supervised` passes SIGTERM/SIGINT on to it, keeps helper
processes (the ClientApp worker) alive next to it, and always ends its process group and every
descendant (:func:`end_group`, :class:`ProcessTree`), including those that left the group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..core.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NO_PHONE_HOME = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


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
        raise UsageError(f"'{name}' was not found. Fix: install rmm with its dependencies "
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

    ``launcher`` is put in front of ``cmd`` (rmm's tuned Flower launcher, :func:`~rmmfed.flower.supernode.flower_launcher`).
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



def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    """Return once something listens on ``host:port``; raise if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process serving port {port} exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")
