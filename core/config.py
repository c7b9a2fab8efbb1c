"""Run configuration: one pydantic model, flattened to Flower's flat run-config keys.

Every setting lives here once. ``[tool.flwr.app.config]`` in pyproject.toml, the ``rmm-simulate``
flags and the messages the server sends to sites are all views of :class:`RunConfig`. Flower's
run config is flat (``model.embed-dim = 64``); :meth:`RunConfig.to_flat` and
:meth:`RunConfig.from_flat` convert both ways (kebab-case keys, nested models joined by dots).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .tier2.tier2_config import Tier2Config


# Flat keys that were renamed: the old spelling is still read, with one FutureWarning naming the new key.
# This table is the only place that knows them (RunConfig.from_flat and with_overrides read through it).
RENAMED_KEYS: dict[str, str] = {
    "tier2-rounds": "tier2.rounds",
    "tier2-local-epochs": "tier2.local-epochs",
    "tier2-lr": "tier2.lr",
    "tier2-gate": "tier2.gate",
    "tier2-select-best": "tier2.select-best",
    "tier2-abstain-quantile": "tier2.abstain-quantile",
}


def renamed_keys(flat: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """``flat`` with every old key of :data:`RENAMED_KEYS` under its new name (a FutureWarning per old key
    unless ``warn`` is false). An old and a new key with different values are an error."""
    out = {k: v for k, v in dict(flat).items() if k not in RENAMED_KEYS}
    for old, value in dict(flat).items():
        new = RENAMED_KEYS.get(old)
        if new is None:
            continue
        if new in out and out[new] != value:
            raise ConfigError(f"run configuration sets both {old}={value!r} and {new}={out[new]!r}. Fix: keep only "
                              f"{new} ({old} is its old name)")
        if warn:
            warnings.warn(f"run-config key '{old}' is deprecated: use '{new}' (read as {new})", FutureWarning,
                          stacklevel=3)
        out[new] = value
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every knob finite


class Tier1Config(_Strict):
    """Tier 1 of seed 000 (eq. 1-4). Every component has a switch (Table 1 rows are configs)."""

    embed_dim: int = Field(64, ge=2, description="d: width of instance features after g_k")
    prompt_dim: int = Field(16, ge=1, description="d_p: width of the modality-aware prompt")
    attn_dim: int = Field(32, ge=1, description="d': width of the attention scorer (V, w)")
    hidden_dim: int = Field(128, ge=4, description="width of f_phi and the survival head")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout of f_phi, used for MC dropout")
    mc_samples: int = Field(20, ge=2, description="T: MC-dropout passes (batched)")
    uncertainty: Literal["total", "epistemic", "aleatoric"] = Field(
        "total", description="sigma^2 for routing: epistemic (MC-dropout variance, eq. 3) + aleatoric "
        "(f_phi's predicted variance); 'epistemic' = eq. 3 alone, without the variance head; 'aleatoric' = the "
        "predicted variance alone")
    max_instances: int = Field(64, ge=1, description="training draws a fresh subsample of at most this many "
                               "instances per bag each epoch; inference, calibration and attribution read all")
    gated_attention: bool = Field(True, description="gate the attention scorer (off = eq. 1 verbatim)")
    modality_prompts: bool = Field(True, description="learn a prompt phi_mod per modality and append it to the "
                                   "modality's slot h_k (eq. 2); off = phi_mod is zero")
    missing_prompts: bool = Field(True, description="append a present/absent flag to each modality's slot h_k "
                                  "(eq. 2) and to the head's input; off = the flag is zero")
    pseudo_embeddings: bool = Field(True, description="off = zero-fill for absent modalities")
    estimator: bool = Field(True, description="f_phi recovers absent modalities for the head")
    modality_dropout: float = Field(0.3, ge=0.0, lt=1.0, description="p: drop each present modality (keep >= 1); 0 = off")
    lambda_anat: float = Field(0.1, ge=0.0, description="weight of the anatomical hinge loss L_anat (eq. 4) in "
                               "Tier 1's loss; 0 = off")
    lambda_task: float = Field(1.0, ge=0.0, description="weight of the survival task loss (Cox partial likelihood, "
                               "or the discrete-time likelihood under DP) in Tier 1's loss")
    anat_partitions: int = Field(4, ge=1, description="|R|: contiguous feature partitions per modality")
    anat_kappa: float = Field(2.0, gt=0.0, description="kappa: hinge tolerance in sigma_r units")
    reduce_dim: int = Field(16, ge=0, description="wide modalities are reduced to this many federated principal "
                            "components (core/aggregates/feature_reduction.py); 0 = off")
    reduce_above: int = Field(64, ge=1, description="a modality is wide when it has more columns than this")
    input_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on the (reduced) instance features "
                                 "while training; 0 = off")
    linear_path: bool = Field(True, description="add a linear Cox term on each modality's mean-pooled features "
                              "(estimate when absent) and missing flags to the neural head")
    linear_l2: float = Field(0.1, ge=0.0, description="ridge penalty (1/2 l2 ||beta||^2) on the linear path, the "
                             "scale of lifelines' penalizer")
    cox_core: bool = Field(True, description="Tier 1 = an exact federated site-stratified ridge Cox model plus a neural "
                           "residual (core/survival/cox_core.py), when the sites' policies allow the Cox phase's exact sums; "
                           "otherwise, and with false, Tier 1 is the network alone, its linear path (linear-path) "
                           "trained with it")
    cox_penalizers: str = Field("0.003,0.01,0.03,0.1,0.3,1,3,10", description="the Cox core's ridge penalizers (lifelines' "
                                "scale), one chosen by federated validation partial likelihood")
    residual_min_gain: float = Field(2.0, ge=0.0, description="the network residual is kept only when it raises the "
                                     "Cox core's site-stratified validation log partial likelihood by more than this "
                                     "(nats, summed over the validation events; 1.92 is a 5% likelihood-ratio test of "
                                     "one parameter)")
    pseudo_in_head: bool = Field(False, description="with token fusion, also add the pseudo-embedding to an absent "
                                 "modality's estimated encoding in the head (evidence.tier1_ablation: no gain)")
    widths: Literal["fixed", "auto"] = Field("fixed", description="'auto': embed-, hidden- and attn-dim follow "
                                             "the federation's training patients (scaled_widths), resolved by "
                                             "the server before round 1; 'fixed': as set")
    fusion: Literal["concat", "attention"] = Field(
        "concat", description="how the head reads the slots: 'concat' = [h_1; ...; h_K], 'attention' = "
        "shared-weight attention across the modality tokens (core/model/fusion.py), where the prompts and "
        "pseudo-embeddings can act beyond a bias; concat is the default because attention was not better "
        "on any cohort (evidence.tier1_ablation)")

    @field_validator("cox_penalizers", mode="before")
    @classmethod
    def _one_number_is_a_list(cls, v: Any) -> Any:
        """``--set model.cox-penalizers=0.1`` arrives as a number: a list of one."""
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    def penalizers(self) -> tuple[float, ...]:
        """``cox_penalizers`` as numbers, largest first (the path is fitted from the strongest penalty down)."""
        try:
            vals = tuple(float(v) for v in self.cox_penalizers.split(",") if v.strip())
        except ValueError:
            vals = ()
        if not vals or any(not (v >= 0 and v < float("inf")) for v in vals):
            raise ValueError(f"model.cox-penalizers = {self.cox_penalizers!r} is not a comma-separated list of finite "
                             "numbers >= 0. Fix: e.g. model.cox-penalizers = \"0.01,0.1,1\"")
        return tuple(sorted(set(vals), reverse=True))


def scaled_widths(n_train: int) -> dict[str, Any]:
    """Tier 1 widths for ``n_train`` training patients in all: hidden = the power of two nearest to
    4 sqrt(n_train), clipped to 32..128; embed = hidden / 2, attention = embed / 2. About 1,000 patients
    give the fixed defaults (128 / 64 / 32); 220-340 (a TCGA cohort) give 64 / 32 / 16."""
    import math

    h = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n_train, 1)), 1.0)))
    h = min(128, max(32, h))
    return {"model.hidden-dim": h, "model.embed-dim": h // 2, "model.attn-dim": h // 4, "model.widths": "fixed"}


class DPConfig(_Strict):
    """Privacy (docs/privacy.md): DP-SGD for Tier 1 (core/privacy/dp.py) and noisy calibration counts."""

    enabled: bool = Field(True, description="both tiers train with DP-SGD (Tier 1 with the discrete-time likelihood); "
                          "the default site policy refuses a run without it")
    target_epsilon: float = Field(8.0, gt=0.0, description="epsilon at the end of the planned rounds")
    target_delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta; must stay below 1/N_train")
    max_grad_norm: float = Field(1.0, gt=0.0, description="per-patient gradient clipping norm C")
    noise_multiplier: float = Field(0.0, ge=0.0, description="0 = calibrate from target-epsilon")
    time_cuts: str = Field("", description="comma-separated cut points of the discrete-time likelihood; empty = "
                           "the pooled follow-up quintiles, from the sites' follow-up histograms")
    histogram_epsilon: float = Field(0.0, ge=0.0, description="noise on calibration counts; 0 = off")
    histogram_min_count: int = Field(0, ge=0, description="merge bins below this count (no noise); 0 = off")
    seeded_noise: bool = Field(False, description="draw DP noise from the run's seed (reproducible figures, but "
                               "noise the coordinator can replay): simulations only, refused unless the site "
                               "policy sets dp.allow-seeded-noise")
    tier2_local_steps: int = Field(40, ge=1, description="Tier 2 DP-SGD steps per round (each a Poisson batch "
                                   "of expected size batch-size; fewer, noisier steps than tier2.local-steps)")
    train_parts: Literal["all", "linear"] = Field("all", description="what Tier 1's DP-SGD trains: 'all' its "
                                                  "weights, or 'linear' only the linear path (a discrete-time "
                                                  "linear survival model on the pooled features and missing "
                                                  "flags; the network's risk head starts at zero and stays there, "
                                                  "so the noise of every DP step falls on a few dozen weights)")
    lr: float = Field(0.01, ge=0.0, description="Tier 1's peak learning rate under DP-SGD (the run's lr-schedule "
                      "applies); 0 = the run's lr. DP-Adam steps on gradients that the noise dominates, so each "
                      "coordinate's signal moves at about lr x signal / noise per step")
    batch_size: int = Field(0, ge=0, description="expected size of Tier 1's Poisson-sampled DP-SGD batches; 0 = "
                            "the run's batch-size. Smaller batches give a small site more, subsampled steps per "
                            "round (each with less noise for the same epsilon) instead of one full-batch step")
    tier2_share: float = Field(0.25, ge=0.0, lt=1.0, description="share of target-epsilon spent on Tier 2's "
                               "DP-SGD; Tier 1 gets the rest (the two add up under composition)")

    def cuts(self) -> tuple[float, ...]:
        """``time_cuts`` as increasing floats (fixed for the run, never from one site's data)."""
        try:
            values = tuple(float(v) for v in self.time_cuts.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(b <= a for a, b in zip(values, values[1:])) or values[0] <= 0:
            raise ConfigError(f"dp.time-cuts={self.time_cuts!r} is not a list of increasing positive times. Fix: "
                              "set e.g. dp.time-cuts='180,365,730,1095,1825' in the data's time unit (the "
                              "consortium's agreed quantiles of follow-up time).")
        return values


class RunConfig(_Strict):
    """A whole federated run: phases, optimisation, calibration, routing."""

    seed: int = Field(0, description="seeds the model's initial weights and every site's random draws (bag "
                      "subsamples, mini-batches, dropout, training masks; per site and round); DP noise only "
                      "with dp.seeded-noise")
    rounds: int = Field(30, ge=1, description="Tier 1 federated rounds")
    local_epochs: int = Field(1, ge=1, description="Tier 1: passes over a site's training split per round (raised "
                              "by min-local-steps on small sites)")
    min_local_steps: int = Field(10, ge=0, description="Tier 1: a site runs as many epochs as it takes to make at "
                                 "least this many mini-batch steps per round (small sites: 1 step per epoch); "
                                 "0 = local-epochs exactly")
    batch_size: int = Field(64, ge=2, description="patients per local mini-batch, both tiers (under DP: the expected "
                            "size of a Poisson-sampled batch)")
    lr: float = Field(2e-3, gt=0.0, description="Tier 1's local learning rate (round 1's, with lr-schedule = "
                      "cosine); the site policy caps it at training.max-lr")
    weight_decay: float = Field(1e-2, ge=0.0, description="weight decay of both tiers' local optimisers (decoupled "
                          "with adamw, an L2 term with adam)")
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="Tier 1's local optimiser; weight-decay is "
                                                "decoupled with adamw, an L2 term with adam")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="Tier 1's learning rate over the rounds: "
                                                       "cosine from lr to lr-min-ratio x lr, or constant")
    lr_min_ratio: float = Field(0.1, ge=0.0, le=1.0, description="with lr-schedule = cosine: the last round's "
                                "learning rate as a fraction of lr")
    select_metric: Literal["c-index", "partial-likelihood"] = Field(
        "partial-likelihood", description="criterion of select-best: the federated validation C-index, or the "
        "site-stratified validation Cox partial log-likelihood per event (less noisy on small splits)")
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum"] = Field(
        "fedavg", description="how the coordinator aggregates the sites' weights in each Tier 1 and Tier 2 round "
        "(Flower's strategy of that name; robust ones: fedmedian, fedtrimmedavg, krum, multikrum)")
    proximal_mu: float = Field(0.01, ge=0.0, description="FedProx mu (strategy = fedprox)")
    server_lr: float = Field(0.01, gt=0.0, description="FedAdam eta (strategy = fedadam)")
    trim_beta: float = Field(0.2, ge=0.0, lt=0.5, description="FedTrimmedAvg: fraction cut at each end")
    krum_malicious: int = Field(0, ge=0, description="Krum / MultiKrum: sites assumed malicious")
    multikrum_select: int = Field(1, ge=1, description="MultiKrum: updates averaged")
    max_update_norm: float = Field(0.0, ge=0.0, description="bound on a site's update norm; 0 = off")
    norm_action: Literal["clip", "drop"] = Field("clip", description="an update over max-update-norm is scaled down or dropped")
    central_dp_noise: float = Field(0.0, ge=0.0, description="server-side central DP noise multiplier; 0 = off")
    central_dp_clip: float = Field(1.0, gt=0.0, description="server-side central DP clipping norm")
    select_best: bool = Field(True, description="keep the round with the best federated validation score "
                              "(select-metric), from the sites whose policy opts into per-round validation; "
                              "with none, the last round")
    average_last: int = Field(0, ge=0, description="Tier 1 without model selection (no site validates each round, "
                              "as under the default site policy): keep the mean of the last this-many rounds' "
                              "aggregated weights instead of the last round's (post-processing of the noisy DP-SGD "
                              "iterates: no privacy cost, no question to the sites); 0 = the last round")
    min_sites: int = Field(0, ge=0, description="sites a round needs; 0 = a majority of the accepted sites")
    round_timeout_s: float = Field(600.0, gt=0.0, description="seconds the coordinator waits for the sites' "
                                   "replies to one request (a round, a histogram, ...); a site that has not "
                                   "answered by then is left out of it")
    flower_tuning: bool = Field(True, description="deployment: the coordinator's Grid polls for replies every 0.2 s "
                                "instead of Flower's 3 s (flower/grid.py; Flower 1.41 only)")
    pack_weights: bool = Field(True, description="deployment, with flower-tuning: every multi-array weight record "
                               "travels as one packed array (flower/packed_arrays.py)")
    min_stat_count: int = Field(5, ge=1, description="a site sends feature sums only over >= this many patients")
    quantile: float = Field(0.95, gt=0.0, lt=1.0, description="theta = this quantile of calibration uncertainty")
    routing_score: Literal["risk-sd", "sigma2"] = Field(
        "risk-sd", description="what routing compares with theta: the SD of Tier 1's risk over its draws of the "
        "missing features (core/routing/risk_interval.py), or f_phi's feature-space sigma^2 (core/routing/uncertainty.py)")
    conformal_alpha: float = Field(0.1, gt=0.0, lt=1.0, description="federated split-conformal risk intervals "
                                   "(core/routing/conformal.py) aim at coverage 1 - this")
    hist_low: float = Field(1e-8, gt=0.0, description="lower edge of the log-spaced calibration histogram grid "
                            "(uncertainty units; values below fall in the underflow bin)")
    hist_high: float = Field(1e3, gt=0.0, description="upper edge of that grid (values above fall in the overflow "
                             "bin); must exceed hist-low")
    hist_bins: int = Field(512, ge=8, description="bins of that grid, underflow and overflow included; the site "
                           "policy caps it at max-bins")
    high_risk_contexts: str = Field("oncology-staging", description="comma-separated contexts always sent to Tier 2")
    device: str = Field("auto", description="auto | cpu | cuda")
    hazard_points: int = Field(64, ge=4, description="time grid of the federated Breslow baseline hazard")
    hazard_max_time: float = Field(0.0, ge=0.0, description="end of that grid; 0 = the federated 95th percentile of follow-up")
    hazard_grid: Literal["quantile", "uniform", "quantile-noised"] = Field(
        "quantile", description="where that grid's points lie: 'quantile' = at the pooled follow-up quantiles "
        "(core/survival/follow_up_grid.py) where the sites' Breslow sums are exact (merged to their floor), "
        "evenly where they are noised; 'quantile-noised' = at the quantiles for noised sums too (no better on average); "
        "'uniform' = evenly (rmm 0.12 and earlier). A fixed hazard-max-time is always evenly spaced")
    hazard_risk_sets: Literal["isotonic", "running-min"] = Field(
        "running-min", description="how the server makes the summed Breslow risk sets non-increasing and >= 0 "
        "(noised sums need it; exact ones already are): 'running-min' = a running minimum; 'isotonic' = the nearest "
        "such sequence in least squares (measured no better: docs/evidence/tier1/breslow_grid.md)")
    hazard_noised_points: int = Field(8, ge=2, description="points of the Breslow grid where the sites' sums are "
                                      "noised (each interval's noise adds up in the risk sets after it, so fewer "
                                      "than hazard-points; rmm 0.13 and earlier: 16)")
    hazard_center: Literal["risk-groups", "zero"] = Field(
        "risk-groups", description="the centre the sites subtract from Tier 1's risks before their Breslow sums "
        "(noised sums clip |risk - centre| to the site policy's dp.hazard-risk-bound): 'risk-groups' = the middle of "
        "the training risk's tertile cut points (the risk-groups release, asked first), 'zero' = none (rmm 0.13 "
        "and earlier)")
    model: Tier1Config = Field(Tier1Config(), description="Tier 1's architecture and loss (keys model.*)")
    tier2: Tier2Config = Field(Tier2Config(), description="Tier 2's diffusion model, head and training (keys tier2.*)")
    dp: DPConfig = Field(DPConfig(), description="differential privacy of both tiers' training and of the "
                         "calibration counts (keys dp.*)")

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        """Cross-field checks, so that the coordinator finds them before round 1 (not a site in round 1)."""
        if self.hist_high <= self.hist_low:
            raise ValueError("hist-high must be greater than hist-low")
        if self.dp.enabled:
            if self.dp.time_cuts.strip():  # empty: placed by the server from the follow-up histograms
                self.dp.cuts()  # raises with the fix when dp.time-cuts is not a list of increasing times
            if self.strategy == "fedprox":
                raise ValueError("dp.enabled with strategy 'fedprox': FedProx's proximal term is not part of the "
                                 "DP-SGD loss. Fix: use strategy 'fedavg' (or a robust strategy) with dp.enabled")
            if self.dp.train_parts == "linear" and not self.model.linear_path:
                raise ValueError("dp.train-parts = 'linear' trains only the linear path, which model.linear-path = "
                                 "false removes. Fix: set model.linear-path = true, or dp.train-parts = 'all'")
        if self.average_last > 0 and self.central_dp_noise > 0:
            raise ValueError("average-last with central-dp-noise: the mean would be taken of the rounds' aggregates "
                             "before the central noise is added, so the kept model would lack it. Fix: set "
                             "average-last = 0, or central-dp-noise = 0")
        self.model.penalizers()  # raises with the fix when model.cox-penalizers is not a list of numbers >= 0
        if self.model.reduce_dim and self.model.reduce_dim > self.model.reduce_above:
            raise ValueError(f"model.reduce-dim={self.model.reduce_dim} is above model.reduce-above="
                             f"{self.model.reduce_above}: a reduced modality would be wider than one left as it is. "
                             "Fix: keep reduce-dim <= reduce-above")
        return self

    @property
    def high_risk(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.high_risk_contexts.split(",") if c.strip())

    # ---- flat <-> nested -------------------------------------------------------------
    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case dict (Flower run-config / ConfigRecord compatible)."""
        return _flatten(self.model_dump())

    @classmethod
    def from_flat(cls, flat: dict[str, Any] | Any, *, ignore: tuple[str, ...] = ()) -> "RunConfig":
        """Build from flat keys; unknown keys are an error (a typo must not pass silently)."""
        nested: dict[str, Any] = {}
        for key, value in renamed_keys({k: v for k, v in dict(flat).items() if k not in ignore}).items():
            parts = [p.replace("-", "_") for p in key.split(".")]
            node = nested
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        try:
            return cls.model_validate(nested)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p).replace('_', '-') for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise ConfigError(f"invalid run configuration: {problems}. Fix the key(s) named above "
                              "(see [tool.flwr.app.config] in pyproject.toml for every key and default).") from None

    def resolve_widths(self, n_train: int) -> "RunConfig":
        """With ``model.widths = auto``, the config with the widths for ``n_train`` patients (else itself)."""
        return self.with_overrides(scaled_widths(n_train)) if self.model.widths == "auto" else self

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        flat = self.to_flat()
        flat.update(renamed_keys(overrides))  # an old key overrides its new key's current value
        return RunConfig.from_flat(flat)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = prefix + key.replace("_", "-")
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out
