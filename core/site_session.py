"""Everything one site does for the federation, without Flower.

The ClientApp is a thin adapter over this class: each Flower message maps to one method, each
method returns only weights, sums, histogram counts or scalar metrics.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from .concordance import concordance_counts
from .config import RunConfig
from .device import resolve_device
from .feature_stats import FeatureStats, local_feature_sums
from .histogram import HistogramGrid
from .routing import ABSTAIN, TIER2, route_all, route_counts
from .site_data import SiteData, load_site
from .tensors import SiteTensors, build_tensors
from .tier1 import Tier1Model, build_model
from .train import TrainResult, predict_risk, train_tier1
from .uncertainty import calibration_uncertainties, uncertainty
from .weights import get_weights, set_weights


def site_seed(seed: int, site: str, *salt: int) -> int:
    """A stable per-site, per-round seed (crc32, not Python's salted hash)."""
    return (seed * 1_000_003 + zlib.crc32(site.encode()) + sum(s * 7919 ** (i + 1) for i, s in enumerate(salt))) % 2**31


class SiteSession:
    def __init__(self, path: str | Path, *, device: str = "auto") -> None:
        self.path = Path(path)
        self.data: SiteData = load_site(self.path)
        self.device = resolve_device(device)
        self.cfg: RunConfig | None = None
        self.stats: FeatureStats | None = None
        self.tensors: SiteTensors | None = None
        self.dims: dict[str, int] = {}

    # ---- phase 1: schema ---------------------------------------------------------------
    def bind_schema(self, dims: dict[str, int]) -> None:
        """Re-validate the site against the run's modality dims (raises SchemaMismatchError)."""
        self.data = load_site(self.path, expected=dims)
        self.dims = dict(dims)

    # ---- phase 2: federated feature statistics -----------------------------------------
    def feature_sums(self, min_count: int) -> dict[str, np.ndarray]:
        return local_feature_sums(self.data, self.data.indices("train"), min_count)

    def setup(self, cfg: RunConfig, stats: FeatureStats) -> None:
        self.cfg, self.stats = cfg, stats
        self.tensors = build_tensors(self.data, stats, max_instances=cfg.model.max_instances,
                                     seed=site_seed(cfg.seed, self.data.site)).to(self.device)

    def _split(self, name: str) -> SiteTensors:
        assert self.tensors is not None, "setup() must run before training"
        return self.tensors.subset(self.data.indices(name))

    def model(self, weights: dict[str, np.ndarray] | None = None) -> Tier1Model:
        assert self.cfg is not None
        m = build_model(self.dims, self.cfg.model, self.cfg.seed)
        if weights is not None:
            set_weights(m, weights)
        return m.to(self.device)

    # ---- phase 3: Tier 1 rounds --------------------------------------------------------
    def train(self, weights: dict[str, np.ndarray], server_round: int, proximal_mu: float = 0.0
              ) -> tuple[dict[str, np.ndarray], TrainResult]:
        assert self.cfg is not None and self.stats is not None
        model = self.model(weights)
        result = train_tier1(model, self._split("train"), self.stats, self.cfg, epochs=self.cfg.local_epochs,
                             seed=site_seed(self.cfg.seed, self.data.site, server_round), proximal_mu=proximal_mu)
        return get_weights(model), result

    # ---- phase 4: calibration ----------------------------------------------------------
    def histogram(self, weights: dict[str, np.ndarray], grid: HistogramGrid) -> tuple[np.ndarray, int]:
        """Counts of Tier 1 uncertainty over held-out (val) complete cases under every masking pattern."""
        values = self.calibration_values(weights)
        return grid.counts(values), int(len(values))

    def calibration_values(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The per-(patient, masking pattern) uncertainties behind :meth:`histogram`. Never sent."""
        assert self.cfg is not None
        return calibration_uncertainties(self.model(weights), self._split("val"), seed=self.cfg.seed)

    def test_predictions(self, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(risk, time, event, patient_ids) on the test split. Never sent: simulation-only pooled metrics."""
        test = self._split("test")
        risk = predict_risk(self.model(weights), test)
        ids = [self.data.patient_ids[i] for i in self.data.indices("test")]
        return risk, test.time.cpu().numpy(), test.event.cpu().numpy(), ids

    # ---- per-round validation (model selection) ----------------------------------------
    def validate(self, weights: dict[str, np.ndarray]) -> dict[str, float]:
        """Comparable-pair counts of the validation split (the server combines them across sites)."""
        val = self._split("val")
        counts = concordance_counts(val.time.cpu().numpy(), predict_risk(self.model(weights), val), val.event.cpu().numpy())
        return {"n-val": float(len(val)), "pairs-concordant": counts.concordant,
                "pairs-tied-risk": counts.tied_risk, "pairs-comparable": counts.comparable}

    # ---- phase 5: evaluation -----------------------------------------------------------
    def evaluate(self, weights: dict[str, np.ndarray], theta: float) -> dict[str, float]:
        assert self.cfg is not None
        model = self.model(weights)
        test = self._split("test")
        risk = predict_risk(model, test)
        time, event = test.time.cpu().numpy(), test.event.cpu().numpy()
        counts = concordance_counts(time, risk, event)
        sigma2 = uncertainty(model, test, seed=self.cfg.seed)
        routes = route_all(sigma2, test.context, test.present.any(dim=1).cpu().numpy(), theta, self.cfg.high_risk)
        rc = route_counts(routes)
        masked = calibration_uncertainties(model, test, seed=self.cfg.seed + 1)
        n = len(test)
        return {
            "n-test": float(n),
            "n-events-test": float(event.sum()),
            "c-index": counts.c_index(),
            "pairs-concordant": counts.concordant,
            "pairs-tied-risk": counts.tied_risk,
            "pairs-comparable": counts.comparable,
            "routed-tier1": float(rc["tier1"]),
            "routed-tier2": float(rc[TIER2]),
            "routed-abstain": float(rc[ABSTAIN]),
            "referral-rate": rc[TIER2] / n if n else float("nan"),
            "masked-complete-n": float(len(masked)),
            "masked-complete-referred": float((masked > theta).sum()),
        }
