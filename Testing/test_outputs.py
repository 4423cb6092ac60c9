"""Output folders: one whole result or nothing, never two runs mixed, a lock against concurrent runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from LumbarSegLib.errors import InputError
from LumbarSegLib.results.outputs import OutputFolder, check_output_file

REPO = Path(__file__).resolve().parents[1]


def _report(**extra):
    return {"lumbarseg_version": "test", "input": {"path": "/data/ct.nii.gz"}, **extra}


def _hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_result_appears_whole_with_report_last(tmp_path):
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.staging / "stl").mkdir()
        (out.staging / "stl" / "L1.stl").write_bytes(b"solid")
        assert not target.exists()  # nothing is visible before the commit
        assert out.final(out.staging / "stl" / "L1.stl") == target / "stl" / "L1.stl"
        out.commit(_report())
    assert sorted(p.name for p in target.iterdir()) == ["report.json", "stl"]
    assert json.loads((target / "report.json").read_text(encoding="utf-8"))["lumbarseg_version"] == "test"
    assert _hidden_leftovers(tmp_path) == []  # no staging folder, no lock file
    assert (target.stat().st_mode & 0o777) != 0o700  # the result is not private like a temp folder
    umask = os.umask(0o022)
    os.umask(umask)
    assert ((target / "report.json").stat().st_mode & 0o777) == 0o666 & ~umask  # nor is its report


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_or_ctrl_c_leaves_nothing(tmp_path, exc):
    target = tmp_path / "out"
    with pytest.raises(type(exc)):
        with OutputFolder(target) as out:
            (out.staging / "L1.stl").write_bytes(b"solid")
            raise exc
    assert not target.exists()
    assert _hidden_leftovers(tmp_path) == []


def test_a_failed_run_removes_the_parent_folders_it_made(tmp_path):
    """-o new/deeper/out: the folders made to hold the result go again when no result comes; a parent that
    existed before stays."""
    (tmp_path / "new").mkdir()
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new" / "deeper" / "more" / "out") as out:
            assert (tmp_path / "new" / "deeper" / "more").is_dir()
            (out.staging / "L1.stl").write_bytes(b"half")
            raise RuntimeError("the CT could not be read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"] and not list((tmp_path / "new").iterdir())
    with OutputFolder(tmp_path / "new" / "deeper" / "out") as out:
        out.commit(_report())
    assert (tmp_path / "new" / "deeper" / "out" / "report.json").is_file()


def test_interrupted_overwrite_keeps_the_earlier_result(tmp_path):
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.staging / "L1.stl").write_bytes(b"first")
        out.commit(_report(run=1))
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(target, overwrite=True) as out:
            (out.staging / "L2.stl").write_bytes(b"second")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["L1.stl", "report.json"]
    assert json.loads((target / "report.json").read_text(encoding="utf-8"))["run"] == 1


def test_existing_result_needs_overwrite_and_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.staging / "L1.stl").write_bytes(b"first")
        (out.staging / "L5.stl").write_bytes(b"first")
        out.commit(_report(run=1))
    with pytest.raises(InputError, match="already holds a LumbarSeg result .*--overwrite"):
        OutputFolder(target).__enter__()
    with OutputFolder(target, overwrite=True) as out:
        (out.staging / "L1.stl").write_bytes(b"second")
        out.commit(_report(run=2))
        assert out.replaced_report["run"] == 1
    assert sorted(p.name for p in target.iterdir()) == ["L1.stl", "report.json"]  # L5 of run 1 is gone
    assert (target / "L1.stl").read_bytes() == b"second"
    assert _hidden_leftovers(tmp_path) == []


def test_empty_folder_is_used(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with OutputFolder(target) as out:
        out.commit(_report())
    assert (target / "report.json").is_file()


def test_folder_with_other_files_is_refused_even_with_overwrite(tmp_path):
    target = tmp_path / "Desktop"
    target.mkdir()
    (target / "thesis.docx").write_bytes(b"precious")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not empty .*holds no LumbarSeg result"):
            OutputFolder(target, overwrite=overwrite).__enter__()
    assert (target / "thesis.docx").read_bytes() == b"precious"
    assert _hidden_leftovers(tmp_path) == []


def test_read_only_folder_and_read_only_file_are_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="read-only"):
            OutputFolder(ro).__enter__()
        with pytest.raises(InputError, match="read-only"):
            OutputFolder(ro / "sub").__enter__()
    finally:
        ro.chmod(0o755)
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.staging / "L1.stl").write_bytes(b"planned")
        out.commit(_report())
    (target / "L1.stl").chmod(0o444)  # a user protected this file
    with pytest.raises(InputError, match="read-only entry .*L1.stl"):
        OutputFolder(target, overwrite=True).__enter__()
    assert (target / "L1.stl").read_bytes() == b"planned"


def test_paths_under_a_regular_file_are_refused(tmp_path):
    regular = tmp_path / "notes.txt"
    regular.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="notes.txt is a file, not a folder"):
        OutputFolder(regular / "out").__enter__()
    with pytest.raises(InputError, match="existing file, not a folder"):
        OutputFolder(regular).__enter__()
    with pytest.raises(InputError, match="notes.txt is a file, not a folder"):
        check_output_file(regular / "deeper" / "m.json")


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    existing = tmp_path / "m.json"
    existing.write_text("{}", encoding="utf-8")
    existing.chmod(0o444)
    with pytest.raises(InputError, match="read-only"):
        check_output_file(existing)
    with pytest.raises(InputError, match="existing folder"):
        check_output_file(tmp_path)


def test_second_concurrent_run_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path):
    """A real second process holds the folder; after it is killed (no clean-up at all), the next run works
    and removes the killed run's staging folder."""
    target = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from LumbarSegLib.results.outputs import OutputFolder
            with OutputFolder(sys.argv[1]) as out:
                (out.staging / "L1.stl").write_bytes(b"half")
                print("holding", flush=True)
                time.sleep(120)
            """), str(target)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(InputError, match=rf"Another LumbarSeg run \(process {holder.pid}\) is writing to"):
            OutputFolder(target).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert not target.exists()
    assert any(name.endswith(".partial") for name in _hidden_leftovers(tmp_path))  # what a kill -9 leaves
    with OutputFolder(target) as out:
        out.commit(_report())
    assert _hidden_leftovers(tmp_path) == []
    assert sorted(os.listdir(target)) == ["report.json"]


def test_a_run_killed_between_the_two_renames_of_commit_gets_the_earlier_result_back(tmp_path):
    """commit() moves the earlier result aside, then the new one into place; a kill -9 between the two
    leaves no target at all. The next run puts the earlier result back (and then refuses to replace it
    without --overwrite) instead of deleting it as a stale folder."""
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.staging / "L1.stl").write_bytes(b"earlier")
        out.commit(_report(run=1))
    os.rename(target, tmp_path / ".out.k1ll3d.replaced")  # what the kill left: the earlier result aside,
    (tmp_path / ".out.n3w.partial").mkdir()  # and the new run's staging folder
    with pytest.raises(InputError, match="already holds a LumbarSeg result"):
        OutputFolder(target).__enter__()
    assert (target / "L1.stl").read_bytes() == b"earlier"
    assert json.loads((target / "report.json").read_text(encoding="utf-8"))["run"] == 1
    assert _hidden_leftovers(tmp_path) == []


def test_a_symlinked_output_folder_is_written_where_it_points(tmp_path):
    real = tmp_path / "results" / "case1"
    real.parent.mkdir()
    link = tmp_path / "latest"
    link.symlink_to(real, target_is_directory=True)
    for run in (1, 2):
        with OutputFolder(link, overwrite=True) as out:
            (out.staging / "L1.stl").write_bytes(b"run %d" % run)
            out.commit(_report(run=run))
    assert link.is_symlink() and (link / "L1.stl").read_bytes() == b"run 2"
    assert sorted(p.name for p in real.iterdir()) == ["L1.stl", "report.json"]
    assert _hidden_leftovers(tmp_path) == [] and _hidden_leftovers(real.parent) == []


def test_a_sibling_targets_staging_folder_is_not_taken_for_a_stale_one(tmp_path):
    """Batch ids keep dots (case1 and case1.v2 run side by side on two workers): the run into case1 must not
    remove case1.v2's staging folder, which its own lock holds, as a stale folder of its own."""
    with OutputFolder(tmp_path / "case1.v2") as sibling:
        (sibling.staging / "L1.stl").write_bytes(b"in progress")
        (tmp_path / ".case1.k1ll3d.partial").mkdir()  # a killed run's leftover of case1 itself
        with OutputFolder(tmp_path / "case1") as out:
            out.commit(_report(run=1))
        assert (sibling.staging / "L1.stl").read_bytes() == b"in progress"
        assert not (tmp_path / ".case1.k1ll3d.partial").exists()
        sibling.commit(_report(run=2))
    assert (tmp_path / "case1.v2" / "L1.stl").read_bytes() == b"in progress"
    assert _hidden_leftovers(tmp_path) == []
