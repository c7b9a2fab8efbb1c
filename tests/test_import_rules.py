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


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth of the file (lazy imports inside a function
    count: a loop deferred to call time is still a loop), except under ``if TYPE_CHECKING:``."""
    mods = {}
    for part in PARTS:
        for path in sorted((root / part).rglob("*.py")):
            name = ".".join(["rmmfed", *path.relative_to(root).with_suffix("").parts])
            mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = (".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name and not mods[t].name == "__init__.py"}
    return graph


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, loops, counter = {}, {}, [], set(), [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        loops.append(sorted(comp))
    return loops


PARTS = ("core", "flower", "client", "server", "simulations")


def test_the_package_has_no_import_loops():
    assert import_loops(module_graph(ROOT)) == []


def test_the_loop_finder_sees_a_loop_made_of_lazy_imports(tmp_path):
    (tmp_path / "core").mkdir()
    for part in PARTS[1:]:
        (tmp_path / part).mkdir()
    (tmp_path / "core" / "a.py").write_text("from .b import f\n")
    (tmp_path / "core" / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "core" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n")
    (tmp_path / "core" / "d.py").write_text("from .c import x\n")
    assert import_loops(module_graph(tmp_path)) == [["rmmfed.core.a", "rmmfed.core.b"]]
