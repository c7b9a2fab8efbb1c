"""Benchmark of what the default site policy (DP-SGD on both tiers) costs in C-index (not a test; prints figures).

    python -m rmmfed.simulations.bench_dp_cost [--cohorts default tcga-gbmlgg tcga-blca tcga-luad tcga-stad tcga-kirp]
        [--seeds 0 1 2 3 4] [--out runs/dp-cost] [--data-root ../shared/data] [--set KEY=VALUE ...] [--pooled]

For every cohort and seed, two ``rmm-simulate`` runs on the same patients and split:

* ``default-policy``: the safe defaults (no ``--policy``: ``[dp] required = true``, ``max-epsilon = 8``;
  the run config's ``dp.enabled = true``), noise from OS entropy as in a deployment (no ``--seeded-noise``)::

      rmm-simulate --out OUT/<cohort>/seed-S/default-policy --seed S --data COHORT --no-pooled [--set ...]

* ``permissive``: an explicit policy file OUT/permissive-policy.toml (``[dp]`` ``required = false``, every phase
  but the Cox core's, so with the opt-in per-round validation) and no DP::

      rmm-simulate --out OUT/<cohort>/seed-S/permissive --seed S --data COHORT --no-pooled \\
          --policy OUT/permissive-policy.toml [--set ...] --set dp.enabled=false

COHORT is DATA-ROOT/<cohort> for a TCGA cohort. DATA-ROOT defaults to ``../shared/data``: real TCGA cohorts
(see each folder's README.md) that are not part of the product; a missing one is skipped with a note.
``default`` is the synthetic FUSCC-style cohort of that seed: the seed's first run (``permissive``) generates it
(no ``--data``: OUT/default/seed-S/permissive/cohort, and its wall time includes generating it) and the second
run reads it with ``--data``. ``--pooled`` keeps the pooled reference (off by default, to save time).

Each run's output goes to OUT/<cohort>/seed-S/<policy>/bench.log; a run folder with a metrics.json from a
successful run is reused (delete it, or OUT, to run again), so the benchmark can be resumed. A run that exits
non-zero is recorded as failed (its error line in the table) and the benchmark goes on.

Reported per cohort: C-index on the pooled test split (metrics.json ``federated.c_index``) under each policy,
mean ± sd over seeds; the paired difference default-policy − permissive (negative = a cost), its mean and
standard error over seeds, "within noise" when |mean| < 2 SE; the epsilon each site spent (the last
``dp-epsilon`` of the Tier 1 history and of the Tier 2 history; the round history holds the mean over sites,
weighted by training patients, as the coordinator aggregates it); the wall time per run. The goal checked:
the default policy costs <= 0.02 C-index on every cohort. Writes OUT/dp_cost.md, OUT/dp_cost.csv (the table)
and OUT/dp_cost_raw.csv (one row per run, with the rmm version).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core.messages import metric_names as M
from ..core.privacy.site_policy import PHASES, phases_line

DEFAULT_COHORTS = ("default", "tcga-gbmlgg", "tcga-blca", "tcga-luad", "tcga-stad", "tcga-kirp")
PERMISSIVE, DEFAULT_POLICY = "permissive", "default-policy"
POLICIES = (PERMISSIVE, DEFAULT_POLICY)  # this order: the default cohort's first run generates it
# no DP-SGD, and the opt-in per-round validation (model selection) as rmm did before it was opt-in
PERMISSIVE_POLICY_TEXT = phases_line([p for p in PHASES if p != "cox"]) + "[dp]\nrequired = false\n"
GOAL = 0.02  # largest C-index the default policy may cost on a cohort
COLUMNS = ["cohort", "seeds", "C-index permissive", "C-index default policy", "difference (default − permissive)",
           "noise", "epsilon spent per site (default policy)", "wall time per run", "failed runs"]


# ---- summarising (pure: rows in, table and verdicts out) ------------------------------------
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean_sd(vals: list[float], nd: int = 3) -> str:
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{statistics.mean(vals):.{nd}f} ± {statistics.stdev(vals):.{nd}f}"


def noise_label(diffs: list[float]) -> str:
    """'within noise' when |mean| < 2 x its standard error over seeds; one seed has no error bar."""
    if not diffs:
        return "n/a"
    if len(diffs) == 1:
        return "one seed, no error bar"
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    return "within noise" if abs(mean) < 2 * se or mean == 0 else "beyond noise"


@dataclass
class Verdict:
    cohort: str
    met: bool | None  # None: cannot tell (no paired runs)
    text: str


@dataclass
class Summary:
    table: list[dict] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    mean_difference: float | None = None
    text: str = ""


def summarise(rows: list[dict], goal: float = GOAL) -> Summary:
    """The table, goal verdicts and printed text from per-run rows (keys: cohort, seed, policy, status
    'ok' | 'failed' | 'skipped', c_index, eps_tier1, eps_tier2, wall_s, error)."""
    out = Summary()
    cohorts = list(dict.fromkeys(r["cohort"] for r in rows))
    skipped = [c for c in cohorts if all(r["status"] == "skipped" for r in rows if r["cohort"] == c)]
    means = []
    for c in cohorts:
        if c in skipped:
            continue
        mine = [r for r in rows if r["cohort"] == c and r["status"] != "skipped"]
        ok = {p: {r["seed"]: r for r in mine if r["policy"] == p and r["status"] == "ok" and _finite(r.get("c_index"))}
              for p in POLICIES}
        failed = [r for r in mine if r not in ok[PERMISSIVE].values() and r not in ok[DEFAULT_POLICY].values()]
        paired = sorted(set(ok[PERMISSIVE]) & set(ok[DEFAULT_POLICY]))
        diffs = [ok[DEFAULT_POLICY][s]["c_index"] - ok[PERMISSIVE][s]["c_index"] for s in paired]
        seeds = sorted({r["seed"] for r in mine})
        if diffs:
            mean = statistics.mean(diffs)
            means.append(mean)
            diff = f"{mean:+.3f}" + (f" (SE {statistics.stdev(diffs) / math.sqrt(len(diffs)):.3f})"
                                     if len(diffs) > 1 else "")
        else:
            mean, diff = None, "n/a"
        eps = _epsilon_cell(list(ok[DEFAULT_POLICY].values()))
        wall = ", ".join(f"{p} {_wall(mine, p)}" for p in POLICIES)
        out.table.append({
            "cohort": c, "seeds": f"{len(paired)} of {len(seeds)}" if len(paired) != len(seeds) else str(len(seeds)),
            "C-index permissive": _mean_sd([r["c_index"] for r in ok[PERMISSIVE].values()]),
            "C-index default policy": _mean_sd([r["c_index"] for r in ok[DEFAULT_POLICY].values()]),
            "difference (default − permissive)": diff, "noise": noise_label(diffs),
            "epsilon spent per site (default policy)": eps, "wall time per run": wall,
            "failed runs": "; ".join(f"{r['policy']} seed {r['seed']}: {r.get('error') or 'failed'}"
                                     for r in failed) or "none",
        })
        out.verdicts.append(_verdict(c, mean, diffs, failed, goal))
    out.mean_difference = statistics.mean(means) if means else None
    out.text = _text(out, goal, skipped)
    return out


def _epsilon_cell(runs: list[dict]) -> str:
    t1 = [r["eps_tier1"] for r in runs if _finite(r.get("eps_tier1"))]
    t2 = [r["eps_tier2"] for r in runs if _finite(r.get("eps_tier2"))]
    if not t1 and not t2:
        return "n/a"
    parts = [f"Tier 1 {statistics.mean(t1):.2f}"] if t1 else []
    parts += [f"Tier 2 {statistics.mean(t2):.2f}"] if t2 else []
    total = [r.get("eps_tier1", 0.0) + (r["eps_tier2"] if _finite(r.get("eps_tier2")) else 0.0)
             for r in runs if _finite(r.get("eps_tier1"))]
    return " + ".join(parts) + (f" = {statistics.mean(total):.2f}" if t1 and t2 else "")


def _wall(rows: list[dict], policy: str) -> str:
    vals = [r["wall_s"] for r in rows if r["policy"] == policy and r["status"] == "ok" and _finite(r.get("wall_s"))]
    return f"{statistics.mean(vals):.0f} s" if vals else "n/a"


def _verdict(cohort: str, mean: float | None, diffs: list[float], failed: list[dict], goal: float) -> Verdict:
    bad_default = [r for r in failed if r["policy"] == DEFAULT_POLICY]
    if bad_default:
        seeds = ", ".join(str(r["seed"]) for r in bad_default)
        return Verdict(cohort, False, f"not met (the default-policy run failed on seed(s) {seeds})")
    if mean is None:
        return Verdict(cohort, None, "cannot tell (no seed with both runs finished)")
    cost, label = -mean, noise_label(diffs)
    met = cost <= goal
    return Verdict(cohort, met, f"{'met' if met else 'not met'} (cost {cost:+.3f}, {label})")


def _text(s: Summary, goal: float, skipped: list[str]) -> str:
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |" for r in s.table]
    lines = ["\n".join(table)] if s.table else ["(no finished cohort)"]
    n = sum(1 for r in s.table if r["difference (default − permissive)"] != "n/a")
    lines.append("" if s.mean_difference is None else
                 f"\nmean difference over {n} cohort(s) (default − permissive): {s.mean_difference:+.3f}")
    verdicts = "; ".join(f"{v.cohort} {v.text}" for v in s.verdicts) or "no cohort"
    overall = ("met" if s.verdicts and all(v.met for v in s.verdicts) else
               "not met" if any(v.met is False for v in s.verdicts) else "undecided")
    lines.append(f"goal: default policy costs <= {goal:g} C-index on every cohort: {overall} ({verdicts})")
    if skipped:
        lines.append(f"skipped (no cohort folder): {', '.join(skipped)}")
    return "\n".join(lines).lstrip("\n") + "\n"


# ---- runs -------------------------------------------------------------------------------------
def epsilon_spent(m: dict) -> tuple[float | None, float | None]:
    """The last dp-epsilon of the Tier 1 and of the Tier 2 round history (None where absent)."""
    def last(history) -> float | None:
        vals = [h.get(M.DP_EPSILON) for h in history or [] if _finite(h.get(M.DP_EPSILON))]
        return float(vals[-1]) if vals else None
    return last(m.get("history")), last((m.get("two_tier") or {}).get("history"))


def _error_line(log: Path) -> str:
    """The last 'rmm-simulate: error:' line of a run's log (else its last non-empty line)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in text if ln.startswith("rmm-simulate: error:")]
    pick = errors[-1] if errors else next((ln for ln in reversed(text) if ln.strip()), "")
    return pick.strip()[:400]


