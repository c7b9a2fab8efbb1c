"""core/ is the science without Flower or either side of the wire: it never imports flwr, client/,
server/ or simulations/ (checked on the source, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("flwr", "ray", "rmmfed.client", "rmmfed.server", "rmmfed.simulations")


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports (relative ones resolved against the rmmfed package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["rmmfed", path.parent.name]  # core/x.py -> rmmfed.core
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


def test_core_never_imports_flower_or_the_other_parts():
    offenders = {}
    for path in sorted((ROOT / "core").glob("*.py")):
        bad = [n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_CORE)]
        if bad:
            offenders[path.name] = bad
    assert not offenders, offenders


def test_the_import_scanner_sees_relative_and_lazy_imports(tmp_path):
    f = tmp_path / "core" / "x.py"
    f.parent.mkdir()
    f.write_text("from ..client import records\n\ndef g():\n    import flwr.app\n")
    assert set(_imports(f)) == {"rmmfed.client", "flwr.app"}
