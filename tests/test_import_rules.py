"""The package's import rules, read from the source: core/ is plain (no Flower, no other rmm part);
flower/ is the Flower adapter both sides share (Flower and core only); the hospital's code (client/)
and the coordinator's (server/) never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": ("flwr", "ray", "rmmfed.client", "rmmfed.server", "rmmfed.simulations"),
    "flower": ("rmmfed.client", "rmmfed.server", "rmmfed.simulations"),
    "client": ("rmmfed.server", "rmmfed.simulations"),
    "server": ("rmmfed.client", "rmmfed.simulations"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``; relative imports resolved inside rmmfed."""
    package = ["rmmfed", *path.relative_to(ROOT).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return out


def violations(part: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / part).rglob("*.py")):
        for line, module in imports_of(path):
            for prefix in FORBIDDEN[part]:
                if module == prefix or module.startswith(prefix + "."):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_each_part_imports_only_what_its_rules_allow(part):
    assert violations(part) == []


def test_the_rule_checker_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The checker itself: a planted import of each kind is found (so an empty list above means something)."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("import flwr.app\nfrom ..client import cli\n"
                                              "from rmmfed.server.queries import ask\nfrom . import errors\n"
                                              "def lazy():\n    import ray\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations("core") == ["core/bad.py:1 imports flwr.app", "core/bad.py:2 imports rmmfed.client",
                                  "core/bad.py:3 imports rmmfed.server.queries", "core/bad.py:6 imports ray"]
