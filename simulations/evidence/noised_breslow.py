"""How the default policy's noised Breslow sums are asked: grid points, the clipping bound around a centre,
and the centre, chosen on the validation splits of every cohort (simulation only).

    python -m rmmfed.simulations.evidence.noised_breslow --seeds 0 1 --out runs/noised-breslow \\
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad tcga-stad tcga-kirp] [--data-root ../shared/data] \\
        [--draws 40]

Per cohort and seed (``default``: the synthetic cohort of that seed under OUT/cohorts; a TCGA cohort:
DATA-ROOT/<name>, skipped when absent), one Tier 1-only run under the default site policy through Flower
(``tier2.rounds = 0``, ``dp.target-epsilon = 6`` as in the DP studies, noise seeded by the seed) gives a
DP-trained Tier 1 and its risk-group cut points. The simulation holds every site's data, so each site's
training risks then go through the site's own release function
(:func:`rmmfed.core.privacy.noised_release.noised_hazard`, at the default release epsilon of 1) under every
design below, ``--draws`` times with fresh noise, and through the server's own post-processing (events
clipped at 0, a running minimum of the risk sets, :func:`baseline_from_sums`, times exp(-centre)). Each
baseline is scored by the integrated Brier score the run reports (site-stratified IPCW,
core/survival/survival_metrics.py) on the pooled validation split, which chooses, and on the pooled test
split, which is reported beside it. The grid ends at the pooled 95th percentile of training follow-up
(exact here; a run estimates it from a noised histogram). Designs: ``points`` in 8, 12, 16 x ``bound`` in
0.25, 0.5, 1, 2 with the centre at the middle of the run's risk-group cut points, plus rmm 0.13's design
(16 points, bound 2, no centre) and the exact, unclipped sums on 16 points. Writes OUT/noised_breslow.md and
OUT/noised_breslow_raw.csv (one row per cohort, seed and design: the mean and 90th percentile over draws).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...core.config import RunConfig
from ...core.model.train import predict_risk
from ...core.outputs.bundle import load_bundle
from ...core.privacy.noised_release import noised_hazard
from ...core.survival.baseline_hazard import baseline_from_sums, local_hazard_sums, time_grid
from ...core.survival.survival_metrics import combine, site_sums
from ...server.phases import baseline_from_parts, hazard_center
from .common import LoadedRun, each_cohort, evidence_parser, run_cached
from .cox_core import COHORTS

EPSILON = 1.0  # the default policy's dp.release-epsilon
K = 10  # the default floor (min-patients): the IBS sums do not depend on it
DESIGNS = tuple((p, b, "risk groups") for p in (8, 12, 16) for b in (0.25, 0.5, 1.0, 2.0)) + ((16, 2.0, "none"),)


def site_risks(run, cohort) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per split, per site: (time, event, Tier 1 risk) of the patients with a modality (those a site sums)."""
    loaded = LoadedRun(run)
    sites = loaded.load_sites(cohort)
    out: dict[str, list] = {}
    for split in ("train", "val", "test"):
        out[split] = []
        for s in sites:
            part = loaded.tensors(s).subset(s.indices(split))
            keep = part.present.any(dim=1).numpy()
            out[split].append((part.time.numpy()[keep].astype(float), part.event.numpy()[keep] > 0,
                               predict_risk(loaded.model, part)[keep]))
    return out


def ibs(parts, grid: np.ndarray, cumhaz: np.ndarray) -> float:
    return combine({str(i): site_sums(t, e, r, grid, cumhaz, K) for i, (t, e, r) in enumerate(parts)}, grid[-1])["ibs"]


def score(risks, t_max: float, points: int, bound: float, center: float, rng) -> tuple[float, float]:
    """(validation IBS, test IBS) of one draw of the sites' noised sums under one design."""
    grid = time_grid(t_max, points)
    parts = [noised_hazard(t, e, r - center, grid, EPSILON, rng, bound=bound) for t, e, r in risks["train"]]
    cumhaz = baseline_from_parts(grid, parts, center)  # the server's own post-processing
    return ibs(risks["val"], grid, cumhaz), ibs(risks["test"], grid, cumhaz)


