"""The honest gate: Tier 2 answers the referred only where it beat Tier 1 on federated validation.

After the Tier 2 rounds, every site scores the selected Tier 2 round and the frozen Tier 1 on its
held-out (val) complete cases under every masking pattern (:meth:`SiteSession.tier2_validation`) and
sends sums: the squared recovery errors of both tiers and, per pattern, the comparable-pair counts of
both tiers' risks. The server adds them up and opens the gate only when Tier 2 wins on both:

* recovery MSE strictly below Tier 1's, and
* masked C-index at least Tier 1's;

and then, once the conformal phase has calibrated both tiers' risk intervals on the same cases
(core/routing/conformal.py), only when Tier 2's intervals are narrower at the coverage both are calibrated to
(:func:`judge_intervals`): what recovery is for is a tighter, honest spread of the risk.

A closed gate is not a failure of the run: referred patients keep Tier 1's risk with the referral
flag (``tier2-not-used``), and the run summary, the model bundle and rmm-predict say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..messages import metric_names as M
from ..privacy.noised_release import sum_noise_var
from ..survival.concordance import ConcordanceCounts

VALIDATION_KEYS = (M.TIER2_VAL_N, M.TIER2_VAL_SSE_TIER1, M.TIER2_VAL_SSE_TIER2,
                   *M.TIER2_VAL_PAIRS["tier1"].counts, *M.TIER2_VAL_PAIRS["tier2"].counts)


@dataclass(frozen=True)
class Tier2Gate:
    open: bool
    reason: str
    n: float = 0.0  # (patient, pattern) rows behind the comparison
    mse_tier1: float = float("nan")
    mse_tier2: float = float("nan")
    c_index_tier1: float = float("nan")
    c_index_tier2: float = float("nan")
    sites: int = 0
    width_tier1: float = float("nan")  # mean conformal interval width on masked validation cases (judge_intervals)
    width_tier2: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> "Tier2Gate":
        """A bundle or metrics entry; absent (a run before the gate existed) = open, as it behaved."""
        if not d:
            return Tier2Gate(True, "no gate recorded (a run before 0.3): Tier 2 answers the referred")
        fields = {k: d[k] for k in Tier2Gate.__dataclass_fields__ if k in d}
        return Tier2Gate(**{k: float("nan") if v is None and k not in ("open", "reason") else v  # plain(): NaN -> None
                            for k, v in fields.items()})

    @staticmethod
    def always_open(reason: str = "the gate is off (tier2.gate = false)") -> "Tier2Gate":
        return Tier2Gate(True, reason)


@dataclass(frozen=True)
class ValidationSums:
    """Tier 1 against Tier 2 on the masked validation cases of one Tier 2 round, summed over the sites
    that answered (:meth:`SiteSession.tier2_validation` sends one site's): the (patient, pattern) rows,
    both tiers' squared recovery errors and both tiers' comparable-pair counts."""

    n: float = 0.0
    sse_tier1: float = 0.0
    sse_tier2: float = 0.0
    pairs_tier1: ConcordanceCounts = ConcordanceCounts()
    pairs_tier2: ConcordanceCounts = ConcordanceCounts()
    sites: int = 0

    @classmethod
    def of_sites(cls, site_metrics: list[dict]) -> "ValidationSums":
        """The sites' validation replies added up (a key a site left out counts as 0)."""
        s = {k: sum(float(m.get(k, 0.0)) for m in site_metrics) for k in VALIDATION_KEYS}
        pairs = (ConcordanceCounts(*(s[k] for k in M.TIER2_VAL_PAIRS[t].counts)) for t in ("tier1", "tier2"))
        return cls(s[M.TIER2_VAL_N], s[M.TIER2_VAL_SSE_TIER1], s[M.TIER2_VAL_SSE_TIER2], *pairs, len(site_metrics))

    def to_metrics(self) -> dict[str, float]:
        """Under the metric names the sites send (a round's history and a checkpoint keep this form)."""
        pairs = (self.pairs_tier1, self.pairs_tier2)
        return {M.TIER2_VAL_N: self.n, M.TIER2_VAL_SSE_TIER1: self.sse_tier1, M.TIER2_VAL_SSE_TIER2: self.sse_tier2,
                **{k: float(getattr(p, f)) for t, p in zip(("tier1", "tier2"), pairs)
                   for k, f in zip(M.TIER2_VAL_PAIRS[t].counts, ("concordant", "tied_risk", "comparable"))}}

    @classmethod
    def from_metrics(cls, m: dict[str, float], sites: int) -> "ValidationSums":
        """What :meth:`to_metrics` wrote, for ``sites`` sites (a checkpoint's round)."""
        return replace(cls.of_sites([m]), sites=int(sites))

    @property
    def mse_tier1(self) -> float:
        return self.sse_tier1 / self.n if self.n > 0 else float("nan")

    @property
    def mse_tier2(self) -> float:
        return self.sse_tier2 / self.n if self.n > 0 else float("nan")


def decide(sums: ValidationSums) -> Tier2Gate:
    """The gate, decided once: open iff Tier 2's recovery MSE < Tier 1's and its masked C-index >= Tier 1's."""
    n, sites = sums.n, sums.sites
    if n <= 0:
        return Tier2Gate(False, "no site had held-out complete cases to compare the tiers on: Tier 1 answers "
                         "the referred", sites=sites)
    mse1, mse2 = sums.mse_tier1, sums.mse_tier2
    c1, c2 = sums.pairs_tier1.c_index(), sums.pairs_tier2.c_index()
    figures = (f"recovery MSE {mse2:.4f} vs Tier 1's {mse1:.4f}, masked C-index {c2:.4f} vs {c1:.4f} "
               f"({int(n)} masked validation cases, {sites} site(s))")
    wins = mse2 < mse1 and c2 >= c1
    if wins:
        return Tier2Gate(True, f"Tier 2 beat Tier 1 on federated validation: {figures}", n, mse1, mse2, c1, c2, sites)
    return Tier2Gate(False, f"Tier 2 did not beat Tier 1 on federated validation ({figures}): the referred keep "
                     "Tier 1's risk", n, mse1, mse2, c1, c2, sites)


def gate_of_round(sums: dict[int, ValidationSums], kept_round: int, enabled: bool = True) -> Tier2Gate:
    """The gate of the kept Tier 2 round from its typed sums (:func:`decide`); always open when the gate is
    off (``tier2-gate = false``), closed when no validation of that round arrived."""
    if not enabled:
        return Tier2Gate.always_open()
    if kept_round not in sums:
        return Tier2Gate(False, f"no federated masked validation of Tier 2 round {kept_round} was received: "
                         "Tier 1 answers the referred")
    return decide(sums[kept_round])


def judge_intervals(gate: Tier2Gate, width_tier1: float, width_tier2: float, q_tier2: float = 0.0) -> Tier2Gate:
    """The gate after the conformal phase: an open gate stays open only when Tier 2's intervals are
    calibrated (a finite q-hat ``q_tier2``) and, where the widths are known (exact releases: with noised
    ones the sites send no SD sums, both widths are NaN), its mean interval width on the masked
    validation cases is below Tier 1's at the same nominal coverage. A closed gate stays closed."""
    widths = f"conformal interval width {width_tier2:.4g} vs Tier 1's {width_tier1:.4g} at equal nominal coverage"
    fields = {**gate.to_dict(), "width_tier1": float(width_tier1), "width_tier2": float(width_tier2)}
    if not gate.open:
        return Tier2Gate(**fields)
    unknown = math.isnan(width_tier1) and math.isnan(width_tier2)
    if not math.isfinite(q_tier2):
        widths = "Tier 2's draws are too narrow for a finite conformal q-hat" + ("" if unknown else f" ({widths})")
    elif unknown:
        return Tier2Gate(**{**fields, "reason": f"{gate.reason}; its conformal intervals are calibrated (widths "
                            "not released under noise)"})
    if math.isfinite(q_tier2) and width_tier2 < width_tier1:  # False for NaN and for an infinite Tier 2 width
        return Tier2Gate(**{**fields, "reason": f"{gate.reason}; {widths}"})
    return Tier2Gate(**{**fields, "open": False, "reason": f"Tier 2's risk intervals are not narrower than Tier 1's "
                        f"({widths}; {gate.reason.split(': ', 1)[-1]}): the referred keep Tier 1's risk"})


# ---- the gate from one noised release (sites that do not answer per-round validation) -------------
GATE_BOUND = 1.0  # each case's differences are clipped to +-this before the sums (sensitivity of one patient)
GATE_Z = 1.645  # one-sided 95%: a win must stand out of the sampling and DP noise together


@dataclass(frozen=True)
class NoisedGateSums:
    """The sites' ``query.tier2_gate`` replies added up (core/site/site_tier2.SiteTier2.gate_release): per
    masked val complete case (one masking pattern per patient), ``a`` = Tier 1's recovery error minus Tier 2's
    and ``b`` = Tier 1's |risk - risk seen| minus Tier 2's, each clipped to +-GATE_BOUND; ``noise_var``: the
    variance the sites' Laplace noise adds to each sum (0 for exact releases)."""

    n: float = 0.0
    sum_a: float = 0.0
    sumsq_a: float = 0.0
    sum_b: float = 0.0
    sumsq_b: float = 0.0
    noise_var: float = 0.0
    sites: int = 0

    @classmethod
    def of_sites(cls, site_metrics: list[dict]) -> "NoisedGateSums":
        s = {k: sum(float(m.get(k, 0.0)) for m in site_metrics) for k in M.GATE_SUMS}
        eps = [float(m.get(M.NOISED, 0.0)) for m in site_metrics]  # > 0: that site's sums are noised
        var = sum(sum_noise_var(e, 2, GATE_BOUND) for e in eps if e > 0)
        return cls(s[M.GATE_N], s[M.GATE_RECOVERY_SUM], s[M.GATE_RECOVERY_SUMSQ], s[M.GATE_RISK_SUM],
                   s[M.GATE_RISK_SUMSQ], var, len(site_metrics))

    def margin(self, total: float, sumsq: float) -> float:
        """How far ``total`` stands above GATE_Z standard deviations of sampling and noise (> 0: a win)."""
        sampling = max(sumsq - total ** 2 / self.n, 0.0) if self.n > 0 else 0.0
        return total - GATE_Z * math.sqrt(sampling + self.noise_var)


def decide_noised(sums: NoisedGateSums) -> Tier2Gate:
    """The gate from one noised release: open iff Tier 2 recovers the hidden features better AND puts the risk
    closer to the risk seen with them, each by more than GATE_Z standard deviations of sampling and DP noise."""
    if sums.n < 1:
        return Tier2Gate(False, "no site sent the gate's sums (masked val complete cases), so Tier 1 keeps "
                         "answering the referred", sites=sums.sites)
    a, b = sums.sum_a / sums.n, sums.sum_b / sums.n
    wins = sums.margin(sums.sum_a, sums.sumsq_a) > 0 and sums.margin(sums.sum_b, sums.sumsq_b) > 0
    figures = (f"per masked validation case, Tier 1's recovery error minus Tier 2's {a:+.4f} and Tier 1's distance to "
               f"the risk seen minus Tier 2's {b:+.4f}, > 0 where Tier 2 does better (about {round(sums.n)} cases from "
               f"{sums.sites} site(s), one noised release; a win must stand {GATE_Z} sd above sampling and DP noise)")
    if wins:
        return Tier2Gate(True, f"Tier 2 beat Tier 1 on the noised federated validation: {figures}", sums.n,
                         sites=sums.sites)
    return Tier2Gate(False, f"Tier 2 did not beat Tier 1 on the noised federated validation ({figures}): the referred "
                     "keep Tier 1's risk", sums.n, sites=sums.sites)
