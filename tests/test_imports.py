"""No two modules of the package import each other, directly or through others: a rule two modules share lives in
one module below both (trained.py holds what merging and training both read of an adapter)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "sensorium"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, at its top or inside its functions."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from ``start`` back to it, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, chain = stack.pop()
        for target in graph.get(module, ()):
            if target == start:
                return [*chain, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*chain, target]))
    return None


def test_no_module_imports_itself_through_others():
    graph = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}
    # A package's __init__ re-exports its modules, and they import their siblings through it: not a cycle of code.
    graph = {module: {t for t in targets if t != module and not module.startswith(t + ".")}
             for module, targets in graph.items()}
    cycles = [chain for module in sorted(graph) if (chain := cycle_through(graph, module))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(chain) for chain in cycles[:5])
