"""What a patient's risk distribution is worth, measured at one site on its test split: the sums an
evaluation sends for the conformal intervals, the value of information and the risk-coverage curve.

Every count goes out floored (:func:`floored`): a group of 1..k-1 rows or patients, or one that leaves
1..k-1 outside it, is sent as 0, and the nested kept groups of the risk-coverage curve also differ
from one threshold to the next by 0 or >= k patients, so no difference of two sent groups singles a
patient out. The rows of the masked complete cases (every masking pattern of each complete case) are
counted as if each were a patient, which is stricter than the floor asks.

* Conformal (core/routing/conformal.py): rows inside each tier's interval risk-mean +- q-hat x risk-SD, and
  the sum of the widths.
* Value of information: the risk groups (tertiles of the training system risk) of each masked row's
  risk and of the same patient's risk with everything seen; a *change* is a row whose group differs.
  The site ranks its rows by the expected |change in risk| once the hidden exams are done (the mean over
  Tier 1's draws, core/routing/two_tier.recovery_errors ``change``) and counts the changes among its top
  :data:`~rmmfed.core.messages.metric_names.VOI_TOP_SHARE`, and again among its top rows by the probability
  that the group changes (the share of draws in another group: it knows where the cut points are).
  The capture ratio (server) is the share of all changes caught in the top rows over the share of rows
  there (what a random choice catches on average).
* Risk-coverage: Tier 1's comparable-pair counts on the test patients whose routing score is at most
  each threshold (the patients Tier 1 keeps when everything above is referred).
"""

from __future__ import annotations

import math

import numpy as np

from ..messages import metric_names as M
from ..survival.concordance import concordance_counts
from .conformal import coverage_sums


def floored(counts: list[int], total: int, k: int) -> list[int]:
    """Counts of groups of ``total`` patients, each group and its complement 0 or >= k; else all sent as 0
    (a group of 1..k-1 patients, or one that leaves 1..k-1 outside it, would single patients out)."""
    ok = all(c == 0 or c >= k for c in counts) and all(total - c == 0 or total - c >= k for c in counts)
    return list(counts) if ok else [0] * len(counts)


def conformal_sums(rec: dict[str, np.ndarray], q_hat: tuple[float, float], k: int) -> dict[str, float]:
    """Covered rows and width sums of each tier's interval on the masked rows ``rec`` (zeros when the
    tier has no q-hat or no draws, or when the covered count would fall below the floor)."""
    out = {M.conformal(t, p): 0.0 for t in M.CONFORMAL_TIERS for p in ("covered", "width-sum")}
    m = len(rec.get("risk_seen", ()))
    for tier, q, centre, sd in (("tier1", q_hat[0], "risk_mean", "risk_sd"), ("tier2", q_hat[1], "risk2_mean", "risk2_sd")):
        if not (math.isfinite(q) and m and len(rec.get(sd, ())) == m):
            continue
        covered, width = coverage_sums(rec["risk_seen"], rec[centre], rec[sd], q)
        if floored([covered], m, k)[0] == covered:
            out[M.conformal(tier, "covered")], out[M.conformal(tier, "width-sum")] = float(covered), width
    return out


def risk_group(z: np.ndarray, cutpoints: tuple[float, ...]) -> np.ndarray:
    """Group index (0 = lowest) of each system-scale risk ``z`` given increasing ``cutpoints``."""
    return np.searchsorted(np.asarray(cutpoints, np.float64), np.asarray(z, np.float64), side="right")


