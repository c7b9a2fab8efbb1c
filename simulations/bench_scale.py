"""Whole-slide scale: memory and time of checking a site, a full simulated study and rmm-predict.

    python -m rmmfed.simulations.bench_scale --check-patients 100 700 --patients 400 800 --out runs/bench-scale
    python -m rmmfed.simulations.bench_scale --patients 1679 --device cuda   # on a GPU machine

For each patient count N it generates the ``wsi`` preset cohort (pathology 1,024-d x 500-4,000
patches, radiology 512-d x 16-128 slices, report 768-d x 4-16 sections; simulations/cohort_presets.py)
and runs, each as its own process tree measured by :mod:`rmmfed.simulations.process_memory` (peak
summed PSS of the command and every process it starts, wall time):

- ``generate``: ``python -m rmmfed.simulations.cohort --preset wsi`` (writes bag after bag);
- ``check``: ``rmm-client --check`` of the largest site (every value of every bag validated);
- ``study``: ``rmm-simulate --data COHORT`` (Flower simulation engine, every phase, both tiers;
  ``--no-pooled`` leaves out the centralised reference);
- ``predict``: ``rmm-predict`` of that site with the study's model (all instances, attributions).

``--check-patients`` also measures ``--check`` alone on one-site cohorts of those sizes (how memory
grows with the site). It prints one table (also OUT/bench_scale.md and .json). The cohort is deleted after each N unless
``--keep``. Figures depend on the machine and its load: compare rows measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .process_memory import Measured, run_measured

STEPS = ("generate", "check", "study", "predict")


def _env(threads: int) -> dict:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _largest_site(cohort: Path) -> Path:
    sites = sorted((p for p in cohort.iterdir() if (p / "patients.csv").is_file()),
                   key=lambda p: sum(1 for _ in (p / "patients.csv").open()) if p.is_dir() else 0)
    return sites[-1]


def _disk_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.npy")) / 2**30


def _row(n: int, step: str, m: Measured, **extra) -> dict:
    return {"patients": n, "step": step, "ok": m.returncode == 0, "wall_s": round(m.wall_s, 1),
            "peak_mib": round(m.peak_mib), "processes": m.peak_processes, **extra}


def bench_one(n: int, out: Path, *, device: str, pooled: bool, seed: int, threads: int, keep: bool,
              interval: float) -> list[dict]:
    py, env = sys.executable, _env(threads)
    cohort, run = out / f"cohort-{n}", out / f"study-{n}"
    shutil.rmtree(cohort, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    rows = []
    m = run_measured([py, "-m", "rmmfed.simulations.cohort", "--preset", "wsi", "--patients", str(n),
                      "--seed", str(seed), "--out", str(cohort)], env=env, interval=interval)
    rows.append(_row(n, "generate", m, disk_gib=round(_disk_gib(cohort), 2) if m.returncode == 0 else None))
    if m.returncode != 0:
        print(m.output[-3000:], file=sys.stderr)
        return rows
    site = _largest_site(cohort)
    site_n = sum(1 for _ in (site / "patients.csv").open()) - 1
    m = run_measured([py, "-m", "rmmfed.client.cli", "--site", site.name.removeprefix("site-"), "--data", str(site),
                      "--check", "--device", "cpu"], env=env, interval=interval)
    rows.append(_row(n, "check", m, site_patients=site_n, site_gib=round(_disk_gib(site), 2)))
    cmd = [py, "-m", "rmmfed.simulations.simulate", "--data", str(cohort), "--out", str(run), "--seed", str(seed),
           "--device", device]
    m = run_measured(cmd + ([] if pooled else ["--no-pooled"]), env=env, interval=interval)
    c_index = None
    if (run / "metrics.json").is_file():
        c_index = json.loads((run / "metrics.json").read_text())["federated"]["c_index"]
    rows.append(_row(n, "study", m, device=device, c_index=None if c_index is None else round(c_index, 3)))
    if m.returncode == 0:
        m = run_measured([py, "-m", "rmmfed.client.predict", "--model", str(run), "--data", str(site),
                          "--out", str(run / "predictions.jsonl"), "--json-only"], env=env, interval=interval)
        rows.append(_row(n, "predict", m, site_patients=site_n))
    else:
        print(m.output[-3000:], file=sys.stderr)
    if not keep:
        shutil.rmtree(cohort, ignore_errors=True)
    return rows


def bench_check(n: int, out: Path, *, seed: int, threads: int, interval: float) -> list[dict]:
    """``rmm-client --check`` of one wsi site of ``n`` patients (generated as a one-site cohort)."""
    py, env, cohort = sys.executable, _env(threads), out / f"site-{n}"
    shutil.rmtree(cohort, ignore_errors=True)
    m = run_measured([py, "-m", "rmmfed.simulations.cohort", "--preset", "wsi", "--patients", str(n), "--sites", "A",
                      "--seed", str(seed), "--out", str(cohort)], env=env, interval=interval)
    rows = [_row(n, "generate one site", m, disk_gib=round(_disk_gib(cohort), 2) if m.returncode == 0 else None)]
    if m.returncode == 0:
        m = run_measured([py, "-m", "rmmfed.client.cli", "--site", "A", "--data", str(cohort / "site-A"), "--check",
                          "--device", "cpu"], env=env, interval=interval)
        rows.append(_row(n, "check", m, site_patients=n, site_gib=rows[0]["disk_gib"]))
    shutil.rmtree(cohort, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| patients | step | wall s | peak tree memory MiB | processes | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        notes = []
        if r.get("disk_gib") is not None:
            notes.append(f"{r['disk_gib']} GiB of bags on disk")
        if "site_patients" in r:
            notes.append(f"site of {r['site_patients']} patients" + (f", {r['site_gib']} GiB" if "site_gib" in r else ""))
        if r.get("c_index") is not None:
            notes.append(f"federated C-index {r['c_index']}")
        if r.get("device"):
            notes.append(f"device {r['device']}")
        if not r["ok"]:
            notes.append("FAILED")
        lines.append(f"| {r['patients']} | {r['step']} | {r['wall_s']} | {r['peak_mib']} | {r['processes']} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, nargs="*", default=[400, 800],
                   help="cohort sizes of the full study (4 sites; >= about 400 so every site's validation split "
                        "holds enough complete cases for its privacy floor)")
    p.add_argument("--check-patients", type=int, nargs="*", default=[100, 700],
                   help="sizes of one-site cohorts whose --check is measured")
    p.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    p.add_argument("--device", default="cpu", help="study device: cpu | cuda | auto (default cpu)")
    p.add_argument("--no-pooled", action="store_true", help="leave the centralised reference out of the study")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="OMP/MKL threads per process (default: library default)")
    p.add_argument("--interval", type=float, default=0.2, help="memory sampling interval in seconds")
    p.add_argument("--keep", action="store_true", help="keep the generated cohorts")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n in args.check_patients:
        rows += bench_check(n, args.out, seed=args.seed, threads=args.threads, interval=args.interval)
        print(table(rows[-2:]).split("\n", 2)[2], flush=True)
    for n in args.patients:
        rows += bench_one(n, args.out, device=args.device, pooled=not args.no_pooled, seed=args.seed,
                          threads=args.threads, keep=args.keep, interval=args.interval)
        print(table([r for r in rows if r["patients"] == n]).split("\n", 2)[2], flush=True)
    text = table(rows)
    (args.out / "bench_scale.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "bench_scale.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
