"""Everything one site does for the federation, without Flower.

The ClientApp is a thin adapter over this class: each Flower message maps to one method, each
method returns only weights, sums, histogram counts or scalar metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import metric_names as M
from .concordance import ConcordanceCounts, concordance_counts
from .cox import cox_partial_log_likelihood
from .config import RunConfig
from .device import resolve_device
from .feature_stats import FeatureStats, local_feature_sums
from .histogram import HistogramGrid
from .merged_hazard import MergedHazard, merge_intervals
from .merged_histogram import MergedBins, merge_bins
from .noised_release import ReleaseNoise, noised_hazard, noised_histogram, noised_sums
from .private_histogram import privatize_counts
from .risk_groups import RISK_GRID
from .site_policy import PolicyViolation
from .routing import ABSTAIN, HIGH_RISK_CONTEXT, TIER1, TIER2, route_counts
from .site_cox import cox_design
from .survival_metrics import site_sums as survival_sums
from .site_data import SiteData, load_site
from .tensors import SiteTensors, build_tensors
from .tier1 import Tier1Model, build_model
from .train import TrainResult, predict_risk, round_lr, train_tier1
from .tier2 import Tier2Model, build_tier2
from .tier2_train import predict_tier2, train_tier2
from .tier2_gate import VALIDATION_KEYS
from .fitted_two_tier import FittedTwoTier
from .two_tier import predict_two_tier, recovery_errors
from .conformal import sd_sums, site_scores as conformal_site_scores
from .risk_uncertainty_evaluation import conformal_sums, floored as _floored, kept_sums, voi_sums
from .routing_score import calibration_scores
from .site_seed import site_seed
from .uncertainty import complete_case_indices, masking_patterns
from .uncertainty_quality import site_quality
from .weights import get_weights, set_weights


class SiteSession:
    def __init__(self, path: str | Path, *, device: str = "auto") -> None:
        self.path = Path(path)
        self.data: SiteData = load_site(self.path)
        self.device = resolve_device(device)
        self.cfg: RunConfig | None = None
        self.stats: FeatureStats | None = None
        self.tensors: SiteTensors | None = None
        self.dims: dict[str, int] = {}
        self.tier1_frozen: dict[str, np.ndarray] | None = None  # kept locally once calibration fixes Tier 1
        self.dp_state: dict[str, np.ndarray] = {}  # DP-SGD accountant history + discrete-time baseline (never sent)

    # ---- phase 1: schema ---------------------------------------------------------------
    def bind_schema(self, dims: dict[str, int]) -> None:
        """Re-validate the site against the run's modality dims (raises SchemaMismatchError)."""
        self.data = load_site(self.path, expected=dims, scan_values=False)  # values scanned in __init__
        self.dims = dict(dims)

    # ---- phase 2: federated feature statistics -----------------------------------------
    def feature_sums(self, min_count: int, *, reduce_above: int = 0, reduce_dim: int = 0,
                     second_moments: bool = True) -> dict[str, np.ndarray]:
        """Training-split sums; second moments too for the modalities the run reduces (federated PCA)."""
        return local_feature_sums(self.data, self.data.indices("train"), min_count, reduce_above=reduce_above,
                                  reduce_dim=reduce_dim, second_moments=second_moments)

    @property
    def model_dims(self) -> dict[str, int]:
        """The widths the models see (reduced where the run's statistics carry a basis)."""
        return self.stats.model_dims(self.dims) if self.stats is not None else dict(self.dims)

    def setup(self, cfg: RunConfig, stats: FeatureStats) -> None:
        self.cfg, self.stats = cfg, stats
        self.__dict__.pop("_weight_shapes", None)
        self.tensors = build_tensors(self.data, stats, seed=site_seed(cfg.seed, self.data.site)).to(self.device)

    def _split(self, name: str) -> SiteTensors:
        assert self.tensors is not None, "setup() must run before training"
        return self.tensors.subset(self.data.indices(name))

    def split(self, name: str) -> SiteTensors:
        """The run's tensors of one split ('train', 'val' or 'test')."""
        return self._split(name)

    def model(self, weights: dict[str, np.ndarray] | None = None) -> Tier1Model:
        assert self.cfg is not None
        m = build_model(self.model_dims, self.cfg.model, self.cfg.seed)
        if weights is not None:
            set_weights(m, weights)
        return m.to(self.device)

    # ---- phase 3: Tier 1 rounds --------------------------------------------------------
    def train(self, weights: dict[str, np.ndarray], server_round: int, proximal_mu: float = 0.0
              ) -> tuple[dict[str, np.ndarray], TrainResult]:
        assert self.cfg is not None and self.stats is not None
        model = self.model(weights)
        seed = site_seed(self.cfg.seed, self.data.site, server_round)
        if self.cfg.dp.enabled:
            from .site_dp import train_tier1_round_dp  # Opacus loads only when DP is on

            return train_tier1_round_dp(self, model, seed, proximal_mu, server_round)
        result = train_tier1(model, self._split("train"), self.stats, self.cfg, epochs=self.cfg.local_epochs,
                             seed=seed, proximal_mu=proximal_mu, lr=round_lr(self.cfg, server_round))
        return get_weights(model), result

    def weight_shapes(self, which: str) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the run's Tier 1 (``tier1``) or Tier 2 (``tier2``) state dict: the only
        arrays a request may carry (core/request_policy.check_weights)."""
        cache = self.__dict__.setdefault("_weight_shapes", {})
        if which not in cache:
            model = self.model() if which == "tier1" else self.tier2_model()
            cache[which] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return cache[which]

    # ---- releases that respect the site's floor (core/merged_histogram.py, core/merged_hazard.py) ----
    def merged_release(self, grid: HistogramGrid, values: np.ndarray, patients: np.ndarray, k: int,
                       what: str, noise: ReleaseNoise | None = None) -> MergedBins:
        """With ``noise`` (the site policy's dp.release-epsilon): epsilon-DP counts of one value per patient on
        every bin (core/noised_release.py). Without: bins merged until each non-empty one holds values of
        >= k patients (exact; with the run's dp.histogram-epsilon > 0, noise on the merged counts)."""
        if len(np.unique(patients)) < k:
            raise PolicyViolation("min-patients", f"the {what} would come from {len(np.unique(patients))} patient(s), "
                                  f"fewer than this site's floor of {k}", "nothing to do: the run goes on with "
                                  "the other sites (a hospital may lower min-patients in its policy file)")
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
        return self.merged_release(grid, values, _pattern_patients(values, len(self.dims)), k,
                                   "calibration histogram", noise), int(len(values))

    def tier2_release(self, weights: dict[str, np.ndarray], grid: HistogramGrid, k: int,
                      noise: ReleaseNoise | None = None) -> tuple[MergedBins, dict[str, float]]:
        """:meth:`tier2_calibration` with the histogram merged to the floor (and the same risk sums,
        over every training patient: refused when they are fewer than k)."""
        n_train = len(self.data.indices("train"))
        if n_train < k:
            raise PolicyViolation("min-patients", f"the risk sums would cover {n_train} training patients, fewer "
                                  f"than this site's floor of {k}", "nothing to do: the run goes on without this site")
        half = ReleaseNoise(noise.epsilon / 2, noise.seed) if noise is not None else None  # histogram + risk sums
        values, sums = self._tier2_values(weights, half)
        return self.merged_release(grid, values, _pattern_patients(values, len(self.dims)), k,
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

    def hazard_release(self, grid: np.ndarray, k: int, noise: ReleaseNoise | None = None) -> MergedHazard:
        """Breslow sums on ``grid``: intervals merged to >= k events and >= k patients leaving, or noised."""
        train = self._split("train")
        keep = train.present.any(dim=1).cpu().numpy()
        if int(keep.sum()) < k:
            raise PolicyViolation("min-patients", "the Breslow sums would cover fewer patients than this site's floor",
                                  "nothing to do: the run goes on with the other sites")
        risk = predict_risk(self._tier1(), train)[keep]
        if noise is not None:
            return noised_hazard(train.time.cpu().numpy()[keep], train.event.cpu().numpy()[keep], risk, grid,
                                 noise.epsilon, noise.rng())
        merged = merge_intervals(train.time.cpu().numpy()[keep], train.event.cpu().numpy()[keep], risk, grid, k)
        if merged is None:
            raise PolicyViolation("min-patients", f"the Breslow sums would have fewer than {k} events or patients in "
                                  "some interval even with every interval merged", "nothing to do: the run goes on "
                                  "with the other sites")
        return merged

    # ---- phase 4: calibration ----------------------------------------------------------
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
        """A tier's conformal scores on the masked complete val cases (core/conformal.py) on ``grid``, merged
        or noised like theta's; exact (merged) releases add the patients' mean risk SDs summed."""
        values, sd = conformal_site_scores(self._tier1(), self.tier2_model(tier2_weights) if tier2_weights else None,
                                           self._split("val"), self.cfg, tier)
        patients = _pattern_patients(values, len(self.dims))
        merged = self.merged_release(grid, values, patients, k, f"{tier} conformal-score histogram", noise)
        return merged, {} if noise else {M.N_VALUES: float(len(values)), **sd_sums(sd, patients)}

    def test_predictions(self, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(risk, time, event, patient_ids) on the test split. Never sent: simulation-only pooled metrics."""
        test = self._split("test")
        risk = predict_risk(self.model(weights), test)
        ids = [self.data.patient_ids[i] for i in self.data.indices("test")]
        return risk, test.time.cpu().numpy(), test.event.cpu().numpy(), ids

    # ---- Tier 2 (Tier 1 frozen, kept locally) ------------------------------------------
    def freeze(self, weights: dict[str, np.ndarray]) -> None:
        """Fix the run's final Tier 1 at this site (the freeze phase): calibration, Tier 2 and evaluation use it."""
        self.tier1_frozen = weights

    def _frozen_weights(self) -> dict[str, np.ndarray]:
        if self.tier1_frozen is None:
            raise RuntimeError("Tier 1 is not fixed yet at this site: the server sends it (query.freeze_tier1) "
                               "before calibration, Tier 2 and evaluation")
        return self.tier1_frozen

    def _tier1(self) -> Tier1Model:
        return self.model(self._frozen_weights())

    def tier2_model(self, weights: dict[str, np.ndarray] | None = None) -> Tier2Model:
        assert self.cfg is not None
        m = build_tier2(self.model_dims, self.cfg.tier2, self.cfg.seed, tier1=self.cfg.model)
        if weights is not None:
            set_weights(m, weights)
        return m.to(self.device)

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

    def _tier2_values(self, weights: dict[str, np.ndarray], noise: ReleaseNoise | None = None
                      ) -> tuple[np.ndarray, dict[str, float]]:
        assert self.cfg is not None
        tier1, tier2 = self._tier1(), self.tier2_model(weights)
        values = recovery_errors(tier1, tier2, self._split("val"), self.cfg, seed=self.cfg.seed)["unc2"]
        train = self._split("train")
        r1 = predict_risk(tier1, train)
        if self.cfg.tier2.uses_branches:
            r2 = predict_tier2(tier2, tier1, train, self.cfg.tier2, seed=self.cfg.seed,
                               mc_samples=self.cfg.model.mc_samples).risk
        else:  # Tier 2 is scored through Tier 1's head: one head, one scale
            r2 = r1
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
        masking pattern (core/tier2_gate.py): rows, both tiers' recovery SSE, and both tiers' pair
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

    # ---- per-round validation (model selection) ----------------------------------------
    def validate(self, weights: dict[str, np.ndarray]) -> dict[str, float]:
        """Comparable-pair counts of the validation split (the server combines them across sites)."""
        val = self._split("val")
        risk = predict_risk(self.model(weights), val)
        counts = concordance_counts(val.time.cpu().numpy(), risk, val.event.cpu().numpy())
        pll = cox_partial_log_likelihood(torch.as_tensor(risk, dtype=torch.float64), val.time.cpu().double(),
                                         val.event.cpu().double())
        return {M.N_VAL: float(len(val)), **dict(zip(M.PAIRS.counts, (counts.concordant, counts.tied_risk,
                                                                     counts.comparable))),
                M.VAL_PLL: float(pll), M.VAL_EVENTS: float(val.event.sum())}

    # ---- phase 5: evaluation -----------------------------------------------------------
    def evaluate(self, tier2_weights: dict[str, np.ndarray] | None, fitted: FittedTwoTier, k: int = 1,
                 thresholds: tuple[float, ...] | None = None) -> dict[str, float]:
        """Scalar metrics on the test split: C-index counts of Tier 1 and of the two-tier system (all,
        covered, referred), routes, recovery errors of both tiers, per-patient cost of each tier, and
        the quality of Tier 1's sigma^2 on masked complete cases (core/uncertainty_quality.site_quality:
        Spearman with the recovery error and with the risk gap, patient-bootstrap intervals, counts).

        Floor ``k`` (the site policy's min-patients): a subgroup (covered, referred, masked complete
        cases) of fewer than k patients sends zero counts and sums (NaN C-index / correlation), as
        if it were empty, so no pair count or error sum stands for fewer than k patients."""
        assert self.cfg is not None
        tier1 = self._tier1()
        tier2 = self.tier2_model(tier2_weights) if tier2_weights is not None else None
        test = self._split("test")
        time, event = test.time.cpu().numpy(), test.event.cpu().numpy()
        pred = predict_two_tier(tier1, tier2, test, self.cfg, fitted=fitted, seed=self.cfg.seed)
        names = pred.route_names
        covered, referred = names != ABSTAIN, np.isfinite(pred.tier2_risk)
        out: dict[str, float] = {M.N_TEST: float(len(test)), M.N_EVENTS_TEST: float(event.sum())}
        out.update(_counts(M.PAIRS, concordance_counts(time, pred.tier1_risk, event)))
        if self.cfg.model.cox_core:  # the Cox core's risk alone, for comparison
            cox = cox_design(tier1, test) @ tier1.linear.weight.detach().double().cpu().numpy().ravel()
            out.update(_counts(M.COX_CORE, concordance_counts(time, cox, event)))
        for names, risk, group in ((M.TIER1_COVERED, pred.tier1_risk, covered), (M.SYSTEM_COVERED, pred.system_risk, covered),
                                   (M.TIER1_REFERRED, pred.tier1_risk, referred), (M.TIER2_REFERRED, pred.tier2_risk, referred),
                                   (M.SYSTEM_REFERRED, pred.system_risk, referred & covered)):
            shown = group if _floored([int(group.sum())], len(group), k)[0] else np.zeros_like(group)  # and complement
            out.update(_counts(names, concordance_counts(time[shown], risk[shown], event[shown])))
        rc = route_counts(pred.routes)
        n = len(test)
        routes = _floored([rc[r] for r in (TIER1, TIER2, ABSTAIN)], n, k)  # no route group below the floor
        ref = _floored([int(referred.sum())], n, k)[0]
        kept = _floored([sum(1 for r in pred.routes if HIGH_RISK_CONTEXT in r.flags and r.route == "tier1")], n, k)[0]
        out.update({**{M.ROUTED[r]: float(c) for r, c in zip((TIER1, TIER2, ABSTAIN), routes)}, M.REFERRED: float(ref),
                    M.REFERRAL_RATE: float(ref) / n if n and ref else (0.0 if n else float("nan")),
                    M.TIER1_SECONDS: pred.tier1_seconds, M.TIER2_SECONDS: pred.tier2_seconds,
                    M.TIER2_USED: float(pred.tier2_used), M.HIGH_RISK_KEPT_TIER1: float(kept)})
        rec = recovery_errors(tier1, tier2, test, self.cfg, seed=self.cfg.seed + 1)
        if len(rec["sigma2"]) // max(len(masking_patterns(len(self.dims))), 1) < k:  # complete test cases
            rec = {key: np.zeros(0) for key in rec}
        m = len(rec["sigma2"])
        masked_score = rec["risk_sd"] if self.cfg.routing_score == "risk-sd" else rec["sigma2"]
        out.update({M.MASKED_N: float(m), M.MASKED_REFERRED: float(_floored([int((masked_score > fitted.theta_).sum())], m, k)[0]),
                    M.RECOVERY_N: float(m), M.RECOVERY_SSE_TIER1: float(rec["err1"].sum()),
                    M.RECOVERY_SSE_TIER2: float(rec["err2"].sum()) if tier2 is not None else float("nan")})
        out.update(site_quality(rec, seed=self.cfg.seed))  # includes uncertainty-error-spearman
        hz = fitted.baseline_hazard_
        if hz is not None and np.all(np.isfinite(hz.cumhaz)):  # IBS, td-AUC, calibration (Tier 1)
            out.update(survival_sums(time, event, pred.tier1_risk, hz.times, hz.cumhaz, k))
        if thresholds is not None:  # conformal coverage, value of information, risk-coverage (core/risk_uncertainty_evaluation.py)
            sc = fitted.risk_scale_
            out.update(conformal_sums(rec, fitted.conformal_pair, k))
            out.update(voi_sums(rec, fitted.cutpoints_ or (), sc.tier1_mean, sc.tier1_std, k))
            out.update(kept_sums(time, event, pred.tier1_risk, pred.score, thresholds, k))
        return out


def _pattern_patients(values: np.ndarray, n_modalities: int) -> np.ndarray:
    """Patient label of each calibration value: they come pattern by pattern over the same complete
    cases (core/uncertainty.calibration_uncertainties, two_tier.recovery_errors)."""
    patterns = len(masking_patterns(n_modalities))
    return np.tile(np.arange(len(values) // patterns), patterns) if len(values) else np.zeros(0, dtype=int)


def _counts(names: M.Pairs, c) -> dict[str, float]:
    return dict(zip(names.all, (c.c_index(), c.concordant, c.tied_risk, c.comparable)))

