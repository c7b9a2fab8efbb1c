"""The error rmm-client raises for an unusable command-line value or local file."""

from __future__ import annotations

from ..core.errors import UsageError


class ClientCliError(UsageError):
    """A command-line value or a local file is unusable; the message says how to fix it."""
