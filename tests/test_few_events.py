"""The coordinator's warning when DP-SGD meets sites with few training events (server/few_events.py)."""

from __future__ import annotations

import pytest

from rmmfed.core.messages import metric_names as M
from rmmfed.server.few_events import MIN_TRAIN_EVENTS, few_events_warning, train_events
from rmmfed.server.handshake import SiteInfo


def _site(name: str, patients: int, events: int, train: int) -> SiteInfo:
    return SiteInfo(1, name, {}, "0", {M.N_PATIENTS: patients, M.N_EVENTS: events, M.N_TRAIN: train})


def test_training_events_are_estimated_from_the_handshake_counts():
    assert train_events(_site("A", 65, 12, 39).counts) == pytest.approx(7.2)  # tcga-kirp's site A: 7 in truth
    assert train_events({}) == 0.0


def test_dp_sgd_at_sites_under_ten_training_events_is_named_once_and_never_without_dp():
    kirp_like = [_site("A", 65, 12, 39), _site("B", 65, 7, 39), _site("C", 140, 60, 85)]
    text = few_events_warning(True, kirp_like)
    assert text is not None and "2 site(s)" in text and "A 7" in text and "B 4" in text and "C " not in text
    assert f"fewer than {MIN_TRAIN_EVENTS}" in text and "dp.max-epsilon" in text
    assert few_events_warning(False, kirp_like) is None  # a permissive run trains without DP-SGD
    assert few_events_warning(True, [_site("C", 140, 60, 85)]) is None

