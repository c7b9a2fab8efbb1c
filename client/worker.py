"""The long-lived ClientApp worker next to a SuperNode run with ``--isolation process``.

``rmm-client`` starts it as ``rmm-client _worker`` (:func:`run_worker`): it takes the SuperNode's
ClientApp tasks from its local Runtime API and runs each in this process, so PyTorch, the site's
data and the model stay loaded between messages. Flower and PyTorch are imported only when it runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..flower.pulls import tune_flower_pulls
from ..flower.version import SITE_FIX, require_tested_flower
from .site_errors import SITE_ERROR_REASON

WORKER_POLL_S = 0.1  # the warm worker asks the SuperNode for a task this often (SuperExec: 1 s)


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

    require_tested_flower("rmm-client's long-lived ClientApp worker (--isolation process)", SITE_FIX)
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    t0 = time.perf_counter()
    from . import client_app  # noqa: F401  (PyTorch and rmm load now, not with the first message)

    tune_flower_pulls(SITE_FIX)
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


def task_retry_invoker(invoker):
    """Flower's HTTP retry invoker, except that a refused task token ends the task, not the process.

    Flower's ``flwr-clientapp`` runs one task per process, so on HTTP 401 its invoker sends SIGINT to
    its own process. In the long-lived worker that would kill every later task too (seen after a
    SuperLink restart: a superseded task's token is revoked, its next request gets 401, the worker
    died and its site missed the next message). Here the 401 is raised in the task's thread instead.
    """
    import httpx

    flower_giveup = invoker.should_giveup

    def giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return flower_giveup(exc) if flower_giveup is not None else False

    invoker.should_giveup = giveup
    return invoker


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
            retry_invoker=task_retry_invoker(make_simple_http_retry_invoker()))
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
        try:
            push_task_output(client=self.client, context=None, sub_status=SubStatus.FAILED,
                             details="abandoned: its message never arrived (the SuperNode moved on)")
        except Exception as ex:  # noqa: BLE001 - its token may be revoked already; the task is gone either way
            print(f"[rmm-worker] could not report the abandoned task: {type(ex).__name__}", file=sys.stderr, flush=True)
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
            status, details = SubStatus.FAILED, SITE_ERROR_REASON  # the text stays here, never in the reply
            print(f"[rmm-worker] ClientApp raised an exception: {reason}", file=sys.stderr, flush=True)
            if message is not None:
                reply = Message(Error(code=code, reason=SITE_ERROR_REASON), reply_to=message)
        finally:
            if not self.abandoned:
                try:
                    if reply is not None and context is not None and not self.cancelled.is_set():
                        push_message(self.client, reply, context)
                except Exception as ex:  # noqa: BLE001
                    print(f"[rmm-worker] failed to push the reply: {ex}", file=sys.stderr, flush=True)
                finally:
                    try:
                        push_task_output(client=self.client, context=context, sub_status=status, details=details)
                    except Exception as ex:  # noqa: BLE001 - e.g. the token was revoked: end this task only
                        print(f"[rmm-worker] could not report the task's end: {type(ex).__name__}: {ex}",
                              file=sys.stderr, flush=True)
            _stop_heartbeat(self.heartbeat)
            self.client.close()
            self.phase = "done"
            self.summary = f"{kind}: {status} in {time.perf_counter() - t0:.2f} s (ClientApp {app_s:.2f} s)"
