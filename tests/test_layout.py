"""The shape of the house, checked from the source (see ARCHITECTURE.md).

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function,
as do ``importlib.import_module("literal")`` calls: a circle through a function-level import
still makes two modules change together, and still breaks on the first import that runs first.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("lightning_o2nc", "benchmarks")
#: ``wc -l`` of a module of the package or the benchmarks; tests aside.
MAX_LINES = 450


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package and the benchmarks (not what
    a run leaves in the git-ignored ``benchmarks/_work``, such as joblib's cached sources)."""
    files = {}
    for root in ROOTS:
        for path in sorted((repo / root).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if "_work" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a relative import ``level`` dots up from ``module``."""
    if not level:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name ``path`` imports, at any depth of its syntax tree."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            # `from package import submodule` imports the submodule; other names live in `base`
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            name = node.args[0].value
            level = len(name) - len(name.lstrip("."))
            yield _absolute(module, is_package, level, name.lstrip(".") or None)


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    """Module -> the modules of the package and the benchmarks it imports (itself left out).

    A name that is not a module of ours (``from .storage import redact``) points at the nearest
    enclosing module that is (``...sweeps.storage``); third-party names drop out.
    """
    files = module_files(repo)
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def test_no_import_circles_in_the_package_or_the_benchmarks():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk found the code
    assert import_circles(graph) == []


def test_the_circle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "lightning_o2nc"
    package.mkdir()
    (tmp_path / "benchmarks").mkdir()
    (package / "__init__.py").write_text("")
    (package / "storage.py").write_text("def opener():\n    from .proxy import client\n")
    (package / "proxy.py").write_text("from lightning_o2nc.storage import opener\n")
    (package / "leaf.py").write_text("import importlib\nimportlib.import_module('.proxy', 'x')\n")
    graph = import_graph(tmp_path)
    assert graph["lightning_o2nc.leaf"] == {"lightning_o2nc.proxy"}
    assert import_circles(graph) == [["lightning_o2nc.proxy", "lightning_o2nc.storage"]]


def _third_party(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names} - {"lightning_o2nc", "benchmarks"}


def _imports_of(prefix: str) -> dict[str, set[str]]:
    """Module of ``prefix`` -> every name it imports, third-party and our own."""
    return {
        module: set(imported_names(module, path))
        for module, path in module_files().items()
        if module == prefix or module.startswith(prefix + ".")
    }


def test_the_optimizer_layer_imports_only_torch_the_standard_library_and_itself():
    for module, names in _imports_of("lightning_o2nc.optim").items():
        ours = {n for n in names if n.split(".")[0] == "lightning_o2nc"}
        outside = {n for n in ours if not n.startswith("lightning_o2nc.optim")}
        foreign = _third_party(names) - {"torch", "__future__"} - set(sys.stdlib_module_names)
        assert not outside, f"{module} imports {sorted(outside)} from above the optimizer layer"
        assert not foreign, f"{module} imports {sorted(foreign)}; optim takes torch only"


def test_the_lightning_layer_never_imports_the_sweeps_or_optuna():
    for module, names in _imports_of("lightning_o2nc.lightning").items():
        upward = {n for n in names if n.startswith("lightning_o2nc.sweeps")}
        assert not upward, f"{module} imports {sorted(upward)}: lightning never imports sweeps"
        assert "optuna" not in _third_party(names), f"{module} imports optuna"


def test_no_module_of_the_package_or_the_benchmarks_exceeds_450_lines():
    long = {
        module: lines
        for module, path in module_files().items()
        if (lines := path.read_text(encoding="utf-8").count("\n")) > MAX_LINES
    }
    assert long == {}, f"split these by reason to change (wc -l > {MAX_LINES}): {long}"


def test_the_benchmarks_stay_within_2500_lines_and_smaller_than_the_package():
    lines = {root: 0 for root in ROOTS}
    for module, path in module_files().items():
        lines[module.split(".")[0]] += path.read_text(encoding="utf-8").count("\n")
    assert lines["benchmarks"] <= 2500, f"benchmarks/ has {lines['benchmarks']} lines (wc -l)"
    assert lines["benchmarks"] < lines["lightning_o2nc"], lines
