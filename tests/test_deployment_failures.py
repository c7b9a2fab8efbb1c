"""Failures of a real consortium on loopback: a site dies mid-run, the server dies mid-run, a site starts first.

Same set-up as tests/test_deployment.py (TLS, node authentication, the installed console scripts,
an isolated FLWR_HOME per test) and the same process discipline: every process started here runs
in its own session, is watched as a tree, and is ended however the test ends. A "crash" is SIGKILL
to the whole tree of the rmm process (rmm CLI, Flower daemon, superexec, ServerApp / ClientApp
worker), so nothing of it gets to clean up.

- a killed site does not stop the run: 3 sites, min-sites 2; one site's tree is killed once the
  first Tier 1 round is in; the run completes with the 2 others and metrics.json records the loss;
- a killed server resumes: the SuperLink's tree is killed after round 2 of 4 (checkpoint.pt at
  tier1/2), restarted on the same database, ``rmm-server run --resume`` completes, and the final
  federated C-index matches an uninterrupted run of the same seed within 0.005;
- a site started before the server waits (bounded retries) and joins once the server is up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rmmfed.flower.processes import free_port, wait_for_port
from rmmfed.simulations.cohort import CohortConfig, generate_cohort

from conftest import toy_policy
from test_deployment import FLOWER, RMM, Processes, _exe, _run

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 420  # one rmm-server run, dead-node timeouts included


class Followed:
    """``rmm-server run`` with its streamed output read line by line (timestamped, also to a log file)."""

    def __init__(self, procs: Processes, name: str, cmd: list[str], log: Path) -> None:
        self.t0 = time.monotonic()
        self.proc = procs.start(name, cmd, pipe=True)
        self.lines: list[tuple[float, str]] = []
        self.log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as out:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))
                out.write(f"{time.monotonic() - self.t0:7.2f} {line}")
                out.flush()

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line matching ``pattern`` (regex); fails if the run ends or ``timeout`` passes first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.lines[seen:]
            for _, line in lines:
                if rx.search(line):
                    return line
            seen += len(lines)
            if self.proc.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"rmm-server run exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} in {timeout} s:\n{self.text()[-3000:]}")

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return code


class Consortium:
    """One test's consortium: CA, site keys, a cohort, a SuperLink on a fixed port and its sites."""

    def __init__(self, base: Path, sites: list[str], n_patients: int, seed: int) -> None:
        missing = [n for n in (*FLOWER, *RMM) if not _exe(n)]
        if missing:
            pytest.skip(f"Flower/rmm executables not installed: {', '.join(missing)} (pip install -e .)")
        if not Path("/proc").is_dir():
            pytest.skip("process cleanup checks read /proc (Linux)")
        self.base, self.sites = base, sites
        self.env = {**os.environ, "FLWR_HOME": str(base / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1"}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True)
        generate_cohort(CohortConfig(n_patients=n_patients, site_names=sites,
                                     site_fractions=[1 / len(sites)] * len(sites), seed=seed), base / "cohort")
        toy_policy(base / "cohort", seeded_noise=True)  # each site's own policy.toml, read by its ClientApp
        self.server, self.client = _exe("rmm-server"), _exe("rmm-client")
        done = _run([self.server, "init-ca", "--dir", str(base / "consortium")], self.env)
        assert done.returncode == 0, done.stderr
        for site in sites:
            done = _run([self.client, "keygen", "--site", site, "--dir", str(base / "keys")], self.env)
            assert done.returncode == 0, done.stderr
        self.port = free_port()
        self.procs = Processes(self.env, self.logs)
        self.starts = 0
        self.site_procs: dict[str, subprocess.Popen] = {}

    # ---- processes -------------------------------------------------------------------------------
    def start_server(self) -> subprocess.Popen:
        self.starts += 1
        return self.procs.start(f"superlink-{self.starts}", [
            self.server, "start", "--dir", str(self.base / "consortium"), "--db", str(self.base / "state.db"),
            "--host", "127.0.0.1", "--port", str(self.port)])

    def register(self) -> None:
        for site in self.sites:
            done = _run([self.server, "register", "--key", str(self.base / "keys" / f"site-{site}.pub"),
                         "--connection", "rmm", "--dir", str(self.base / "consortium"),
                         "--superlink", f"127.0.0.1:{self.port}"], self.env)
            assert done.returncode == 0, done.stdout + done.stderr

    def start_site(self, site: str, *extra: str) -> subprocess.Popen:
        proc = self.procs.start(f"site-{site}", [
            self.client, "--site", site, "--data", str(self.base / "cohort" / f"site-{site}"),
            "--superlink", f"127.0.0.1:{self.port}", "--device", "cpu",
            "--root-cert", str(self.base / "consortium" / "ca.crt"),
            "--key", str(self.base / "keys" / f"site-{site}"), *extra])
        self.site_procs[site] = proc
        return proc

    def kill_tree(self, proc: subprocess.Popen) -> list[str]:
        """SIGKILL the process, its group and every descendant seen (a crash); return what was killed."""
        name, _, tree = next(x for x in self.procs.procs if x[1] is proc)
        killed: list[str] = []
        for _ in range(5):  # a child may appear while we kill: go again until nothing is left
            tree.update()
            pids = ([proc.pid] if proc.poll() is None else []) + tree.alive()
            if not pids:
                break
            for pid in pids:
                try:
                    killed.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200])
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.3)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while tree.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tree.alive(), f"{name}: still alive after SIGKILL: {tree.alive()}"
        print(f"{name}: killed {killed}", file=self.procs.journal, flush=True)
        return killed

    def config(self, name: str, *, rounds: int, min_sites: int, seed: int = 3, tier2_rounds: int = 1,
               timeout_s: float = 60.0) -> Path:
        path = self.base / f"{name}.toml"
        path.write_text(f'name = "{name}"\nsites = {json.dumps(self.sites)}\nrounds = {rounds}\nstrategy = "fedavg"\n'
                        f'min-sites = {min_sites}\n[run]\nseed = {seed}\n"model.mc-samples" = 4\n'
                        f'"tier2.rounds" = {tier2_rounds}\n"round-timeout-s" = {timeout_s}\n'
                        '"dp.seeded-noise" = true\n')  # runs compared to the digit: noise from the seed
        return path

    def run(self, name: str, config: Path, out: Path, *extra: str, verbose: bool = True) -> Followed:
        """``rmm-server run``; verbose (every Flower line) by default: the tests wait for round lines."""
        return Followed(self.procs, name, [self.server, "run", "--config", str(config), "--connection", "rmm",
                                           "--out", str(out), *(["--verbose"] if verbose else []), *extra],
                        self.logs / f"{name}.log")

    def close(self) -> list[str]:
        return self.procs.stop_all()

    def tails(self, *names: str) -> str:
        out = []
        for n in names:
            path = self.logs / f"{n}.log"
            if path.is_file():
                out.append(f"--- {n}.log\n{path.read_text()[-2000:]}")
        return "\n".join(out)


