"""rmm's RDP accounting gives Opacus' figures bit for bit, each step's curve computed once
(core/privacy/rdp_accounting.py): a pure speed change must leave every run's noise and epsilon as they were."""

from __future__ import annotations

import warnings

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from rmmfed.core.privacy import rdp_accounting as R


@pytest.fixture(autouse=True)
def quiet():  # Opacus warns when the best order is the largest one; not what these tests look at
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize("history", [
    [(1.07, 0.32, 12)],
    [(1.07, 0.32, 12), (1.07, 0.32, 40), (0.9, 0.5, 3)],  # rows in Opacus' order, repeats included
    [(4.0, 1.0, 1)],  # full batch
    [(0.6, 0.05, 400), (2.5, 0.2, 7)],
])
def test_epsilon_equals_opacus_rdp_accountant_to_the_last_bit(history):
    acc = RDPAccountant()
    acc.history = list(history)
    for delta in (1e-5, 1e-3):
        assert R.epsilon(history, delta) == acc.get_epsilon(delta)


@pytest.mark.parametrize("target,delta,q,steps", [(6.0, 1e-5, 0.31, 150), (2.0, 1e-5, 0.45, 400), (0.5, 1e-4, 1.0, 30),
                                                   (8.0, 1e-6, 0.08, 1200), (2.0, 1e-5, 0.3, 400), (1.0, 1e-5, 0.6, 40),
                                                   (0.5, 1e-5, 0.9, 3), (50.0, 1e-5, 0.5, 10)])
def test_the_noise_multiplier_equals_opacus_get_noise_multiplier(target, delta, q, steps):
    ours = R.noise_multiplier(target, delta, q, steps)
    assert ours == get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                                        accountant="rdp")
    assert R.epsilon([(ours, q, steps)], delta) <= target  # within the target, and close to it
    assert R.epsilon([(ours, q, steps)], delta) > target - 0.011


def test_one_steps_curve_is_computed_once_per_sigma_and_rate():
    R.step_rdp.cache_clear()
    for steps in range(1, 31):  # a run's history grows by a round's steps: the curve is reused
        R.epsilon([(1.3, 0.27, 5 * steps)], 1e-5)
    assert R.step_rdp.cache_info().misses == 1 and R.step_rdp.cache_info().hits == 29


def test_a_budget_no_noise_can_meet_is_refused():
    with pytest.raises(ValueError, match="too low"):
        R.noise_multiplier(1e-9, 1e-12, 1.0, 10_000)


def test_the_search_computes_the_full_figure_only_where_the_whole_orders_cannot_settle_a_comparison():
    counter = [0]
    R.noise_multiplier(6.0, 1e-5, 0.31, 150, counter=counter)  # Opacus' search evaluates about 12 sigmas here
    assert 1 <= counter[0] <= 6
