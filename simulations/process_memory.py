"""Peak memory of a whole process tree (a command and every process it starts), read from /proc.

Flower's simulation engine and a SuperNode start worker processes; the peak resident memory of the
parent alone (``ru_maxrss``) misses them, and summing RSS counts shared pages (libtorch, Ray's
object store) once per process. :func:`run_measured` starts a command and samples, every
``interval`` seconds, the proportional set size (PSS: shared pages split among the processes
sharing them) of the command and all its descendants, from ``/proc/<pid>/smaps_rollup`` (RSS from
``/proc/<pid>/statm`` where that is unreadable). Linux only; a sampled peak can miss a spike shorter
than the interval.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_s: float
    peak_mib: float  # peak summed PSS of the tree
    peak_processes: int
    output: str


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE // 1024
    except (OSError, ValueError, IndexError):
        return 0


def tree_pss_mib(root: int) -> tuple[float, int]:
    """(summed PSS in MiB, number of processes) of ``root`` and its descendants now."""
    kids, todo, seen = _children(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return sum(_pss_kib(p) for p in seen) / 1024.0, len(seen)


def run_measured(cmd: list[str], *, interval: float = 0.2, env: dict | None = None, cwd: str | None = None,
                 timeout: float | None = None) -> Measured:
    """Run ``cmd`` to completion; return its exit code, wall time, peak tree PSS and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    peak, procs, done = [0.0], [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            mib, n = tree_pss_mib(proc.pid)
            peak[0], procs[0] = max(peak[0], mib), max(procs[0], n)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    finally:
        done.set()
        sampler.join()
    return Measured(proc.returncode, time.perf_counter() - t0, peak[0], procs[0], out or "")
