"""A hospital's own privacy floor: the site policy, loaded from a file the hospital controls.

The coordinator's run config says what the federation would like; the site policy says what this
site will release. Every request is checked against it before anything is computed
(:mod:`rmmfed.core.privacy.request_policy`); releases after training are epsilon-DP
(:mod:`rmmfed.core.privacy.noised_release`) or, with ``dp.release-epsilon = 0``, merged to the floor
(:mod:`rmmfed.core.aggregates.merged_histogram`, :mod:`rmmfed.core.survival.merged_hazard`). The coordinator can ask for
a stricter floor, never a looser one. The threat model and every key: docs/privacy.md.

File (TOML, or JSON with the same keys), every key optional; the defaults::

    min-patients = 10          # patients behind every released number
    max-bins = 512             # bins of any histogram, points of the Breslow time grid
    min-bin-ratio = 1.02       # narrowest log-spaced histogram bin (upper / lower edge)
    one-grid-per-kind = true   # grids (and weights) answered per histogram kind per run: 1, or
                               # dp.release-grids when releases are noised
    second-moments = true      # send sums of outer products of wide modalities (federated PCA)
    max-rounds = 100           # federated rounds per training phase
    phases = ["statistics", "tier1", "calibration", "baseline-hazard", "tier2", "risk-groups", "evaluation"]
                               # + "validation" to score each training round's weights exactly on the
                               #   validation split (model selection, Tier 2's gate), + "cox" to send the
                               #   exact Cox core's sums: both opt-in (docs/privacy.md)
    max-cox-queries = 200      # Cox core sums answered per run
    max-evaluations = 5        # exact test evaluations answered in the site's lifetime (one per run; kept
                               # in the privacy budget file, so a new run id resets nothing)

    [dp]
    required = true            # both tiers train with DP-SGD
    max-epsilon = 8.0          # DP-SGD target epsilon of one run
    total-epsilon = 50.0       # lifetime budget across runs (core/privacy/privacy_budget.py)
    max-grad-norm = 5.0        # largest clipping norm
    allow-seeded-noise = false # noise from the coordinator's seed is replayable: refused
    release-epsilon = 1.0      # per release answer after training; 0 = exact merged releases
    release-grids = 2          # grids per noised release kind per run
    hazard-risk-bound = 0.5    # noised Breslow sums: |risk - centre| clipped here (sensitivity exp(0.5))

    [training]
    max-lr = 0.01              # lr, tier2.lr and dp.lr
    optimizers = ["adamw", "adam"]
    max-local-epochs = 10
    max-local-steps = 200      # min-local-steps, tier2.local-steps, dp.tier2-local-steps
    max-width = 512            # model widths
    max-weight = 1000.0        # every weight sent: finite, |w| <= this

No file: :data:`DEFAULT_POLICY`. The schema handshake and the run setup are not phases: they release
no patient values and always run.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import RmmError
from .noised_release import HAZARD_RISK_BOUND

PHASES = ("statistics", "cox", "tier1", "validation", "calibration", "baseline-hazard", "tier2", "risk-groups",
          "evaluation")
# Opt-in, because exact answers to weights the coordinator chooses are not safe against a coordinator that lies
# (docs/privacy.md): "cox" (exact Cox core sums, core/survival/cox_core.py) and "validation" (each training
# round's exact validation metrics: pair counts, partial likelihood, Tier 2's error sums, bisectable over rounds)
OPT_IN_PHASES = ("cox", "validation")
DEFAULT_PHASES = tuple(p for p in PHASES if p not in OPT_IN_PHASES)


def phases_line(phases: tuple[str, ...] | list[str]) -> str:
    """A policy file's ``phases`` line (TOML) for ``phases``."""
    return "phases = [" + ", ".join(f'"{p}"' for p in phases) + "]\n"


class PolicyFileError(RmmError):
    """A site policy file cannot be used: it names the file, the key and the fix."""

    def __init__(self, file: str | Path, key: str, problem: str, fix: str) -> None:
        self.file, self.key, self.problem, self.fix = str(file), key, problem, fix
        super().__init__(f"{self.file}: key '{key}': {problem}. Fix: {fix}")


