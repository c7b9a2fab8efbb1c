"""RDP accounting of the sampled Gaussian mechanism, with Opacus' analysis and each step's RDP computed once.

Opacus' ``RDPAccountant.get_epsilon`` recomputes the RDP curve of every ``(sigma, q, steps)`` row of its
history at each of its 151 default orders on every call; the 99 fractional orders cost about 2.5 ms
each on this project's CPU (``_compute_log_a_for_frac_alpha``), so one call costs about 0.25 s. A site
asks for epsilon several times per round (the budget check before training, the figure after it), and
it calibrates sigma once per tier and run by bisection, about twelve such calls. Measured in one process
on the default cohort (cProfile, 3 Tier 1 rounds and 1 Tier 2 round): 31 of 90 s were this accounting,
against 2.6 s of Tier 1's DP-SGD steps.

The RDP of ``steps`` steps at ``(sigma, q)`` is ``steps`` times that of one step, and Opacus computes it
as exactly that product (``compute_rdp`` returns ``rdp * steps``). So :func:`step_rdp` keeps one step's
curve per ``(q, sigma)`` and :func:`epsilon` multiplies and sums the rows in Opacus' order, then converts
with Opacus' ``get_privacy_spent``: every epsilon is the float Opacus gives, bit for bit
(``tests/test_rdp_accounting.py`` checks it), and sigma comes from the same search as Opacus'
``get_noise_multiplier`` (:func:`noise_multiplier`), so a run's noise is unchanged. The search compares
epsilon with a threshold at each sigma it tries; the whole orders alone (closed form, cheap) bound epsilon
from above, and, since RDP does not decrease with the order, from below; the 151-order figure is computed
only where the bounds leave the comparison open (3-6 of about 12 sigmas on the default cohort's settings).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as analysis

ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)  # the orders Opacus' RDPAccountant uses
SIGMA_CAP = 1e6  # past this, no noise reaches the target (Opacus' MAX_SIGMA)


@lru_cache(maxsize=4096)
def step_rdp(q: float, sigma: float) -> np.ndarray:
    """The RDP of one step of the sampled Gaussian mechanism at each of :data:`ORDERS` (read-only)."""
    curve = analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
    curve.setflags(write=False)
    return curve


def epsilon(history, delta: float) -> float:
    """Epsilon at ``delta`` of ``history`` rows ``(sigma, q, steps)``, as ``RDPAccountant.get_epsilon`` gives it."""
    rows = list(history)
    if not rows:
        return 0.0
    total = sum([step_rdp(float(q), float(sigma)) * steps for sigma, q, steps in rows])
    eps, _ = analysis.get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)


_ORDERS = np.asarray(ORDERS, dtype=float)
_WHOLE = np.array([a.is_integer() for a in _ORDERS])  # orders Opacus computes in closed form (cheap)
# for each order, the largest whole order <= it that Opacus also uses (its RDP is a lower bound: RDP does not
# decrease with the order); 0 below 2, where the bound is RDP >= 0
_FLOOR = np.array([np.flatnonzero(_WHOLE & (_ORDERS <= a)).max(initial=-1) for a in _ORDERS])
MARGIN = 1e-9  # a bound decides only when it clears the threshold by this much (else the exact figure does)


def _bounds(q: float, sigma: float, steps: int, delta: float) -> tuple[float, float]:
    """(lower, upper) bounds on :func:`epsilon` of ``steps`` steps at ``(sigma, q)`` from the whole orders alone:
    the upper bound is the least conversion over the whole orders; the lower bound also lets every other order
    take the RDP of the whole order below it."""
    whole = np.array([analysis._compute_rdp(q, sigma, a) for a in _ORDERS[_WHOLE]]) * steps
    rdp = np.zeros_like(_ORDERS)
    rdp[_WHOLE] = whole
    lower_rdp = np.where(_FLOOR >= 0, rdp[np.maximum(_FLOOR, 0)], 0.0)
    lower_rdp[_WHOLE] = whole
    with np.errstate(invalid="ignore"):
        conv = -(np.log(delta) + np.log(_ORDERS)) / (_ORDERS - 1) + np.log((_ORDERS - 1) / _ORDERS)
        return float(np.nanmin(lower_rdp + conv)), float(np.nanmin(whole + conv[_WHOLE]))


class _Point:
    """epsilon at one sigma: its cheap bounds (:func:`_bounds`), and the full figure (all 151 orders,
    :func:`epsilon`) computed only when a comparison the bounds cannot settle asks for it."""

    def __init__(self, q: float, sigma: float, steps: int, delta: float, counter: list[int]) -> None:
        self.q, self.sigma, self.steps, self.delta, self.counter = q, sigma, steps, delta, counter
        self.lower, self.upper = _bounds(q, sigma, steps, delta)
        self.exact: float | None = None

    def value(self) -> float:
        if self.exact is None:
            self.counter[0] += 1
            self.exact = epsilon([(self.sigma, self.q, self.steps)], self.delta)
        return self.exact

    def _settled(self, threshold: float) -> bool | None:
        """True: epsilon < threshold for sure; False: > threshold for sure; None: the bounds cannot tell."""
        if self.exact is None and self.upper < threshold - MARGIN:
            return True
        if self.exact is None and self.lower > threshold + MARGIN:
            return False
        return None

    def below(self, threshold: float) -> bool:
        """``epsilon < threshold``, as the full figure answers it."""
        settled = self._settled(threshold)
        return self.value() < threshold if settled is None else settled

    def above(self, threshold: float) -> bool:
        """``epsilon > threshold``, as the full figure answers it."""
        settled = self._settled(threshold)
        return self.value() > threshold if settled is None else not settled

    def short_of(self, target: float, tolerance: float) -> bool:
        """``target - epsilon > tolerance``, as the full figure answers it."""
        settled = self._settled(target - tolerance)
        return target - self.value() > tolerance if settled is None else settled


def noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                     tolerance: float = 0.01, counter: list[int] | None = None) -> float:
    """The least sigma (to ``tolerance`` in epsilon) that keeps ``steps`` steps at ``sample_rate`` within
    ``target_epsilon``: the search of Opacus' ``get_noise_multiplier`` (double an upper bound from 20 until
    it is within the target, then halve the bracket until its upper end is within ``tolerance`` of it).
    Each comparison is answered as the full figure answers it, from the bounds over the whole orders where
    they settle it (:class:`_Point`), so sigma is Opacus' to the bit. ``counter[0]`` (if given) counts the
    full figures computed. Raises ValueError when even sigma = :data:`SIGMA_CAP` spends more."""
    counter = [0] if counter is None else counter
    low, high = 0.0, 10.0
    point = None
    while point is None or point.above(target_epsilon):
        high *= 2
        point = _Point(sample_rate, high, steps, target_delta, counter)
        if high > SIGMA_CAP:
            raise ValueError("The privacy budget is too low.")
    while point.short_of(target_epsilon, tolerance):
        mid = (low + high) / 2
        candidate = _Point(sample_rate, mid, steps, target_delta, counter)
        if candidate.below(target_epsilon):
            high, point = mid, candidate
        else:
            low = mid
    return high
