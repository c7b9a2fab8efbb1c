"""Typed errors. Each message names what is wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class RmmError(ValueError):
    """Base class of every error rmm raises on purpose."""


class SiteDataError(RmmError):
    """A site folder breaks the data contract (docs: site data format).

    Carries the offending file, the field and the fix so that a hospital's IT team can act on
    the message alone.
    """

    def __init__(self, file: str | Path, field: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: field '{field}': {problem}. Fix: {fix}")


class SchemaMismatchError(RmmError):
    """A site's modalities or dims disagree with the run's schema."""


class UsageError(RmmError):
    """A command-line value, a local file or a required program is unusable; the message says how to fix it."""


class ConfigError(RmmError):
    """A run configuration value is invalid."""


class SurvivalInputError(RmmError):
    """Survival inputs (risk, time, event) are malformed: shape, NaN, or event not in {0, 1}."""


class NoComparablePairsError(SurvivalInputError):
    """A C-index was requested on data with no comparable pairs (e.g. no events)."""


class HistogramError(RmmError):
    """Values or counts handed to the federated histogram are invalid."""


class InstanceBudgetError(RmmError):
    """A site's bags, kept whole at the width the model reads, would not fit the memory budget."""


class FittedTwoTierError(RmmError):
    """A fitted two-tier decision (core/routing/fitted_two_tier.py) holds a value it cannot route with; the
    message names the field and the fix."""
