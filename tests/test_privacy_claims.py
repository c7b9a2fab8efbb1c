"""docs/privacy.md's claim table cites only tests that exist.

The threat model (docs/privacy.md §1d) lists each privacy claim beside the tests that back it, as
``tests/<file>.py::<test name>`` (a parametrised test may carry its id: ``::<name>[<id>]``). Every
citation must name a test file of this repository that defines ``def <name>`` (a module-level test
function or a method of a ``Test*`` class), so that renaming or deleting a test that backs a claim
fails here instead of leaving the claim unbacked. Plain file reading and ``ast``: nothing is imported
or run, and nothing outside the repository is needed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "privacy.md"
TABLE_HEADING = re.compile(r"^#{2,4}\s+(?:[\w.]+\s+)?Claims and the tests that back them\s*$", re.MULTILINE)
CITATION = re.compile(r"tests/([A-Za-z0-9_/]+\.py)::([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]`|]*\])?")


def claim_rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(claim cell, [(file under tests/, test name)]) for each row of the claim table; [] if there is none."""
    m = TABLE_HEADING.search(text)
    if m is None:
        return []
    rows: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text[m.end():].splitlines():
        if line.startswith("#"):  # the next heading ends the section
            break
        if not line.startswith("|"):
            if rows and line.strip():  # text after the table ends it too
                break
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if all(set(c) <= set("-: ") for c in cells):  # the separator row
            continue
        if cells and cells[-1].lower().startswith("backed by"):  # the header row
            continue
        claim = cells[1] if len(cells) >= 3 else cells[0]
        rows.append((claim, CITATION.findall(cells[-1])))
    return rows


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """Names of the test functions ``path`` defines: module level, or methods of ``Test*`` classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(n for n in names if n.startswith("test"))


def missing_citations(citations: list[tuple[str, str]], root: Path = ROOT) -> list[str]:
    """Each citation that does not name an existing test function, as ``tests/<file>::<name> (why)``."""
    out = []
    for file, name in citations:
        path = root / "tests" / file
        if not path.is_file():
            out.append(f"tests/{file}::{name} (no such file)")
        elif name not in defined_tests(path):
            out.append(f"tests/{file}::{name} (no test function of that name in the file)")
    return out


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_privacy_doc_has_a_claim_table_and_every_claim_cites_a_test():
    rows = claim_rows(_doc())
    assert len(rows) >= 10, "docs/privacy.md has no claim table under 'Claims and the tests that back them'"
    unbacked = [claim for claim, cited in rows if not cited]
    assert unbacked == [], f"claims without a test (cite tests/<file>.py::<test name>): {unbacked}"


def test_every_test_the_claim_table_cites_exists():
    cited = [c for _, cs in claim_rows(_doc()) for c in cs]
    assert cited
    assert missing_citations(cited) == []


def test_every_test_cited_anywhere_in_the_privacy_doc_exists():
    assert missing_citations(CITATION.findall(_doc())) == []


def test_a_claim_citing_a_missing_test_fails_the_check():
    doc = "\n".join([
        "## 1. Threat model", "", "### 1d. Claims and the tests that back them", "",
        "| # | Claim | Backed by |", "|---|---|---|",
        "| 1 | real | `tests/test_privacy_claims.py::test_a_claim_citing_a_missing_test_fails_the_check` |",
        "| 2 | parametrised | `tests/test_privacy_claims.py::test_every_test_the_claim_table_cites_exists[some-id]` |",
        "| 3 | renamed | `tests/test_privacy_claims.py::test_that_was_renamed` |",
        "| 4 | gone | `tests/test_no_such_file.py::test_anything` |",
        "| 5 | a helper, not a test | `tests/test_privacy_claims.py::claim_rows` |",
        "| 6 | nothing cited | none |",
        "", "## 2. Next section", "| 7 | not a claim | `tests/test_no_such_file.py::test_outside` |",
    ])
    rows = claim_rows(doc)
    assert [claim for claim, _ in rows] == ["real", "parametrised", "renamed", "gone", "a helper, not a test",
                                            "nothing cited"]
    assert rows[-1][1] == []  # a claim without a citation is seen as such
    missing = missing_citations([c for _, cs in rows for c in cs])
    assert missing == ["tests/test_privacy_claims.py::test_that_was_renamed (no test function of that name in the file)",
                       "tests/test_no_such_file.py::test_anything (no such file)",
                       "tests/test_privacy_claims.py::claim_rows (no test function of that name in the file)"]
    assert claim_rows("# Privacy\n\nno table here\n") == []
