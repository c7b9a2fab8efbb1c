"""Where a simulated run's wall time goes: the sites' own compute against everything else.

    python -m rmmfed.simulations.bench_profile --run runs/profile --simulate   # run the default study, then profile it
    python -m rmmfed.simulations.bench_profile --run runs/default             # profile a finished run

Reads what the run wrote: the coordinator's wall time per phase (``metrics.json`` ``timing_s``) and
each site's egress ledger (``ledger/*.jsonl``), where every reply carries ``compute_s``, the time the
site took to answer (policy check, egress guard and computation). Per phase it prints, from that one
run:

- wall: the coordinator's time for the phase;
- sites: the sum over sites and messages of their compute (Tier 1 and Tier 2 training on their own
  rows, since the tiers' message types differ);
- slowest: per round (the k-th message of a type at each site), the slowest site's compute, summed
  over rounds: what the phase would take with one core per site and nothing else;
- bound: the least the phase can take on this machine, max(slowest, sites / cores);
- overhead: wall - bound, i.e. Flower and Ray transport and scheduling, (de)serialisation and
  packing, waiting that the cores could not fill, and the coordinator's own work;
- MB: what the sites sent.

The figures are ratios within one run (the machine is shared); they are never asserted by a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from ..core.messages import protocol as P

# The coordinator's phase (metrics.json timing_s key) of each message type; the follow-up query is asked
# before Tier 1 (the DP time cuts: statistics) and again for the baseline hazard.
PHASE_OF = {p.message_type: name for p, name in (
    (P.SCHEMA, "handshake"), (P.STATISTICS, "statistics"), (P.SETUP, "statistics"), (P.COX, "cox"),
    (P.TIER1_ROUND, "tier1"), (P.TIER1_VALIDATION, "tier1"), (P.FREEZE_TIER1, "calibration"),
    (P.CALIBRATION, "calibration"), (P.FOLLOWUP, "baseline_hazard"), (P.HAZARD, "baseline_hazard"),
    (P.TIER2_ROUND, "tier2"), (P.TIER2_VALIDATION, "tier2"), (P.TIER2_CALIBRATION, "tier2_calibration"),
    (P.CONFORMAL, "conformal"), (P.RISK_GROUPS, "risk_groups"), (P.EVALUATION, "evaluation"))}
TIER_OF = {P.TIER1_ROUND.message_type: "Tier 1 training", P.TIER1_VALIDATION.message_type: "Tier 1 validation",
           P.TIER2_ROUND.message_type: "Tier 2 training", P.TIER2_VALIDATION.message_type: "Tier 2 validation"}


class ProfileError(ValueError):
    """The run folder lacks what the profile reads."""


def read_ledgers(run: Path) -> list[dict]:
    lines = []
    for path in sorted((run / "ledger").glob("*.jsonl")):
        for raw in path.read_text(encoding="utf-8").splitlines():
            e = json.loads(raw)
            if "compute_s" in e:
                lines.append({**e, "site": path.stem})
    if not lines:
        raise ProfileError(f"no ledger line with compute_s under {run / 'ledger'}. Fix: profile a run of rmm 0.8 or "
                           "later made by rmm-simulate (or pass --simulate)")
    return lines


def profile(run: Path, cores: int) -> dict:
    """Per phase: wall, sites, slowest, bound, overhead, MB (module docstring); and the whole run's."""
    metrics = json.loads((run / "metrics.json").read_text())
    timing = metrics.get("timing_s", {})
    lines = sorted(read_ledgers(run), key=lambda e: e["time"])
    first_train = next((e["time"] for e in lines if e["message_type"] == P.TIER1_ROUND.message_type), None)
    sites: dict[str, float] = defaultdict(float)
    per_round: dict[tuple[str, str, int], float] = defaultdict(float)  # (phase, type, k-th) -> slowest site
    seen: dict[tuple[str, str], int] = defaultdict(int)  # (site, type) -> messages so far: the k-th is round k
    sent: dict[str, float] = defaultdict(float)
    by_tier: dict[str, float] = defaultdict(float)
    for e in lines:
        t = e["message_type"]
        phase = PHASE_OF.get(t, "other")
        if t == P.FOLLOWUP.message_type:
            phase = "statistics" if first_train is None or e["time"] < first_train else "baseline_hazard"
        sites[phase] += e["compute_s"]
        key = (phase, t, seen[(e["site"], t)])
        seen[(e["site"], t)] += 1
        per_round[key] = max(per_round[key], e["compute_s"])
        sent[phase] += e.get("total_bytes", 0) / 1e6
        by_tier[TIER_OF.get(t, "other messages")] += e["compute_s"]
    slowest: dict[str, float] = defaultdict(float)
    for (phase, _, _), s in per_round.items():
        slowest[phase] += s
    rows = []
    for phase in [k for k in timing if k not in ("total", "federation", "pooled_reference")] + \
            sorted(set(sites) - set(timing)):
        wall = float(timing.get(phase, float("nan")))
        bound = max(slowest[phase], sites[phase] / cores)
        rows.append({"phase": phase, "wall_s": wall, "sites_s": sites[phase], "slowest_s": slowest[phase],
                     "bound_s": bound, "overhead_s": wall - bound, "mb_sent": sent[phase]})
    fed = float(timing.get("federation", sum(r["wall_s"] for r in rows if r["wall_s"] == r["wall_s"])))
    total_sites = sum(sites.values())
    total_bound = sum(r["bound_s"] for r in rows)
    return {"rows": rows, "cores": cores, "federation_s": fed, "sites_s": total_sites, "bound_s": total_bound,
            "by_tier": dict(by_tier), "wall_over_sites": fed / total_sites if total_sites else float("nan"),
            "wall_over_bound": fed / total_bound if total_bound else float("nan"),
            "pooled_reference_s": timing.get("pooled_reference"), "total_s": timing.get("total")}


