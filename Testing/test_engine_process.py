"""LumbarSegLib.study.engine_process, the one subprocess runner, with real processes (no Slicer needed). The full run
polled into a Slicer scene is in test_slicer_subprocess.py."""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.study import engine_process
from LumbarSegLib.study.engine_process import EngineProcess, launch, one_line_error, overall_progress, segment_command

pytestmark = pytest.mark.slow  # each test starts the command line in a subprocess

ROOT = Path(__file__).resolve().parent.parent


def gone(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_the_command_line_is_the_users_command_with_machine_readable_progress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_bytes(b"")
    command = segment_command("ct.nii.gz", tmp_path / "out", device="cpu", model="m.pt",
                              crop_box_lps=((-10, -20.5, 30), (40, 50, 60.25)), overwrite=True, python="py")
    here = Path.cwd()
    assert command == ["py", "-m", "LumbarSegLib.cli", "segment", str(here / "ct.nii.gz"), "-o", str(tmp_path / "out"),
                       "--progress-format", "json", "--device", "cpu", "--model", str(here / "m.pt"),
                       "--crop-box", "-10.0", "-20.5", "30.0", "40.0", "50.0", "60.25", "--overwrite"]
    assert segment_command("ct", "out")[0] == sys.executable  # outside Slicer: this interpreter
    assert segment_command("ct", "out", model="paper")[-2:] == ["--model", "paper"]  # a shipped model's name


def test_a_missing_ct_fails_with_the_commands_one_line_error(tmp_path):
    run = EngineProcess(tmp_path / "no_such_ct.nii.gz", tmp_path / "out", device="cpu").start()
    assert run.running and run.pid
    assert run.wait(300)
    assert run.state == "failed" and run.returncode == 2 and run.result is None
    assert "no_such_ct.nii.gz" in run.error and "\n" not in run.error and not run.error.startswith("lumbarseg:")
    assert not (tmp_path / "out").exists()


def test_a_bad_crop_box_is_refused_before_anything_is_read(tmp_path):
    ct = sitk.Image([20, 20, 20], sitk.sitkInt16) - 1000
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    run = EngineProcess(tmp_path / "ct.nrrd", tmp_path / "out", crop_box_lps=((0, 0, 0), (-1, 5, 5))).start()
    assert run.wait(300) and run.state == "failed" and run.returncode == 2
    assert run.error.startswith("--crop-box 0 0 0 -1 5 5: each minimum (XMIN YMIN ZMIN) must be below its maximum")


def test_cancel_before_and_after_start(tmp_path):
    never = EngineProcess(tmp_path / "ct.nrrd", tmp_path / "a")
    never.cancel()
    assert never.state == "cancelled" and never.pid is None
    sitk.WriteImage(sitk.Image([20, 20, 20], sitk.sitkInt16) - 1000, str(tmp_path / "ct.nrrd"))
    run = EngineProcess(tmp_path / "ct.nrrd", tmp_path / "b", device="cpu").start()
    assert run.poll() == [] or run.running  # poll returns at once, long before the command can have finished
    pid = run.pid
    run.cancel()
    assert run.state == "cancelled" and not run.running and run.error == engine_process.CANCELLED
    assert gone(pid) and not (tmp_path / "b").exists()
    assert run.poll() == [] and run.wait(1)  # nothing more happens


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups (Windows: a new process group, not tested here)")
def test_cancel_ends_the_process_and_its_children():
    """launch() puts the process in its own session, so cancel reaches what it started (a real grandchild)."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n")
    process = launch([sys.executable, "-c", code], {})
    child = int(process.stdout.readline())
    assert not gone(child)
    engine_process._kill_tree(process)
    process.wait(30)
    process.stdout.close()
    deadline = time.monotonic() + 10  # SIGKILL to the group is immediate; the kernel may take a moment to show it
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_one_line_error_prefers_the_commands_own_line_then_the_last_line():
    assert one_line_error(["lumbarseg: read ...", "lumbarseg: error: The file x is empty."], 2) == "The file x is empty."
    crash = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "RuntimeError: boom"]
    assert one_line_error(crash, 1) == "RuntimeError: boom"
    assert one_line_error([], 3) == "The segmentation process ended with exit status 3 and no message."


def test_overall_progress_spans_the_whole_run():
    fraction, text = overall_progress("segment", 0.5)
    assert 0.35 < fraction < 0.9 and "XUNet" in text
    stages = list(engine_process.STAGE_TEXT)
    ends = [overall_progress(s, 1.0)[0] for s in stages]
    assert ends == sorted(ends) and ends[-1] == 1.0 and overall_progress(stages[0], 0.0)[0] == 0.0
    assert overall_progress("something new", 2.0)[0] == 1.0  # clipped, named


def test_progress_lines_and_log_lines_are_told_apart():
    event = engine_process._progress_event('{"event": "progress", "stage": "localize", "fraction": 1.0}')
    assert (event.stage, event.fraction, event.overall) == ("localize", 1.0, overall_progress("localize", 1.0)[0])
    for line in ("lumbarseg: note: x", '{"event": "other"}', "{not json", "[1, 2]"):
        assert engine_process._progress_event(line) is None


def test_a_finished_folder_without_its_label_map_is_not_a_result(tmp_path):
    (tmp_path / "report.json").write_text('{"outputs": {"labels": "%s"}}' % (tmp_path / "gone.nii.gz"))
    with pytest.raises(ValueError, match="missing"):
        engine_process.read_result(tmp_path)
    labels = tmp_path / "l.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), str(labels))
    (tmp_path / "report.json").write_text('{"outputs": {"labels": "%s"}, "found": []}' % labels)
    assert engine_process.read_result(tmp_path).labels_path == labels
