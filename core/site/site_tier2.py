"""A site's part of Tier 2, with Tier 1 frozen: its local training round (DP-SGD when the run has DP),
its calibration values and risk sums, and the validation sums the Tier 2 gate compares with Tier 1
(core/tier2/tier2_gate.py). Part of :class:`~rmmfed.core.site.site_session.SiteSession`.
"""

from __future__ import annotations

import numpy as np

from ..messages import metric_names as M
from ..survival.concordance import ConcordanceCounts, concordance_counts
from ..aggregates.histogram import HistogramGrid
from ..privacy.noised_release import ReleaseNoise, noised_sums, one_value_per_patient
from ..privacy.request_checks import require_patients
from ..privacy.request_policy import digest
from .site_seed import site_seed
from ..tier2.tier2_gate import GATE_BOUND, VALIDATION_KEYS
from ..tier2.tier2_train import predict_tier2, train_tier2
from ..model.train import predict_risk
from ..routing.two_tier import recovery_errors
from ..routing.uncertainty import complete_case_indices
from ..model.weights import get_weights


class SiteTier2:
    """A site's Tier 2 (a mixin of SiteSession: it reads its config, splits and frozen Tier 1)."""

    def train_tier2(self, weights: dict[str, np.ndarray], server_round: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        assert self.cfg is not None
        tier2 = self.tier2_model(weights)
        if self.cfg.dp.enabled:
            from .site_dp import train_tier2_round_dp

            return train_tier2_round_dp(self, tier2, server_round)
        losses = train_tier2(tier2, self._tier1(), self._split("train"), self.cfg.tier2,
                             epochs=self.cfg.tier2.local_epochs, lr=self.cfg.tier2.lr, batch_size=self.cfg.batch_size,
                             seed=site_seed(self.cfg.seed, self.data.site, 10_000 + server_round),
                             weight_decay=self.cfg.weight_decay, mc_samples=self.cfg.model.mc_samples)
        return get_weights(tier2), {M.NUM_EXAMPLES: float(len(self.data.indices("train"))),
                                    **{f"{M.TIER2_PREFIX}{k}": v for k, v in losses.items()}}

    def tier2_calibration(self, weights: dict[str, np.ndarray], grid: HistogramGrid) -> tuple[np.ndarray, dict[str, float]]:
        """Histogram of Tier 2 uncertainty on held-out complete cases (masked), plus the sums that put
        both heads' risks on one scale (n, sum and sum of squares of each head's training risk)."""
        values, sums = self._tier2_values(weights)
        return grid.counts(values), sums

    def _tier2_scores(self, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Tier 2 uncertainty on the masked val cases, Tier 1's and Tier 2's training risks) of ``weights``:
        seeded, so the same for the same weights; kept for the last weights asked (the coarse grid and its
        zoom ask twice), never sent."""
        assert self.cfg is not None
        key = digest(weights, self._frozen_weights())
        kept = self.__dict__.get("_tier2_scores_kept")
        if kept is not None and kept[0] == key:
            return kept[1]
        tier1, tier2 = self._tier1(), self.tier2_model(weights)
        values = recovery_errors(tier1, tier2, self._split("val"), self.cfg, seed=self.cfg.seed)["unc2"]
        train = self._split("train")
        r1 = predict_risk(tier1, train)
        if self.cfg.tier2.uses_branches:
            r2 = predict_tier2(tier2, tier1, train, self.cfg.tier2, seed=self.cfg.seed,
                               mc_samples=self.cfg.model.mc_samples).risk
        else:  # Tier 2 is scored through Tier 1's head: one head, one scale
            r2 = r1
        self.__dict__["_tier2_scores_kept"] = (key, (values, r1, r2))
        return values, r1, r2

    def _tier2_values(self, weights: dict[str, np.ndarray], noise: ReleaseNoise | None = None
                      ) -> tuple[np.ndarray, dict[str, float]]:
        values, r1, r2 = self._tier2_scores(weights)
        if noise is not None:  # clipped and noised, on the half of the release's epsilon tier2_release gives it
            one_head = not self.cfg.tier2.uses_branches  # r2 is r1: one noisy draw, so the scale stays the identity
            n, sums = noised_sums([r1] if one_head else [r1, r2], noise.epsilon, noise.rng())
            (s1, q1), (s2, q2) = (sums[0], sums[0]) if one_head else sums
            return values, dict(zip(M.RISK_SUMS, (max(n, 1.0), s1, max(q1, 0.0), s2, max(q2, 0.0))))
        sums = {M.N_VALUES: float(len(values)), **dict(zip(M.RISK_SUMS, map(float, (
            len(r1), r1.sum(), (r1**2).sum(), r2.sum(), (r2**2).sum()))))}
        return values, sums

    def tier2_validation(self, weights: dict[str, np.ndarray], k: int = 1) -> dict[str, float]:
        """Sums that compare this Tier 2 with the frozen Tier 1 on the val complete cases under every
        masking pattern (core/tier2/tier2_gate.py): rows, both tiers' recovery SSE, and both tiers' pair
        counts (pairs within one pattern). Below the floor ``k`` of complete cases: all zero."""
        assert self.cfg is not None
        val = self._split("val")
        rec = recovery_errors(self._tier1(), self.tier2_model(weights), val, self.cfg, seed=self.cfg.seed + 2,
                              point_only=True)
        n_cases = len(np.unique(rec["patient"])) if len(rec["patient"]) else 0
        out = {key: 0.0 for key in VALIDATION_KEYS}
        out[M.TIER2_VAL_CASES] = float(n_cases if n_cases >= k else 0)
        if n_cases < k or len(rec["err2"]) == 0:
            return out
        idx = complete_case_indices(val)
        t, e = val.time.cpu().numpy()[idx], val.event.cpu().numpy()[idx]
        out.update({M.TIER2_VAL_N: float(len(rec["err1"])), M.TIER2_VAL_SSE_TIER1: float(rec["err1"].sum()),
                    M.TIER2_VAL_SSE_TIER2: float(rec["err2"].sum())})
        for tier in ("tier1", "tier2"):
            total = ConcordanceCounts()
            for p in np.unique(rec["pattern"]):
                rows = rec["pattern"] == p
                c = concordance_counts(t[rec["patient"][rows]], rec["risk" + tier[-1]][rows], e[rec["patient"][rows]])
                total = ConcordanceCounts(total.concordant + c.concordant, total.tied_risk + c.tied_risk,
                                          total.comparable + c.comparable)
            out.update(dict(zip(M.TIER2_VAL_PAIRS[tier].counts, (total.concordant, total.tied_risk, total.comparable))))
        return out

    def gate_release(self, weights: dict[str, np.ndarray], k: int, noise: ReleaseNoise | None) -> dict[str, float]:
        """The gate's one release (core/tier2/tier2_gate.NoisedGateSums): over the val complete cases, one
        masking pattern per patient (a data-independent draw), Tier 1's recovery error minus Tier 2's and Tier
        1's |risk - risk seen| minus Tier 2's, clipped to +-GATE_BOUND; their count, sums and sums of squares,
        Laplace-noised under ``noise`` (exact with ``None``: the policy's exact releases, floored at k)."""
        assert self.cfg is not None
        rec = recovery_errors(self._tier1(), self.tier2_model(weights), self._split("val"), self.cfg,
                              seed=self.cfg.seed + 2, point_only=True)
        pick = self.cfg.seed + 3
        a = one_value_per_patient(np.clip(rec["err1"] - rec["err2"], -GATE_BOUND, GATE_BOUND), rec["patient"], pick)
        gap = np.abs(rec["risk1"] - rec["risk_seen"]) - np.abs(rec["risk2"] - rec["risk_seen"])
        b = one_value_per_patient(np.clip(gap, -GATE_BOUND, GATE_BOUND), rec["patient"], pick)
        require_patients(len(a), k, "the Tier 2 gate's sums (masked complete val cases)")
        if noise is None:
            n, pairs = float(len(a)), [(float(v.sum()), float((v ** 2).sum())) for v in (a, b)]
        else:
            n, pairs = noised_sums([a, b], noise.epsilon, noise.rng(), bound=GATE_BOUND)
        (sa, qa), (sb, qb) = pairs
        out = dict(zip(M.GATE_SUMS, (n, sa, qa, sb, qb)))
        return {**out, M.NOISED: noise.epsilon} if noise is not None else out
