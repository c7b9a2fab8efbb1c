"""What a privacy floor costs: two finished runs of the same study side by side.

    python -m rmmfed.simulations.compare_floor runs/before runs/after

Prints, for the second run against the first: the federated C-index, theta (and how many
calibration bins apart), the Tier 2 abstention bound, the risk-group cut points (in risk-grid
bins), the end of the Breslow grid and the baseline survival exp(-H0(t)) at a few horizons; then
the second run's ``privacy_floor`` block (the brackets its merged releases leave open).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..core.survival.baseline_hazard import cumhaz_at
from ..core.outputs.bundle import load_model
from ..core.survival.risk_groups import RISK_GRID


def _load(run: Path) -> tuple[dict, dict, dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    calib = json.loads((run / "calibration.json").read_text())
    return metrics, calib, load_model(run)


def compare(before: Path, after: Path, horizons: tuple[float, ...] = (12.0, 36.0, 60.0)) -> dict:
    (m0, c0, b0), (m1, c1, b1) = _load(before), _load(after)
    grid = c1["grid"]
    ratio = (grid["hist-high"] / grid["hist-low"]) ** (1 / (grid["hist-bins"] - 2))
    out = {
        "c_index": [m0["federated"]["c_index"], m1["federated"]["c_index"]],
        "c_index_combined_pairs": [m0["federated"]["c_index_combined_pairs"], m1["federated"]["c_index_combined_pairs"]],
        "theta": [m0["calibration"]["theta"], m1["calibration"]["theta"]],
        "theta_exact_pooled": m1["calibration"].get("theta_exact_pooled"),
        "theta_shift_bins": abs(math.log(m1["calibration"]["theta"] / m0["calibration"]["theta"])) / math.log(ratio),
        "abstain_bound": [m0["two_tier"]["abstain_bound"], m1["two_tier"]["abstain_bound"]],
        "two_tier_covered_c_index": [m0["two_tier"]["c_index"]["two_tier_covered"],
                                     m1["two_tier"]["c_index"]["two_tier_covered"]],
        "masked_complete_referral_rate": [m0["routing"]["masked_complete_referral_rate"],
                                          m1["routing"]["masked_complete_referral_rate"]],
    }
    cuts0, cuts1 = m0["risk_groups"]["cutpoints"], m1["risk_groups"]["cutpoints"]
    if cuts0 and cuts1:
        step = math.log(RISK_GRID.ratio)
        out["risk_cutpoints"] = [cuts0, cuts1]
        out["risk_cutpoint_shift_bins"] = [abs(a - b) / step for a, b in zip(cuts0, cuts1)]
    h0, h1 = b0.fitted.baseline_hazard_, b1.fitted.baseline_hazard_
    if h0 is not None and h1 is not None:
        t0, t1 = h0.times, h1.times
        s0 = np.exp(-cumhaz_at(np.array(horizons), t0, h0.cumhaz))
        s1 = np.exp(-cumhaz_at(np.array(horizons), t1, h1.cumhaz))
        out["hazard_grid_end"] = [float(t0[-1]), float(t1[-1])]
        out["baseline_survival"] = {str(h): [float(a), float(b)] for h, a, b in zip(horizons, s0, s1)}
    out["privacy_floor"] = m1.get("privacy_floor")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmmfed.simulations.compare_floor", description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="run folder without the floor (or with the old one)")
    p.add_argument("after", type=Path, help="run folder with the floor")
    args = p.parse_args(argv)
    for run in (args.before, args.after):
        if not (run / "metrics.json").is_file() or not (run / "model.pt").is_file():
            print(f"{run}: not a finished run folder (no metrics.json / model.pt). Fix: pass rmm-simulate --out "
                  "folders", file=sys.stderr)
            return 2
    print(json.dumps(compare(args.before, args.after), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
