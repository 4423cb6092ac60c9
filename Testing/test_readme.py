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
