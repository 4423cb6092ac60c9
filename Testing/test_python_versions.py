"""The module and the engine run on the oldest Python of the Slicer versions supported: Slicer 5.8 ships
Python 3.9 (its CMakeLists.txt: Slicer_REQUIRED_PYTHON_VERSION "3.9.10"; 5.10 ships 3.12.10).

Inside Slicer, ``LumbarSeg/LumbarSeg.py`` and ``LumbarSegLib`` are imported by Slicer's Python, and the engine
runs as ``PythonSlicer -m LumbarSegLib.cli`` - the same interpreter - so every engine file must work on 3.9.
Only ``LumbarSegLib/web`` (the web app, never run inside Slicer: it needs Python 3.10+) is left out.

Checked statically with vermin (a test extra: CI installs it, so this does not skip): no syntax, module or
function newer than 3.9. vermin's union-type detection (``X | Y``) is heuristic and also flags annotations
that ``from __future__ import annotations`` keeps unevaluated (fine on 3.9), so that one hazard is checked
here with the AST instead: ``X | Y`` in an annotation needs that import, and ``isinstance``/``issubclass``
never get a ``X | Y``.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OLDEST_PYTHON = "3.9"


def slicer_python_files() -> list[Path]:
    files = sorted((ROOT / "LumbarSeg").glob("*.py"))
    files += sorted(p for p in (ROOT / "LumbarSegLib").rglob("*.py") if "web" not in p.relative_to(ROOT).parts)
    return files


def run_vermin(paths, *options):
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is not installed: pip install -e '.[test]' (it is a test extra, not optional)")
    return subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", f"-t={OLDEST_PYTHON}-",
                           *options, *map(str, paths)], capture_output=True, text=True, timeout=300)


def test_vermin_finds_what_python_3_9_cannot_run(tmp_path):
    """The check can fail: a 3.10 construct is reported."""
    bad = tmp_path / "newer.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return zip([1], [2], strict=True)\n")
    result = run_vermin([bad])
    assert result.returncode != 0 and "3.10" in result.stdout


def test_module_and_engine_files_need_no_python_newer_than_3_9():
    files = slicer_python_files()
    assert ROOT / "LumbarSeg" / "LumbarSeg.py" in files
    assert ROOT / "LumbarSegLib" / "study" / "engine_process.py" in files
    result = run_vermin(files, "--no-eval-annotations")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Files without the __future__ import evaluate their annotations at import: check those too.
    evaluated = [p for p in files if not _has_future_annotations(ast.parse(p.read_text(encoding="utf-8")))]
    result = run_vermin(evaluated, "--eval-annotations")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _has_future_annotations(tree) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
               any(a.name == "annotations" for a in n.names) for n in tree.body)


def _union_operators(node) -> list[int]:
    return [n.lineno for n in ast.walk(node) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)]


def union_type_problems(source: str, name: str) -> list[str]:
    """``X | Y`` that Python 3.9 would evaluate: in annotations of a file without the __future__ import, and
    in isinstance/issubclass anywhere."""
    tree = ast.parse(source)
    future = _has_future_annotations(tree)
    problems = []
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            annotations = [a.annotation for a in arguments if a.annotation is not None]
            annotations += [node.returns] if node.returns is not None else []
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            problems += [f"{name}:{line} {node.func.id} with X | Y"
                         for arg in node.args[1:] for line in _union_operators(arg)]
        if not future:
            problems += [f"{name}:{line} X | Y annotation without 'from __future__ import annotations'"
                         for a in annotations for line in _union_operators(a)]
    return problems


def test_union_types_are_only_used_where_python_3_9_does_not_evaluate_them():
    problems = []
    for path in slicer_python_files():
        problems += union_type_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, problems


def test_the_union_check_can_fail():
    bad = "def f(x: int | None):\n    return isinstance(x, int | str)\n"
    assert union_type_problems(bad, "bad.py") == [
        "bad.py:1 X | Y annotation without 'from __future__ import annotations'", "bad.py:2 isinstance with X | Y"]
    assert union_type_problems("from __future__ import annotations\n" + bad, "ok.py") == [
        "ok.py:3 isinstance with X | Y"]
