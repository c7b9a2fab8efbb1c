"""Reference tests for rmmfed.core.survival.concordance (Harrell's C from pair counts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines.utils import concordance_index

from rmmfed.core.survival.concordance import ConcordanceCounts, c_index, combined_c_index, concordance_counts
from rmmfed.core.errors import NoComparablePairsError, RmmError, SurvivalInputError


def tied_data(seed, n=150):
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 20, size=n).astype(float)          # tied times
    event = (rng.random(n) < 0.5).astype(int)
    risk = rng.integers(-4, 5, size=n).astype(float)           # tied risks
    return time, risk, event


def naive_counts(time, risk, event):
    """Plain loops over ordered pairs with the lifelines rules."""
    conc = tied = comp = 0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                comp += 1
                conc += risk[i] > risk[j]
                tied += risk[i] == risk[j]
    return ConcordanceCounts(float(conc), float(tied), float(comp))


@pytest.mark.parametrize("seed", range(6))
def test_matches_lifelines(seed):
    time, risk, event = tied_data(seed)
    ref = concordance_index(time, -risk, event)
    assert abs(concordance_counts(time, risk, event).c_index() - ref) < 1e-12
    assert abs(c_index(time, risk, event) - ref) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_matches_naive_counts(seed):
    time, risk, event = tied_data(seed, n=60)
    assert concordance_counts(time, risk, event) == naive_counts(time, risk, event)


def test_chunking_does_not_change_counts(monkeypatch):
    import rmmfed.core.survival.concordance as mod

    time, risk, event = tied_data(7, n=300)
    full = concordance_counts(time, risk, event)
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 1000)           # 3 rows per chunk
    assert concordance_counts(time, risk, event) == full


def test_counts_add_and_combine():
    time, risk, event = tied_data(1, n=200)
    rng = np.random.default_rng(0)
    site = rng.integers(0, 4, size=200)
    parts = [concordance_counts(time[site == s], risk[site == s], event[site == s]) for s in range(4)]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    for field in ("concordant", "tied_risk", "comparable"):
        assert getattr(total, field) == sum(getattr(p, field) for p in parts)
    # combined == naive C over within-site pairs only
    conc = tied = comp = 0.0
    for s in range(4):
        c = naive_counts(time[site == s], risk[site == s], event[site == s])
        conc, tied, comp = conc + c.concordant, tied + c.tied_risk, comp + c.comparable
    assert combined_c_index(parts) == pytest.approx((conc + 0.5 * tied) / comp, rel=1e-14)
    # one site: combined == that site's index
    assert combined_c_index([parts[2]]) == pytest.approx(
        c_index(time[site == 2], risk[site == 2], event[site == 2]), abs=1e-14)


def test_perfect_and_reversed_ranking():
    time = np.arange(1.0, 11.0)
    event = np.ones(10)
    assert c_index(time, -time, event) == 1.0                  # earlier death = higher risk
    assert c_index(time, time, event) == 0.0
    assert concordance_counts(time, -time, event).c_index() == 1.0
    assert concordance_counts(time, np.zeros(10), event).c_index() == 0.5


def test_tied_time_event_vs_censored_is_comparable():
    c = concordance_counts([2.0, 2.0], [1.0, 0.0], [1, 0])
    assert c == ConcordanceCounts(1.0, 0.0, 1.0)
    assert concordance_counts([2.0, 2.0], [1.0, 0.0], [1, 1]).comparable == 0.0


def test_no_events_errors_and_nan():
    time, risk = np.arange(5.0), np.zeros(5)
    with pytest.raises(NoComparablePairsError, match="no event|none of"):
        c_index(time, risk, np.zeros(5))
    with pytest.raises(NoComparablePairsError):
        c_index([1.0, 1.0], [0.0, 1.0], [1, 1])                # only tied events: 0 pairs
    assert issubclass(NoComparablePairsError, RmmError)
    counts = concordance_counts(time, risk, np.zeros(5))
    assert counts == ConcordanceCounts(0.0, 0.0, 0.0)
    assert math.isnan(counts.c_index())
    assert math.isnan(combined_c_index([]))


def test_input_errors():
    with pytest.raises(SurvivalInputError):
        concordance_counts([1.0, 2.0], [0.0], [1, 1])
    with pytest.raises(SurvivalInputError):
        concordance_counts([1.0, 2.0], [0.0, 1.0], [1, 2])
    with pytest.raises(SurvivalInputError):
        c_index([1.0, np.nan], [0.0, 1.0], [1, 1])
