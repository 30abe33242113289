"""The package's shape, checked: layers that import only downward, no cycles, modules and
functions small enough to read, and an import inside a function only where a comment says why.

The layers, top to bottom (pyproject.toml, ``[tool.importlinter]``): cli, integrations, replay,
training, review, analysis, store, capture, errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

PACKAGE = Path(__file__).resolve().parent.parent / "mlrepro"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_import_linter_contracts_hold() -> None:
    assert lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_no_module_imports_itself_back_through_others() -> None:
    graph = grimp.build_graph("mlrepro", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None and imported.startswith("mlrepro"):
                cycles.append(" -> ".join([module, *back]))
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: name the steps of {', '.join(long)}"


def _deferred_imports_without_a_reason(source: str) -> list[str]:
    """Imports inside functions with no comment on their line, nor above the block of imports they open."""
    lines = source.splitlines()
    silent = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            above = node.lineno - 2  # index of the line above
            while above >= 0 and (not lines[above].strip() or lines[above].strip().startswith(("from ", "import ", ")"))
                                  or lines[above].startswith(" " * (node.col_offset + 4))):
                above -= 1  # up through the block of imports this one belongs to
            if "#" not in lines[node.lineno - 1] and not (above >= 0 and "#" in lines[above]):
                silent.append(f"line {node.lineno}: {lines[node.lineno - 1].strip()}")
    return silent


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_an_import_inside_a_function_says_why(path: Path) -> None:
    """Imports belong at the top; one is deferred only to keep a heavy import (torch, MLflow, a
    plotting library) off a path that does not need it, and a comment on its line or above its
    block of imports says so."""
    silent = _deferred_imports_without_a_reason(path.read_text())
    assert not silent, "\n".join(silent)


_IMPORT_EVERYTHING = """
import glob, sys
import mlrepro
for name in mlrepro.__all__:
    getattr(mlrepro, name)
children = [child for path in glob.glob('/proc/self/task/*/children') for child in open(path).read().split()]
loaded = sorted(name for name in sys.modules if name.startswith('mlrepro.'))
print(len(mlrepro.__all__), len(loaded), ' '.join(children))
"""


@pytest.mark.e2e
def test_importing_every_public_name_starts_no_process() -> None:
    """A notebook that imports mlrepro gets no background process it never asked for: the writers'
    zygote starts when a run opens (or when ``prestart()`` is called), never on import."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    names, loaded, *children = result.stdout.split()
    assert int(names) > 40 and int(loaded) > 20  # everything public was imported
    assert children == [], f"importing mlrepro started processes {children}"
