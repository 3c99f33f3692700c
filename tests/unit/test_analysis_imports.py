"""No import circle inside ``analysis/``: imports in functions and under TYPE_CHECKING count too."""
from __future__ import annotations

import ast
from pathlib import Path

import analysis

PACKAGE = Path(analysis.__file__).resolve().parent
MODULES = {f"analysis.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imported_modules(path: Path) -> set[str]:
    """Every ``analysis.*`` module a file imports anywhere (module level, functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in MODULES:
                found.add(node.module)
            elif node.module == "analysis":
                found |= {f"analysis.{alias.name}" for alias in node.names} & MODULES
    return found


def import_graph() -> dict[str, set[str]]:
    return {f"analysis.{p.stem}": imported_modules(p) - {f"analysis.{p.stem}"}
            for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from analysis import render\n")
    (tmp_path / "b.py").write_text("def f():\n    from analysis.report_data import ReportData\n")
    assert imported_modules(tmp_path / "a.py") == {"analysis.render"}
    assert imported_modules(tmp_path / "b.py") == {"analysis.report_data"}
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_module_of_analysis_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "analysis.report" in graph["analysis.from_spec"]  # the scan sees real imports
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_report_data_type_is_a_leaf():
    graph = import_graph()
    assert graph["analysis.report_data"] == set()
    for reader in ("analysis.render", "analysis.figures", "analysis.mlflow_log"):
        assert "analysis.report" not in graph[reader], reader
