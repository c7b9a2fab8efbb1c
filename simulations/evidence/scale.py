"""Scaling: 4, 16 and 64 simulated sites with the same total number of patients, few rounds.

    python -m rmmfed.simulations.evidence.scale --out runs/evidence [--sites 4 16 64] [--rounds 3] [--tier2-rounds 1]

Each site count runs in a fresh Python process (``--one N``) so its memory figures are its own:
a cohort with N equal sites (``CohortConfig(site_names=..., site_fractions=[1/N]*N)``) goes through
``run_study`` (Flower simulation engine, pooled reference off). Reported: wall time of the study,
peak memory (``resource.getrusage`` ru_maxrss of the process and of its reaped children: each is
the largest single process, not a sum; plus the peak summed RSS of the whole process tree sampled
from /proc every 0.5 s), and bytes sent per round, MEASURED from the sites' egress ledgers
(OUT/scale/sites-N/run/ledger/*.jsonl: the serialised size of every record of every reply, before
the transport packs a message's arrays into one): all sites' ``train`` (Tier 1) and ``train.tier2``
replies divided by the rounds, and everything the sites sent in the whole run. The parameter count
x 4 bytes x sites is shown beside it as a check (the server sends each site the same weights back).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from ...core.messages import protocol as P
from .common import load_cohort, progress, run_cached, write_results


def _tree_rss_kib(root: int) -> int:
    """Summed VmRSS (KiB) of ``root`` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid, ppid = int(entry), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class TreeSampler:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_kib(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def param_count(dims: dict[str, int], flat_cfg: dict) -> tuple[int, int]:
    from ...core.config import RunConfig
    from ...core.model.tier1 import build_model
    from ...core.tier2.tier2 import build_tier2

    cfg = RunConfig.from_flat(flat_cfg)
    n1 = sum(p.numel() for p in build_model(dims, cfg.model, 0).parameters())
    n2 = sum(p.numel() for p in build_tier2(dims, cfg.tier2, 0, tier1=cfg.model).parameters())
    return n1, n2


def ledger_bytes(run_dir: Path) -> dict[str, dict[str, int]]:
    """Messages and bytes per message type, summed over every site's egress ledger of a run."""
    from ...client.ledger import read_ledger, summarize

    total: dict[str, dict[str, int]] = {}
    for path in sorted((run_dir / "ledger").glob("*.jsonl")):
        for kind, v in summarize(read_ledger(path))["per_type"].items():
            t = total.setdefault(kind, {"messages": 0, "bytes": 0})
            t["messages"] += v["messages"]
            t["bytes"] += v["bytes"]
    return total


def ledger_figures(run_dir: Path, rounds: int, tier2_rounds: int) -> dict:
    """Upload per Tier 1 / Tier 2 round and all site egress of a run, from its sites' ledgers."""
    sent = ledger_bytes(run_dir)
    if not sent:
        raise SystemExit(f"scale: no egress ledger in {run_dir / 'ledger'}; delete {run_dir} and run again")
    return {"tier1_bytes_per_round": sent.get(P.TIER1_ROUND.message_type, {}).get("bytes", 0) / max(rounds, 1),
            "tier2_bytes_per_round": sent.get(P.TIER2_ROUND.message_type, {}).get("bytes", 0) / max(tier2_rounds, 1),
            "bytes_sent_total": sum(v["bytes"] for v in sent.values()),
            "messages_total": sum(v["messages"] for v in sent.values()), "sent_per_type": sent}


def one(n_sites: int, out: Path, patients: int, rounds: int, tier2_rounds: int, seed: int) -> dict:
    """One site count, in this process: generate, run, measure; writes OUT/scale/sites-N/scale.json."""
    import torch

    from ..cohort import CohortConfig, generate_cohort

    torch.set_num_threads(1)
    base = out / "scale" / f"sites-{n_sites}"
    cohort = base / "cohort"
    t0 = time.perf_counter()
    if not cohort.is_dir():
        names = [f"S{i:02d}" for i in range(n_sites)]
        generate_cohort(CohortConfig(n_patients=patients, seed=seed, site_names=names,
                                     site_fractions=[1 / n_sites] * n_sites), cohort)
        from rmmfed.simulations.toy_policy import lower_floor

        lower_floor(cohort, 2, "speed benchmark with small sites")  # measures time, not privacy
    t_gen = time.perf_counter() - t0
    over = {"seed": seed, "rounds": rounds, "tier2.rounds": tier2_rounds}
    with TreeSampler() as sampler:
        t1 = time.perf_counter()
        m = run_cached(cohort, base / "run", over)
        wall = time.perf_counter() - t1
    _, _, dims = load_cohort(cohort)
    flat = json.loads((base / "run" / "run_config.json").read_text())["config"]
    n1, n2 = param_count(dims, flat)
    res = {"sites": n_sites, "patients": patients, "patients_per_site": patients // n_sites,
           "rounds": rounds, "tier2_rounds": tier2_rounds, "cohort_s": t_gen, "wall_s": wall,
           "maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "maxrss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
           "peak_tree_rss_mib": sampler.peak / 1024, "tier1_params": n1, "tier2_params": n2,
           "tier1_bytes_per_round_computed": n1 * 4 * n_sites, "tier2_bytes_per_round_computed": n2 * 4 * n_sites,
           **ledger_figures(base / "run", rounds, tier2_rounds),
           "c_index": m["federated"]["c_index"]}
    (base / "scale.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/evidence"))
    p.add_argument("--sites", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--patients", type=int, default=1679)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tier2-rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.out, args.patients, args.rounds, args.tier2_rounds, args.seed)))
        return 0
    rows = []
    for n in progress(args.sites, desc="scale (site counts)", unit="config"):
        f = args.out / "scale" / f"sites-{n}" / "scale.json"
        if not f.is_file():
            cmd = [sys.executable, "-m", "rmmfed.simulations.evidence.scale", "--one", str(n), "--out", str(args.out),
                   "--patients", str(args.patients), "--rounds", str(args.rounds),
                   "--tier2-rounds", str(args.tier2_rounds), "--seed", str(args.seed)]
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f.parent / "process.log", "w") as log:
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    sys.exit(f"scale: the {n}-site run failed; see {f.parent / 'process.log'}")
        row = json.loads(f.read_text())
        if "sent_per_type" not in row:  # written before the ledger figures existed: add them from its run's ledgers
            row.update(ledger_figures(f.parent / "run", row["rounds"], row["tier2_rounds"]))
            row["tier1_bytes_per_round_computed"] = row["tier1_params"] * 4 * row["sites"]
            row["tier2_bytes_per_round_computed"] = row["tier2_params"] * 4 * row["sites"]
            f.write_text(json.dumps(row, indent=2))
        rows.append(row)
    table = [{"sites": r["sites"], "patients/site": r["patients_per_site"], "wall s": r["wall_s"],
              "peak RSS, process tree (MiB)": r["peak_tree_rss_mib"], "ru_maxrss self (MiB)": r["maxrss_self_mib"],
              "ru_maxrss children (MiB)": r["maxrss_children_mib"],
              "Tier 1 upload per round (MB, measured)": r["tier1_bytes_per_round"] / 1e6,
              "Tier 1 (MB, params x 4 B x sites)": r["tier1_bytes_per_round_computed"] / 1e6,
              "Tier 2 upload per round (MB, measured)": r["tier2_bytes_per_round"] / 1e6,
              "all site egress in the run (MB)": r["bytes_sent_total"] / 1e6, "replies": r["messages_total"],
              "C-index (pooled test)": r["c_index"]} for r in rows]
    r0 = rows[0]
    notes = (f"{args.patients} patients in all, split equally; {args.rounds} Tier 1 rounds, {args.tier2_rounds} Tier 2 "
             f"round(s); one fresh process per site count on this machine ({os.cpu_count()} cores, shared). Upload per "
             "round is MEASURED: the serialised bytes of every site's training replies, read from the sites' egress "
             "ledgers, divided by the rounds; beside it the parameter count x 4 bytes x sites (Tier 1: "
             f"{r0['tier1_params']:,} parameters, Tier 2: {r0['tier2_params']:,}). The server's broadcast (the same "
             "weights to every site) is not in the ledgers. 'All site egress' counts every reply of the run "
             "(handshake, statistics, training, validation, calibration, hazard, evaluation). ru_maxrss is the largest single process (self, or the largest reaped child; on "
             "Linux a child inherits its parent's ru_maxrss across fork/execve, so the children figure cannot be "
             "smaller than the driver's at fork time); the process-tree figure, the peak of summed RSS of this "
             "process and every descendant (Ray workers included) sampled every 0.5 s, is the one to read. The C-index after "
             f"{args.rounds} rounds is "
             "shown only to show the runs worked; it is not tuned.")
    print(write_results(args.out, "scale", table, "Scaling with the number of sites", notes, raw=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
