"""Rules of the code's shape that a review would otherwise have to re-check
by hand (issue 18): small classes and functions, one place that knows which
store runs, one place that knows Rasa."""

import ast
import functools
from pathlib import Path
from typing import Iterator, List, Tuple

PACKAGE = Path(__file__).resolve().parents[2] / "connectors" / "servicenow"
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60


def modules(*skipped: str) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if not set(path.relative_to(PACKAGE).parts) & {"emulator", *skipped}:
            yield path


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def oversized() -> List[Tuple[str, int]]:
    found = []
    for path in modules():
        for node in ast.walk(parsed(path)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
                found.append((f"class {path.relative_to(PACKAGE)}:{node.name}", size))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION_LINES:
                found.append((f"def {path.relative_to(PACKAGE)}:{node.name}", size))
    return found


def test_no_class_over_400_lines_and_no_function_over_60_outside_the_emulator():
    assert oversized() == []


def test_the_check_would_see_an_oversized_function(tmp_path, monkeypatch):
    long_body = "\n".join(f"    x{n} = {n}" for n in range(MAX_FUNCTION_LINES))
    (tmp_path / "big.py").write_text(f"def too_long():\n{long_body}\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    assert oversized() == [("def big.py:too_long", MAX_FUNCTION_LINES + 1)]


def test_only_the_store_package_knows_which_store_runs():
    # The core runs the same code on the memory store and on Redis: no
    # branch on the kind of store (``.shared`` was the flag) outside store/.
    for path in modules("store"):
        tree = parsed(path)
        flags = [
            node for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "shared"
            and not (isinstance(node.value, ast.Name) and node.value.id == "rasa")  # rasa.shared.* is a package
        ]
        assert not flags, path
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
        }
        assert not imported & {"MemoryStore", "RedisStore"} or path.name == "__init__.py", path


def test_no_asyncio_wait_for_outside_the_emulator():
    # Before Python 3.12, wait_for returns the answer when the answer and a
    # cancel come in the same turn (CPython gh-86296): a loop that runs until
    # cancelled runs on. tasks.within and tasks.event_within do not lose it.
    for path in modules():
        calls = [
            node.lineno for node in ast.walk(parsed(path))
            if isinstance(node, ast.Attribute) and node.attr == "wait_for"
        ]
        assert not calls, f"{path.relative_to(PACKAGE)}: asyncio.wait_for on lines {calls}"


def test_only_rasa_glue_imports_rasa():
    # The doctor reads a Rasa project's files with Rasa's own loaders; the
    # connector itself reaches Rasa through rasa_glue/ only, but for the
    # exception base of errors.py, a leaf below every package.
    for path in modules("rasa_glue", "doctor"):
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import):
                assert not any(alias.name.split(".")[0] == "rasa" for alias in node.names), path
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "rasa", path


def test_packages_import_downwards_only():
    # No cycle between packages (and leaf modules): each may import only what
    # lies below it, so a reader can start at the bottom (docs/how-it-works.md).
    def unit(module: str) -> str:
        top = module.split(".")[2] if module.count(".") >= 2 else ""
        return top if (PACKAGE / top).is_dir() else f"{top}.py"

    imports = {}
    for path in modules():
        here = unit("connectors.servicenow." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("connectors.servicenow."):
                there = unit(node.module)
                if there != here:
                    imports.setdefault(here, set()).add(there)

    def below(start: str) -> set:
        seen, todo = set(), [start]
        while todo:
            for there in imports.get(todo.pop(), ()):
                if there not in seen:
                    seen.add(there)
                    todo.append(there)
        return seen

    assert [name for name in imports if name in below(name)] == []
