"""The package's shape rules (docs/CONTRACTS.md): layering, no import circles, small files and functions."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sglang_cascade"
MAX_FUNCTION_LINES = 100
MAX_FILE_LINES = 600
# layer -> packages it must not import (drivers -> policies -> core)
FORBIDDEN = {
    "core": ("policies", "sim", "plugin", "router", "optimal", "planning", "testing"),
    "policies": ("sim", "plugin", "router", "optimal", "planning", "testing"),
}
ENGINE_LIBS = ("sglang", "torch", "flashinfer", "aiohttp", "fastapi", "httpx", "uvicorn")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "site" in path.relative_to(PACKAGE).parts:  # the CPU engine's sitecustomize shim, not package code
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def _imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Package-internal modules ``name`` imports anywhere (module level, functions, TYPE_CHECKING blocks)."""
    found = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sglang_cascade"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("sglang_cascade"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, tree in mods.items():
        is_pkg = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        graph[name] = {m for m in _imports(name, tree, is_pkg) if m in mods and m != name}
    return graph


def test_no_function_or_file_over_the_size_limits():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = path.read_text()
        if len(src.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.name}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, too_long


def test_layers_import_downwards_only():
    bad = []
    for name, deps in _graph().items():
        parts = name.split(".")
        layer = parts[1] if len(parts) > 1 else ""
        for dep in deps:
            dep_layer = dep.split(".")[1] if dep.count(".") else ""
            if dep_layer in FORBIDDEN.get(layer, ()):
                bad.append(f"{name} -> {dep}")
    assert not bad, bad


def test_core_and_policies_import_no_engine_or_http_library():
    bad = []
    for name, tree in _modules().items():
        if name.split(".")[1:2] not in (["core"], ["policies"]):
            continue
        for node in ast.walk(tree):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            )
            bad += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ENGINE_LIBS]
    assert not bad, bad


def test_no_import_circles_between_modules():
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a circle of the code itself
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles
