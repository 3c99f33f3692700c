"""The import direction (README, "Layers") holds, lazy imports included, with no import circle."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tracker", "workers", "analysis", "migrations")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.yaml",
                                                                                         "*.jsonl"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


@pytest.mark.parametrize("module, line", [
    ("tracker/planning/jobs.py", "from workers.tiny import TINY_SEED"),  # the core reaching into the workers
    ("workers/tokenizers.py", "from analysis.stats import paired_effect"),  # workers and analysis are independent
    ("tracker/specs/schema.py", "import torch"),  # the core stays torch-free
])
def test_a_lazy_import_against_the_direction_breaks_a_contract(tree_copy, module, line):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n\ndef _sneaky():\n    {line}\n")
        result = _lint(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _first_party_graph() -> dict[str, set[str]]:
    sys.setrecursionlimit(10_000)
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    return {m: {i for i in graph.find_modules_directly_imported_by(m)} for m in graph.modules}


def test_no_import_circle_among_first_party_modules():
    assert _cycles(_first_party_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_first_party_import_hides_in_a_string():
    hidden = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                        "import_module", "__import__"):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hidden == []


def test_environment_variables_are_read_in_the_settings_module_only():
    readers = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "tracker" / "settings.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") \
                        and getattr(node.value, "id", "") == "os":
                    readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert readers == []


def test_importing_every_core_module_leaves_torch_out():
    code = (
        "import importlib, pkgutil, sys\n"
        "import tracker\n"
        "skip = ('tracker.cli', 'tracker.commands', 'tracker.runner', 'tracker.api')\n"
        "for info in pkgutil.walk_packages(tracker.__path__, 'tracker.'):\n"
        "    if not info.name.startswith(skip):\n"
        "        importlib.import_module(info.name)\n"
        "import tracker.cli\n"  # the CLI too: `tracker status` must not pay for torch
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
