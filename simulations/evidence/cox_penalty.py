"""How the Cox core's ridge penalty is chosen: the rule a run uses against the others a statistician
would try, on every cohort, by the test C-index each choice gives (simulation only).

    python -m rmmfed.simulations.evidence.cox_penalty --seeds 0 --out runs/cox-penalty \\
        [--cohorts default tcga-gbmlgg tcga-blca tcga-luad tcga-stad tcga-kirp] [--data-root ../shared/data]

The Cox core is fitted here on every site's design in one place (``simulations.pooled``'s twin of the
federated fit, equal to it and to lifelines' stratified ``CoxPHFitter``: tests/test_cox_core.py), once
per penalizer of ``model.cox-penalizers``. Each rule picks one penalizer from what a federation could
compute; the table gives the pooled test C-index of that pick:

* ``validation partial likelihood`` (the run's rule): the sites' validation log partial likelihood,
  summed (core/survival/cox_core.py);
* ``recalibrated validation partial likelihood``: the same after the best scalar slope on the
  validation risks (max over gamma of the likelihood of gamma x risk): it judges the ranking, not the
  risk's scale, so a weak penalty's overconfident scale is not held against it;
* ``5-fold cross-validated partial likelihood`` on the training split (Verweij and van Houwelingen,
  folds drawn within each site): uses every training patient, not the small validation split;
* ``validation C-index``;
* ``fixed 0.1`` (the pooled Cox baseline's penalizer, no selection).

Beside them, per penalizer: lifelines' pooled Cox without strata (the baseline of issue 24) and the
stratified one, on the same design. The TCGA test splits hold 52-114 patients: differences under about
0.03 (0.08 on tcga-kirp) are within noise, and choosing a rule by these figures would tune on the test
splits; they say whether any rule is worth a change, not which. Writes OUT/cox_penalty.md and .csv.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .common import each_cohort, evidence_parser, load_cohort, mean_sd, write_results
from .cox_core import COHORTS
from .features import Featurizer, pool_sites
from .methods import cox_risk, fit_cox
from ...core.aggregates.feature_stats import FeatureStats, add_sums, local_feature_sums
from ...core.config import RunConfig
from ...core.data.tensors import build_tensors
from ...core.model.tier1 import build_model
from ...core.site.site_cox import cox_design
from ...core.site.site_seed import site_seed
from ...core.survival.concordance import c_index
from ...core.survival.cox_core import CoxMoments, fit_cox_core
from ...core.survival.cox_newton import CoxFitError, add_cox_sums, stratum_sums

RULES = ("validation partial likelihood (the run's rule)", "recalibrated validation partial likelihood",
         "5-fold cross-validated partial likelihood", "validation C-index", "fixed 0.1 (no selection)")
SLOPES = np.linspace(0.0, 3.0, 61)
FOLDS = 5


class Strata:
    """Per site: design, times and events of one split."""

    def __init__(self, x: list[np.ndarray], t: list[np.ndarray], e: list[np.ndarray]) -> None:
        self.x, self.t, self.e = x, t, e

    def sums(self, coef: np.ndarray):
        return add_cox_sums([stratum_sums(x, t, e, coef) for x, t, e in zip(self.x, self.t, self.e) if len(x)])

    def moments(self) -> CoxMoments:
        return CoxMoments(sum(len(x) for x in self.x), sum(x.sum(0) for x in self.x),
                          sum((x ** 2).sum(0) for x in self.x))

    def loglik(self, coef: np.ndarray) -> tuple[float, int]:
        """(log partial likelihood, events): what a run's validation query sums."""
        s = self.sums(coef)
        return s.loglik, s.events

    def fit(self, val: "Strata", penalizer: float) -> np.ndarray:
        return fit_cox_core(self.sums, val.loglik, self.moments(), (penalizer,)).coef

    def c_index(self, coef: np.ndarray) -> float:
        return c_index(np.concatenate(self.t), np.concatenate([x @ coef for x in self.x]), np.concatenate(self.e))

    def subset(self, masks: list[np.ndarray]) -> "Strata":
        return Strata([x[m] for x, m in zip(self.x, masks)], [t[m] for t, m in zip(self.t, masks)],
                      [e[m] for e, m in zip(self.e, masks)])


def designs(cohort: Path, seed: int) -> tuple[dict[str, Strata], list]:
    """The Cox core's design per split and site, built as a run builds it (federated statistics, Tier 1's
    linear input), and the sites."""
    _, sites, dims = load_cohort(cohort)
    cfg = RunConfig().with_overrides({"seed": seed})
    mc = cfg.model
    sums = add_sums([local_feature_sums(s, s.indices("train"), 1, reduce_above=mc.reduce_above,
                                        reduce_dim=mc.reduce_dim) for s in sites])
    stats = FeatureStats.from_sums(sums, dims, mc.anat_partitions, mc.reduce_dim)
    tensors = [build_tensors(s, stats, seed=site_seed(cfg.seed, s.site)) for s in sites]
    cfg = cfg.resolve_widths(sum(len(s.indices("train")) for s in sites))
    model = build_model(stats.model_dims(dims), cfg.model, cfg.seed)
    out = {}
    for split in ("train", "val", "test"):
        parts = [t.subset(s.indices(split)) for t, s in zip(tensors, sites)]
        out[split] = Strata([cox_design(model, p) for p in parts], [p.time.numpy().astype(float) for p in parts],
                            [p.event.numpy().astype(float) for p in parts])
    return out, sites


