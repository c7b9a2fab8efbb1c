"""Tier 1's learning rate under DP-SGD, chosen on the validation splits of every cohort (simulation only).

    python -m rmmfed.simulations.evidence.dp_lr [--lrs 0.002 0.005 0.01] [--seeds 0 1] [--out runs/dp-lr]
        [--cohorts default tcga-gbmlgg ...] [--data-root ../shared/data] [--key dp.lr] [--policy FILE]
        [--set KEY=VALUE ...]

Per cohort, seed and learning rate, one ``rmm-simulate`` run under the default site policy (DP-SGD, the
last round kept), Tier 1 only at epsilon 6 (Tier 1's share of a default run), with noise seeded from
``--seed`` so that the runs of one seed share their noise draws::

    rmm-simulate --seeded-noise --seed S [--data COHORT] --no-pooled --set tier2.rounds=0 \\
        --set dp.target-epsilon=6 --set KEY=LR --out OUT/<cohort>/seed-S/lr-LR

``KEY`` is the run-config key the rate is set through (``lr`` before rmm 0.12, ``dp.lr`` after); any other
numeric key sweeps that key instead (e.g. ``--key dp.max-grad-norm --lrs 0.3 1 3``: the values are still
given with ``--lrs`` and the run folders are still named ``lr-<value>``).
``--set KEY=VALUE`` (repeatable) adds a run-config override to every run, e.g. to sweep one key at another's
chosen value. ``--policy FILE`` gives every site that site policy instead of the default one (``rmm-simulate --policy``): e.g.
the default policy with a higher ``training.max-lr``, to try rates above the default cap. The
simulation holds every site's data, so afterwards each run's ``model.pt`` is scored on the pooled
validation split (the patients no phase of the run trained on and no default-policy site reports on)
and on the pooled test split. The rate to keep is the one with the best mean validation C-index over
every cohort and seed; the test C-index is reported beside it, never used to choose. Writes
OUT/dp_lr.md and OUT/dp_lr_raw.csv. A run folder with a model.pt is reused. Reads ../shared/data.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from ...core.data.site_data import discover_sites
from ...core.model.train import predict_risk
from ...core.outputs.bundle import load_bundle
from ...core.site.site_session import SiteSession
from ...core.survival.concordance import c_index

COHORTS = ("default", "tcga-gbmlgg", "tcga-blca", "tcga-luad", "tcga-stad", "tcga-kirp")


def split_c_index(run: Path, cohort: Path, split: str) -> float:
    """Pooled C-index of the run's Tier 1 (model.pt) on ``split`` of every site of ``cohort``."""
    b = load_bundle(run / "model.pt")
    cfg, stats, weights = b.run_config, b.stats(), {k: v.cpu().numpy() for k, v in b.tier1.items()}
    risk, time, event = [], [], []
    for path in discover_sites(cohort):
        s = SiteSession(path, device="cpu")
        s.bind_schema(dict(b.modalities))
        s.setup(cfg, stats)
        part = s.split(split)
        risk.append(predict_risk(s.model(weights), part))
        time.append(part.time.cpu().numpy()), event.append(part.event.cpu().numpy())
    return float(c_index(np.concatenate(time), np.concatenate(risk), np.concatenate(event)))


def best_lr(rows: list[dict], lrs: list[float]) -> float:
    """The rate with the best mean validation C-index over every cohort and seed (the test split is not read)."""
    return max(lrs, key=lambda lr: statistics.fmean(r["val"] for r in rows if r["lr"] == lr))


def table(rows: list[dict], lrs: list[float], key: str = "lr") -> list[str]:
    """Markdown: mean validation and test C-index per cohort and value of ``key`` (the rate, or whichever
    run-config key ``--key`` swept), and the value validation picks."""
    cohorts = list(dict.fromkeys(r["cohort"] for r in rows))
    name = "DP learning rate" if key in ("lr", "dp.lr") else key
    lines = [f"| {name} | " + " | ".join(cohorts) + " | mean |", "|---" * (len(cohorts) + 2) + "|"]
    for split in ("val", "test"):
        for lr in lrs:
            per = [statistics.fmean(r[split] for r in rows if r["cohort"] == c and r["lr"] == lr) for c in cohorts]
            lines.append(f"| {split} C-index, {key} {lr:g} | " + " | ".join(f"{v:.3f}" for v in per)
                         + f" | {statistics.fmean(per):.3f} |")
    return lines + ["", f"Best mean validation C-index over every cohort and seed: {key} {best_lr(rows, lrs):g}."]


def _run(out: Path, cohort: str, data_root: Path, seed: int, key: str, lr: float,
         policy: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    run = out / cohort / f"seed-{seed}" / f"lr-{lr:g}"
    first = out / cohort / f"seed-{seed}" / "cohort"  # the default cohort: generated once per seed
    data = data_root / cohort if cohort != "default" else first
    if not (run / "model.pt").is_file():
        cmd = [sys.executable, "-m", "rmmfed.simulations.simulate", "--seeded-noise", "--seed", str(seed),
               "--no-pooled", "--set", "tier2.rounds=0", "--set", "dp.target-epsilon=6", "--set", f"{key}={lr:g}",
               "--out", str(run)]
        for kv in extra:
            cmd += ["--set", kv]
        if cohort != "default" or first.is_dir():
            cmd += ["--data", str(data)]
        if policy is not None:
            cmd += ["--policy", str(policy)]
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "bench.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
        if cohort == "default" and not first.is_dir():
            (run / "cohort").rename(first)
    return run, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmmfed.simulations.evidence.dp_lr", description=__doc__.split("\n")[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cohorts", nargs="+", default=list(COHORTS))
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/dp-lr"))
    p.add_argument("--key", default="dp.lr", help="run-config key of Tier 1's DP learning rate (dp.lr; lr before rmm 0.12)")
    p.add_argument("--policy", type=Path, help="site policy file for every site (default: the default policy)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="another run-config override for every run (repeatable), e.g. dp.batch-size=16")
    args = p.parse_args(argv)
    rows = []
    for cohort in args.cohorts:
        if cohort != "default" and not (args.data_root / cohort).is_dir():
            print(f"{cohort}: not in {args.data_root}, skipped")
            continue
        for seed in args.seeds:
            for lr in args.lrs:
                run, data = _run(args.out, cohort, args.data_root, seed, args.key, lr, args.policy, tuple(args.extra))
                row = {"cohort": cohort, "seed": seed, "lr": lr, "val": split_c_index(run, data, "val"),
                       "test": split_c_index(run, data, "test")}
                rows.append(row)
                print(f"{cohort} seed {seed} lr {lr:g}: validation {row['val']:.3f}  test {row['test']:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "dp_lr_raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = table(rows, args.lrs, args.key)
    (args.out / "dp_lr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