def study(risks, center: float, draws: int, seed: int) -> list[dict]:
    t_max = float(np.quantile(np.concatenate([t for t, _, _ in risks["train"]]), 0.95))
    grid = time_grid(t_max, 16)
    events, risk_sets = np.zeros(16), np.zeros(16)
    for t, e, r in risks["train"]:
        ev, rs = local_hazard_sums(t, e, r, grid)
        events, risk_sets = events + ev, risk_sets + rs
    exact = baseline_from_sums(grid, events, risk_sets)
    rows = [{"design": "exact sums, 16 points", "val_ibs": ibs(risks["val"], grid, exact),
             "test_ibs": ibs(risks["test"], grid, exact), "val_ibs_p90": np.nan, "test_ibs_p90": np.nan}]
    for points, bound, centred in DESIGNS:
        rng = np.random.default_rng(seed)
        c = center if centred != "none" else 0.0
        v, t = np.array([score(risks, t_max, points, bound, c, rng) for _ in range(draws)]).T
        rows.append({"design": f"{points} points, bound {bound:g}, centre {centred}", "val_ibs": v.mean(),
                     "test_ibs": t.mean(), "val_ibs_p90": np.quantile(v, 0.9), "test_ibs_p90": np.quantile(t, 0.9)})
    return rows


def table(df: pd.DataFrame) -> list[str]:
    cohorts = list(dict.fromkeys(df["cohort"]))
    lines = []
    for figure, title in (("val_ibs", "validation IBS (chooses)"), ("test_ibs", "test IBS (reported)"),
                          ("val_ibs_p90", "validation IBS, 90th percentile over draws")):
        mean = df.groupby(["design", "cohort"], sort=False)[figure].mean().unstack()[cohorts]
        if mean.isna().all().all():
            continue
        mean["mean"] = mean.mean(axis=1)
        lines += [f"**{title}**, mean over seeds and draws", "", "| design | " + " | ".join(mean.columns) + " |",
                  "|---" * (len(mean.columns) + 1) + "|"]
        lines += ["| " + d + " | " + " | ".join(f"{v:.4f}" for v in row) + " |" for d, row in mean.iterrows()]
        lines.append("")
    noised = df[df["design"] != "exact sums, 16 points"].groupby("design", sort=False)["val_ibs"].mean()
    lines.append(f"Lowest mean validation IBS over every cohort and seed: {noised.idxmin()}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/noised-breslow", COHORTS, seeds=(0, 1))
    p.add_argument("--draws", type=int, default=40, help="noise draws per design")
    args = p.parse_args(argv)
    raw, skipped = [], []
    for cohort, seed, data in each_cohort(args, "noised breslow", skipped):
        folder = args.out / cohort / f"seed-{seed}" / "run"
        run_cached(data, folder, {"tier2.rounds": 0, "seed": seed, "dp.seeded-noise": True, "dp.target-epsilon": 6})
        center = hazard_center(RunConfig(), load_bundle(folder / "model.pt").fitted.cutpoints_)  # the run's own
        for row in study(site_risks(folder, data), center, args.draws, seed):
            raw.append({"cohort": cohort, "seed": seed, "center": center, **row})
        pd.DataFrame(raw).to_csv(args.out / "noised_breslow_raw.csv", index=False)
    df = pd.DataFrame(raw)
    lines = ["# Noised Breslow sums: grid points, clipping bound and centre", "",
             "Made by `python -m rmmfed.simulations.evidence.noised_breslow` (module docstring). "
             + (f"Skipped (not found): {', '.join(sorted(set(skipped)))}. " if skipped else ""), "", *table(df)]
    (args.out / "noised_breslow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
