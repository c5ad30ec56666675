"""The shape of the code that docs/design.md promises: short functions, estimators without catch-all keywords,
registry names written only in their registries, and a library and workflow that never import the test suite."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "dfcore").rglob("*.py"))
MAX_FUNCTION_LINES = 80


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_library_is_found():
    assert len(LIBRARY) > 40


def test_no_library_function_is_longer_than_the_limit():
    long = {
        f"{path.relative_to(REPO)}:{fn.name}": fn.end_lineno - fn.lineno + 1
        for path in LIBRARY
        for fn in _functions(path)
        if fn.end_lineno is not None and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def long():\n{body}\n")
    (fn,) = _functions(path)
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES


def test_estimators_take_no_catch_all_keywords():
    """A misspelt keyword must be a TypeError, so no function in dfcore/fisher/ swallows unknown keywords
    into a ``**_`` parameter."""
    offenders = [
        f"{path.name}:{fn.name}"
        for path in sorted((REPO / "dfcore" / "fisher").glob("*.py"))
        for fn in _functions(path)
        if fn.args.kwarg is not None and fn.args.kwarg.arg.startswith("_")
    ]
    assert offenders == []


@pytest.mark.parametrize("folder", ["dfcore", "workflow"])
def test_nothing_outside_tests_imports_the_test_suite(folder):
    pattern = re.compile(r"^\s*(from tests\b|import tests\b)|sys\.path.*['\"/]tests\b", re.MULTILINE)
    files = [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".smk") or p.name == "Snakefile"]
    assert files
    assert [str(p.relative_to(REPO)) for p in files if pattern.search(p.read_text())] == []


def test_schedule_names_are_written_only_in_their_registry():
    """Outside dfcore/schedules.py a schedule is named through SCHEDULES or a Schedule's ``name``; the
    authors' own script (dfcore/ot_official.py) keeps its own list, and the paper's Table 3 is keyed by name."""
    from dfcore.schedules import SCHEDULES

    allowed = {"schedules.py", "ot_official.py"}
    literal = re.compile(r"([\"'])(" + "|".join(map(re.escape, SCHEDULES)) + r")\1")
    found = []
    for path in LIBRARY:
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line) and "PAPER_TABLE3" not in line:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_trace_estimator_names_come_from_the_classes():
    from dfcore.fisher import FVP_ESTIMATORS, TRACE_ESTIMATORS

    assert all(name == cls.name for name, cls in TRACE_ESTIMATORS.items())
    assert all(name == cls.name for name, cls in FVP_ESTIMATORS.items())
    assert len({cls.label for cls in TRACE_ESTIMATORS.values()}) == len(TRACE_ESTIMATORS)


def test_the_snakefile_imports_no_plotting_stack():
    """Every snakemake start (a dry run, --summary, --report) imports the dfcore modules of the rule files; none
    of them may pull in seaborn, matplotlib or scipy (seconds per start)."""
    rules = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    modules = sorted({m for p in rules for m in re.findall(r"^\s*from (dfcore[\w.]*) import", p.read_text(), re.M)})
    assert "dfcore.config" in modules
    heavy = ("seaborn", "matplotlib", "scipy")
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout[:2000]
