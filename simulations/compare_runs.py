"""Whether two runs gave the same figures: every value of their metrics.json and calibration.json
compared exactly, wall-clock times left out.

    python -m rmmfed.simulations.compare_runs runs/before runs/after

For a change that should not alter the model (a refactor, a speed-up): run ``rmm-simulate
--seeded-noise`` (DP noise drawn from the seed, so two runs of one version agree) on both versions and
compare. Prints each difference as ``path: before vs after`` and exits 1 when there is any, 0 when the
runs agree. ``--digits N`` compares floats to N significant digits instead of exactly: floating sums
added in the order the sites' replies arrive can differ in the 16th digit between two runs of one
version.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

TIMING_KEYS = ("timing_s", "wall_s", "ms_per_patient", "seconds")  # wall-clock figures: never equal between two runs
FILES = ("metrics.json", "calibration.json")


def _same(a: float, b: float, digits: int | None) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if digits is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return f"{a:.{digits - 1}e}" == f"{b:.{digits - 1}e}"


def differences(before: Any, after: Any, path: str = "", digits: int | None = None) -> list[str]:
    """Every place where ``after`` differs from ``before`` (JSON documents), timing keys left out."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after), key=str):
            if k in TIMING_KEYS:
                continue
            if k not in before or k not in after:
                out.append(f"{path}/{k}: only in {'after' if k not in before else 'before'}")
            else:
                out += differences(before[k], after[k], f"{path}/{k}", digits)
        return out
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{path}: {len(before)} items vs {len(after)}"]
        return [d for i, (x, y) in enumerate(zip(before, after)) for d in differences(x, y, f"{path}[{i}]", digits)]
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and not isinstance(before, bool):
        return [] if _same(float(before), float(after), digits) else [f"{path}: {before!r} vs {after!r}"]
    return [] if before == after else [f"{path}: {before!r} vs {after!r}"]


def compare_runs(before: Path, after: Path, digits: int | None = None) -> list[str]:
    out = []
    for name in FILES:
        a, b = before / name, after / name
        if not (a.exists() and b.exists()):
            out.append(f"{name}: missing in {before if not a.exists() else after}")
            continue
        out += [f"{name}{d}" for d in differences(json.loads(a.read_text()), json.loads(b.read_text()), "", digits)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="a run folder (holds metrics.json)")
    p.add_argument("after", type=Path)
    p.add_argument("--digits", type=int, help="compare floats to this many significant digits (default: exactly)")
    args = p.parse_args(argv)
    diffs = compare_runs(args.before, args.after, args.digits)
    print("\n".join(diffs) if diffs else "the same figures")
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