@pytest.fixture
def make_consortium(tmp_path):
    made: list[Consortium] = []

    def make(sites: list[str], n_patients: int = 180, seed: int = 2) -> Consortium:
        c = Consortium(tmp_path, sites, n_patients, seed)
        made.append(c)
        return c

    yield make
    survivors = [s for c in made for s in c.close()]
    assert not survivors, f"processes outlived their rmm parent: {survivors}"


def _assert_completed(run: Followed, code: int, out: Path, c: Consortium) -> dict:
    if code != 0:
        pytest.fail(f"rmm-server run exited {code}\n{run.text()[-4000:]}\n"
                    + c.tails(*(f"superlink-{i}" for i in range(1, c.starts + 1)), *(f"site-{s}" for s in c.sites)))
    assert "finished:completed" in run.text()
    for name in ("metrics.json", "calibration.json", "run_config.json", "model.pt", "report.md"):
        assert (out / name).is_file(), name
    return json.loads((out / "metrics.json").read_text())


def _checkpoint(path: Path) -> tuple[str, int] | None:
    import torch

    try:
        state = torch.load(path, weights_only=True)  # the checkpoint is plain tensors and containers
    except (OSError, EOFError, RuntimeError):
        return None
    return str(state.get("phase")), int(state.get("round", -1))