def run_one(run_dir: Path, cohort: str, seed: int, policy: str, data: Path | None, sim_args: list[str],
            timeout_s: float | None) -> dict:
    """One rmm-simulate run in a child process (reused when run_dir holds a successful one): a raw row."""
    status_file = run_dir / "bench_run.json"
    row = {"cohort": cohort, "seed": seed, "policy": policy, "run_dir": str(run_dir), "rmm_version": __version__}
    done = json.loads(status_file.read_text()) if status_file.is_file() else None
    if (run_dir / "metrics.json").is_file() and (done is None or done.get("rc") == 0):
        m = json.loads((run_dir / "metrics.json").read_text())
        if not m.get("failed_steps"):
            wall = (done or {}).get("wall_s") or (m.get("timing_s") or {}).get("total")
            return {**row, **_from_metrics(m), "status": "ok", "rc": 0, "wall_s": wall, "reused": True, "error": ""}
    shutil.rmtree(run_dir, ignore_errors=True)  # a failed or partial run: start it again from nothing
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "rmmfed.simulations.simulate", "--out", str(run_dir), "--seed", str(seed),
           *(["--data", str(data)] if data is not None else []), *sim_args]
    log = run_dir / "bench.log"
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    wall = time.perf_counter() - t0
    error = "" if rc == 0 else (f"timed out after {timeout_s:g} s" if rc == -1 else f"rc {rc}: {_error_line(log)}")
    status_file.write_text(json.dumps({"rc": rc, "wall_s": wall, "cmd": cmd, "error": error}, indent=1))
    m = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    ok = rc == 0 and bool(m) and not m.get("failed_steps")
    return {**row, **_from_metrics(m), "status": "ok" if ok else "failed", "rc": rc, "wall_s": wall,
            "reused": False, "error": error or ("" if ok else "no metrics.json or failed steps")}


