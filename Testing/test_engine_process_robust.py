"""EngineProcess against engines that misbehave (issue 24, items 12 and 13): killed by a signal, closing
their output and running on, writing a 50 MB line, writing malformed progress. Each is a real subprocess
(a small Python program started through the ``launcher`` hook in place of ``lumbarseg segment``)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from LumbarSegLib.study import engine_process
from LumbarSegLib.study.engine_process import EngineProcess, launch

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="POSIX signals and pipes"),
              pytest.mark.slow]  # each test starts a subprocess


def _engine(tmp_path, code: str) -> EngineProcess:
    """An EngineProcess whose process runs ``code`` instead of the segment command."""
    script = tmp_path / "engine.py"
    script.write_text(code)
    return EngineProcess(tmp_path / "ct.nii.gz", tmp_path / "out",
                         launcher=lambda args, env: launch([sys.executable, str(script)], env)).start()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_engine_says_it_was_killed_by_a_signal_and_that_memory_is_the_usual_cause(tmp_path):
    run = _engine(tmp_path, "import os, signal\n"
                            "print('lumbarseg: segment ...', flush=True)\n"
                            "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert run.wait(120)
    assert run.state == "failed" and run.returncode == -signal.SIGKILL
    assert run.error.startswith("The segmentation process was killed by signal 9 (SIGKILL)")
    assert "out of memory" in run.error and "exit status -9" not in run.error
    crashed = engine_process.one_line_error(["lumbarseg: read ..."], -signal.SIGSEGV)
    assert "signal 11 (SIGSEGV)" in crashed and "crashed" in crashed
    # The command's own error line still wins over the signal (it said why before it ended).
    assert engine_process.one_line_error(["lumbarseg: error: bad CT."], -signal.SIGKILL) == "bad CT."


def test_poll_does_not_wait_for_an_engine_that_closed_its_output_and_runs_on(tmp_path):
    go = tmp_path / "go"
    run = _engine(tmp_path, "import os, sys, time\n"
                            "print('started', flush=True)\n"
                            "os.close(1); os.close(2)\n"
                            f"deadline = time.monotonic() + 60\n"
                            f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
                            "    time.sleep(0.05)\n"
                            "sys.exit(4)\n")
    while not run._pipe.closed:  # until its output has ended (it stays alive: it waits for the go file)
        run.wait_for_output(5)
        run.poll()
    run.poll()
    assert _alive(run.pid), "poll() waited for the process to end"
    assert run.running and run.returncode is None
    go.write_text("")
    assert run.wait(120)
    assert run.state == "failed" and run.returncode == 4 and "started" in run.log_lines


def test_a_50_mb_line_is_read_in_bounded_steps_and_kept_cut(tmp_path):
    run = _engine(tmp_path, "import sys\n"
                            "sys.stdout.write('x' * (50 << 20))\n"
                            "sys.stdout.write('\\nlumbarseg: error: the real reason.\\n')\n"
                            "sys.stdout.flush()\n"
                            "sys.exit(2)\n")
    reads = []
    original = run._pipe._read_chunk

    def counting():
        chunk = original()
        reads.append(len(chunk or b""))
        return chunk

    run._pipe._read_chunk = counting
    polls = 0
    while run.running:
        before = len(reads)
        run.wait_for_output(5)
        run.poll()
        polls += 1
        read_now = sum(reads[before:])
        assert read_now <= engine_process.READ_LIMIT_BYTES + 65536, "one poll read more than its bound"
    assert polls > (50 << 20) // engine_process.READ_LIMIT_BYTES, "the line was read in one go"
    assert run.state == "failed" and run.error == "the real reason."
    long_line = max(run.log_lines, key=len)
    assert len(long_line) < engine_process.MAX_LINE_BYTES + 100 and "more bytes of this line not shown" in long_line
    # With no error line of its own, the long line is the error, cut.
    assert len(engine_process.one_line_error([long_line], 1)) <= engine_process.MAX_ERROR_CHARS + 40


def test_malformed_progress_is_a_log_line_never_an_exception(tmp_path):
    bad = ['{"event": "progress", "stage": "segment", "fraction": "abc"}',
           '{"event": "progress", "stage": "segment", "fraction": null}',
           '{"event": "progress", "stage": "segment", "fraction": [1]}',
           '{"event": "progress", "stage": "segment", "fraction": NaN}',
           '{"event": "progress", "stage": "segment", "fraction": 1e999}']
    for line in bad:
        assert engine_process._progress_event(line) is None, line
    assert engine_process._progress_event('{"event": "progress", "stage": "segment", "fraction": 7}').fraction == 1.0
    code = "import sys\n" + "".join(f"print({line!r})\n" for line in bad) + \
           "print('{\"event\": \"progress\", \"stage\": \"read\", \"fraction\": 0.5}')\nsys.exit(2)\n"
    run = _engine(tmp_path, code)
    events = []
    assert run.wait(120, on_event=events.append)  # poll() inside: it must not raise
    assert [(e.stage, e.fraction) for e in events] == [("read", 0.5)]
    assert all(line in run.log_lines for line in bad)