# ---- a. a killed site does not stop the run ------------------------------------------------------
def test_killed_site_does_not_stop_the_run(make_consortium):
    c = make_consortium(["A", "B", "C"])
    link = c.start_server()
    wait_for_port(c.port, link)
    c.register()
    for site in c.sites:
        c.start_site(site)
    out = c.base / "out"
    t0 = time.monotonic()
    run = c.run("run", c.config("killed-site", rounds=3, min_sites=2, timeout_s=60.0), out)
    run.wait_for(r"tier1 round 1/3", timeout=240)
    t_kill = time.monotonic()
    killed = c.kill_tree(c.site_procs["C"])
    assert any("flower-supernode" in k for k in killed), killed
    code = run.wait()
    wall = time.monotonic() - t0
    metrics = _assert_completed(run, code, out, c)
    history = metrics["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert history[0]["sites"] == 3
    assert any(h["sites"] == 2 or h["failed"] > 0 for h in history[1:]), history
    assert set(metrics["federated"]["per_site"]) == {"A", "B"}  # C is gone by the evaluation
    assert metrics["participation"]["evaluation"] == ["A", "B"]
    assert "- evaluation: no answer from C" in (out / "report.md").read_text()  # the run summary says so
    print(f"\nkilled site: run {wall:.0f} s ({time.monotonic() - t_kill:.0f} s after the kill); "
          f"rounds {[(h['round'], h['sites'], h['failed'], round(h['seconds'], 1)) for h in history]}")


# ---- b. a killed server resumes ------------------------------------------------------------------
def test_killed_server_resumes_to_the_same_result(make_consortium):
    c = make_consortium(["A", "B"], n_patients=120, seed=2)
    link = c.start_server()
    wait_for_port(c.port, link)
    c.register()
    for site in c.sites:
        c.start_site(site)
    config = c.config("resume", rounds=4, min_sites=2, tier2_rounds=1, timeout_s=120.0)

    t0 = time.monotonic()
    ref_out = c.base / "reference"
    ref = c.run("reference", config, ref_out)
    reference = _assert_completed(ref, ref.wait(), ref_out, c)
    t_ref = time.monotonic() - t0

    out = c.base / "out"
    first = c.run("interrupted", config, out)
    first.wait_for(r"tier1 round 2/4", timeout=240)
    deadline = time.monotonic() + 120
    while _checkpoint(out / "checkpoint.pt") != ("tier1", 2):
        assert time.monotonic() < deadline, f"no tier1/2 checkpoint: {_checkpoint(out / 'checkpoint.pt')}"
        time.sleep(0.2)
    killed = c.kill_tree(link)
    assert any("flwr-serverapp" in k for k in killed), killed  # the ServerApp died with it
    assert _checkpoint(out / "checkpoint.pt") == ("tier1", 2)
    code = first.wait(timeout=120)
    assert code != 0, "rmm-server run must not report success for a run whose server died"

    link = c.start_server()  # same --db, same port: registered keys and runs are kept
    wait_for_port(c.port, link)
    t1 = time.monotonic()
    resumed = c.run("resumed", config, out, "--resume")
    metrics = _assert_completed(resumed, resumed.wait(), out, c)
    t_resume = time.monotonic() - t1
    assert "resume: tier1 continues after round 2/4" in resumed.text()
    assert "handshake: 2 site(s) accepted" in resumed.text()  # both sites are back after the restart
    assert [(h["round"], h["sites"]) for h in metrics["history"]] == [(1, 2), (2, 2), (3, 2), (4, 2)]

    listed = _run([_exe("flwr"), "ls", "rmm", "--format", "json"], c.env)
    runs = json.loads(listed.stdout[listed.stdout.find("{"):]).get("runs", []) if listed.returncode == 0 else []
    (c.logs / "runs.json").write_text(json.dumps(runs, indent=1))
    a, b = reference["federated"]["c_index"], metrics["federated"]["c_index"]
    print(f"\nresume: reference C-index {a:.6f}, resumed {b:.6f}, |diff| {abs(a - b):.6f}; reference run "
          f"{t_ref:.0f} s, resumed run {t_resume:.0f} s; runs after restart: "
          f"{[(r.get('run-id'), r.get('status')) for r in runs]}")
    # Same sites in every phase; under the default policy no round is validated, so both keep round 4.
    both = {"reference": reference, "resumed": metrics}
    detail = json.dumps({k: {"history": m["history"], "participation": m["participation"],
                             "selected_round": m["selected_round"]} for k, m in both.items()}, indent=1)
    for name, m in both.items():
        assert all(sites == ["A", "B"] for sites in m["participation"].values()), f"{name}: {detail}"
        assert (m["selected_by"], m["selected_round"]) == ("last round", 4), f"{name}: {detail}"
    assert abs(a - b) <= 0.005, detail


# ---- c. a site started before the server waits and joins ------------------------------------------
def test_site_started_before_the_server_waits_and_joins(make_consortium):
    c = make_consortium(["A", "B"], n_patients=120, seed=2)
    link = c.start_server()  # once, to register the keys (kept in the database)
    wait_for_port(c.port, link)
    c.register()
    c.procs.stop(link)

    t0 = time.monotonic()
    for site in c.sites:
        c.start_site(site, "--max-retries", "30", "--max-wait", "120")
    # start the server only once a site has tried to connect and is retrying (a fixed sleep is not
    # enough on a loaded machine, where the sites may still be starting up when the server comes)
    deadline = time.monotonic() + 180
    while "retrying in" not in (c.logs / "site-A.log").read_text() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in c.site_procs.values()), c.tails("site-A", "site-B")
        time.sleep(1)
    assert all(p.poll() is None for p in c.site_procs.values()), c.tails("site-A", "site-B")
    link = c.start_server()
    wait_for_port(c.port, link)
    t_up = time.monotonic() - t0
    out = c.base / "out"
    run = c.run("run", c.config("early-site", rounds=2, min_sites=2, tier2_rounds=0), out, verbose=False)
    metrics = _assert_completed(run, run.wait(), out, c)
    assert set(metrics["federated"]["per_site"]) == {"A", "B"}
    # the quiet console: phases and the summary; Flower's own lines only in OUT/flower.log
    assert "[rmm] handshake: 2 site(s) accepted" in run.text() and "=== rmm summary ===" in run.text()
    assert "configure_train" not in run.text() and "configure_train" in (out / "flower.log").read_text()
    # what a server can draw from aggregates: routes per site, the uncertainty histogram, the uncertainty
    # quality, Tier 1's calibration at the horizon (from the sites' survival sums), and the risk-coverage curve
    # (from the sites' kept-group pair counts)
    assert (out / "report.html").is_file() and {p.name for p in out.glob("*.png")} == {
        "routes_per_site.png", "uncertainty_histogram.png", "uncertainty_quality.png", "survival_calibration.png",
        "risk_coverage.png"}
    log = (c.logs / "site-A.log").read_text()
    assert "retrying in" in log  # Flower's bounded retry loop ran while the server was down
    print(f"\nearly site: server up {t_up:.0f} s after the sites; run {time.monotonic() - t0 - t_up:.0f} s")