class PolicyViolation(RmmError):
    """A request breaks this site's policy: the site refuses it and computes nothing."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"site policy [{key}] refuses this request: {problem}. Fix: {fix}")


def _known_subset(v: tuple[str, ...], known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``v`` without repeats, every entry one of ``known`` (else the ValueError pydantic reports)."""
    unknown = [x for x in v if x not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {list(known)}")
    return tuple(dict.fromkeys(v))


class _Kebab(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False,
                              alias_generator=lambda name: name.replace("_", "-"))


class DPPolicy(_Kebab):
    required: bool = Field(True, description="Tier 1 and Tier 2 rounds must use DP-SGD (dp.enabled in the run config)")
    max_epsilon: float = Field(8.0, gt=0.0, description="largest DP-SGD target epsilon of one run")
    total_epsilon: float = Field(50.0, gt=0.0, description="the site's lifetime budget: the sum of every run's "
                                 "epsilon, kept on the site's disk (core/privacy/privacy_budget.py)")
    max_grad_norm: float = Field(5.0, gt=0.0, description="largest per-patient clipping norm accepted")
    allow_seeded_noise: bool = Field(False, description="accept dp.seeded-noise (noise the coordinator can replay; "
                                     "simulations only)")
    release_epsilon: float = Field(1.0, ge=0.0, description="epsilon of each release after training (histograms, "
                                   "risk sums, Breslow sums), charged to the budget; 0 = exact releases merged to "
                                   "min-patients, which a malicious coordinator can difference (docs/privacy.md)")
    release_grids: int = Field(2, ge=1, le=4, description="distinct grids answered per noised release kind per run "
                               "(a coarse one, then a zoom)")
    hazard_risk_bound: float = Field(HAZARD_RISK_BOUND, gt=0.0, le=5.0, description="noised Breslow sums: each patient's risk, "
                                     "less the coordinator's centre, is clipped to +-this before exp(), so one "
                                     "patient moves a risk sum by at most exp(this) (the Laplace noise's scale)")


OPTIMIZERS = ("adamw", "adam")


class TrainingPolicy(_Kebab):
    """What the coordinator may ask of local training (both tiers)."""

    max_lr: float = Field(0.01, gt=0.0, description="largest learning rate (lr, tier2.lr, dp.lr)")
    optimizers: tuple[str, ...] = Field(OPTIMIZERS, description="local optimisers accepted")
    max_local_epochs: int = Field(10, ge=1, description="largest local-epochs / tier2.local-epochs")
    max_local_steps: int = Field(200, ge=1, description="largest min-local-steps / tier2.local-steps")
    max_width: int = Field(512, ge=8, description="largest model width (embedding, hidden, attention, prompt "
                           "dims; Tier 2's hidden and time dims)")
    max_weight: float = Field(1000.0, gt=0.0, description="every weight sent must be finite with |w| <= this")

    @field_validator("optimizers")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _known_subset(v, OPTIMIZERS, "optimiser")


class SitePolicy(_Kebab):
    min_patients: int = Field(10, ge=2, description="patients behind every released number")
    max_bins: int = Field(512, ge=3, le=100_000, description="bins per histogram and Breslow grid points")
    min_bin_ratio: float = Field(1.02, gt=1.0, description="narrowest log-spaced bin accepted (upper / lower edge)")
    one_grid_per_kind: bool = Field(True, description="answer one grid (and one set of weights) per histogram kind")
    max_rounds: int = Field(100, ge=1, description="federated rounds per training phase")
    second_moments: bool = Field(True, description="send sums of outer products x x^T of wide modalities' "
                                 "features over >= min-patients patients (the federated PCA); false = zeros")
    phases: tuple[str, ...] = Field(DEFAULT_PHASES, description="phases this site takes part in ('cox' and "
                                 "'validation' are opt-in)")
    max_cox_queries: int = Field(200, ge=1, description="Cox core sums answered per run (Newton rounds and "
                                 "validation likelihoods of the penalty path)")
    max_evaluations: int = Field(5, ge=1, description="exact test evaluations answered in the site's lifetime, "
                                 "one per run, counted in the privacy budget file (the final evaluation is not "
                                 "noised: docs/privacy.md)")
    dp: DPPolicy = Field(default_factory=DPPolicy, description="what this site asks of the run's differential "
                         "privacy (keys dp.*)")
    training: TrainingPolicy = Field(default_factory=TrainingPolicy, description="bounds on the local training "
                                     "the coordinator may ask for, both tiers (keys training.*)")

    @field_validator("phases")
    @classmethod
    def _known_phases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _known_subset(v, PHASES, "phase")

    def describe(self) -> str:
        """The effective policy, one key per line (what ``rmm-client --check`` prints)."""
        t = self.training
        return "\n".join([
            f"min-patients       {self.min_patients}   (patients behind every released number)",
            f"max-bins           {self.max_bins}   (bins per histogram, points of the Breslow grid)",
            f"min-bin-ratio      {self.min_bin_ratio:g}   (narrowest log bin: upper / lower edge)",
            f"one-grid-per-kind  {str(self.one_grid_per_kind).lower()}",
            f"max-rounds         {self.max_rounds}   (per training phase)",
            f"second-moments     {str(self.second_moments).lower()}   (sums of outer products for the federated PCA)",
            f"phases             {', '.join(self.phases) or 'none'}",
            f"max-cox-queries    {self.max_cox_queries}   (Cox core sums per run, with the cox phase)",
            f"max-evaluations    {self.max_evaluations}   (exact test evaluations in the site's lifetime)",
            f"dp.required        {str(self.dp.required).lower()}   (both tiers train with DP-SGD)",
            f"dp.max-epsilon     {self.dp.max_epsilon:g}   (per run)",
            f"dp.total-epsilon   {self.dp.total_epsilon:g}   (lifetime, across runs)",
            f"dp.max-grad-norm   {self.dp.max_grad_norm:g}",
            f"dp.allow-seeded-noise {str(self.dp.allow_seeded_noise).lower()}",
            f"dp.release-epsilon {self.dp.release_epsilon:g}   (per release after training; 0 = exact, merged)",
            f"dp.release-grids   {self.dp.release_grids}   (grids per noised release kind per run)",
            f"dp.hazard-risk-bound {self.dp.hazard_risk_bound:g}   (noised Breslow sums: |risk - centre| clipped here)",
            f"training.max-lr    {t.max_lr:g}",
            f"training.optimizers {', '.join(t.optimizers)}",
            f"training.max-local-epochs {t.max_local_epochs}",
            f"training.max-local-steps {t.max_local_steps}",
            f"training.max-width {t.max_width}",
            f"training.max-weight {t.max_weight:g}",
        ])


DEFAULT_POLICY = SitePolicy()


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyFileError(path, "-", f"cannot be read ({err.strerror or err})",
                              "pass the path of a readable TOML or JSON policy file") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise PolicyFileError(path, "-", f"is not valid {kind} ({err})",
                              f"correct the syntax (a {kind} file; see docs/privacy.md for an example)") from None
    if not isinstance(data, dict):
        raise PolicyFileError(path, "-", "holds no key/value table", "write keys such as min-patients = 10")
    return data


def load_policy(path: str | Path | None) -> SitePolicy:
    """The policy in ``path`` (TOML, or JSON for a .json file); the safe defaults for None or ''."""
    if path is None or str(path) == "":
        return DEFAULT_POLICY
    p = Path(path)
    data = _read(p)
    try:
        return SitePolicy.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"] if not isinstance(x, int)) or "-"
        if e["type"] == "extra_forbidden":
            known = sorted(n.replace("_", "-") for n in SitePolicy.model_fields) + \
                [f"dp.{n.replace('_', '-')}" for n in DPPolicy.model_fields] + \
                [f"training.{n.replace('_', '-')}" for n in TrainingPolicy.model_fields]
            raise PolicyFileError(p, key, "is not a policy key", f"remove it or use one of {known}") from None
        default = _default_of(key)
        raise PolicyFileError(p, key, f"{e['msg']} (got {e.get('input')!r})",
                              f"set a valid value (default {default}) or remove the key") from None


def _default_of(key: str) -> str:
    node: Any = DEFAULT_POLICY
    for part in key.split("."):
        node = getattr(node, part.replace("-", "_"), None)
    return "none" if node is None else repr(list(node) if isinstance(node, tuple) else node)
