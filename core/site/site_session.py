"""Everything one site does for the federation, without Flower.

The ClientApp is a thin adapter over :class:`SiteSession`: each Flower message maps to one method, each
method returns only weights, sums, histogram counts or scalar metrics. The class is split by concern:
this module holds the site's data, setup and models and Tier 1's training round; the releases, Tier 2
and the evaluation are mixins in their own modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..model.device import resolve_device
from ..aggregates.feature_stats import FeatureStats, local_feature_sums
from ..data.site_data import SiteData, load_site
from .site_evaluation import SiteEvaluation
from .site_releases import SiteReleases
from .site_seed import site_seed
from .site_tier2 import SiteTier2
from ..data.tensors import SiteTensors, build_tensors
from ..model.tier1 import Tier1Model, build_model
from ..tier2.tier2 import Tier2Model, build_tier2
from ..model.train import TrainResult, round_lr, train_tier1
from ..model.weights import get_weights, set_weights


class SiteSession(SiteReleases, SiteTier2, SiteEvaluation):
    """One site's data, run setup and models (Tier 1 trained each round, frozen once calibration starts,
    and Tier 2 built on it). What it releases, how it trains Tier 2 and how it evaluates live in the
    mixins (core/site/site_releases.py, core/site/site_tier2.py, core/site/site_evaluation.py), which read the models
    and splits defined here."""

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
        arrays a request may carry (core/privacy/request_policy.check_weights)."""
        cache = self.__dict__.setdefault("_weight_shapes", {})
        if which not in cache:
            model = self.model() if which == "tier1" else self.tier2_model()
            cache[which] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return cache[which]


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
