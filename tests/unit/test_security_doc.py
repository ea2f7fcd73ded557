"""docs/security.md lists each fix of issue 22's security review with the
tests that prove it: every item is there, and every test it names exists."""

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## The security review of issue 22"
NAMED = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def review_rows() -> Dict[int, str]:
    text = (ROOT / "docs" / "security.md").read_text()
    assert SECTION in text, "docs/security.md has no section for issue 22's review"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            rows[int(cells[0])] = cells[2]
    return rows


def named_tests(cell: str) -> List[Tuple[str, str]]:
    """(file, test) pairs; ``::name`` alone is in the file named last."""
    named, current = [], None
    for path, name in NAMED.findall(cell):
        current = path or current
        assert current is not None, f"::{name} names no file"
        named.append((current, name))
    return named


def functions_of(path: str) -> Set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_item_of_the_review_has_a_row_with_tests():
    rows = review_rows()
    assert sorted(rows) == list(range(1, 9))
    for item, cell in rows.items():
        assert named_tests(cell), f"item {item} names no test"


def test_every_test_the_security_doc_names_exists():
    missing = [
        f"{path}::{name}"
        for cell in review_rows().values()
        for path, name in named_tests(cell)
        if not (ROOT / path).is_file() or name not in functions_of(path)
    ]
    assert not missing, missing
