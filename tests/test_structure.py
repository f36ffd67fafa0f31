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


START_UP = """
import gc, sys
from stacembed.cli import start_up

with start_up() as ready:
    print(gc.isenabled())
    ready()
    print(gc.isenabled(), gc.get_freeze_count() > 0)
with start_up():  # ended without the call: the collector runs again all the same
    print(gc.isenabled())
print(gc.isenabled())
gc.disable()
with start_up() as ready:  # a program that turned the collector off keeps it off
    ready()
print(gc.isenabled())
"""


def test_start_up_pauses_the_collector_until_it_is_over():
    out = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "False", "True", "False"]


RUN_GC = """
import gc, sys
import stacembed.job, stacembed.readers.direct as direct
from stacembed.cli import main

during = []
load, frame = stacembed.job.Inputs.load_embedder, direct.DirectReader._frame
stacembed.job.Inputs.load_embedder = lambda *a, **k: (during.append(("build", gc.isenabled())), load(*a, **k))[1]
direct.DirectReader._frame = lambda *a, **k: (during.append(("read", gc.isenabled())), frame(*a, **k))[1]
main(["run", "--model", sys.argv[1], "--out", sys.argv[2], "--max-items", "1", "-q"], standalone_mode=False)
print(sorted(set(during)), gc.isenabled(), gc.get_freeze_count() > 0)
"""


def test_a_run_builds_its_model_without_the_collector_and_reads_with_it(tmp_path):
    """``stacembed run``: the collector is off while imports and the model build make objects
    that live as long as the process, and on (past those, frozen) before the first pixel is read."""
    from conftest import DEMO_CARD

    done = subprocess.run([sys.executable, "-c", RUN_GC, str(DEMO_CARD), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[('build', False), ('read', True)] True True", done.stderr
    assert (tmp_path / "out" / "catalog.json").exists()
