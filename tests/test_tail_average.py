"""The mean of a phase's last rounds' weights (server/tail_average.py), and a run that keeps it."""

from __future__ import annotations

import numpy as np
import pytest

from rmmfed.server.tail_average import TailAverage


def _w(v: float, counter: int) -> dict[str, np.ndarray]:
    return {"a": np.full((2, 3), v, dtype=np.float32), "b": np.array([v, -v]), "n": np.array(counter, dtype=np.int64)}


def test_the_mean_covers_only_the_rounds_from_the_first_averaged_one():
    t = TailAverage(first=3)
    for rnd, v in enumerate([10.0, 20.0, 1.0, 2.0, 6.0], start=1):
        t.add(rnd, _w(v, rnd))
    m = t.mean()
    assert t.rounds == [3, 4, 5] and t.describe() == "rounds 3-5"
    np.testing.assert_allclose(m["a"], 3.0) and np.testing.assert_allclose(m["b"], [3.0, -3.0])
    assert m["a"].dtype == np.float32 and m["b"].dtype == np.float64


def test_integer_arrays_keep_the_last_rounds_value_and_a_round_counts_once():
    t = TailAverage(first=1)
    t.add(1, _w(1.0, 7))
    t.add(2, _w(3.0, 9))
    t.add(2, _w(100.0, 50))  # the same round again (a repeated aggregate) is not counted twice
    m = t.mean()
    assert int(m["n"]) == 9 and m["n"].dtype == np.int64
    np.testing.assert_allclose(m["a"], 2.0)


def test_the_average_survives_a_checkpoint_round_trip():
    t = TailAverage(first=2)
    for rnd in (1, 2, 3):
        t.add(rnd, _w(float(rnd), rnd))
    back = TailAverage.from_plain(t.to_plain())
    back.add(4, _w(4.0, 4))
    t.add(4, _w(4.0, 4))
    for k in ("a", "b", "n"):
        np.testing.assert_array_equal(back.mean()[k], t.mean()[k])
    np.testing.assert_allclose(back.mean()["a"], 3.0)


def test_asking_for_a_mean_before_any_averaged_round_says_how_to_fix_it():
    t = TailAverage(first=5)
    t.add(4, _w(1.0, 1))
    with pytest.raises(ValueError, match="Fix: ask for the mean only after a round at or after round 5"):
        t.mean()


def test_a_run_config_averaging_rounds_under_central_dp_is_refused_with_the_fix():
    """Flower's central-DP wrapper adds its noise after the strategy aggregates, so a mean of the strategy's
    aggregates would drop that noise from the kept model."""
    from rmmfed.core.config import RunConfig

    with pytest.raises(ValueError, match="Fix: set average-last = 0, or central-dp-noise = 0"):
        RunConfig().with_overrides({"average-last": 5, "central-dp-noise": 1.0})
    assert RunConfig().with_overrides({"average-last": 5}).average_last == 5
