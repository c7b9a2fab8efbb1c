"""Every request checked against the site policy before anything is computed.

:class:`RequestPolicy` holds the site's :class:`~rmmfed.core.privacy.site_policy.SitePolicy` and the run's
pins: for each histogram kind, the grid and the weights the site answered first. Each ``check_*``
raises :class:`~rmmfed.core.privacy.site_policy.PolicyViolation` naming the policy key; the ClientApp turns
it into an error reply and a ledger line. Pins are plain strings so that the ClientApp can keep them
in Flower's per-run ``context.state`` (they never leave the site).

One grid per kind: the first request of a kind pins (grid, weights digest). The same request again
is answered (same data, same answer: nothing new leaks, and the server may retry a lost reply);
any other grid or weights for that kind is refused under ``one-grid-per-kind``. The final test
evaluation (its theta, bound, scales and Tier 2 weights) and each round's validation (its weights)
are pinned the same way: a coordinator cannot difference route or pair counts of the same patients
by asking again with another threshold or other weights for the same round.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..config import RunConfig
from ..aggregates.histogram import HistogramGrid
from .site_policy import DEFAULT_POLICY, PolicyViolation, SitePolicy

PINNED_KINDS = ("freeze-tier1", "calibration", "tier2-calibration", "tier2-gate", "conformal-tier1", "conformal-tier2",
                "risk-groups", "followup", "hazard", "evaluation")
ROUND_KIND = "validation-"  # + the round number: one set of weights scored per validation round
ROUND_KINDS = (ROUND_KIND, "validation-tier2-")  # Tier 1 and Tier 2 validation rounds
MIN_EPSILON = 0.05  # a smaller target makes sigma enormous (and its calibration slow): refused as absurd
MIN_NOISE_MULTIPLIER = 0.3  # a coordinator-set sigma below this gives no usable budget in one step


def digest(*arrays: dict[str, np.ndarray] | np.ndarray | str) -> str:
    """A short SHA-256 of names, shapes and bytes (what a pin compares)."""
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, dict):
            for k in sorted(a):
                v = np.ascontiguousarray(a[k])
                h.update(f"{k}|{v.dtype}|{v.shape}".encode())
                h.update(v.tobytes())
        elif isinstance(a, str):
            h.update(a.encode())
        else:
            v = np.ascontiguousarray(a)
            h.update(f"{v.dtype}|{v.shape}".encode())
            h.update(v.tobytes())
    return h.hexdigest()[:32]


class RequestPolicy:
    def __init__(self, policy: SitePolicy = DEFAULT_POLICY, pins: dict[str, str] | None = None) -> None:
        self.policy = policy
        self.pins: dict[str, str] = dict(pins or {})

    # ---- which phases, how many rounds, which DP --------------------------------------------
    def check_phase(self, phase: str) -> None:
        if phase not in self.policy.phases:
            raise PolicyViolation("phases", f"this site does not take part in phase '{phase}'",
                                  "the coordinator runs the phase with the other sites; the hospital adds it to "
                                  "'phases' in its policy file to take part")

    def check_setup(self, cfg: RunConfig, n_train: int | None = None) -> None:
        """The run config as sent at setup: DP requirements and knobs, training knobs, planned rounds.
        ``n_train``: the site's training patients (bounds delta); None skips that check."""
        p = self.policy
        self.check_dp(cfg, n_train)
        self.check_training(cfg)
        for name, rounds in (("rounds", cfg.rounds), ("tier2.rounds", cfg.tier2.rounds)):
            if rounds > p.max_rounds:
                raise PolicyViolation("max-rounds", f"the run plans {name} = {rounds}, above this site's "
                                      f"{p.max_rounds}", f"the coordinator sets {name} <= {p.max_rounds}")

    def check_dp(self, cfg: RunConfig, n_train: int | None) -> None:
        p, dp = self.policy.dp, cfg.dp
        if p.required and not dp.enabled:
            raise PolicyViolation("dp.required", "this site trains only with DP-SGD and the run has dp.enabled = false",
                                  "the coordinator sets dp.enabled = true (and dp.time-cuts) for the run")
        if not dp.enabled:
            return
        if not (MIN_EPSILON <= dp.target_epsilon <= p.max_epsilon):
            raise PolicyViolation("dp.max-epsilon", f"the run's dp.target-epsilon {dp.target_epsilon:g} is outside "
                                  f"[{MIN_EPSILON:g}, {p.max_epsilon:g}]",
                                  f"the coordinator sets {MIN_EPSILON:g} <= dp.target-epsilon <= {p.max_epsilon:g}")
        if n_train is not None and dp.target_delta > 1.0 / (10 * max(n_train, 1)):
            raise PolicyViolation("dp.target-delta", f"dp.target-delta {dp.target_delta:g} is above 1/(10 N) for this "
                                  f"site's N = {n_train} training patients",
                                  "the coordinator sets dp.target-delta <= 1/(10 x the largest site's training patients)")
        if dp.max_grad_norm > p.max_grad_norm:
            raise PolicyViolation("dp.max-grad-norm", f"dp.max-grad-norm {dp.max_grad_norm:g} is above this site's "
                                  f"{p.max_grad_norm:g}", f"the coordinator sets dp.max-grad-norm <= {p.max_grad_norm:g}")
        if 0 < dp.noise_multiplier < MIN_NOISE_MULTIPLIER:
            raise PolicyViolation("dp.max-epsilon", f"dp.noise-multiplier {dp.noise_multiplier:g} is below "
                                  f"{MIN_NOISE_MULTIPLIER:g}: no finite budget covers it",
                                  "the coordinator sets dp.noise-multiplier = 0 (calibrated from dp.target-epsilon)")
        if dp.seeded_noise and not p.allow_seeded_noise:
            raise PolicyViolation("dp.allow-seeded-noise", "the run asks for DP noise drawn from its seed, which the "
                                  "coordinator could regenerate and subtract",
                                  "the coordinator sets dp.seeded-noise = false (seeded noise is for simulations)")

    def check_training(self, cfg: RunConfig) -> None:
        """Learning rates, optimiser, local steps, batch size and widths within the site's bounds."""
        t, k = self.policy.training, self.policy.min_patients
        rates = (("lr", cfg.lr), ("tier2.lr", cfg.tier2.lr)) + ((("dp.lr", cfg.dp.lr),) if cfg.dp.enabled else ())
        for name, lr in rates:
            if lr > t.max_lr:
                raise PolicyViolation("training.max-lr", f"{name} = {lr:g} is above this site's {t.max_lr:g}",
                                      f"the coordinator sets {name} <= {t.max_lr:g}")
        if cfg.optimizer not in t.optimizers:
            raise PolicyViolation("training.optimizers", f"optimizer '{cfg.optimizer}' is not one this site runs",
                                  f"the coordinator uses one of {list(t.optimizers)}")
        for name, v in (("local-epochs", cfg.local_epochs), ("tier2.local-epochs", cfg.tier2.local_epochs)):
            if v > t.max_local_epochs:
                raise PolicyViolation("training.max-local-epochs", f"{name} = {v} is above this site's "
                                      f"{t.max_local_epochs}", f"the coordinator sets {name} <= {t.max_local_epochs}")
        for name, v in (("min-local-steps", cfg.min_local_steps), ("tier2.local-steps", cfg.tier2.local_steps),
                        ("dp.tier2-local-steps", cfg.dp.tier2_local_steps)):
            if v > t.max_local_steps:
                raise PolicyViolation("training.max-local-steps", f"{name} = {v} is above this site's "
                                      f"{t.max_local_steps}", f"the coordinator sets {name} <= {t.max_local_steps}")
        batches = (("batch-size", cfg.batch_size),) + ((("dp.batch-size", cfg.dp.batch_size),)
                                                       if cfg.dp.enabled and cfg.dp.batch_size > 0 else ())
        for name, b in batches:
            if b < k:
                raise PolicyViolation("min-patients", f"{name} {b} is below this site's floor of {k} patients per "
                                      "step", f"the coordinator sets {name} >= {k}")
        m, t2 = cfg.model, cfg.tier2
        widths = {"model.embed-dim": m.embed_dim, "model.prompt-dim": m.prompt_dim, "model.attn-dim": m.attn_dim,
                  "model.hidden-dim": m.hidden_dim, "model.reduce-dim": m.reduce_dim, "tier2.hidden-dim": t2.hidden_dim,
                  "tier2.time-dim": t2.time_dim, "tier2.branch-dim": t2.branch_dim}
        for name, w in widths.items():
            if w > t.max_width:
                raise PolicyViolation("training.max-width", f"{name} = {w} is above this site's {t.max_width}",
                                      f"the coordinator sets {name} <= {t.max_width}")

    def check_weight_values(self, arrays: dict[str, np.ndarray], what: str) -> None:
        """Every weight finite with |w| <= training.max-weight (crafted trap units need extreme values)."""
        bound = self.policy.training.max_weight
        for a in arrays.values():
            v = np.asarray(a)
            if v.dtype.kind not in "fiu":
                raise PolicyViolation("training.max-weight", f"the {what} hold a non-numeric array",
                                      "the coordinator sends the model's float weights")
            if v.size and not (np.isfinite(v).all() and float(np.abs(v).max()) <= bound):
                raise PolicyViolation("training.max-weight", f"the {what} hold a non-finite value or one above "
                                      f"{bound:g} in magnitude", f"the coordinator sends finite weights within "
                                      f"+-{bound:g}")

    def check_round(self, rnd: int, dp_enabled: bool | None = None) -> None:
        if rnd < 1 or rnd > self.policy.max_rounds:
            raise PolicyViolation("max-rounds", f"round {rnd} is outside 1..{self.policy.max_rounds}",
                                  "the run numbers its rounds from 1 and ends its training phase within max-rounds")
        if dp_enabled is False and self.policy.dp.required:
            raise PolicyViolation("dp.required", "a training round without DP-SGD was asked for",
                                  "the coordinator sets dp.enabled = true for the run")

    def check_cox_query(self, split: str) -> None:
        """At most ``max-cox-queries`` Cox core sums per run (kept in the run's pins)."""
        if split not in ("train", "val"):
            raise PolicyViolation("phases", f"the cox phase has no split '{split}'",
                                  "the coordinator asks the Cox core's sums on 'train' or 'val'")
        used = int(self.pins.get("cox-queries", "0"))
        if used >= self.policy.max_cox_queries:
            raise PolicyViolation("max-cox-queries", f"this run already asked {self.policy.max_cox_queries} Cox core "
                                  "sums", "the coordinator fits the Cox core in fewer Newton rounds (fewer "
                                  "penalizers), or the hospital raises max-cox-queries")
        self.pins["cox-queries"] = str(used + 1)

    def answer_once(self, kind: str, rnd: int) -> None:
        """A training round of ``kind`` (tier1 / tier2) is answered once per run: a second answer to the
        same round would be a fresh noisy draw (DP) or a second look with other weights."""
        key = f"{kind}-round-{int(rnd)}"
        if key in self.pins:
            raise PolicyViolation("one-answer-per-round", f"{kind} round {rnd} was already answered in this run",
                                  "the coordinator asks each training round once; the next round has the next number")
        self.pins[key] = "answered"

    # ---- floors ----------------------------------------------------------------------------------
    def floor(self, requested: int = 0) -> int:
        """Patients behind every released number: the site's floor, or the coordinator's if stricter."""
        return max(self.policy.min_patients, int(requested))

    # ---- weights the server sends ------------------------------------------------------------------
    @staticmethod
    def check_weights(sent: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], what: str) -> None:
        """A request's arrays must be exactly the model's state dict (names and shapes): an extra array
        or an odd shape would come back in the reply, a channel for data."""
        if sent == expected:
            return
        extra = sorted(set(sent) - set(expected))[:3]
        missing = sorted(set(expected) - set(sent))[:3]
        odd = sorted(k for k in set(sent) & set(expected) if tuple(sent[k]) != tuple(expected[k]))[:3]
        raise PolicyViolation("weights", f"the {what} sent do not match the run's model (unexpected {extra}, "
                              f"missing {missing}, other shape {odd})",
                              "the coordinator sends exactly the state dict of the model the run config builds")

    # ---- grids -------------------------------------------------------------------------------------
    def check_grid(self, grid: HistogramGrid) -> None:
        p = self.policy
        if grid.n_bins > p.max_bins:
            raise PolicyViolation("max-bins", f"a histogram of {grid.n_bins} bins was asked for; this site sends at "
                                  f"most {p.max_bins}", f"the coordinator uses hist-bins <= {p.max_bins}")
        if grid.ratio < p.min_bin_ratio:
            raise PolicyViolation("min-bin-ratio", f"the grid's bins are {grid.ratio:.6g} wide (upper / lower edge), "
                                  f"narrower than this site's {p.min_bin_ratio:g}",
                                  "the coordinator widens the range (hist-low, hist-high) or uses fewer bins")

    def check_time_grid(self, points: np.ndarray) -> None:
        if len(points) > self.policy.max_bins:
            raise PolicyViolation("max-bins", f"a Breslow grid of {len(points)} points was asked for; this site sends "
                                  f"at most {self.policy.max_bins}", f"the coordinator uses hazard-points <= "
                                  f"{self.policy.max_bins}")

    def pin(self, kind: str, grid_key: str, weights_key: str = "", max_grids: int = 1) -> None:
        """The first request of ``kind`` pins (grid, weights); a different one is refused afterwards.
        ``max_grids`` > 1 (noised releases, each charged to the budget): up to that many grids, with the
        same weights; the same request again is always answered."""
        if kind not in PINNED_KINDS and not any(kind.startswith(p) and kind[len(p):].isdigit() for p in ROUND_KINDS):
            raise ValueError(f"unknown pinned kind {kind!r}; known: {PINNED_KINDS} and "
                             f"{', '.join(p + '<round>' for p in ROUND_KINDS)}")
        value = f"{grid_key}#{weights_key}"
        old = self.pins.get(kind)
        if old is None or not self.policy.one_grid_per_kind:
            self.pins.setdefault(kind, value)
            return
        seen = old.split("\n")
        if value in seen:
            return
        weights_differ = any(v.split("#")[-1] != weights_key for v in seen)
        if weights_differ or len(seen) >= max_grids:
            what = "weights" if weights_differ else "grid"
            raise PolicyViolation("one-grid-per-kind", f"this site already answered a '{kind}' request this run "
                                  f"and this one has another {what}",
                                  "the coordinator asks each histogram kind once per run, with one grid "
                                  "(the same request again is answered)")
        self.pins[kind] = old + "\n" + value
