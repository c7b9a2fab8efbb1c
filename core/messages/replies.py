"""The payloads several phases share: one record of arrays, scalar metrics, weights with metrics, and one
histogram. Replies that belong to one phase live in its module (core/phases/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .record_names import ARRAYS, COUNTS, METRICS, Records


def arrays_of(records: Records, name: str) -> dict[str, np.ndarray]:
    """Record ``name`` of a message as numpy arrays (empty when absent)."""
    return {k: np.asarray(v) for k, v in (records.get(name) or {}).items()}


def scalars_of(records: Records) -> dict[str, float]:
    return {k: float(v) for k, v in (records.get(METRICS) or {}).items()}


@dataclass
class ArraysPayload:
    """A payload that is one record of arrays, named by the subclass's ``RECORD`` (the frozen Tier 1, feature
    sums, Breslow sums)."""

    arrays: dict[str, np.ndarray]
    RECORD: ClassVar[str] = ARRAYS

    def to_records(self) -> Records:
        return {self.RECORD: dict(self.arrays)}

    @classmethod
    def from_records(cls, r: Records):
        return cls(arrays_of(r, cls.RECORD))

    @staticmethod
    def alias() -> property:
        """The arrays under the name a subclass's readers use (``weights``, ``sums``)."""
        return property(lambda self: self.arrays)


@dataclass
class MetricsReply:
    """Scalar metrics only (setup, freeze, validation, evaluation)."""

    metrics: dict[str, float]

    def to_records(self) -> Records:
        return {METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "MetricsReply":
        return cls(scalars_of(r))


@dataclass
class RoundReply:
    """A training round's weights and its metrics (Tier 1 or Tier 2)."""

    weights: dict[str, np.ndarray]
    metrics: dict[str, float]

    def to_records(self) -> Records:
        return {ARRAYS: dict(self.weights), METRICS: dict(self.metrics)}

    @classmethod
    def from_records(cls, r: Records) -> "RoundReply":
        return cls(arrays_of(r, ARRAYS), scalars_of(r))


@dataclass
class HistogramReply:
    """Bins (core/aggregates/merged_histogram.MergedBins.to_arrays; every bin when noised) and, for some phases,
    scalar sums and the release's epsilon (``noised``)."""

    counts: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_records(self) -> Records:
        return {COUNTS: dict(self.counts), **({METRICS: dict(self.metrics)} if self.metrics else {})}

    @classmethod
    def from_records(cls, r: Records) -> "HistogramReply":
        return cls(arrays_of(r, COUNTS), scalars_of(r))
