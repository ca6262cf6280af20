"""The house rules, read from the source: imports point one way (cli ->
journal -> cowfs), the libraries never import typer or rich, and no two
modules import each other, directly or around a circle.

Every import counts, at module level, inside a function or under ``if
TYPE_CHECKING:`` alike (an import put inside a function to dodge a circle
is still a circle, and so is a type a module can only name by importing
its caller). ``from pkg import name`` counts as an import of the module ``pkg.name``
when there is one, else of ``pkg`` itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from tests.conftest import REPO

PACKAGES = ("cowfs", "journal", "cli")


def module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def modules() -> dict[str, ast.Module]:
    """Every module of the three packages, parsed, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            found[module_name(rel)] = ast.parse(path.read_text(encoding="utf-8"), rel)
    return found


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST, module: str, known: set[str], *, with_typing: bool) -> Iterator[tuple[int, str]]:
    """(line, module imported) for each import in ``tree``, in functions too;
    the ones under ``if TYPE_CHECKING:`` only ``with_typing``."""
    package = module if module in PACKAGES else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and is_type_checking(node.test) and not with_typing:
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        stack.extend(ast.iter_child_nodes(node))


def graph(*, with_typing: bool = False) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: the first line that does}, for every import."""
    parsed = modules()
    known = set(parsed)
    edges: dict[str, dict[str, int]] = {}
    for name, tree in parsed.items():
        out = edges.setdefault(name, {})
        for line, target in sorted(imports(tree, name, known, with_typing=with_typing)):
            out.setdefault(target, line)
    return edges


def where(module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if module in PACKAGES else f"{path}.py"


def offending(importer: str, forbidden: tuple[str, ...]) -> list[str]:
    """``path:line imports module`` for each import of a ``forbidden`` package
    by a module of the package ``importer`` (``if TYPE_CHECKING:`` ones too)."""
    return [
        f"{where(name)}:{line} imports {target}"
        for name, out in sorted(graph(with_typing=True).items()) if name.split(".")[0] == importer
        for target, line in sorted(out.items()) if target.split(".")[0] in forbidden
    ]


def circles() -> list[list[str]]:
    """The import circles among the packages' modules: each strongly
    connected set of two or more modules (or one that imports itself), sorted."""
    full = graph(with_typing=True)
    edges = {name: {t for t in out if t in full} for name, out in full.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the house is small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1 or node in edges[node]:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cowfs_imports_neither_journal_nor_cli() -> None:
    assert offending("cowfs", ("journal", "cli")) == []


def test_libraries_import_neither_typer_nor_rich() -> None:
    assert offending("cowfs", ("typer", "rich")) == []
    assert offending("journal", ("typer", "rich")) == []


def test_journal_never_imports_cli() -> None:
    assert offending("journal", ("cli",)) == []


def test_no_import_circle_anywhere() -> None:
    assert circles() == []
