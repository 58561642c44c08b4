"""The shape of the code: no function over 80 lines and no module over 600 in ``neurossm_app/``.

Long functions hide the steps of a run and long modules mix ideas (see issue 20 and
/work/shared/style.md). The walk covers every ``.py`` file of the package, nested functions and
methods included; a function's length runs from its first decorator (or ``def``) to its last
line, docstring and comments included. The package holds no generated Python, so nothing is
left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "neurossm_app"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 600


def _modules() -> list[Path]:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert modules, PACKAGE
    return modules


def _function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of every function and method in ``path``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((f"{prefix}{child.name}", first, child.end_lineno - first + 1))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_no_function_is_over_80_lines():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
        for path in _modules()
        for name, line, length in _function_lengths(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not offenders, f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(
        offenders
    )


def test_no_module_is_over_600_lines():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} ({n} lines)"
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not offenders, f"{len(offenders)} module(s) over {MAX_FILE_LINES} lines:\n" + "\n".join(offenders)


def test_the_walk_measures_what_it_says(tmp_path):
    """A decorated method, a nested function and a long one, measured by hand."""
    source = tmp_path / "sample.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    source.write_text(
        "class A:\n"
        "    @staticmethod\n"
        "    def short():\n"
        "        def inner():\n"
        "            return 1\n"
        "        return inner\n"
        "\n"
        f"def long():\n{body}\n"
    )
    assert _function_lengths(source) == [
        ("A.short", 2, 5),
        ("A.short.<locals>.inner", 4, 2),
        ("long", 8, 82),
    ]


def test_building_the_command_line_imports_neither_torch_nor_nipype():
    """Every call builds the parser (participant and fetch calls too); torch's import alone took
    1.4-4 s of each (issue 21), so the options' vocabularies live in torch-free modules."""
    import subprocess
    import sys

    code = (
        "import sys; from neurossm_app.cli.parser import build_parser; build_parser(); "
        "print(sorted({'torch', 'nipype', 'nimare'} & set(sys.modules)))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
