"""The house's shape: no import cycles between modules and no upward arrows between packages.

`agent_node` imports only `inference_node.api` from the inference side (stubs and reasons,
importable without mlx), `inference_node` never imports `agent_node`, and `studio_common`
imports neither. Lazy imports inside functions count for the arrows; for cycles, what runs at
import time counts (module level, outside `if TYPE_CHECKING:`), and a package's `__init__`
re-exporting its own modules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent_node", "inference_node", "studio_common")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes: list[ast.AST] = []
    if top_level_only:
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            nodes.extend(ast.walk(stmt) if isinstance(stmt, ast.Import | ast.ImportFrom | ast.If
                                                      | ast.Try) else [])
    else:
        nodes = list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {m for m in out if m in MODULES and m != name}


def test_no_upward_arrows_between_the_packages() -> None:
    def allowed(source: str, target: str) -> bool:
        side, other = source.partition(".")[0], target.partition(".")[0]
        if side == "studio_common":
            return other == "studio_common"
        if side == "inference_node":
            return other != "agent_node"
        return other != "inference_node" or target.startswith("inference_node.api")

    wrong = [f"{name} -> {target}" for name, path in MODULES.items()
             for target in _imports(name, path, top_level_only=False)
             if not allowed(name, target)]
    assert wrong == []


def test_no_import_cycles_between_modules() -> None:
    graph = {name: {t for t in _imports(name, path, top_level_only=True)
                    if not (path.name != "__init__.py" and name.startswith(t + "."))
                    and not (path.name == "__init__.py" and t.startswith(name + "."))}
             for name, path in MODULES.items()}
    cycles, stack, done = [], [], set()

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert cycles == []
