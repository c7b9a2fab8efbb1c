"""The names of the scalar metrics sites send, defined once.

A site's code writes its reply metrics under these names (core/site/site_session.py, train.py, dp.py,
uncertainty_quality.py, tier2_gate.py), the coordinator reads them under the same names
(server/), and core/messages/protocol.py lists which phase's reply may carry which (the egress guard refuses
any other). Nothing else spells them.
"""

from __future__ import annotations

from dataclasses import dataclass

NUM_EXAMPLES = "num-examples"  # Flower's weighting of an update or a validation
READY = "ready"  # setup acknowledged
FROZEN = "frozen"  # final Tier 1 kept
N_PATIENTS, N_EVENTS, N_TRAIN = "n-patients", "n-events", "n-train"  # a site's size (the handshake's counts)


@dataclass(frozen=True)
class Pairs:
    """The comparable-pair counts of one group of patients, under ``prefix`` (core/survival/concordance.py)."""

    prefix: str = ""

    c_index = property(lambda self: f"{self.prefix}c-index")
    concordant = property(lambda self: f"{self.prefix}pairs-concordant")
    tied_risk = property(lambda self: f"{self.prefix}pairs-tied-risk")
    comparable = property(lambda self: f"{self.prefix}pairs-comparable")

    @property
    def counts(self) -> tuple[str, str, str]:
        return self.concordant, self.tied_risk, self.comparable

    @property
    def all(self) -> tuple[str, str, str, str]:
        return self.c_index, *self.counts


# ---- Tier 1 rounds -------------------------------------------------------------------------------
TRAIN_LOSS, TRAIN_TASK, TRAIN_REC, TRAIN_ANAT, TRAIN_NLL = (
    "train-loss", "train-task", "train-rec", "train-anat", "train-nll")
DP_EPSILON_ROUND, DP_EPSILON, DP_DELTA, DP_NOISE_MULTIPLIER = (
    "dp-epsilon-round", "dp-epsilon", "dp-delta", "dp-noise-multiplier")
N_VAL, VAL_PLL, VAL_EVENTS = "n-val", "val-pll", "val-events"  # validation (model selection)
COX_LOGLIK, COX_N, COX_EVENTS = "cox-loglik", "cox-n", "cox-events"  # one site's Cox core sums (core/survival/cox_core.py)
PAIRS = Pairs()  # the whole split

# ---- Tier 2 rounds -------------------------------------------------------------------------------
TIER2_PREFIX = "tier2-"  # + each Tier 2 loss term (core/tier2/tier2_train.LOSS_KEYS) and "steps"
TIER2_VAL_CASES, TIER2_VAL_N = "tier2-val-cases", "tier2-val-n"
TIER2_VAL_SSE_TIER1, TIER2_VAL_SSE_TIER2 = "tier2-val-sse-tier1", "tier2-val-sse-tier2"
TIER2_VAL_PAIRS = {"tier1": Pairs("tier2-val-tier1-"), "tier2": Pairs("tier2-val-tier2-")}
# the gate's one noised release (core/tier2/tier2_gate.py), per masked val complete case: Tier 1's recovery error
# minus Tier 2's, and Tier 1's |risk - risk seen| minus Tier 2's, each clipped; their count, sums and sums of squares
GATE_N, GATE_RECOVERY_SUM, GATE_RECOVERY_SUMSQ = "gate-n", "gate-recovery-sum", "gate-recovery-sumsq"
GATE_RISK_SUM, GATE_RISK_SUMSQ = "gate-risk-sum", "gate-risk-sumsq"
GATE_SUMS = (GATE_N, GATE_RECOVERY_SUM, GATE_RECOVERY_SUMSQ, GATE_RISK_SUM, GATE_RISK_SUMSQ)

# ---- calibration ---------------------------------------------------------------------------------
N_VALUES = "n-values"
NOISED = "noised"  # its epsilon (> 0): the histogram is epsilon-DP counts on every bin (core/privacy/noised_release.py), not merged bins
RISK_N, RISK1_SUM, RISK1_SUMSQ, RISK2_SUM, RISK2_SUMSQ = "risk-n", "risk1-sum", "risk1-sumsq", "risk2-sum", "risk2-sumsq"
RISK_SUMS = (RISK_N, RISK1_SUM, RISK1_SUMSQ, RISK2_SUM, RISK2_SUMSQ)  # both heads' training risk

