"""The import contract beyond layers: no import cycle between modules, no private name imported
from another module. The layers themselves are import-linter's contract in pyproject.toml
(`lint-imports`); `.ci/run` runs both.

A cycle counts imports made anywhere in a module (a function-level import is a dependency
too) except under `if TYPE_CHECKING:`. A package's `__init__` re-exporting its own modules
is not a cycle: importing `torchsmith.doctor.shapes` depends on that module, not on the
package's re-exports.

Usage: python tools/check_imports.py [--src src]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "torchsmith"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, name: str, modules: set[str]) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for each import of this package outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # `from pkg import submodule` depends on the submodule itself
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target, []) if target in modules else (node.lineno, base, [alias.name]))
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def check(src: Path) -> list[str]:
    files = {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    problems = []
    for name, path in files.items():
        for line, target, names in imports_of(path, name, modules):
            if target in modules and target != name:
                graph[name].add(target)
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    where = path.relative_to(src.parent) if src.parent in path.parents else path
                    problems.append(f"{where}:{line}: imports the private name {imported} from {target}")
    for cycle in find_cycles(graph):
        edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
        problems.append("import cycle between " + ", ".join(cycle) + ": " + "; ".join(edges))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args(argv)
    problems = check(args.src)
    for problem in problems:
        print(problem)
    if problems:
        print("fix these imports: move the shared piece down a layer, or make the name public")
        return 1
    print("no import cycles and no private names imported across modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
