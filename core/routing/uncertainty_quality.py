"""How well Tier 1's sigma^2 knows when Tier 1 is wrong: measured at each site, combined without pooling.

Population: the masked complete test cases of :func:`~rmmfed.core.routing.two_tier.recovery_errors`, i.e.
every complete test case under every masking pattern, one row per (patient, pattern). Two targets:

- ``error``: Tier 1's recovery error (MSE of the hidden modalities' estimate against the real features);
- ``risk``: |Tier 1 risk with the modalities hidden - Tier 1 risk with them seen|, what the hidden
  modalities would have changed in the prediction.

At a site (:func:`site_quality`): Spearman's rho of sigma^2 with each target over the rows, with a
percentile bootstrap interval that resamples PATIENTS with all their rows (the rows of one patient
share the patient's features and are correlated, so resampling rows would understate the spread),
seeded. A site sends only scalars: rho, the interval, the number of patients and of rows.

Across sites (:func:`combine_sites`): a fixed-effect meta-analysis on Fisher's z = atanh(rho), each
site weighted by n_patients - 3 (the patient, not the row, is the independent unit: counting the
correlated rows of one patient as independent would overstate the weight), with the variance
1.06 / (n - 3) of z for a Spearman correlation (Fieller, Hartley & Pearson 1957). This is a
meta-analytic combination of per-site correlations, NOT the Spearman of the pooled rows, which no
one can compute without moving patient rows out of the sites.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, spearmanr

from ..messages import metric_names as M

RESAMPLES = 200
LEVEL = 0.95
FIELLER_VARIANCE = 1.06  # var(atanh(Spearman rho)) ~ 1.06 / (n - 3)
TARGETS = M.UNCERTAINTY_TARGETS  # site metric key stem; metrics.json name below
JSON_NAMES = {"error": "spearman_error", "risk": "spearman_risk_error", "risk-sd": "spearman_risk_sd_change"}
PAIRS = {"error": ("sigma2", "err1"), "risk": ("sigma2", "risk_gap"), "risk-sd": ("risk_sd", "risk_gap")}


@dataclass(frozen=True)
class SiteSpearman:
    rho: float
    ci_low: float
    ci_high: float
    n_patients: int
    n_rows: int


@dataclass(frozen=True)
class CombinedSpearman:
    rho: float
    ci_low: float
    ci_high: float
    n_patients: int
    n_sites: int

    def to_dict(self) -> dict[str, float | int]:
        return {"rho": self.rho, "ci_low": self.ci_low, "ci_high": self.ci_high, "n_patients": self.n_patients,
                "n_sites": self.n_sites}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; NaN with fewer than 3 values or a constant input."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def patient_bootstrap_spearman(x: np.ndarray, y: np.ndarray, patient: np.ndarray, *, seed: int,
                               resamples: int = RESAMPLES, level: float = LEVEL) -> SiteSpearman:
    """rho of (x, y) over the rows and its percentile bootstrap interval over patients: each resample
    draws as many patients as there are, with replacement, and takes every row of each draw.

    rho is NaN with fewer than 3 rows or a constant input; the interval is NaN then, with fewer than
    3 patients, or when fewer than half of the resamples give a defined rho."""
    x, y, patient = np.asarray(x, float), np.asarray(y, float), np.asarray(patient)
    ids, inverse = np.unique(patient, return_inverse=True)
    n, nan = len(ids), float("nan")
    rho = spearman(x, y)
    if n < 3 or not math.isfinite(rho):
        return SiteSpearman(rho, nan, nan, n, len(x))
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(n + 1))
    rows_of = [order[starts[i]:starts[i + 1]] for i in range(n)]
    rng = np.random.default_rng(seed)
    draws = [spearman(x[rows], y[rows]) for rows in
             (np.concatenate([rows_of[i] for i in rng.integers(0, n, n)]) for _ in range(resamples))]
    finite = np.array([d for d in draws if math.isfinite(d)])
    if len(finite) < resamples / 2:
        return SiteSpearman(rho, nan, nan, n, len(x))
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return SiteSpearman(rho, float(low), float(high), n, len(x))


def site_quality(rec: Mapping[str, np.ndarray], *, seed: int, resamples: int = RESAMPLES) -> dict[str, float]:
    """The scalars a site sends from its :func:`~rmmfed.core.routing.two_tier.recovery_errors` rows (already
    emptied by the caller when the site's floor forbids them: then everything is NaN, counts 0)."""
    out: dict[str, float] = {}
    n_patients, n_rows = 0, 0
    for target in M.UNCERTAINTY_TARGETS:
        x, y = PAIRS[target]
        s = patient_bootstrap_spearman(rec[x], rec[y], rec["patient"], seed=seed, resamples=resamples)
        out.update(dict(zip((M.uncertainty(target, k) for k in M.UNCERTAINTY_STATS), (s.rho, s.ci_low, s.ci_high))))
        n_patients, n_rows = s.n_patients, s.n_rows
    out.update({M.UNCERTAINTY_N_PATIENTS: float(n_patients), M.UNCERTAINTY_N_ROWS: float(n_rows)})
    return {k: float(v) for k, v in out.items()}


def combine_sites(rhos: Iterable[tuple[float, int]], *, level: float = LEVEL) -> CombinedSpearman:
    """Fixed-effect Fisher-z combination of per-site (rho, n_patients), weights n_patients - 3.

    Sites with an undefined rho or 3 patients or fewer are left out (they carry no weight)."""
    used = [(min(max(r, -1 + 1e-12), 1 - 1e-12), int(n)) for r, n in rhos
            if r is not None and math.isfinite(r) and int(n) > 3]
    nan = float("nan")
    if not used:
        return CombinedSpearman(nan, nan, nan, 0, 0)
    w = np.array([n - 3 for _, n in used], float)
    z = np.arctanh([r for r, _ in used])
    mean = float((w * z).sum() / w.sum())
    half = float(norm.ppf((1 + level) / 2)) * math.sqrt(FIELLER_VARIANCE / w.sum())
    return CombinedSpearman(math.tanh(mean), math.tanh(mean - half), math.tanh(mean + half),
                            sum(n for _, n in used), len(used))


def quality_document(per_site: Mapping[str, Mapping[str, float]], definition: str) -> dict:
    """metrics.json's ``uncertainty`` section from the sites' scalar evaluation metrics."""
    sites = {s: m for s, m in per_site.items() if M.UNCERTAINTY_N_PATIENTS in m}
    doc: dict = {"definition": definition}
    nan = float("nan")  # a target a site did not send
    for target in TARGETS:
        doc[JSON_NAMES[target]] = combine_sites(
            (m.get(M.uncertainty(target, "spearman"), nan), int(m[M.UNCERTAINTY_N_PATIENTS]))
            for m in sites.values()).to_dict()
    doc["per_site"] = {s: {**{JSON_NAMES[t]: dict(zip(("rho", "ci_low", "ci_high"),
                                                      (m.get(M.uncertainty(t, k), nan) for k in M.UNCERTAINTY_STATS)))
                              for t in TARGETS},
                           "n_patients": int(m[M.UNCERTAINTY_N_PATIENTS]), "n_rows": int(m[M.UNCERTAINTY_N_ROWS])}
                       for s, m in sites.items()}
    doc["population"] = "masked complete test cases: every complete test case under every masking pattern"
    doc["method"] = (f"per site: Spearman over (patient, pattern) rows, {LEVEL:.0%} percentile bootstrap over "
                     f"patients ({RESAMPLES} resamples); combined: fixed-effect Fisher-z meta-analysis weighted by "
                     "n_patients - 3 (not the Spearman of pooled rows)")
    return doc
