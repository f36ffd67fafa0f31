"""The package's shape: no import cycles, and start-up that pays only for what a command uses."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import stacembed

PACKAGE = Path(stacembed.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at the top or inside functions, TYPE_CHECKING aside."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
        found.update(t for t in targets if t in modules)
    return found - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_among_the_package_modules():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    assert graph["stacembed.pipeline"] >= {"stacembed.job", "stacembed.executors"}  # the graph is real
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _imported_after(statement: str) -> set[str]:
    heavy = ("torch", "timm", "dask", "distributed", "xarray", "stackstac", "odc", "pystac_client", "rasterio",
             "shapely", "pandas", "sklearn", "faiss")
    code = f"import sys; {statement}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_the_command_line_starts_without_the_heavy_libraries():
    assert _imported_after("import stacembed.cli") == set()


def test_a_run_imports_cluster_and_lazy_stack_libraries_only_when_it_uses_them():
    imported = _imported_after("import stacembed.pipeline, stacembed.feed, stacembed.executors.local, "
                               "stacembed.analysis.quicklook")
    assert "torch" in imported  # the model is what a run is for
    assert imported.isdisjoint({"dask", "distributed", "xarray", "stackstac", "odc", "pystac_client", "sklearn",
                                "faiss"})
