"""The package's import graph keeps data flowing one way: no import circle, counting every
import (module level, under ``TYPE_CHECKING``, inside functions), and no in-package import
hidden inside a function (only optional third-party extras, and the emulator, a program of its
own, may be loaded late). Read from the source with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import dreambooth_async

ROOT = Path(dreambooth_async.__file__).parent
TOP = ROOT.name


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _owner(target: str) -> str | None:
    """The module of the package that ``target`` names (a module, or a name in one)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, inside a function) for every import."""
    found: list[tuple[str, int, bool]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                named = [f"{base}.{alias.name}" for alias in child.names]
                targets = [name for name in named if name in MODULES] or [base]
            for target in targets:
                owner = _owner(target)
                if owner is not None and owner != module and owner.split(".")[0] == TOP:
                    found.append((owner, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _circles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    edges = {module: sorted({target for target, _, _ in found}) for module, found in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_scan_sees_the_package() -> None:
    # A scan that found nothing would pass the tests below for the wrong reason.
    assert len(MODULES) > 50
    assert (f"{TOP}._models", 1, False) not in GRAPH[f"{TOP}._client"]
    assert any(target == f"{TOP}._models" for target, _, _ in GRAPH[f"{TOP}._client"])


def test_no_import_circle() -> None:
    assert _circles() == []


def test_no_in_package_import_inside_a_function() -> None:
    hidden = [
        f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {target}"
        for module, found in GRAPH.items()
        for target, line, in_function in found
        # The emulator is a program of its own that needs Pillow: loading it late is fine.
        if in_function and not target.startswith(f"{TOP}.emulator")
    ]
    assert hidden == []


def test_no_module_below_the_client_imports_it() -> None:
    above = {TOP, f"{TOP}.sync", f"{TOP}._blocking"}
    importers = sorted(
        module
        for module, found in GRAPH.items()
        if any(target == f"{TOP}._client" for target, _, _ in found)
        and module not in above
        and not module.startswith(f"{TOP}.cli")
    )
    assert importers == []