def voi_sums(rec: dict[str, np.ndarray], cutpoints: tuple[float, ...], mean: float, sd: float, k: int
             ) -> dict[str, float]:
    """Risk-group changes on the masked rows, and among the site's top rows by expected change."""
    out = {M.VOI_CHANGES: 0.0, M.VOI_TOP_N: 0.0, M.VOI_TOP_CHANGES: 0.0, M.VOI_TOP_CHANGES_P: 0.0}
    m = len(rec.get("change", ()))
    cuts = tuple(c for c in cutpoints if math.isfinite(c))
    if m == 0 or not cuts or len(cuts) != len(cutpoints):
        return out
    z_seen, z_hid = ((np.asarray(rec[key]) - mean) / sd for key in ("risk_seen", "risk1"))
    changed = risk_group(z_seen, cuts) != risk_group(z_hid, cuts)
    n_top = int(math.ceil(M.VOI_TOP_SHARE * m))
    top = np.argsort(-np.asarray(rec["change"]), kind="stable")[:n_top]
    draws = np.asarray(rec.get("draws", np.zeros((0, 0))))
    top_p = None
    if draws.shape[0] == m and draws.shape[1] > 0:  # P(group changes) over the draws, ties broken by expected change
        flips = (risk_group((draws - mean) / sd, cuts) != risk_group(z_hid, cuts)[:, None]).mean(axis=1)
        top_p = np.lexsort((-np.asarray(rec["change"]), -flips))[:n_top]
    changes, top_changes = int(changed.sum()), int(changed[top].sum())
    top_changes_p = int(changed[top_p].sum()) if top_p is not None else 0
    ok_all = floored([changes, n_top], m, k) == [changes, n_top]
    if ok_all and all(c == 0 or c >= k for c in (top_changes, top_changes_p)):
        out.update({M.VOI_CHANGES: float(changes), M.VOI_TOP_N: float(n_top), M.VOI_TOP_CHANGES: float(top_changes),
                    M.VOI_TOP_CHANGES_P: float(top_changes_p) if top_p is not None else float("nan")})
    return out


def kept_sums(time: np.ndarray, event: np.ndarray, risk: np.ndarray, score: np.ndarray,
              thresholds: tuple[float, ...], k: int) -> dict[str, float]:
    """Tier 1's pair counts on the patients with score <= each threshold (thresholds taken in increasing
    order, at most :data:`~rmmfed.core.messages.metric_names.KEPT_LEVELS`); a level whose kept group, its
    complement or its difference from the last level sent is 1..k-1 patients is sent as zeros."""
    out: dict[str, float] = {}
    n = len(score)
    last = 0
    order = sorted((float(t), j) for j, t in enumerate(thresholds[: M.KEPT_LEVELS]) if not math.isnan(t))
    sent: dict[int, dict[str, float]] = {}
    for t, j in order:
        kept = np.asarray(score) <= t
        c = int(kept.sum())
        if floored([c], n, k)[0] != c or not (c - last == 0 or c - last >= k):
            continue
        last = c
        pairs = concordance_counts(time[kept], risk[kept], event[kept])
        sent[j] = {**dict(zip(M.kept(j).all, (pairs.c_index(), pairs.concordant, pairs.tied_risk, pairs.comparable))),
                   M.kept_n(j): float(c)}
    for j in range(M.KEPT_LEVELS):
        out.update(sent.get(j, {**dict(zip(M.kept(j).all, (float("nan"), 0.0, 0.0, 0.0))), M.kept_n(j): 0.0}))
    return out


