"""Flower's ``key=value`` strings (node and run config) and the site names that go into them."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..core.errors import UsageError

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def flower_value(value: bool | int | float | str) -> str:
    """A scalar as Flower's ``key=value`` parser (TOML) reads it; strings as TOML literal strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise UsageError(f"value {value!r} spans several lines; Flower's key=value config cannot carry it. "
                                 "Fix: use a single-line value")
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise UsageError(f"value {value!r} holds both quote characters (or a quote and a backslash); "
                             "Flower's key=value config cannot carry it. Fix: rename the path or value")
    raise UsageError(f"value {value!r} ({type(value).__name__}) is not a bool, int, float or str; "
                         "Flower's config is flat scalars. Fix: write lists as comma-separated text")


def flower_kv(items: Mapping[str, bool | int | float | str]) -> list[str]:
    """``{"rounds": 2, "out-dir": "/x"}`` -> ``["rounds=2", "out-dir='/x'"]`` (one item per key)."""
    return [f"{k}={flower_value(v)}" for k, v in items.items()]


def check_site_name(site: str) -> str:
    if not _SITE_NAME.match(site):
        raise UsageError(f"site name {site!r} is not usable. Fix: use letters, digits, '-', '_' or '.', "
                             "starting with a letter or digit (e.g. A or st-marys)")
    return site
