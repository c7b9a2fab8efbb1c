"""What a site releases after training, each respecting its floor: histograms merged until every bin
holds >= k patients or noised under the policy's release epsilon (core/aggregates/merged_histogram.py,
core/privacy/noised_release.py), Breslow sums merged or noised (core/survival/merged_hazard.py), and the patient label
of each calibration value. Part of :class:`~rmmfed.core.site.site_session.SiteSession`.
"""

from __future__ import annotations

import numpy as np

from ..messages import metric_names as M
from ..routing.conformal import sd_sums, site_scores as conformal_site_scores
from ..routing.fitted_two_tier import FittedTwoTier
from ..aggregates.histogram import HistogramGrid
from ..survival.merged_hazard import MergedHazard, merge_intervals
from ..aggregates.merged_histogram import MergedBins, merge_bins
from ..privacy.noised_release import HAZARD_RISK_BOUND, ReleaseNoise, noised_hazard, noised_histogram
from ..privacy.private_histogram import privatize_counts
from ..survival.risk_groups import RISK_GRID
from ..routing.routing_score import calibration_scores
from ..privacy.site_policy import PolicyViolation
from ..privacy.request_checks import require_patients
from ..model.train import predict_risk
from ..routing.two_tier import predict_two_tier
from ..routing.uncertainty import masking_patterns