# ---- the coordinator: metrics.json sections from the sites' sums ----------------------------------
def _rate(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def conformal_document(per_site: dict[str, dict[str, float]], q_hat: dict[str, dict], alpha: float) -> dict:
    """metrics.json ``conformal``: each tier's coverage and mean width on the masked complete test rows,
    combined (sums over sites) and per site (a site whose covered count was floored to 0 shows NaN)."""
    doc: dict = {"alpha": alpha, "nominal_coverage": 1.0 - alpha, "calibration": q_hat,
                 "population": "masked complete test cases: every complete test case under every masking pattern",
                 "interval": "risk mean +- q_hat x risk SD over the tier's draws of the hidden features"}
    for tier in M.CONFORMAL_TIERS:
        if not np.isfinite((q_hat.get(tier) or {}).get("q_hat", float("nan"))):
            continue
        cov_key, width_key = M.conformal(tier, "covered"), M.conformal(tier, "width-sum")
        rows = {s: m for s, m in per_site.items() if m.get(width_key, 0.0) > 0 and m.get(M.MASKED_N, 0.0) > 0}
        n = sum(m[M.MASKED_N] for m in rows.values())
        doc[tier] = {
            "coverage": _rate(sum(m[cov_key] for m in rows.values()), n),
            "width": _rate(sum(m[width_key] for m in rows.values()), n), "n_rows": int(n),
            "per_site": {s: {"coverage": _rate(m.get(cov_key, 0.0), m[M.MASKED_N]) if s in rows else float("nan"),
                             "width": _rate(m.get(width_key, 0.0), m[M.MASKED_N]) if s in rows else float("nan"),
                             "n_rows": int(m.get(M.MASKED_N, 0))} for s, m in per_site.items()}}
    return doc


def voi_document(per_site: dict[str, dict[str, float]]) -> dict:
    """metrics.json ``value_of_information``: the capture ratio (module docstring), combined and per site."""
    def ratio(ms: list[dict[str, float]], key: str = M.VOI_TOP_CHANGES) -> float:
        changes, top_changes = sum(m[M.VOI_CHANGES] for m in ms), sum(m.get(key, float("nan")) for m in ms)
        top, n = sum(m[M.VOI_TOP_N] for m in ms), sum(m[M.MASKED_N] for m in ms)
        return _rate(_rate(top_changes, changes), _rate(top, n))
    sent = {s: m for s, m in per_site.items() if m.get(M.VOI_TOP_N, 0.0) > 0}
    return {"capture_ratio": ratio(list(sent.values())) if sent else float("nan"),
            "capture_ratio_by_p_group_change": ratio(list(sent.values()), M.VOI_TOP_CHANGES_P) if sent else float("nan"),
            "changes": int(sum(m[M.VOI_CHANGES] for m in sent.values())),
            "top_share": M.VOI_TOP_SHARE, "n_rows": int(sum(m[M.MASKED_N] for m in sent.values())),
            "per_site": {s: {"capture_ratio": ratio([m]) if s in sent else float("nan"),
                             "changes": int(m.get(M.VOI_CHANGES, 0))} for s, m in per_site.items()},
            "definition": f"share of all risk-group changes (masked row vs the same patient seen) caught in the top "
                          f"{M.VOI_TOP_SHARE:.0%} of rows by expected |change in risk|, over the share of rows there"}


def coverage_curve_document(per_site: dict[str, dict[str, float]], thresholds: tuple[float, ...],
                            levels: tuple[float, ...]) -> dict:
    """metrics.json ``risk_coverage``: per threshold, the share of test patients referred (score above it)
    and Tier 1's C-index on those kept, from pair counts summed over the sites that sent every level
    (so the points compare the same patients), or, when none did, over the sites that sent each level."""
    from ..survival.concordance import ConcordanceCounts, combined_c_index

    points = []
    n_all = sum(m.get(M.N_TEST, 0.0) for m in per_site.values())
    levels_sent = range(len(thresholds))
    every = [s for s, m in per_site.items() if all(m.get(M.kept_n(j), 0.0) > 0 for j in levels_sent)]
    for j, (t, q) in enumerate(zip(thresholds, levels)):  # one set of sites for every level when some sent all
        sent = [per_site[s] for s in every] if every else [m for m in per_site.values() if m.get(M.kept_n(j), 0.0) > 0]
        n = sum(m[M.N_TEST] for m in sent)
        kept = sum(m[M.kept_n(j)] for m in sent)
        c = combined_c_index(ConcordanceCounts(*(m[k] for k in M.kept(j).counts)) for m in sent) if sent else float("nan")
        points.append({"threshold": t, "calibration_quantile": q, "referral_rate": 1.0 - _rate(kept, n),
                       "tier1_c_index_kept": c, "n_test": int(n), "n_test_all_sites": int(n_all)})
    return {"points": points, "score": "the run's routing score", "population": "test patients as they are",
            "sites": every or "per level: the sites that sent it (no site sent every level above its floor)"}
