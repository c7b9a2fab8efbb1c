"""A real consortium on loopback: rmm-server + two rmm-client sites over TLS with node authentication.

CA and server certificate from ``rmm-server init-ca``, site keys from ``rmm-client keygen``, keys
registered with ``rmm-server register``, SuperLink from ``rmm-server start``, two SuperNodes from
``rmm-client`` on generated site folders, the run from ``rmm-server run``; an unregistered site is
refused. Everything runs through the installed console scripts, in an isolated FLWR_HOME.

Every process started here is ended here: each in its own session, stopped with SIGTERM (the rmm
CLIs then end their Flower process groups, superexec children included), and anything left of the
process tree after that is killed and reported as a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rmmfed.flower.processes import ProcessTree, free_port, wait_for_port
from rmmfed.core.config import RunConfig
from rmmfed.simulations.cohort import CohortConfig, generate_cohort

from conftest import toy_policy

pytestmark = pytest.mark.slow

FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr", "flwr-clientapp", "flwr-serverapp")
RMM = ("rmm-server", "rmm-client")


def _exe(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or "")


class Processes:
    """Start processes in their own sessions; stop them all, however the test ends.

    Each process tree is watched while it runs (Flower starts some children in new sessions), so
    whatever outlives the graceful stop can be named in the failure and killed.
    """

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[tuple[str, subprocess.Popen, ProcessTree]] = []
        self.journal = open(logs / "teardown.log", "a")  # noqa: SIM115
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            for _, _, tree in list(self.procs):
                tree.update()

    def start(self, name: str, cmd: list[str], *, pipe: bool = False) -> subprocess.Popen:
        out = subprocess.PIPE if pipe else open(self.logs / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, text=True)
        if not pipe:
            out.close()
        self.procs.append((name, proc, ProcessTree(proc.pid)))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 30.0) -> None:
        name, _, tree = next(x for x in self.procs if x[1] is proc)
        tree.update()
        if proc.poll() is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # the rmm CLIs end their Flower processes on SIGTERM
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            print(f"{name}: exit {proc.returncode} {time.monotonic() - t0:.1f} s after SIGTERM",
                  file=self.journal, flush=True)

    def stop_all(self) -> list[str]:
        """Stop everything (last started first); return what outlived the graceful stop (then killed)."""
        for _, proc, _ in reversed(self.procs):
            self.stop(proc)
        self._done.set()
        self._watcher.join()
        deadline = time.monotonic() + 5
        left = []
        while time.monotonic() < deadline:
            left = [(name, pid) for name, _, tree in self.procs for pid in tree.alive()]
            if not left:
                break
            time.sleep(0.2)
        survivors = []
        for name, pid in left:
            try:
                survivors.append(f"{name}: " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:100])
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print(f"survivors: {survivors}", file=self.journal, flush=True)
        self.journal.close()
        return survivors


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    missing = [n for n in (*FLOWER, *RMM) if not _exe(n)]
    if missing:
        pytest.skip(f"Flower/rmm executables not installed: {', '.join(missing)} (pip install -e .)")
    if not Path("/proc").is_dir():
        pytest.skip("process cleanup checks read /proc (Linux)")
    base = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "FLWR_HOME": str(base / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    logs = base / "logs"
    logs.mkdir()
    generate_cohort(CohortConfig(n_patients=120, site_names=["A", "B"], site_fractions=[0.5, 0.5], seed=1),
                    base / "cohort")
    # each site's own policy.toml, read by its ClientApp; it accepts DP noise from the run's seed, which the
    # run below asks for: 60-patient sites hold a handful of calibration values, and an unlucky OS-entropy
    # draw could leave nothing above the noise
    toy_policy(base / "cohort", seeded_noise=True)
    server, client = _exe("rmm-server"), _exe("rmm-client")
    done = _run([server, "init-ca", "--dir", str(base / "consortium")], env)
    assert done.returncode == 0, done.stderr
    for site in ("A", "B", "C"):
        done = _run([client, "keygen", "--site", site, "--dir", str(base / "keys")], env)
        assert done.returncode == 0, done.stderr
    port = free_port()
    procs = Processes(env, logs)
    info = {"base": base, "env": env, "port": port, "procs": procs, "server": server, "client": client, "logs": logs}
    try:
        link = procs.start("superlink", [server, "start", "--dir", str(base / "consortium"),
                                         "--db", str(base / "state.db"), "--host", "127.0.0.1", "--port", str(port)])
        wait_for_port(port, link)
        for site in ("A", "B"):
            done = _run([server, "register", "--key", str(base / "keys" / f"site-{site}.pub"), "--connection", "rmm",
                         "--dir", str(base / "consortium"), "--superlink", f"127.0.0.1:{port}"], env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "registered" in done.stdout
        for site in ("A", "B"):
            procs.start(f"site-{site}", [client, "--site", site, "--data", str(base / "cohort" / f"site-{site}"),
                                         "--superlink", f"127.0.0.1:{port}", "--device", "cpu",
                                         "--root-cert", str(base / "consortium" / "ca.crt"),
                                         "--key", str(base / "keys" / f"site-{site}")])
        yield info
    finally:
        info["survivors"] = procs.stop_all()
        assert not info["survivors"], f"processes outlived their rmm parent: {info['survivors']}"


def test_unregistered_site_is_refused(consortium):
    c = consortium
    proc = c["procs"].start("site-C", [c["client"], "--site", "C", "--data", str(c["base"] / "cohort" / "site-A"),
                                       "--superlink", f"127.0.0.1:{c['port']}", "--device", "cpu",
                                       "--root-cert", str(c["base"] / "consortium" / "ca.crt"),
                                       "--key", str(c["base"] / "keys" / "site-C"), "--max-retries", "2",
                                       "--max-wait", "30"])
    try:
        code = proc.wait(timeout=90)
    finally:
        c["procs"].stop(proc)
    log = (c["logs"] / "site-C.log").read_text()
    assert code == 1, log  # Flower logs "Exit Code: 305"; the process status is 1
    assert "[code: 2004] Failed to activate SuperNode" in log
    assert "rmm-server register" in log  # rmm-client's own hint names the fix


def test_two_sites_two_rounds_over_tls(consortium):
    c = consortium
    out = c["base"] / "out"
    config = c["base"] / "consortium.toml"
    short_tier2 = '"tier2.rounds" = 1\n' if "tier2.rounds" in RunConfig().to_flat() else ""
    config.write_text('name = "loopback-trial"\nsites = ["A", "B"]\nrounds = 2\nstrategy = "fedavg"\n'
                      '[run]\n"model.mc-samples" = 4\n"dp.seeded-noise" = true\n' + short_tier2)
    t0 = time.monotonic()
    proc = c["procs"].start("run", [c["server"], "run", "--config", str(config), "--connection", "rmm",
                                    "--out", str(out), "--verbose"], pipe=True)  # every Flower line: timings below
    timer = threading.Timer(240, lambda: proc.poll() is None and proc.send_signal(signal.SIGTERM))
    timer.start()
    lines: list[tuple[float, str]] = []
    try:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
        code = proc.wait(timeout=30)
    finally:
        timer.cancel()
        c["procs"].stop(proc)
    wall = time.monotonic() - t0
    text = "\n".join(f"{t:7.2f} {line}" for t, line in lines)
    (c["logs"] / "run.log").write_text(text)
    if code != 0:
        tails = {n: (c["logs"] / f"{n}.log").read_text()[-1500:] for n in ("superlink", "site-A", "site-B")}
        pytest.fail(f"rmm-server run exited {code}\n{text[-3000:]}\n" + "\n".join(f"--- {n}.log\n{v}" for n, v in tails.items()))
    assert "finished:completed" in text
    for name in ("metrics.json", "calibration.json", "run_config.json", "model.pt", "report.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["federated"]["per_site"]) == {"A", "B"}  # the consortium names, from --site
    run_config = json.loads((out / "run_config.json").read_text())
    flat = run_config.get("config", run_config)
    assert flat["rounds"] == 2 and flat["model.mc-samples"] == 4  # the consortium file reached the ServerApp

    # per-round latency: from each "[ROUND k/n]" to the next round or the end of that phase
    marks = [(t, line) for t, line in lines if "[ROUND " in line or "Strategy execution finished" in line]
    rounds = [round(b[0] - a[0], 1) for a, b in zip(marks, marks[1:]) if "[ROUND " in a[1]]
    timing = {"wall_s": round(wall, 1), "round_s": rounds,
              "rounds_logged": [line.split("INFO", 1)[-1].strip(" :\x1b[0m") for _, line in lines
                                if "tier1 round" in line or "tier2 round" in line]}
    (c["logs"] / "timing.json").write_text(json.dumps(timing, indent=1))
    print(f"\n2-site 2-round deployment run: {timing}")
