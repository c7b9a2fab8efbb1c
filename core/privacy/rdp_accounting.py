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
``get_noise_multiplier`` (:func:`noise_multiplier`), so a run's noise is unchanged.
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


def noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                     tolerance: float = 0.01) -> float:
    """The least sigma (to ``tolerance`` in epsilon) that keeps ``steps`` steps at ``sample_rate`` within
    ``target_epsilon``: the search of Opacus' ``get_noise_multiplier`` (double an upper bound from 20 until
    it is within the target, then halve the bracket until its upper end is within ``tolerance`` of it), on
    :func:`epsilon`. Raises ValueError when even sigma = :data:`SIGMA_CAP` spends more."""
    low, high, eps_high = 0.0, 10.0, float("inf")
    while eps_high > target_epsilon:
        high *= 2
        eps_high = epsilon([(high, sample_rate, steps)], target_delta)
        if high > SIGMA_CAP:
            raise ValueError("The privacy budget is too low.")
    while target_epsilon - eps_high > tolerance:
        mid = (low + high) / 2
        eps = epsilon([(mid, sample_rate, steps)], target_delta)
        if eps < target_epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high
