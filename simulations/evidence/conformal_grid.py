"""Which grid resolves the conformal q-hat from noised site histograms: coverage over noise draws.

    python -m rmmfed.simulations.evidence.conformal_grid --run runs/risk-routing/default/seed-0 \\
        --data runs/risk-routing/cohorts/seed-0 [--draws 40] [--epsilon 1.0]

From a finished run (its model.pt; simulation only: the scores are pooled here to measure), each site's
Tier 1 conformal scores on its validation split are released as the site would release them (one masking
pattern per patient, epsilon-DP counts on every bin, core/privacy/noised_release.py), pooled as the server pools
them, and the finite-sample corrected q-hat is read; its coverage is measured on the pooled masked
complete test rows. Printed per grid over ``--draws`` noise draws: mean and sd of the coverage, and the
share of draws within 3 points of nominal (0.90). Compared: theta's coarse-then-zoom grids
(server/noised_quantile.py) and single coarse grids, among them core/routing/conformal.SCORE_GRID. Last, theta
itself (the run's routing score on the same validation cases, released and read as a run does, with
theta's own procedure): the masked-complete referral it gives on the test rows, over the same draws.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from ...core.outputs.bundle import load_model
from ...core.routing.conformal import SCORE_GRID, corrected_level, site_scores
from ...core.aggregates.histogram import HistogramGrid
from ...core.aggregates.merged_histogram import merged_quantile, pooled_counts
from ...core.privacy.noised_release import noised_histogram
from ...core.data.site_data import discover_sites, load_site
from ...core.site.site_releases import pattern_patients
from ...core.site.site_seed import site_seed
from ...core.data.tensors import build_tensors
from ...server.noised_quantile import COARSE_BINS, zoom_grid
from ...server.queries import pool_noisy

WIDE = HistogramGrid(1e-3, 1e3, 256)


def coarse_then_zoom(ask):
    coarse = HistogramGrid(WIDE.low, WIDE.high, COARSE_BINS)
    fine = zoom_grid(WIDE, merged_quantile(coarse, ask(coarse), 0.9).estimate)
    return fine, ask(fine)


GRIDS = {"coarse-then-zoom (theta's), no noise floor": coarse_then_zoom,
         "one grid 0.25..64, 10 bins": HistogramGrid(0.25, 64, 10),
         "one grid 0.5..32, 8 bins": HistogramGrid(0.5, 32, 8),
         "one grid 0.1..100, 12 bins (SCORE_GRID)": SCORE_GRID}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--draws", type=int, default=40)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.1)
    args = p.parse_args(argv)
    bundle = load_model(args.run)
    cfg, tier1 = bundle.run_config, bundle.build_tier1()
    sites, tests = [], []
    for path in discover_sites(args.data):
        site = load_site(path, expected=dict(bundle.modalities))
        data = build_tensors(site, bundle.stats(), seed=site_seed(cfg.seed, site.site))
        v, _ = site_scores(tier1, None, data.subset(site.indices("val")), cfg, "tier1")
        sites.append((v, pattern_patients(v, len(bundle.modalities))))
        tests.append(site_scores(tier1, None, data.subset(site.indices("test")), cfg, "tier1")[0])
    test = np.concatenate(tests)
    pooled = np.concatenate([v for v, _ in sites])
    exact = np.sort(pooled)[min(len(pooled) - 1, math.ceil((len(pooled) + 1) * (1 - args.alpha)) - 1)]
    print(f"exact split conformal on the pooled validation rows: q-hat {exact:.3f}, test coverage "
          f"{(test <= exact).mean():.3f} ({len(test)} test rows)")
    for name, grid in GRIDS.items():
        cov = []
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)

            def ask(g):
                parts = [noised_histogram(g, v, pt, args.epsilon, rng, seed=draw) for v, pt in sites]
                return pool_noisy(parts, [args.epsilon] * len(parts), g.n_bins, 0.0)
            g, parts = grid(ask) if callable(grid) else (grid, ask(grid))
            level = corrected_level(float(pooled_counts(parts, g.n_bins).sum()), args.alpha)
            q = merged_quantile(g, parts, level).estimate if level < 1 else math.inf
            cov.append(float((test <= q).mean()))
        c = np.asarray(cov)
        print(f"{name:45s} coverage {c.mean():.3f} +- {c.std():.3f}; within 3 points in {np.mean(abs(c - 0.9) <= 0.03):.0%}")
    theta_noise(args, bundle, cfg, tier1)
    return 0


def theta_noise(args, bundle, cfg, tier1) -> None:
    """Theta from noised calibration histograms (the run's own rule) and the masked referral it gives."""
    from ...core.routing.routing_score import calibration_scores
    from ...core.routing.two_tier import recovery_errors
    from ...core.messages import protocol as P
    from ...server.noised_quantile import quantile_release
    from ..bench_theta import fake_ask

    sites, tests = [], []
    for path in discover_sites(args.data):
        site = load_site(path, expected=dict(bundle.modalities))
        data = build_tensors(site, bundle.stats(), seed=site_seed(cfg.seed, site.site))
        v = calibration_scores(tier1, data.subset(site.indices("val")), cfg, seed=cfg.seed)
        sites.append((v, pattern_patients(v, len(bundle.modalities))))
        tests.append(recovery_errors(tier1, None, data.subset(site.indices("test")), cfg, seed=cfg.seed + 1)["risk_sd"
                                     if cfg.routing_score == "risk-sd" else "sigma2"])
    test, pooled = np.concatenate(tests), np.concatenate([v for v, _ in sites])
    exact = float(np.quantile(pooled, cfg.quantile))
    base = HistogramGrid(cfg.hist_low, cfg.hist_high, cfg.hist_bins)
    refs = []
    for draw in range(args.draws):  # the server's own procedure (server/noised_quantile.py), sites answering with noise
        ask = fake_ask([v for v, _ in sites], args.epsilon, np.random.default_rng(draw), [pt for _, pt in sites], draw)
        grid, _, parts = quantile_release(ask, P.CALIBRATION, lambda g: g, base, cfg.quantile, True)
        refs.append(float((test > merged_quantile(grid, parts, cfg.quantile).estimate).mean()))
    r = np.asarray(refs)
    print(f"theta (q={cfg.quantile}): exact pooled {exact:.4f} gives masked referral {(test > exact).mean():.3f}; from "
          f"noised releases {r.mean():.3f} +- {r.std():.3f}, within 4-6% in {np.mean((r >= 0.04) & (r <= 0.06)):.0%}")


if __name__ == "__main__":
    raise SystemExit(main())
