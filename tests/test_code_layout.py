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


def test_message_types_are_written_only_in_their_phase_module():
    """Every other module names a phase through its definition (core/phases/<phase>.py), never by its string."""
    found = []
    for phase in P.PHASES:
        if "." not in phase.message_type:
            continue
        own = ROOT / "core" / "phases" / f"{module_of(phase)}.py"
        found += [f"{p.relative_to(ROOT)}:{i}" for part in PARTS for p in (ROOT / part).rglob("*.py") if p != own
                  for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                  if f'"{phase.message_type}"' in line]
    assert found == []


def module_of(phase) -> str:
    return phase.answer.__module__.rsplit(".", 1)[-1]


def test_a_phase_is_followed_end_to_end_in_three_files():
    """Its module in core/phases/ (definition, request, checks, answer) names the coordinator's module that asks
    it and the site's code that computes it; the ClientApp's dispatch is generic (no phase named in it)."""
    import importlib

    for phase in P.PHASES:
        module = importlib.import_module(phase.answer.__module__)
        doc = module.__doc__ or ""
        named = set(re.findall(r"((?:server|core/site)/[a-z_0-9]+)\.(?:py|[A-Za-z_]+)", doc))
        assert any(n.startswith("server/") for n in named), (phase.name, doc)
        assert any(n.startswith("core/site/") for n in named) or phase.name == "handshake", (phase.name, doc)
        assert all((ROOT / f"{n}.py").is_file() for n in named), (phase.name, named)
    client_app = (ROOT / "client" / "client_app.py").read_text(encoding="utf-8")
    constants = {name for name, value in vars(P).items() if isinstance(value, type(P.SCHEMA))}
    assert [c for c in constants if re.search(rf"\bP\.{c}\b", client_app)] == []


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