# ---- the transport pieces the speed-up relies on (no processes; quick) ----------------------------
def test_packed_records_round_trip_and_refuse_bad_headers():
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from rmmfed.flower.packing import PACKED_KEY, PACKED_STYPE, pack_content, pack_record, packing_mod, unpack_record

    rec = ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4)), "b": Array(np.ones(4)),
                       "n": Array(np.array([7], dtype=np.int64))})
    packed = pack_record(rec)
    assert list(packed) == [PACKED_KEY] and packed[PACKED_KEY].stype == PACKED_STYPE
    back = unpack_record(packed)
    assert list(back) == list(rec) and all(back[k].data == rec[k].data for k in rec)  # byte for byte
    assert unpack_record(rec) is rec and pack_record(ArrayRecord({"x": Array(np.ones(2))})) is not None
    assert pack_content(RecordDict({"config": ConfigRecord({"a": 1})})) is None  # nothing to pack

    blob = bytearray(packed[PACKED_KEY].data)
    evil = bytes(blob).replace(b'"numpy.ndarray"', b'"pickle.object"', 1)
    for bad in (b"XXXXXXXX" + bytes(blob[8:]), evil, bytes(blob) + b"tail"):
        with pytest.raises(ValueError):
            unpack_record(ArrayRecord({PACKED_KEY: Array(dtype="uint8", shape=(len(bad),), stype=PACKED_STYPE,
                                                          data=bad)}))

    # the mod: a packed request is unpacked for the app and its reply packed; a plain one stays plain
    seen = []

    def app(msg, ctx):
        seen.append(sorted(msg.content["arrays"]))
        return msg  # echo: stands in for a reply with the same records

    for content, expect_packed in ((RecordDict({"arrays": packed}), True), (RecordDict({"arrays": rec}), False)):
        msg = type("Msg", (), {})()  # a real Message needs a run; the mod only uses the content
        msg.content = content
        msg.has_content = lambda: True
        out = packing_mod(msg, None, app)
        assert seen[-1] == sorted(rec)
        assert (list(out.content["arrays"]) == [PACKED_KEY]) is expect_packed