class SiteReleases:
    """The releases of a site (a mixin of SiteSession: it reads its config, splits and frozen Tier 1)."""

    def merged_release(self, grid: HistogramGrid, values: np.ndarray, patients: np.ndarray, k: int,
                       what: str, noise: ReleaseNoise | None = None) -> MergedBins:
        """With ``noise`` (the site policy's dp.release-epsilon): epsilon-DP counts of one value per patient on
        every bin (core/privacy/noised_release.py). Without: bins merged until each non-empty one holds values of
        >= k patients (exact; with the run's dp.histogram-epsilon > 0, noise on the merged counts)."""
        require_patients(len(np.unique(patients)), k, what)
        if noise is not None:
            seed = self.cfg.seed if self.cfg is not None else 0  # which value per patient: data-independent
            return noised_histogram(grid, values, patients, noise.epsilon, noise.rng(), seed=seed)
        merged = merge_bins(grid, values, patients, k)  # not None: the patients are >= k (checked above)
        eps = self.cfg.dp.histogram_epsilon if self.cfg is not None else 0.0  # follow-up may come before setup
        if eps > 0:
            noisy = privatize_counts(merged.counts, eps, np.random.default_rng(),  # OS entropy, never seeded
                                     sensitivity=len(masking_patterns(len(self.dims))), clip=False)
            merged = MergedBins(merged.first, merged.last, noisy, merged.n_bins)
        return merged

    def calibration_release(self, grid: HistogramGrid, k: int, noise: ReleaseNoise | None = None
                            ) -> tuple[MergedBins, int]:
        """Tier 1 calibration of the frozen Tier 1 (:attr:`tier1_frozen`), merged to the floor or noised."""
        values = self.calibration_values(self._frozen_weights())
        return self.merged_release(grid, values, pattern_patients(values, len(self.dims)), k,
                                   "calibration histogram", noise), int(len(values))

    def tier2_release(self, weights: dict[str, np.ndarray], grid: HistogramGrid, k: int,
                      noise: ReleaseNoise | None = None) -> tuple[MergedBins, dict[str, float]]:
        """:meth:`tier2_calibration` with the histogram merged to the floor (and the same risk sums,
        over every training patient: refused when they are fewer than k)."""
        require_patients(len(self.data.indices("train")), k, "risk sums over the training patients")
        half = ReleaseNoise(noise.epsilon / 2, noise.seed) if noise is not None else None  # histogram + risk sums
        values, sums = self._tier2_values(weights, half)
        return self.merged_release(grid, values, pattern_patients(values, len(self.dims)), k,
                                   "Tier 2 calibration histogram", half), sums

    def risk_group_release(self, tier2_weights: dict[str, np.ndarray] | None, fitted: FittedTwoTier, k: int,
                           grid: HistogramGrid = RISK_GRID, noise: ReleaseNoise | None = None) -> MergedBins:
        """exp(two-tier system risk) of the training patients on ``grid`` (the server's, normally
        ``risk_groups.RISK_GRID``), merged to the floor: for the federated tertiles of the risk groups."""
        assert self.cfg is not None
        tier2 = self.tier2_model(tier2_weights) if tier2_weights else None
        risk = predict_two_tier(self._tier1(), tier2, self._split("train"), self.cfg, fitted=fitted,
                                seed=self.cfg.seed).system_risk
        keep = np.isfinite(risk)
        return self.merged_release(grid, np.exp(np.clip(risk[keep], -50.0, 50.0)), np.flatnonzero(keep), k,
                                   "risk-group histogram", noise)

    def followup_release(self, grid: HistogramGrid, k: int, noise: ReleaseNoise | None = None) -> MergedBins:
        t = self.data.time[self.data.indices("train")]
        return self.merged_release(grid, t, np.arange(len(t)), k, "follow-up histogram", noise)

    def hazard_release(self, grid: np.ndarray, k: int, noise: ReleaseNoise | None = None, *, center: float = 0.0,
                       bound: float = HAZARD_RISK_BOUND) -> MergedHazard:
        """Breslow sums of exp(risk - ``center``) on ``grid``: intervals merged to >= k events and >= k patients
        leaving, or noised with |risk - center| clipped to ``bound`` (the site policy's dp.hazard-risk-bound)."""
        train = self._split("train")
        keep = train.present.any(dim=1).cpu().numpy()
        require_patients(int(keep.sum()), k, "Breslow sums")
        risk = predict_risk(self._tier1(), train)[keep] - float(center)
        if noise is not None:
            return noised_hazard(train.time.cpu().numpy()[keep], train.event.cpu().numpy()[keep], risk, grid,
                                 noise.epsilon, noise.rng(), bound=bound)
        merged = merge_intervals(train.time.cpu().numpy()[keep], train.event.cpu().numpy()[keep], risk, grid, k)
        if merged is None:
            raise PolicyViolation("min-patients", f"the Breslow sums would have fewer than {k} events or patients in "
                                  "some interval even with every interval merged", "nothing to do: the run goes on "
                                  "with the other sites")
        return merged

    def histogram(self, grid: HistogramGrid) -> tuple[np.ndarray, int]:
        """Counts of the frozen Tier 1's uncertainty over held-out (val) complete cases under every
        masking pattern (unmerged: for simulation-only checks)."""
        values = self.calibration_values(self._frozen_weights())
        return grid.counts(values), int(len(values))

    def calibration_values(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The per-(patient, masking pattern) routing scores behind :meth:`histogram`. Never sent."""
        assert self.cfg is not None
        return calibration_scores(self.model(weights), self._split("val"), self.cfg, seed=self.cfg.seed)

    def conformal_release(self, tier: str, tier2_weights: dict[str, np.ndarray] | None, grid: HistogramGrid, k: int,
                          noise: ReleaseNoise | None = None) -> tuple[MergedBins, dict[str, float]]:
        """A tier's conformal scores on the masked complete val cases (core/routing/conformal.py) on ``grid``, merged
        or noised like theta's; exact (merged) releases add the patients' mean risk SDs summed."""
        values, sd = conformal_site_scores(self._tier1(), self.tier2_model(tier2_weights) if tier2_weights else None,
                                           self._split("val"), self.cfg, tier)
        patients = pattern_patients(values, len(self.dims))
        merged = self.merged_release(grid, values, patients, k, f"{tier} conformal-score histogram", noise)
        return merged, {} if noise else {M.N_VALUES: float(len(values)), **sd_sums(sd, patients)}


def pattern_patients(values: np.ndarray, n_modalities: int) -> np.ndarray:
    """Patient label of each calibration value: they come pattern by pattern over the same complete
    cases (core/routing/uncertainty.calibration_uncertainties, two_tier.recovery_errors)."""
    patterns = len(masking_patterns(n_modalities))
    return np.tile(np.arange(len(values) // patterns), patterns) if len(values) else np.zeros(0, dtype=int)
