"""Benchmark: where the sites' and the coordinator's own work goes, function by function (cProfile).

    python -m rmmfed.simulations.bench_hotspots --data runs/default/cohort [--rounds 3] [--tier2-rounds 1]
        [--top 20] [--set KEY=VALUE ...]

Runs every phase of the federation (``server.federation.run_federation``) against the sites' real
ClientApps (site policy, egress guard, ledger) over an in-process Grid (simulations/in_process_grid.py):
no Flower engine, no network and one torch thread, so what the profile holds is rmm's own work and its
libraries', without the transport that ``bench_profile`` and ``bench_deployment`` measure. DP noise is
seeded (the sites accept it here), so two runs of one commit do the same work. ``--data``: a cohort
folder (``runs/default/cohort`` after ``rmm-simulate``, or a folder of ../shared/data).

Printed, as shares of the run's profiled time (ratios within one run; never asserted by a test): the
functions with the most time of their own, then that time grouped by where it is spent (Opacus' privacy
accounting, torch's tensor kernels, Flower's records, rmm's own Python, ...). This is how the
accounting's share (31 of 90 s on the default cohort, 3 + 1 rounds, before core/privacy/rdp_accounting.py)
was found.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

GROUPS = (  # (label, a part of the function's file path or name), first match wins
    ("Opacus privacy accounting", "opacus/accountants"),
    ("Opacus DP-SGD (clipping, noise)", "opacus/"),
    ("torch kernels", "built-in method torch"),
    ("torch kernels", "method 'run_backward'"),
    ("torch kernels", "torch/"),
    ("Flower records and messages", "flwr/"),
    ("numpy and scipy", "numpy/"),
    ("numpy and scipy", "scipy/"),
    ("pandas and lifelines", "pandas/"),
    ("pandas and lifelines", "lifelines/"),
    ("rmm's own Python", "/core/"),
    ("rmm's own Python", "/server/"),
    ("rmm's own Python", "/client/"),
    ("rmm's own Python", "/flower/"),
)


def group_of(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    return next((label for label, part in GROUPS if part in where), "other (Python, files, logging)")


def grouped(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) summed per :data:`GROUPS` label."""
    out: dict[str, float] = defaultdict(float)
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():
        out[group_of(filename, name)] += tottime
    return dict(out)


def top_functions(stats: pstats.Stats, n: int) -> list[tuple[float, int, str]]:
    rows = [(tottime, calls, f"{Path(filename).name}:{line}({name})")
            for (filename, line, name), (_, calls, tottime, _, _) in stats.stats.items()]
    return sorted(rows, reverse=True)[:n]


def run(data: Path, overrides: dict[str, object]) -> tuple[pstats.Stats, float]:
    """The federation on ``data`` in this process under cProfile: (stats, wall seconds)."""
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    from ..client.client_app import make_client_app
    from ..core.config import RunConfig
    from ..core.data.site_data import discover_sites
    from ..server.federation import run_federation
    from .in_process_grid import site_grid

    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    folders = discover_sites(data)
    cfg = RunConfig().with_overrides({"dp.seeded-noise": True, "device": "cpu", **overrides})
    with tempfile.TemporaryDirectory(prefix="rmm-hotspots-") as ledgers:
        grid = site_grid(folders, Path(ledgers), lambda: make_client_app(simulated_seeded_noise=True))
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run_federation(grid, cfg, n_sites=len(folders))
        prof.disable()
        wall = time.perf_counter() - t0
    return pstats.Stats(prof), wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("runs/default/cohort"), help="a cohort folder of site folders")
    ap.add_argument("--rounds", type=int, default=3, help="Tier 1 rounds")
    ap.add_argument("--tier2-rounds", type=int, default=1, help="Tier 2 rounds")
    ap.add_argument("--top", type=int, default=20, help="functions listed")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a run-config override (e.g. tier2.hidden-dim=128)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"bench_hotspots: {args.data} is not a cohort folder. Fix: run rmm-simulate once (it writes "
              "runs/default/cohort), or pass --data with a folder of site folders", file=sys.stderr)
        return 2
    overrides = {"rounds": args.rounds, "tier2.rounds": args.tier2_rounds,
                 **dict(kv.split("=", 1) for kv in args.overrides)}
    stats, wall = run(args.data, overrides)
    total = sum(row[2] for row in stats.stats.values()) or 1.0
    print(f"\nprofiled {total:.1f} s of own time in {wall:.1f} s wall ({args.data}, {args.rounds} Tier 1 + "
          f"{args.tier2_rounds} Tier 2 rounds, one thread, in process)\n")
    print(f"{'own s':>8} {'share':>6} {'calls':>9}  function")
    for tottime, calls, where in top_functions(stats, args.top):
        print(f"{tottime:8.2f} {tottime / total:6.1%} {calls:9d}  {where}")
    print(f"\n{'own s':>8} {'share':>6}  where")
    for label, seconds in sorted(grouped(stats).items(), key=lambda kv: -kv[1]):
        print(f"{seconds:8.2f} {seconds / total:6.1%}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
