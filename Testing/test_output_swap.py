"""``--overwrite`` replaces a result in one atomic swap: a run killed at any point of the swap leaves the
output folder holding one whole result, the earlier or the new one, never no result (issue 15, item 10).

Each run is a real child process that kills itself (SIGKILL, as the OOM killer or a power cut would) just
before its k-th file-system step of ``OutputFolder.commit``, for every k, seen through Python's audit hooks;
the folder is inspected before any later run could repair it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from LumbarSegLib.results import outputs
from LumbarSegLib.results.outputs import OutputFolder

CHILD = r"""
import os, signal, sys
from LumbarSegLib.results.outputs import OutputFolder

target, kill_at = sys.argv[1], int(sys.argv[2])
STEPS = {"os.rename", "os.rmdir", "os.mkdir", "os.remove", "shutil.rmtree", "ctypes.call_function"}
seen = 0

def hook(event, args):
    global seen
    if event in STEPS:
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

with OutputFolder(target, overwrite=True) as out:
    (out.staging / "new.txt").write_text("new", encoding="utf-8")
    sys.addaudithook(hook)
    out.commit({"lumbarseg_version": "test", "run": "new"})
"""


def _earlier_result(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "old.txt").write_text("old", encoding="utf-8")
    (folder / "report.json").write_text(json.dumps({"lumbarseg_version": "test", "run": "old"}), encoding="utf-8")


def _whole_result(folder: Path) -> str:
    """'old' or 'new' when ``folder`` holds exactly one run's whole result; fails otherwise."""
    assert folder.is_dir(), "the output folder is absent: the earlier result is gone"
    run = json.loads((folder / "report.json").read_text(encoding="utf-8"))["run"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{run}.txt", "report.json"])
    return run


@pytest.mark.skipif(sys.platform != "linux", reason="the atomic swap is Linux's renameat2")
def test_a_kill_at_any_step_of_an_overwrite_leaves_one_whole_result(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    states = []
    for kill_at in range(1, 30):
        target = tmp_path / f"k{kill_at}" / "out"
        _earlier_result(target)
        run = subprocess.run([sys.executable, "-c", CHILD, str(target), str(kill_at)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode in (0, -signal.SIGKILL), run.stderr
        states.append((run.returncode, _whole_result(target)))
        if run.returncode == 0:
            break
    else:
        pytest.fail("the commit never completed")
    assert states[-1] == (0, "new")
    # The kills landed before and after the swap, so both sides of it were seen.
    assert (-signal.SIGKILL, "old") in states and (-signal.SIGKILL, "new") in states


def test_where_the_swap_is_missing_two_renames_still_replace_the_result(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "exchange_paths", lambda a, b: False)  # as on macOS or a file system without it
    target = tmp_path / "out"
    _earlier_result(target)
    with OutputFolder(target, overwrite=True) as out:
        (out.staging / "new.txt").write_text("new", encoding="utf-8")
        out.commit({"lumbarseg_version": "test", "run": "new"})
    assert _whole_result(target) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no hidden folder is left behind


def test_exchange_paths_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "from_a").touch(), (b / "from_b").touch()
    if not outputs.exchange_paths(a, b):
        pytest.skip("this system or file system has no renameat2(RENAME_EXCHANGE)")
    assert [p.name for p in a.iterdir()] == ["from_b"] and [p.name for p in b.iterdir()] == ["from_a"]
    with pytest.raises(FileNotFoundError):
        outputs.exchange_paths(a, tmp_path / "missing")