def format_profile(p: dict) -> str:
    head = f"{'phase':<18} {'wall_s':>8} {'sites_s':>8} {'slowest_s':>9} {'bound_s':>8} {'overhead_s':>10} {'MB':>7}"
    out = [head]
    for r in p["rows"]:
        out.append(f"{r['phase']:<18} {r['wall_s']:8.1f} {r['sites_s']:8.1f} {r['slowest_s']:9.1f} {r['bound_s']:8.1f} "
                   f"{r['overhead_s']:10.1f} {r['mb_sent']:7.2f}")
    out.append(f"{'federation':<18} {p['federation_s']:8.1f} {p['sites_s']:8.1f} {'':>9} {p['bound_s']:8.1f} "
               f"{p['federation_s'] - p['bound_s']:10.1f}")
    out.append("")
    out.append("sites' compute by kind: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(p["by_tier"].items())))
    out.append(f"federation wall / sum of the sites' compute: {p['wall_over_sites']:.2f} (goal <= 2.5); "
               f"wall / bound on {p['cores']} core(s): {p['wall_over_bound']:.2f}")
    if p.get("total_s") is not None:
        out.append(f"whole study {p['total_s']:.1f} s (federation {p['federation_s']:.1f} s, pooled reference "
                   f"{(p.get('pooled_reference_s') or 0.0):.1f} s, the rest: outputs, pooled test split, report)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run folder written by rmm-simulate")
    ap.add_argument("--simulate", action="store_true", help="first run the default study into --run "
                    "(rmm-simulate --seeded-noise; extra arguments after -- go to rmm-simulate)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores the sites share (default: this machine's)")
    args, rest = ap.parse_known_args(argv)
    if args.simulate:
        cmd = [sys.executable, "-m", "rmmfed.simulations.simulate", "--out", str(args.run), "--seeded-noise",
               *[a for a in rest if a != "--"]]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    try:
        p = profile(args.run, args.cores)
    except (ProfileError, FileNotFoundError) as err:
        print(f"bench_profile: {err}", file=sys.stderr)
        return 2
    print(format_profile(p))
    (args.run / "profile.json").write_text(json.dumps(p, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
