"""A trained rmm model as ONE portable file: weights, statistics, schema, calibration, model card.

``save_bundle`` writes a ``torch.save`` of plain containers only (str/int/float/bool/None, lists,
dicts and tensors), through a temporary file and an atomic ``os.replace``; ``load_bundle`` reads it
with ``torch.load(weights_only=True)``, so opening a bundle never runs pickled code and needs no
network. The file holds:

===================  ===========================================================================
key                  content
===================  ===========================================================================
format               "rmm-model-bundle"
format_version       1
rmm_version          rmm version that wrote it (major.minor must match the installed one)
tier1                Tier 1 state dict {name: tensor}
tier2                Tier 2 state dict or None (Tier 1 only run)
feature_stats        {"<modality>.mean"|".std"|".anat-mu"|".anat-sigma": tensor}
modalities           {modality: dim} in the model's order
config               flat run config (RunConfig.to_flat)
theta                routing threshold on the routing score (config's routing-score)
abstain_bound        bound on Tier 2 uncertainty (inf = never abstain for it)
risk_scale           {"tier1_mean", "tier1_std", "tier2_mean", "tier2_std"}
baseline_hazard      None or {"times": [G], "cumhaz": [G], "risk": "tier1"} (Breslow, federated)
risk_cutpoints       None or [2] tertile cut points of the training system risk
tier2_gate           None or the run's gate (core/tier2/tier2_gate.py): {"open", "reason", figures}; absent
                     = open (bundles from before the gate)
conformal            None or {"alpha", "q_hat": {tier: q}} (core/routing/conformal.py)
model_card           {"sites", "per_site", "c_index", "n_patients_test", "date", ...}
===================  ===========================================================================

The keys from ``theta`` to ``conformal`` are ONE object, the run's fitted two-tier decision
(core/routing/fitted_two_tier.FittedTwoTier: ``to_bundle`` / ``from_bundle``), :attr:`ModelBundle.fitted`.
A run writes its ``model.pt`` in this format (server/outputs.py); ``bundle_from_run_dir`` reads a
run folder (its model card refreshed from ``metrics.json``), and also a plain ``model.pt`` dict of the run's
keys (``RUN_MODEL_KEYS``) without the bundle's ``format``. Every reader goes through :func:`load_model`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import RunConfig
from ..errors import RmmError, SchemaMismatchError
from ..aggregates.feature_stats import FeatureStats
from ..model.tier1 import Tier1Model, build_model
from ..tier2.tier2 import Tier2Model, build_tier2
from .model_card import model_card_from_metrics, plain
from ..routing.fitted_two_tier import FittedTwoTier
from ..tier2.tier2_gate import Tier2Gate

BUNDLE_FORMAT = "rmm-model-bundle"
BUNDLE_FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "rmm_version", "tier1", "feature_stats", "modalities", "config",
                 "theta", "abstain_bound", "risk_scale")
RUN_MODEL_KEYS = ("tier1", "feature_stats", "modalities", "config", "theta", "rmm_version")


class BundleError(RmmError):
    """A file or folder is not a usable rmm model (not a bundle, damaged, or keys missing)."""


class BundleVersionError(BundleError):
    """The bundle was written by an rmm whose major.minor differs from the installed one."""


def installed_version() -> str:
    from ... import __version__
    return __version__


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).strip().split(".")[:2])


@dataclass
class ModelBundle:
    tier1: dict[str, torch.Tensor]
    tier2: dict[str, torch.Tensor] | None
    feature_stats: dict[str, np.ndarray]
    modalities: dict[str, int]
    config: dict[str, Any]  # flat run config
    fitted: FittedTwoTier  # theta, abstention bound, risk scale, gate, cut points, q-hats, baseline hazard
    rmm_version: str
    model_card: dict[str, Any] = field(default_factory=dict)

    @property
    def gate(self) -> Tier2Gate:
        """The run's gate; a bundle from before the gate behaves as it did (open)."""
        return self.fitted.gate_ if self.fitted.gate_ is not None else Tier2Gate.from_dict(None)

    # ---- views --------------------------------------------------------------------------
    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_flat(self.config)

    def stats(self) -> FeatureStats:
        """Feature statistics in the model's modality order (what build_tensors iterates over)."""
        a = self.feature_stats
        names = list(self.modalities)
        return FeatureStats({m: a[f"{m}.mean"] for m in names}, {m: a[f"{m}.std"] for m in names},
                            {m: a.get(f"{m}.anat-mu", np.zeros(0)) for m in names},
                            {m: a.get(f"{m}.anat-sigma", np.zeros(0)) for m in names},
                            self.run_config.model.anat_partitions, {m: "transported" for m in names},
                            {m: np.asarray(a[f"{m}.basis"]) for m in names if f"{m}.basis" in a})

    @property
    def model_dims(self) -> dict[str, int]:
        """The widths the models see: ``modalities`` (the schema on disk) reduced where a basis exists."""
        return self.stats().model_dims(dict(self.modalities))

    def build_tier1(self) -> Tier1Model:
        cfg = self.run_config
        model = build_model(self.model_dims, cfg.model, cfg.seed)
        _load_state(model, self.tier1, "tier1")
        return model.eval()

    def build_tier2(self) -> Tier2Model | None:
        if self.tier2 is None:
            return None
        cfg = self.run_config
        model = build_tier2(self.model_dims, cfg.tier2, cfg.seed, tier1=cfg.model)
        _load_state(model, self.tier2, "tier2")
        return model.eval()

    # ---- (de)serialisation -------------------------------------------------------------
    def to_plain(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "rmm_version": self.rmm_version,
            "tier1": {k: v.detach().cpu().clone() for k, v in self.tier1.items()},
            "tier2": None if self.tier2 is None else {k: v.detach().cpu().clone() for k, v in self.tier2.items()},
            "feature_stats": {k: torch.as_tensor(np.asarray(v)) for k, v in self.feature_stats.items()},
            "modalities": {str(k): int(v) for k, v in self.modalities.items()},
            "config": dict(self.config), **self.fitted.to_bundle(), "model_card": plain(self.model_card),
        }


