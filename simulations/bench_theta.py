"""Benchmark: theta (a tail quantile of the sites' noised calibration histograms) against the exact
pooled percentile, on cohorts the size of the default one and of the TCGA ones (not a test: prints
figures, reads no data).

    python -m rmmfed.simulations.bench_theta [--draws 200] [--epsilon 1.0] [--quantile 0.95]

Each draw gives every site of a scenario its held-out complete cases (one value per patient, as under
the default site policy) from a log-normal: median the scenario's, log-sd 0.5 within a site (about one
decade from the 1st to the 99th percentile; 0.3 for the narrow variant) and a site offset of log-sd 0.25 (sites differ); the
scenario's per-site counts are the complete validation cases of the cohort's sites (runs/risk-routing/
cohorts/seed-0 for the default one, ../shared/data/tcga-*/site-*: validation patients with every
modality). The server's own procedure runs unchanged: ``server.noised_quantile.quantile_release`` with a
fake ``ask`` whose sites answer each grid with ``core.privacy.noised_release.noised_histogram``
(two-sided geometric noise, OS-seeded in production, seeded here). Rows: "before" is the procedure with
the settings of rmm 0.8.0 (floor of 2 noise sds on both grids, no coarse support), "after" the current
defaults. Printed per scenario: |theta / exact - 1| (median, 90th percentile), the share of draws within
5 % and 25 %, and the share off by more than a factor 2 either way.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from ..core.aggregates.histogram import HistogramGrid
from ..core.aggregates.merged_histogram import merged_quantile
from ..core.messages import metric_names as M
from ..core.messages import protocol as P
from ..core.privacy.noised_release import noised_histogram
from ..flower.records import to_content
from ..server.noised_quantile import quantile_release

SCENARIOS = {  # name: (complete validation cases per site, median score, log-sd within a site)
    "default": ((85, 45, 25, 17), 0.15, 0.5),
    "default, narrow": ((85, 45, 25, 17), 0.15, 0.3),
    "tcga-kirp": ((9, 9, 13, 5), 0.035, 0.5),
    "tcga-luad": ((17, 16, 17, 13), 0.04, 0.5),
    "tcga-blca": ((14, 16, 12, 7), 0.04, 0.5),
    "tcga-gbmlgg": ((22, 20, 23, 10), 0.06, 0.5),
    "tcga-stad": ((17, 13, 11, 7), 0.035, 0.5),
}
SITE_LOG_SD = 0.25
SETTINGS = {"before": {"floors": (2.0, 2.0), "support": False}, "after": {}}


def site_values(sizes: tuple[int, ...], median: float, log_sd: float, rng: np.random.Generator) -> list[np.ndarray]:
    return [median * np.exp(rng.normal(0.0, SITE_LOG_SD) + rng.normal(0.0, log_sd, n)) for n in sizes]


def fake_ask(sites: list[np.ndarray], epsilon: float, rng: np.random.Generator,
             patients: list[np.ndarray] | None = None, choice_seed: int = 0):
    """An ``ask`` whose nodes answer a grid as a site under dp.release-epsilon does (what merged_parts reads);
    ``patients``: each site's patient of every value (default: one value per patient), one of whose values
    is released (drawn with ``choice_seed``)."""
    def ask(phase: P.Phase, grid: HistogramGrid) -> dict:
        out = {}
        for node, v in enumerate(sites):
            bins = noised_histogram(grid, v, np.arange(v.size) if patients is None else patients[node], epsilon, rng,
                                    seed=choice_seed)
            reply = P.HistogramReply(bins.to_arrays(), {M.NOISED: epsilon})
            out[node] = SimpleNamespace(content=to_content(reply.to_records()))
        return out
    return ask


def theta_of(sites: list[np.ndarray], epsilon: float, q: float, seed: int, **setting) -> float:
    ask = fake_ask(sites, epsilon, np.random.default_rng([seed, 1]))
    grid, _, parts = quantile_release(ask, P.CALIBRATION, lambda g: g, HistogramGrid(), q, True, **setting)
    return merged_quantile(grid, parts, q).estimate if parts else float("nan")


def errors(sizes, median: float, log_sd: float, epsilon: float, q: float, draws: int, setting: dict) -> np.ndarray:
    out = []
    for seed in range(draws):
        sites = site_values(sizes, median, log_sd, np.random.default_rng([seed, 0]))
        exact = float(np.quantile(np.concatenate(sites), q))
        out.append(theta_of(sites, epsilon, q, seed, **setting) / exact)
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--epsilon", type=float, default=1.0, help="the sites' dp.release-epsilon")
    p.add_argument("--quantile", type=float, default=0.95)
    args = p.parse_args(argv)
    print(f"theta vs the exact pooled percentile (epsilon {args.epsilon:g}, q {args.quantile:g}, {args.draws} draws; "
          f"error = |theta / exact - 1|)\n\n| scenario (values per site) | code | median error | 90th pct | within 5 % "
          "| within 25 % | off > 2x |\n|---|---|---|---|---|---|---|")
    for name, (sizes, median, log_sd) in SCENARIOS.items():
        for label, setting in SETTINGS.items():
            r = errors(sizes, median, log_sd, args.epsilon, args.quantile, args.draws, setting)
            e = np.abs(r - 1.0)
            e[~np.isfinite(e)] = np.inf
            print(f"| {name} ({'/'.join(map(str, sizes))}) | {label} | {np.median(e):.3f} | {np.quantile(e, 0.9):.3g} | "
                  f"{np.mean(e <= 0.05):.0%} | {np.mean(e <= 0.25):.0%} | {np.mean((r > 2) | (r < 0.5) | ~np.isfinite(r)):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
