"""Two ``bench_dp_cost`` outputs side by side: the default-policy C-index of run config A against B, paired
by cohort and seed (not a test; prints figures).

    python -m rmmfed.simulations.compare_dp_cost runs/dp-parts/all runs/dp-parts/linear [--names all linear]
        [--out docs/evidence/privacy/dp_train_parts.md]

Each folder is a ``bench_dp_cost --out`` folder; its ``dp_cost_raw.csv`` holds one row per run. Per cohort:
the permissive C-index (the same command in both folders, so from A), the default-policy C-index under A and
under B (mean ± sd over the seeds where both finished), and B − A paired by seed with its standard error and
"within noise" when |mean| < 2 SE. The last line gives the mean of B − A over cohorts and the cohorts where B
is worse than A by more than 0.01.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path

from .bench_dp_cost import DEFAULT_POLICY, PERMISSIVE, noise_label


def _ok_rows(folder: Path) -> dict[tuple[str, int, str], float]:
    path = Path(folder) / "dp_cost_raw.csv"
    if not path.is_file():
        raise SystemExit(f"compare_dp_cost: {path} does not exist. Fix: run "
                         f"python -m rmmfed.simulations.bench_dp_cost --out {folder} first")
    out = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            if r["status"] == "ok" and r["c_index"]:
                out[(r["cohort"], int(r["seed"]), r["policy"])] = float(r["c_index"])
    return out


def _cell(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    return f"{vals[0]:.3f}" if len(vals) == 1 else f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def compare(a: Path, b: Path, names: tuple[str, str]) -> str:
    ra, rb = _ok_rows(a), _ok_rows(b)
    cohorts = list(dict.fromkeys(c for c, _, _ in list(ra) + list(rb)))
    na, nb = names
    lines = [f"| cohort | seeds | C-index permissive | default policy, {na} | default policy, {nb} | "
             f"{nb} − {na} | noise | {nb} − permissive |", "|---|---|---|---|---|---|---|---|"]
    means, worse = [], []
    for c in cohorts:
        seeds = sorted(s for (cc, s, p) in ra if cc == c and p == DEFAULT_POLICY and (c, s, p) in rb)
        if not seeds:
            continue
        va = [ra[(c, s, DEFAULT_POLICY)] for s in seeds]
        vb = [rb[(c, s, DEFAULT_POLICY)] for s in seeds]
        perm = {s: ra.get((c, s, PERMISSIVE), rb.get((c, s, PERMISSIVE))) for s in seeds}
        cost = [y - perm[s] for s, y in zip(seeds, vb) if perm[s] is not None]
        diffs = [y - x for x, y in zip(va, vb)]
        m = statistics.mean(diffs)
        means.append(m)
        if m < -0.01:
            worse.append(f"{c} ({m:+.3f})")
        se = f" (SE {statistics.stdev(diffs) / math.sqrt(len(diffs)):.3f})" if len(diffs) > 1 else ""
        perm_cell = _cell([p for p in perm.values() if p is not None])
        cost_cell = f"{statistics.mean(cost):+.3f}" if cost else "n/a"
        lines.append(f"| {c} | {len(seeds)} | {perm_cell} | {_cell(va)} | {_cell(vb)} | {m:+.3f}{se} | "
                     f"{noise_label(diffs)} | {cost_cell} |")
    if means:
        lines += ["", f"mean {nb} − {na} over {len(means)} cohort(s): {statistics.mean(means):+.3f}; "
                      f"{nb} worse than {na} by more than 0.01: {', '.join(worse) or 'none'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="bench_dp_cost output folder of run config A")
    p.add_argument("b", type=Path, help="bench_dp_cost output folder of run config B")
    p.add_argument("--names", nargs=2, default=("A", "B"), metavar=("NAME_A", "NAME_B"))
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    text = compare(args.a, args.b, tuple(args.names))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