def _np(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"the bundle's {what} weights do not fit the model its config and modalities describe "
                          f"({first}). Fix: re-export the bundle from the run that trained it") from None


def make_bundle(tier1: Tier1Model, stats: FeatureStats, cfg: RunConfig, *, fitted: FittedTwoTier,
                tier2: Tier2Model | None = None, model_card: Mapping[str, Any] | None = None) -> ModelBundle:
    """A bundle from trained models, the run's statistics/config and its fitted two-tier decision."""
    return ModelBundle(
        tier1={k: v.detach().cpu().clone() for k, v in tier1.state_dict().items()},
        tier2=None if tier2 is None else {k: v.detach().cpu().clone() for k, v in tier2.state_dict().items()},
        feature_stats={k: np.asarray(v) for k, v in stats.to_arrays().items()},
        modalities=stats.input_dims(), config=cfg.to_flat(), fitted=fitted, rmm_version=installed_version(),
        model_card=dict(model_card or {}))


# ---- save / load ---------------------------------------------------------------------------
def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the bundle as one file, atomically (temporary file in the same folder + os.replace)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(bundle.to_plain(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        hint = " (a folder: pass it as a finished run folder, or the bundle file inside it)" if path.is_dir() else ""
        raise BundleError(f"{path}: no such model file{hint}. Fix: pass a bundle written by save_bundle "
                          "(rmm-predict --save-bundle) or a finished run folder with model.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError,
            TypeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BundleError(f"{path}: not an rmm model bundle (it cannot be read as plain tensors/containers: "
                          f"{first}). Fix: pass a bundle written by save_bundle or a finished run folder") from None


def _check_version(version: Any, path: Path) -> None:
    have = installed_version()
    if not isinstance(version, str) or _major_minor(version) != _major_minor(have):
        raise BundleVersionError(
            f"{path}: written by rmm {version}, but rmm {have} is installed (major.minor must match). Fix: install "
            f"rmmfed {'.'.join(_major_minor(str(version)))}.x to use this model, or re-export it with rmm {have}")


def _check_schema_consistency(modalities: Mapping[str, int], stats: Mapping[str, np.ndarray], path: Path) -> None:
    for m, d in modalities.items():
        for part in ("mean", "std"):
            arr = stats.get(f"{m}.{part}")
            if arr is None or np.asarray(arr).shape != (int(d),):
                raise BundleError(f"{path}: feature_stats has no {m}.{part} of length {d}. Fix: re-export the "
                                  "bundle from the run that trained it (the statistics and schema must agree)")


def load_bundle(path: str | Path) -> ModelBundle:
    """Open a bundle file (no network, no code execution); refuses with :class:`BundleError`."""
    p = Path(path)
    raw = _torch_load(p)
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        looks_like_run = isinstance(raw, dict) and all(k in raw for k in RUN_MODEL_KEYS)
        hint = (f" (it looks like a run's model.pt: pass its folder {p.parent} instead)" if looks_like_run else "")
        raise BundleError(f"{p}: not an rmm model bundle{hint}. Fix: pass a file written by save_bundle / "
                          "rmm-predict --save-bundle, or a finished run folder")
    if "rmm_version" in raw:  # first: a different version may also have different keys
        _check_version(raw["rmm_version"], p)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise BundleError(f"{p}: bundle is missing required key(s) {', '.join(missing)}. Fix: re-export the bundle "
                          "with save_bundle from the run's outputs")
    if int(raw["format_version"]) > BUNDLE_FORMAT_VERSION:
        raise BundleVersionError(f"{p}: bundle format {raw['format_version']} is newer than this rmm understands "
                                 f"({BUNDLE_FORMAT_VERSION}). Fix: upgrade rmmfed")
    return _from_raw(raw, p, model_card=raw.get("model_card") or {})


def _from_raw(raw: Mapping[str, Any], path: Path, *, model_card: dict) -> ModelBundle:
    modalities = {str(k): int(v) for k, v in dict(raw["modalities"]).items()}
    stats = {str(k): _np(v) for k, v in dict(raw["feature_stats"]).items()}
    _check_schema_consistency(modalities, stats, path)
    config = dict(raw["config"])
    # A model saved before Tier 1 had a variance head has no such key and no est_logvar weights: its
    # sigma^2 was eq. 3's MC-dropout variance, which is model.uncertainty = "epistemic".
    config.setdefault("model.uncertainty", "epistemic")
    try:
        RunConfig.from_flat(config)
    except RmmError as exc:
        raise BundleError(f"{path}: the stored run config is not valid for rmm {installed_version()} ({exc})") from None
    try:
        fitted = FittedTwoTier.from_bundle({**raw, "config": config})
    except RmmError as exc:
        raise BundleError(f"{path}: {exc} (or re-export the bundle from the run that trained it)") from None
    return ModelBundle(
        tier1={k: torch.as_tensor(v) for k, v in dict(raw["tier1"]).items()},
        tier2=None if raw.get("tier2") is None else {k: torch.as_tensor(v) for k, v in dict(raw["tier2"]).items()},
        feature_stats=stats, modalities=modalities, config=config, fitted=fitted,
        rmm_version=str(raw["rmm_version"]), model_card=dict(model_card))


def bundle_from_run_dir(run_dir: str | Path) -> ModelBundle:
    """A bundle from a finished run's ``model.pt`` (+ ``metrics.json`` for the model card, if present)."""
    d = Path(run_dir)
    model_pt = d / "model.pt"
    if not model_pt.is_file():
        raise BundleError(f"{d}: no model.pt here, so this is not a finished rmm run folder. Fix: pass the --out "
                          "folder of a run that completed (it holds model.pt and metrics.json), or a bundle file")
    raw = _torch_load(model_pt)
    if not isinstance(raw, dict):
        raise BundleError(f"{model_pt}: not an rmm run model. Fix: pass the folder of a finished rmm run")
    metrics_path = d / "metrics.json"
    if raw.get("format") == BUNDLE_FORMAT:  # a bundle: the card follows metrics.json, which a simulation's
        bundle = load_bundle(model_pt)      # later steps extend
        bundle.model_card = {**(_card_from(metrics_path) or bundle.model_card), "source": str(d.resolve())}
        return bundle
    if "rmm_version" in raw:
        _check_version(raw["rmm_version"], model_pt)
    missing = [k for k in RUN_MODEL_KEYS if k not in raw]
    if missing:
        raise BundleError(f"{model_pt}: missing key(s) {', '.join(missing)}. Fix: pass the folder of a run that "
                          "completed every phase (a partial run has no usable model.pt)")
    card = _card_from(metrics_path) or {}
    card["source"] = str(d.resolve())
    filled = dict(raw)
    filled.setdefault("abstain_bound", float("inf"))
    filled.setdefault("risk_scale", {})
    return _from_raw(filled, model_pt, model_card=card)


def _card_from(metrics_path: Path) -> dict[str, Any] | None:
    """The model card of a run folder's metrics.json (None when there is none)."""
    if not metrics_path.is_file():
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{metrics_path}: cannot be read as JSON ({exc}). Fix: restore the run's "
                          "metrics.json or remove it (the model card will then be empty)") from None
    date = datetime.fromtimestamp(metrics_path.stat().st_mtime, timezone.utc).date().isoformat()
    return model_card_from_metrics(metrics, date=date)


def load_model(path: str | Path) -> ModelBundle:
    """A bundle file or a finished run folder, whichever ``path`` is."""
    p = Path(path)
    return bundle_from_run_dir(p) if p.is_dir() else load_bundle(p)


# ---- schema check --------------------------------------------------------------------------
def check_site_schema(bundle: ModelBundle, site_modalities: Mapping[str, int | None]) -> None:
    """Raise SchemaMismatchError when a site's modalities or dims disagree with the model's.

    ``site_modalities`` is ``SiteData.modalities`` of a site loaded without an expected schema
    (dim None = a folder without files). Modalities of the model that the site lacks are fine:
    those patients simply miss them.
    """
    expected = bundle.modalities
    extra = sorted(m for m in site_modalities if m not in expected)
    if extra:
        raise SchemaMismatchError(
            f"the site has modality folder(s) {', '.join(extra)} that the model does not know (model modalities: "
            f"{', '.join(f'{m} (dim {d})' for m, d in expected.items())}). Fix: rename the folder(s) to the model's "
            "modality names or move them out of the site folder")
    for m, dim in site_modalities.items():
        if dim is not None and int(dim) != int(expected[m]):
            raise SchemaMismatchError(
                f"modality '{m}': the site's files have dim {dim} but the model expects dim {expected[m]}. Fix: "
                f"extract '{m}' features with the encoder the model was trained with (output width {expected[m]})")
