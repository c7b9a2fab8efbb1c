"""Layout rules of the code base: small modules (no file over 400 lines outside tests) and the protocol's
message types defined in one place."""

from __future__ import annotations

import re
from pathlib import Path

from rmmfed.core.messages import protocol as P

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("core", "flower", "client", "server", "simulations")


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(ROOT)): n for part in PARTS for p in (ROOT / part).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_message_types_are_written_only_in_the_protocol():
    """Every other module names a phase through core/messages/protocol.py, never by its string."""
    types = sorted({p.message_type for p in P.PHASES if "." in p.message_type}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(f'"{t}"') for t in types))
    found = [f"{p.relative_to(ROOT)}:{i}" for part in PARTS for p in (ROOT / part).rglob("*.py")
             if p != ROOT / "core" / "messages" / "protocol.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_every_phase_has_its_own_message_type_and_a_registered_handler():
    from rmmfed.client.client_app import make_client_app

    assert len({p.message_type for p in P.PHASES}) == len(P.PHASES)
    registered = set(make_client_app()._registered_funcs)  # Flower's "<category>.<action>" table
    assert {p.message_type if "." in p.message_type else f"{p.message_type}.default" for p in P.PHASES} == registered


# Spelled elsewhere on purpose: "c-index" is also a value of the select-metric setting; the server's
# round history names its per-event partial likelihood "val-pll" too (server/strategies.py).
SAME_WORD_ELSEWHERE = {"c-index", "val-pll"}


def test_reply_metric_names_are_written_only_in_metric_names():
    """Sites write and the coordinator reads every reply metric through core/messages/metric_names.py."""
    names = {k for p in P.PHASES for k in p.metrics} - SAME_WORD_ELSEWHERE
    found = [f"{p.relative_to(ROOT)}:{i}: {k}" for part in ("core", "client", "server")
             for p in (ROOT / part).rglob("*.py") if p.name not in ("metric_names.py", "protocol.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             for k in names if f'"{k}"' in line or f"'{k}'" in line]
    assert found == []