# ---- evaluation on the test split ----------------------------------------------------------------
N_TEST, N_EVENTS_TEST = "n-test", "n-events-test"
TIER1_COVERED, SYSTEM_COVERED = Pairs("tier1-covered-"), Pairs("system-covered-")
TIER1_REFERRED, TIER2_REFERRED, SYSTEM_REFERRED = Pairs("tier1-referred-"), Pairs("tier2-referred-"), Pairs("system-referred-")
IBS_SUM, IBS_N = "ibs-sum", "ibs-n"  # survival evaluation sums (core/survival/survival_metrics.py)


def td_auc(j: int, part: str) -> str:
    """Cumulative/dynamic AUC sums at horizon ``j``: part 'num' or 'den'."""
    return f"td-auc-{part}-{j}"


def calibration(b: int, part: str) -> str:
    """Calibration group ``b``'s sums: part 'n', 'pred' or 'obs'."""
    return f"calib-{part}-{b}"


COX_CORE = Pairs("cox-core-")  # the Cox core's risk alone (runs with model.cox-core)
GROUPS = (PAIRS, TIER1_COVERED, SYSTEM_COVERED, TIER1_REFERRED, TIER2_REFERRED, SYSTEM_REFERRED, COX_CORE)
ROUTED = {"tier1": "routed-tier1", "tier2": "routed-tier2", "abstain": "routed-abstain"}
REFERRED, REFERRAL_RATE = "referred", "referral-rate"
TIER1_SECONDS, TIER2_SECONDS, TIER2_USED = "tier1-seconds", "tier2-seconds", "tier2-used"
HIGH_RISK_KEPT_TIER1 = "high-risk-context-kept-tier1"
MASKED_N, MASKED_REFERRED = "masked-complete-n", "masked-complete-referred"
RECOVERY_N, RECOVERY_SSE_TIER1, RECOVERY_SSE_TIER2 = "recovery-n", "recovery-sse-tier1", "recovery-sse-tier2"
UNCERTAINTY_TARGETS = ("error", "risk", "risk-sd")  # sigma^2 against the recovery error / the risk gap; the
# risk's SD over draws of the missing features (core/routing/risk_interval.py) against the risk gap
UNCERTAINTY_STATS = ("spearman", "ci-low", "ci-high")
UNCERTAINTY_N_PATIENTS, UNCERTAINTY_N_ROWS = "uncertainty-n-patients", "uncertainty-n-rows"


def uncertainty(target: str, stat: str) -> str:
    """``uncertainty-<error|risk>-<spearman|ci-low|ci-high>``."""
    return f"uncertainty-{target}-{stat}"


# ---- conformal intervals, value of information, risk-coverage (core/routing/conformal.py, core/routing/risk_uncertainty_evaluation.py)
CONFORMAL_TIERS = ("tier1", "tier2")


def conformal(tier: str, part: str) -> str:
    """Masked complete test rows inside the tier's conformal interval (part 'covered') and the sum of
    its widths ('width-sum'); rows are :data:`MASKED_N`."""
    return f"conformal-{tier}-{part}"


CONFORMAL_SD_SUM, CONFORMAL_SD_N = "sd-sum", "sd-n"  # a conformal reply: each patient's mean risk SD, summed
VOI_CHANGES, VOI_TOP_N, VOI_TOP_CHANGES = "voi-changes", "voi-top-n", "voi-top-changes"
VOI_TOP_CHANGES_P = "voi-top-changes-p"  # the top rows ranked by P(risk group changes) instead
VOI_TOP_SHARE = 0.10  # the top 10% of masked rows by expected change, at each site
KEPT_LEVELS = 8  # thresholds of the risk-coverage curve an evaluation request may carry


def kept(j: int) -> Pairs:
    """Tier 1's pair counts on the test patients whose routing score is <= threshold j."""
    return Pairs(f"kept-{j}-")


def kept_n(j: int) -> str:
    return f"kept-{j}-n"


EXTRA_EVALUATION = (*(conformal(t, p) for t in CONFORMAL_TIERS for p in ("covered", "width-sum")),
                    VOI_CHANGES, VOI_TOP_N, VOI_TOP_CHANGES, VOI_TOP_CHANGES_P,
                    *(k for j in range(KEPT_LEVELS) for k in (*kept(j).all, kept_n(j))))
