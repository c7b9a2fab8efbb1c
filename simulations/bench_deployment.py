"""Deployment round latency on loopback: one SuperLink, N SuperNodes, Flower's defaults vs rmm's levers.

    python -m rmmfed.simulations.bench_deployment --sites 4 --rounds 5 --out runs/bench-deployment

Every mode starts its own SuperLink (``rmm-server start --insecure``: no TLS on loopback, so the
figures leave out TLS; the test suite covers TLS) and N sites on a synthetic cohort, submits the
same short run with ``rmm-server run`` and times it from the streamed logs:

- ``flower-defaults``: what rmm did before, Flower 1.41's defaults: plain ``flower-supernode``
  (a new ``flwr-clientapp`` process per message, 3 s idle poll), SuperExec poll 1 s, the
  ServerApp's Grid polling for replies every 3 s, 1 s first wait for objects still uploading;
- ``tuned-polls``: ``rmm-client --isolation subprocess``: still a process per message, but the
  SuperNode polls every 0.5 s when idle, SuperExec every 0.2 s, the Grid every 0.2 s, and
  object waits start at 0.05 s;
- ``warm``: ``rmm-client`` (``--isolation process``): the tuned polls plus one long-lived
  ClientApp worker per site, so PyTorch, the site's data and the model stay loaded;
- ``warm-packed``: ``warm`` plus weights packed into one array per message (one object instead of
  one per tensor: flower/packed_arrays.py);
- ``warm-packed-poll-0.1``: ``warm-packed`` with the sites' idle poll at 0.1 s (``rmm-client
  --poll-interval 0.1``) instead of 0.5 s: what the idle poll costs a round;
- ``warm-packed-1-thread``: ``warm-packed`` with one PyTorch/BLAS thread per site (``rmm-client --threads 1``):
  4 sites on a 2-core machine no longer run 2 threads each on 2 cores;
- ``warm-packed-1-thread-poll-0.1``: the same with the sites' idle poll at 0.1 s.

Per Tier 1 round it reports the ServerApp's own figure (``tier1 round k/N: ... <s>s``, configure
-> aggregate of the train step), the whole round (train + validation: time between consecutive
round lines) and the slowest site's time for its train message (warm: the ClientApp call in the
worker; per-message processes: the SuperNode's ``Receiving`` -> ``Sending``, process start included).
The app is rmm's own ServerApp and ClientApp; the run config's ``flower-tuning`` and ``pack-weights``
switch the coordinator's Grid tuning (flower/grid.py), the client command the SuperNode's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rmmfed.core.messages import protocol as P
from rmmfed.flower.processes import ProcessTree, end_group, free_port, require_executable, wait_for_port

MODES = {
    "flower-defaults": {"client": "flower", "tuning": False, "pack": False, "superexec_poll": 1.0},
    "tuned-polls": {"client": "subprocess", "tuning": True, "pack": False, "superexec_poll": 0.2},
    "warm": {"client": "process", "tuning": True, "pack": False, "superexec_poll": 0.2},
    "warm-packed": {"client": "process", "tuning": True, "pack": True, "superexec_poll": 0.2},
    "warm-packed-poll-0.1": {"client": "process", "tuning": True, "pack": True, "superexec_poll": 0.2,
                             "client_args": ["--poll-interval", "0.1"]},
    "warm-packed-1-thread": {"client": "process", "tuning": True, "pack": True, "superexec_poll": 0.2,
                             "client_args": ["--threads", "1"]},
    "warm-packed-1-thread-poll-0.1": {"client": "process", "tuning": True, "pack": True, "superexec_poll": 0.2,
                                      "client_args": ["--threads", "1", "--poll-interval", "0.1"]},
}
_ROUND = re.compile(r"tier1 round (\d+)/(\d+):.* ([0-9.]+)s")
_WORKER = re.compile(r"\[rmm-worker[^\]]*\] (\S+): \S+ in ([0-9.]+) s \(ClientApp ([0-9.]+) s\)")

class Procs:
    """Processes of one mode, each in its own session, output timestamped; all ended in :meth:`stop_all`."""

    def __init__(self, logs: Path, t0: float) -> None:
        self.logs, self.t0 = logs, t0
        self.items: list[tuple[str, subprocess.Popen, ProcessTree, list[tuple[float, str]], threading.Thread]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        lines: list[tuple[float, str]] = []
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                t = time.monotonic() - self.t0
                lines.append((t, line.rstrip("\n")))
                log.write(f"{t:8.2f} {line}")
                log.flush()
            log.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.items.append((name, proc, ProcessTree(proc.pid), lines, reader))
        return proc

    def lines(self, name: str) -> list[tuple[float, str]]:
        return next(x[3] for x in self.items if x[0] == name)

    def update(self) -> None:
        for _, _, tree, _, _ in self.items:
            tree.update()

    def stop_all(self) -> None:
        for _, proc, tree, _, reader in reversed(self.items):
            end_group(proc, 20.0, tree)
            reader.join(timeout=5)


def _site_spans(lines: list[tuple[float, str]], message_type: str = P.TIER1_ROUND.message_type) -> list[float]:
    """Per message of ``message_type`` at one site: seconds of its ClientApp (worker) or Receiving -> Sending
    (SuperNode)."""
    worker = [float(m.group(3)) for _, line in lines if (m := _WORKER.search(line)) and m.group(1) == message_type]
    if worker:
        return worker
    spans, start = [], None
    for t, line in lines:
        if f"Receiving: {message_type} message" in line:
            start = t
        elif f"Sending: {message_type} message" in line and start is not None:
            spans.append(t - start)
            start = None
    return spans


def run_mode(mode: str, base: Path, cohort: Path, sites: list[str], args: argparse.Namespace) -> dict:
    spec = MODES[mode]
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(base / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(spec["superexec_poll"])}
    server, client = require_executable("rmm-server"), require_executable("rmm-client")
    port = free_port()
    t0 = time.monotonic()
    procs = Procs(logs, t0)
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.5):
            procs.update()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result: dict = {"mode": mode, **spec}
    try:
        link = procs.start("superlink", [server, "start", "--insecure", "--db", str(base / "state.db"),
                                         "--host", "127.0.0.1", "--port", str(port)], env)
        wait_for_port(port, link, timeout=90.0)
        for site in sites:
            data = str(cohort / f"site-{site}")
            if spec["client"] == "flower":  # exactly the command rmm-client ran before (insecure here)
                cmd = [require_executable("flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--insecure",
                       "--host", "127.0.0.1", "--port", str(free_port()),
                       "--node-config", f"data-dir='{data}' device='cpu' site='{site}'"]
            else:
                # each run keeps its own site state (lifetime privacy budget): the benchmark's runs share one
                # cohort folder, and together they would spend its sites' budget (the 4th run was refused)
                cmd = [client, "--site", site, "--data", data, "--superlink", f"127.0.0.1:{port}", "--insecure",
                       "--device", "cpu", "--isolation", spec["client"], "--state-dir", str(base / f"state-{site}"),
                       *spec.get("client_args", [])]
            procs.start(f"site-{site}", cmd, env)
        config = base / "consortium.toml"
        config.write_text(f'name = "bench"\nsites = {json.dumps(sites)}\nrounds = {args.rounds}\n'
                          f'strategy = "fedavg"\nmin-sites = {len(sites)}\n[run]\nseed = {args.seed}\n'
                          f'"model.mc-samples" = {args.mc_samples}\n"tier2.rounds" = {args.tier2_rounds}\n'
                          f'"round-timeout-s" = 300.0\n"flower-tuning" = {str(spec["tuning"]).lower()}\n'
                          f'"pack-weights" = {str(spec["pack"]).lower()}\n')
        t_submit = time.monotonic()
        run = procs.start("run", [server, "run", "--config", str(config), "--connection", "bench", "--insecure",
                                  "--superlink", f"127.0.0.1:{port}", "--out", str(base / "out"), "--verbose"], env)
        try:
            code = run.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            code = -1
        time.sleep(0.5)
        result["exit_code"] = code
        result["run_wall_s"] = round(time.monotonic() - t_submit, 1)
        marks, seen = [], set()
        for t, line in procs.lines("run"):  # each round's line can reach the stream twice: keep its first
            if (m := _ROUND.search(line)) and m.group(1) not in seen:
                seen.add(m.group(1))
                marks.append((t, m))
        result["train_step_s"] = [float(m.group(3)) for _, m in marks]
        result["round_s"] = [round(b[0] - a[0], 2) for a, b in zip(marks, marks[1:])]
        per_site = {s: _site_spans(procs.lines(f"site-{s}")) for s in sites}
        n = min((len(v) for v in per_site.values()), default=0)
        result["slowest_site_train_s"] = [round(max(v[k] for v in per_site.values()), 2) for k in range(n)]
        result["site_train_s"] = {s: [round(x, 2) for x in v] for s, v in per_site.items()}
        val = {s: _site_spans(procs.lines(f"site-{s}"), P.TIER1_VALIDATION.message_type) for s in sites}
        n = min((len(v) for v in val.values()), default=0)
        result["slowest_site_validation_s"] = [round(max(v[k] for v in val.values()), 2) for k in range(n)]
        metrics = base / "out" / "metrics.json"
        if metrics.is_file():
            doc = json.loads(metrics.read_text())
            result["c_index"] = doc["federated"]["c_index"]
            result["timing_s"] = doc.get("timing_s", {})
    finally:
        procs.stop_all()
        watching.set()
        watcher.join()
    return result


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmmfed.simulations.bench_deployment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--patients", type=int, default=400, help="cohort size over all sites (default 400)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tier2-rounds", type=int, default=0)
    p.add_argument("--mc-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default: all); "
                   "a mode may repeat (alternate A,B,A,B on a noisy machine)")
    p.add_argument("--out", type=Path, help="folder for logs and bench.json (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take (default 900)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="rmm-bench-deploy-"))
    out.mkdir(parents=True, exist_ok=True)
    from rmmfed.simulations.cohort import CohortConfig, generate_cohort

    sites = [chr(ord("A") + i) for i in range(args.sites)]
    cohort = out / "cohort"
    if not cohort.is_dir():
        generate_cohort(CohortConfig(n_patients=args.patients, site_names=sites,
                                     site_fractions=[1 / len(sites)] * len(sites), seed=args.seed), cohort)
        from rmmfed.simulations.toy_policy import lower_floor

        lower_floor(cohort, 2, "speed benchmark with small sites")  # measures time, not privacy
    print(f"benchmark: {args.sites} sites, {args.patients} patients, rounds={args.rounds}, "
          f"tier2.rounds={args.tier2_rounds}, model.mc-samples={args.mc_samples}; {os.cpu_count()} CPU(s); "
          f"loopback, no TLS; logs in {out}", flush=True)
    results = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for i, mode in enumerate(modes):  # a mode given again (A B A B) runs in its own folder: mode-2, ...
            seen = modes[:i].count(mode)
            res = run_mode(mode, out / (f"{mode}-{seen + 1}" if seen else mode), cohort, sites, args)
            results.append(res)
            print(f"{mode:16s} exit {res['exit_code']}  run {res['run_wall_s']:.1f} s  "
                  f"train step {_median(res['train_step_s'])} s  round {_median(res['round_s'])} s  "
                  f"slowest site train {_median(res['slowest_site_train_s'])} s  "
                  f"(per round: train step {res['train_step_s']}, round {res['round_s']}, "
                  f"slowest site {res['slowest_site_train_s']})", flush=True)
            (out / "bench.json").write_text(json.dumps(results, indent=1))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\nmode              run_s  train-step_s  round_s  slowest-site-train_s  (medians over rounds)")
    for r in results:
        print(f"{r['mode']:16s} {r['run_wall_s']:6.1f}  {_median(r['train_step_s']):12}  {_median(r['round_s']):7}  "
              f"{_median(r['slowest_site_train_s']):20}")
    print("\nwhere a round goes (medians over rounds): the slowest site's training and validation messages, "
          "and the rest (polls, transport, aggregation, the checkpoint)")
    print("mode              round_s  slowest-train_s  slowest-validation_s  rest_s  round/slowest-train")
    for r in results:
        rnd, tr, va = _median(r["round_s"]), _median(r["slowest_site_train_s"]), _median(r.get("slowest_site_validation_s", []))
        rest = round(rnd - tr - (va if va == va else 0.0), 2)
        print(f"{r['mode']:16s} {rnd:8}  {tr:15}  {va:20}  {rest:6}  {rnd / tr if tr else float('nan'):19.2f}")
    print(f"\nfull results: {out / 'bench.json'}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
