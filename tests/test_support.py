"""The house rule for tests: a test module shares helpers through
``tests/support/`` and fixtures through ``tests/conftest.py``, never by
importing another test module."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def sideways_imports(path: Path) -> list[str]:
    """``line: module`` for each import in ``path`` of a test module or of conftest."""
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: from . import test_x, from .test_x import y
            modules = [node.module or ""] + [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            last = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
            if last.startswith("test_") or last == "conftest":
                found.append(f"{node.lineno}: {module}")
                break
    return found


def test_no_test_module_imports_another() -> None:
    modules = sorted(TESTS.glob("test_*.py")) + sorted((TESTS / "support").glob("*.py"))
    assert len(modules) > 40
    found = {p.name: sideways_imports(p) for p in modules}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    path = tmp_path / "test_x.py"
    path.write_text("import test_a\nimport tests.test_b as b\nfrom tests.test_c import f\nfrom test_d import g\n"
                    "from tests import test_e\nfrom . import test_f\nfrom .test_g import h\nfrom tests.conftest import R\n"
                    "def inner():\n    from tests.test_i import j\n"
                    "import os\nfrom tests.support.trees import snapshot\nfrom tests import support\nfrom testing import test_k\n")
    assert sideways_imports(path) == [
        "1: test_a", "2: tests.test_b", "3: tests.test_c", "4: test_d", "5: tests.test_e", "6: test_f", "7: test_g",
        "8: tests.conftest", "10: tests.test_i",
    ]
