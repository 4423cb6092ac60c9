"""The engine's layout (issue 25): LumbarSegLib grouped by layer, imports pointing down, each package's
``__init__`` saying what it holds, and no module over about 500 lines. Read from the source, nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "LumbarSegLib"
# The layers, lowest first: a package imports only the packages before it (and the top-level constants,
# errors and lazy_exports modules). cli.py, the command line over all of them, may import any.
LAYERS = ["io", "inference", "measures", "results", "study", "batch", "scene", "web", "phantoms", "training"]
BASE = {"constants", "errors", "lazy_exports", "__version__"}
MAX_LINES = 500


def _imported_packages(path: Path, root: Path = ROOT) -> set[str]:
    """The top-level names under LumbarSegLib (``root``) that ``path`` imports, at module level or inside
    functions."""
    package = path.relative_to(root).parts[:-1]  # () for a top-level module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            parts = [a.name.split(".") for a in node.names if a.name.startswith("LumbarSegLib.")]
            found |= {p[1] for p in parts}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("LumbarSegLib."):
                    found.add(node.module.split(".")[1])
                elif node.module == "LumbarSegLib":
                    found |= {a.name for a in node.names}
                continue
            base = list(package[:len(package) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {a.name for a in node.names}
    return found


def test_every_package_has_a_map_and_no_module_is_long():
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert packages == sorted(LAYERS), "a new package needs its place in LAYERS"
    for name in packages:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{name}/__init__.py should say what the package holds"
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_imports_point_down_the_layers():
    upward = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if len(parts) == 1:  # cli.py and the base modules
            if path.stem in BASE or path.stem == "__init__":
                bad = _imported_packages(path) & set(LAYERS)
                upward += [f"{path.name} -> {b}" for b in bad]
            continue
        own = LAYERS.index(parts[0])
        for target in _imported_packages(path) - BASE - {parts[0]}:
            if target in LAYERS and LAYERS.index(target) > own:
                upward.append(f"{'/'.join(parts)} -> {target}")
    assert not upward, "imports pointing up the layers: " + ", ".join(sorted(upward))


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a relative import inside a function, from io up to study, is found."""
    (tmp_path / "io").mkdir()
    (tmp_path / "io" / "reader.py").write_text("def f():\n    from ..study import runner\n    from . import dicom\n")
    assert _imported_packages(tmp_path / "io" / "reader.py", tmp_path) == {"study", "io"}
