"""What noising the final evaluation's C-index would cost (not a test; prints figures).

    python -m rmmfed.simulations.evaluation_noise [--cohorts DIR ...] [--epsilon 1] [--draws 400] [--seed 0]

The final evaluation is exact and capped per site lifetime (policy ``max-evaluations``, docs/privacy.md
§1c) instead of noised. This prints why: per cohort, the test split's patients, events and comparable
pairs per site, and the standard deviation that epsilon-DP Laplace noise on each site's (concordant,
comparable) pair counts would add to the combined C-index. One patient is in up to n_s - 1 comparable
pairs of its site, and each pair adds at most 1 to both counts, so the L1 sensitivity is 2 (n_s - 1) and
each count gets Laplace noise of scale b_s = 2 (n_s - 1) / epsilon (the whole epsilon on these two figures;
the evaluation sends about 124). The sd it adds to C = sum(concordant) / sum(comparable), around a C-index
of 0.7, is the delta method's sqrt(sum_s 2 b_s^2 (1 + C^2)) / sum(comparable) (with noisy denominators near
zero the ratio itself has no finite sd). Where the cohort has the generator's ``truth.csv`` (the
synthetic default), the sampling sd of the oracle risk's C-index over ``--draws`` bootstraps of the test
patients is printed beside it.

Reads the cohort folders it is given (default: every folder under ../shared/data with site folders).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.data.site_data import discover_sites, load_site
from ..core.survival.concordance import concordance_counts

C_REF = 0.7  # the C-index the noise is drawn around


def _site_tests(cohort: Path) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
    out = []
    for path in discover_sites(cohort):
        d = load_site(path)
        idx = d.indices("test")
        out.append((d.site, d.time[idx], d.event[idx].astype(bool), [d.patient_ids[i] for i in idx]))
    return out


def noise_sd(tests, epsilon: float) -> tuple[float, int]:
    """sd (delta method) of the combined C-index under Laplace noise on each site's two pair counts, and the
    comparable pairs."""
    comp = np.array([concordance_counts(t, np.zeros(len(t)), e).comparable for _, t, e, _ in tests], np.float64)
    scale = np.array([2.0 * max(len(t) - 1, 0) / epsilon for _, t, _, _ in tests])
    return float(np.sqrt(np.sum(2.0 * scale ** 2 * (1.0 + C_REF ** 2))) / max(comp.sum(), 1.0)), int(comp.sum())


def sampling_sd(cohort: Path, tests, draws: int, rng: np.random.Generator) -> float:
    """Bootstrap sd of the oracle risk's C-index over the pooled test patients (NaN without truth.csv)."""
    truth = cohort / "truth.csv"
    if not truth.is_file():
        return float("nan")
    risk_of = pd.read_csv(truth, dtype={"patient_id": str}).set_index("patient_id")["true_risk"]
    t = np.concatenate([x[1] for x in tests])
    e = np.concatenate([x[2] for x in tests])
    r = risk_of.loc[[p for x in tests for p in x[3]]].to_numpy(np.float64)
    cs = []
    for _ in range(draws):
        i = rng.integers(0, len(t), len(t))
        cs.append(concordance_counts(t[i], r[i], e[i]).c_index())
    return float(np.nanstd(cs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmmfed.simulations.evaluation_noise", description=__doc__.split("\n")[0])
    p.add_argument("--cohorts", type=Path, nargs="*", help="cohort folders (default: ../shared/data/*)")
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--draws", type=int, default=400, help="bootstraps of the sampling sd")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cohorts = args.cohorts or sorted(c for c in Path("../shared/data").glob("*") if c.is_dir())
    if not cohorts:
        p.error("no cohort folders: pass --cohorts DIR ... (../shared/data is not here)")
    rng = np.random.default_rng(args.seed)
    print(f"| cohort | sites | test patients | test events | comparable pairs | DP noise sd of the C-index "
          f"(epsilon {args.epsilon:g}) | sampling sd (oracle, bootstrap) |")
    print("|---|---|---|---|---|---|---|")
    for cohort in cohorts:
        tests = _site_tests(cohort)
        sd, comp = noise_sd(tests, args.epsilon)
        samp = sampling_sd(cohort, tests, args.draws, rng)
        n, ev = sum(len(x[1]) for x in tests), int(sum(x[2].sum() for x in tests))
        print(f"| {cohort.name} | {len(tests)} | {n} | {ev} | {comp} | {sd:.3f} | "
              f"{'n/a' if np.isnan(samp) else f'{samp:.3f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
