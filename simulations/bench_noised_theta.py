"""Benchmark: how far theta lands from the exact pooled percentile when the sites noise their
calibration histograms (the default site policy; not a test, prints figures, reads no data).

    python -m rmmfed.simulations.bench_noised_theta [--trials 300] [--epsilon 1.0]

Each trial draws log-normal uncertainties for four sites (the default cohort's calibration sets have
about 170 held-out complete cases in all, one value per patient under noise), noises each site's
counts exactly as a site does (``core.privacy.noised_release.noised_histogram``: two-sided geometric, L1
sensitivity 1, OS-seeded in production, seeded here for the benchmark's own reproducibility), pools
them as the server does (``server.queries.pool_noisy``), and runs the server's coarse-then-zoom
quantile (``server.noised_quantile``). Printed: median, mean and 90th percentile of |theta / exact - 1|
by calibration-set size, and the share of trials within 5 %.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..core.aggregates.histogram import HistogramGrid
from ..core.aggregates.merged_histogram import merged_quantile
from ..core.privacy.noised_release import noised_histogram
from ..server.noised_quantile import COARSE_BINS, zoom_grid
from ..server.queries import NOISE_FLOOR, pool_noisy

SIZES = ((70, 50, 37, 20), (140, 100, 75, 40), (300, 200, 150, 100))  # patients per site


def trial(sizes, epsilon: float, q: float, seed: int, base: HistogramGrid) -> float:
    rng = np.random.default_rng(seed)
    sites = [np.exp(rng.normal(0.0, 0.4, n)) for n in sizes]
    exact = float(np.quantile(np.concatenate(sites), q))

    def pooled(grid: HistogramGrid):
        parts = [noised_histogram(grid, v, np.arange(len(v)), epsilon, rng) for v in sites]
        return pool_noisy(parts, [epsilon] * len(sites), grid.n_bins, NOISE_FLOOR)

    coarse = HistogramGrid(base.low, base.high, COARSE_BINS)
    fine = zoom_grid(base, merged_quantile(coarse, pooled(coarse), q).estimate)
    return abs(merged_quantile(fine, pooled(fine), q).estimate / exact - 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--epsilon", type=float, default=1.0, help="the sites' dp.release-epsilon")
    p.add_argument("--quantile", type=float, default=0.95)
    args = p.parse_args(argv)
    base = HistogramGrid()
    print(f"| patients (4 sites) | median error | mean | 90th percentile | within 5 % |  (epsilon {args.epsilon:g}, "
          f"q {args.quantile:g}, {args.trials} trials)\n|---|---|---|---|---|")
    for sizes in SIZES:
        e = np.array([trial(sizes, args.epsilon, args.quantile, s, base) for s in range(args.trials)])
        print(f"| {sum(sizes)} ({'/'.join(map(str, sizes))}) | {np.median(e):.3f} | {e.mean():.3f} | "
              f"{np.quantile(e, 0.9):.3f} | {np.mean(e <= 0.05):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
