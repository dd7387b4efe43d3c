"""The layout of ``proxy/`` (docs/architecture.md), enforced.

Every import points down the layers: cli -> app -> ops -> proxying -> tokens ->
telemetry -> config -> http1 -> the root modules (errors, clock, jose). No import
cycle, counting imports inside functions and under TYPE_CHECKING. No module over
400 lines, no function over 60. ``layout_exceptions.txt`` lists what does not
hold yet; it only shrinks, and a listed exception that now holds fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / "proxy"
EXCEPTIONS = Path(__file__).with_name("layout_exceptions.txt")

#: the layers, bottom first; a module may import its own layer and those below
LAYERS = [
    ("proxy", "proxy.errors", "proxy.clock", "proxy.jose"),
    ("proxy.http1",),
    ("proxy.config", "proxy.http_errors"),
    ("proxy.telemetry",),
    ("proxy.tokens",),
    ("proxy.proxying",),
    ("proxy.ops",),
    ("proxy.app",),
    ("proxy.cli", "proxy.__main__"),
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PROXY.rglob("*.py"))}


def layer(mod: str) -> int:
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (mod == name or mod.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank >= 0, f"{mod} is in no layer: add it to LAYERS"
    return rank


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every proxy module ``mod`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    found.discard(mod)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {mod: imports(mod, path, known) for mod, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                found.append(node.name)
    return found


def problems() -> set[str]:
    edges = graph()
    found: set[str] = set()
    for mod, deps in edges.items():
        for dep in deps:
            if layer(dep) > layer(mod):
                found.add(f"upward {mod} -> {dep}")
    for comp in cycles(edges):
        found.add("cycle " + " ".join(comp))
    for mod, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            found.add(f"long-module {mod}")
        for name in long_functions(path):
            found.add(f"long-function {mod}.{name}")
    return found


def listed() -> set[str]:
    if not EXCEPTIONS.exists():
        return set()
    lines = EXCEPTIONS.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_layering_cycles_and_sizes() -> None:
    found, allowed = problems(), listed()
    new = sorted(found - allowed)
    fixed = sorted(allowed - found)
    assert not new, "new layout problems:\n" + "\n".join(new)
    assert not fixed, "these hold now; delete them from layout_exceptions.txt:\n" + "\n".join(fixed)


def test_the_walk_sees_a_cycle_and_an_upward_edge(tmp_path: Path) -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert layer("proxy.cli.main") > layer("proxy.http1.pool") > layer("proxy.errors")
    assert "proxy.tokens.manager" in graph()["proxy.proxying.runtime"]