def _from_metrics(m: dict) -> dict:
    eps1, eps2 = epsilon_spent(m)
    timing = m.get("timing_s") or {}
    return {"c_index": (m.get("federated") or {}).get("c_index"),
            "pooled_c_index": (m.get("pooled_reference") or {}).get("c_index"),
            "eps_tier1": eps1, "eps_tier2": eps2, "simulate_total_s": timing.get("total")}


def _cohort_data(out: Path, data_root: Path, cohort: str, seed: int, policy: str) -> tuple[Path | None, bool]:
    """(--data for this run, whether the cohort is there). ``default``: the seed's first run generates it."""
    if cohort != "default":
        folder = data_root / cohort
        return folder, folder.is_dir()
    if policy == POLICIES[0]:
        return None, True
    return out / "default" / f"seed-{seed}" / POLICIES[0] / "cohort", True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohorts", nargs="+", default=list(DEFAULT_COHORTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/dp-cost"))
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                   help="folder of the real TCGA cohorts (not part of the product; default ../shared/data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override passed to every run (repeatable)")
    p.add_argument("--pooled", action="store_true", help="keep the pooled reference (default: --no-pooled)")
    p.add_argument("--run-timeout", type=float, default=0.0, help="seconds per run before it counts as failed "
                   "(0 = no limit)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    policy_file = args.out / "permissive-policy.toml"
    policy_file.write_text(PERMISSIVE_POLICY_TEXT)
    common = [a for item in args.set for a in ("--set", item)] + ([] if args.pooled else ["--no-pooled"])
    extra = {PERMISSIVE: ["--policy", str(policy_file.resolve()), *common, "--set", "dp.enabled=false"],
             DEFAULT_POLICY: common}
    rows: list[dict] = []
    for cohort in args.cohorts:
        for seed in args.seeds:
            for policy in POLICIES:
                data, present = _cohort_data(args.out, args.data_root, cohort, seed, policy)
                if not present:
                    rows.append({"cohort": cohort, "seed": seed, "policy": policy, "status": "skipped",
                                 "error": f"no folder {data}", "rmm_version": __version__})
                    continue
                run_dir = args.out / cohort / f"seed-{seed}" / policy
                print(f"[bench_dp_cost] {cohort} seed {seed} {policy} ...", file=sys.stderr, flush=True)
                r = run_one(run_dir, cohort, seed, policy, data, extra[policy],
                            args.run_timeout if args.run_timeout > 0 else None)
                rows.append(r)
                c = f"{r['c_index']:.3f}" if _finite(r.get("c_index")) else "n/a"
                print(f"[bench_dp_cost]   {r['status']}{' (reused)' if r.get('reused') else ''}: C-index {c}, "
                      f"{r['wall_s'] or 0:.0f} s{(' - ' + r['error']) if r['error'] else ''}", file=sys.stderr, flush=True)
    s = summarise(rows)
    import pandas as pd  # noqa: PLC0415

    pd.DataFrame(s.table, columns=COLUMNS).to_csv(args.out / "dp_cost.csv", index=False)
    pd.DataFrame(rows).to_csv(args.out / "dp_cost_raw.csv", index=False)
    sets = f" Overrides: {' '.join(args.set)}." if args.set else ""
    (args.out / "dp_cost.md").write_text(f"# Cost of the default site policy (DP-SGD) vs a permissive one\n\n"
                                         f"rmm {__version__}.{sets}\n\n{s.text}")
    print(s.text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
