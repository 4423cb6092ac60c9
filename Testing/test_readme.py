"""The README is one page for a user: short, no project-internal paths, and its test command is CI's."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _ci_test_command():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    commands = [l for l in lines if "pytest" in l and not l.startswith("#")]
    assert len(commands) == 1, commands
    return commands[0]


def test_readme_is_one_page():
    assert len(README.splitlines()) <= 160


def test_readme_has_no_shared_folder():
    assert "../shared" not in README


def test_readme_test_command_is_what_ci_runs():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("bash tools/install.sh") and "lumbarseg demo" in first_block[0]
    assert first_block[1].split("#")[0].strip() == "bash .ci/run"
    # .ci/run's own pytest command, spelled as CI spells it, and the fast lane by name
    assert "`%s`" % _ci_test_command() in README
    assert '`python3 -m pytest -q -m "not slow" Testing`' in README


def test_readme_sections_in_a_users_order():
    headings = [l[3:] for l in README.splitlines() if l.startswith("## ")]
    order = ["What it is", "Install and first result", "3D Slicer", "Command line: my own CT", "Many studies",
             "In the browser", "How good is it", "Limits", "Licence"]
    assert [h for h in headings if h in order] == order
    section = README.split("## How good is it\n", 1)[1].split("\n## ", 1)[0]
    assert "<!-- stage3-numbers -->" in section and section.count("\n|---") == 1


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), (doc.name, target)


def _cells(line: str) -> list[str]:
    return [c.strip().strip("*") for c in line.strip().strip("|").split("|")]


def test_readme_numbers_are_the_model_cards():
    """Every number of the README's accuracy table is what a model card (written by a repo command) says."""
    section = README.split("<!-- stage3-numbers -->", 1)[1].split("\n\n", 1)[0]
    rows = {_cells(l)[0]: _cells(l)[1:] for l in section.strip().splitlines()[2:]}
    acquisitions = ["as stored", "axial 5 mm wide", "sagittal 3 mm", "coronal 3 mm"]
    cards = ROOT / "Resources" / "Models"
    stage3 = [_cells(l) for l in (cards / "lumbarseg_stage3.md").read_text(encoding="utf-8").splitlines()
              if l.startswith("| ")]
    finder = [_cells(l) for l in (cards / "lumbarseg_finder.md").read_text(encoding="utf-8").splitlines()
              if l.startswith("| ")]
    gate: dict = {}
    for c in stage3:  # the gate's table comes first (the fit's "as stored" row follows it)
        if len(c) == 6 and c[0] in acquisitions:
            gate.setdefault(c[0], c[2])  # its DSC column
    complete = {c[1].split(", ", 1)[1]: c[3] for c in finder if c[0] == "finder" and c[1].startswith("complete")}
    xunet = {c[1]: c[3] for c in finder if c[0] == "xunet"}
    per_case = {c[0]: c[1:] for c in finder if c[0].startswith("sub-") and len(c) == 5}
    by_row = {"per-vertebra stage": [gate[a] for a in acquisitions],
              "whole pipeline, the 4 complete": [complete[a] for a in acquisitions],
              "whole pipeline, sub-verse007": per_case["sub-verse007"],
              "the same with `--no-finder`": [xunet[a] for a in acquisitions]}
    assert len(rows) == len(by_row)
    for start, expected in by_row.items():
        (label,) = [k for k in rows if k.startswith(start)]
        assert rows[label] == expected, (label, rows[label], expected)