def cv_pll(train: Strata, val: Strata, penalizer: float, seed: int) -> float:
    """Cross-validated partial likelihood: sum over folds of logL(all) - logL(without the fold), each at the
    fit without the fold, per training event."""
    rng = np.random.default_rng(seed)
    folds = [rng.integers(0, FOLDS, len(x)) for x in train.x]
    total = 0.0
    for k in range(FOLDS):
        rest = train.subset([f != k for f in folds])
        coef = rest.fit(val, penalizer)
        total += train.sums(coef).loglik - rest.sums(coef).loglik
    return total / max(float(sum(e.sum() for e in train.e)), 1.0)


def lifelines_c(sites) -> Callable[[bool, float], float]:
    """lifelines' pooled Cox on the baselines' design (evidence.methods: mean-pooled features, wide modalities
    reduced, indicators), built once: (strata by site?, penalizer) -> pooled test C-index (nan when lifelines
    cannot fit)."""
    data = pool_sites(sites)
    tr, te = data.rows("train"), data.rows("test")
    feat = Featurizer().fit(data, tr)
    x, xt = feat.design(data, tr, indicators=True), feat.design(data, te, indicators=True)

    def score(strata: bool, penalizer: float) -> float:
        try:
            cph, keep = fit_cox(x, data.time[tr], data.event[tr], penalizer, data.site[tr] if strata else None)
        except Exception:  # lifelines' own convergence errors: no figure at this penalizer  # noqa: BLE001
            return float("nan")
        return c_index(data.time[te], cox_risk(cph, keep, xt, data.site[te] if strata else None), data.event[te])

    return score


def study(cohort: Path, name: str, seed: int) -> tuple[list[dict], list[dict]]:
    split, sites = designs(cohort, seed)
    lifelines = lifelines_c(sites)
    val_events = max(float(sum(e.sum() for e in split["val"].e)), 1.0)
    path = []
    for pen in RunConfig().model.penalizers():
        try:
            coef = split["train"].fit(split["val"], pen)
        except CoxFitError:
            continue
        path.append({"cohort": name, "seed": seed, "penalizer": pen,
                     "val_pll": split["val"].sums(coef).loglik / val_events,
                     "val_pll_recalibrated": max(split["val"].sums(g * coef).loglik for g in SLOPES) / val_events,
                     "cv_pll": cv_pll(split["train"], split["val"], pen, seed),
                     "val_c": split["val"].c_index(coef), "test_c": split["test"].c_index(coef),
                     "lifelines_pooled_test_c": lifelines(False, pen),
                     "lifelines_stratified_test_c": lifelines(True, pen)})
    p = pd.DataFrame(path)
    picks = {RULES[0]: p.loc[p.val_pll.idxmax()], RULES[1]: p.loc[p.val_pll_recalibrated.idxmax()],
             RULES[2]: p.loc[p.cv_pll.idxmax()], RULES[3]: p.loc[p.val_c.idxmax()],
             RULES[4]: p.loc[(p.penalizer - 0.1).abs().idxmin()]}
    rows = [{"cohort": name, "seed": seed, "rule": r, "penalizer": float(row.penalizer), "test_c": float(row.test_c)}
            for r, row in picks.items()]
    rows.append({"cohort": name, "seed": seed, "rule": "pooled Cox, no strata (lifelines, penalizer 0.1)",
                 "penalizer": 0.1, "test_c": float(picks[RULES[4]].lifelines_pooled_test_c)})
    return rows, path


def main(argv: list[str] | None = None) -> int:
    p = evidence_parser(__doc__, "runs/cox-penalty", COHORTS, seeds=(0,))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, paths, skipped = [], [], []
    for cohort, seed, data in each_cohort(args, "cox penalty", skipped):
        r, path = study(data, cohort, seed)
        rows += r
        paths += path
    df = pd.DataFrame(rows)
    cohorts = [c for c in args.cohorts if c in set(df["cohort"])]
    table = []
    for rule, sub in df.groupby("rule", sort=False):
        row = {"rule": rule}
        for c in cohorts:
            s = sub[sub.cohort == c]
            row[c] = f"{mean_sd(s.test_c)} ({', '.join(f'{v:g}' for v in s.penalizer)})"
        row["mean over cohorts"] = f"{np.mean([sub[sub.cohort == c].test_c.mean() for c in cohorts]):.3f}"
        table.append(row)
    notes = ("Pooled test C-index of the Cox core at the penalizer each rule picks (in brackets), mean +- sd over "
             f"seeds ({', '.join(map(str, args.seeds))}); the last row is lifelines' unstratified pooled Cox on the "
             "same design. Per penalizer, every criterion: OUT/cox_penalty_path.csv. Test splits are small: "
             "differences under about 0.03 (0.08 on tcga-kirp) are within noise.")
    if skipped:
        notes += f" Skipped (no folder under {args.data_root}): {', '.join(sorted(set(skipped)))}."
    text = write_results(args.out, "cox_penalty", table, "Choosing the Cox core's penalty (issue 24)", notes,
                         raw=df.to_dict("records"))
    pd.DataFrame(paths).to_csv(args.out / "cox_penalty_path.csv", index=False)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
