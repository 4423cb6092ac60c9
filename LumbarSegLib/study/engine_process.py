"""The one subprocess runner: ``lumbarseg segment`` in its own process, polled without blocking.

Front-ends that must stay responsive (the Slicer module, the web app) run the real command line
(``python -m LumbarSegLib.cli segment CT -o OUT --progress-format json ...``) instead of the engine in a
thread. Inside 3D Slicer this is what keeps the GUI moving: Slicer's main thread holds Python's GIL while it
sits in the Qt event loop, so a Python worker thread only runs during timer callbacks; a subprocess runs at
full speed, a crash in torch cannot take the application down, and Cancel ends it at once.

* :meth:`EngineProcess.poll` never blocks and never sleeps: it reads what the process has written so far
  (a non-blocking pipe on POSIX, ``PeekNamedPipe`` on Windows) and returns the new progress events. Call it
  from a GUI timer; :meth:`EngineProcess.wait` blocks in the OS (``select`` on the pipe / the process) for
  scripts and tests.
* :meth:`EngineProcess.cancel` ends the process and its children. Nothing partial can appear: the command
  writes into a staging folder and renames it into place after ``report.json`` (:mod:`..results.outputs`), so the
  output folder is whole or absent.
* When the process ends: :attr:`EngineProcess.state` is ``"done"`` with :attr:`EngineProcess.result`
  (``report.json`` and the label map), ``"failed"`` with :attr:`EngineProcess.error` (the command's one-line
  error, e.g. for a CT that is not in Hounsfield units), or ``"cancelled"``.

Inside Slicer the interpreter is ``PythonSlicer`` started with ``slicer.util.launchConsoleProcess``; elsewhere
``sys.executable`` with :class:`subprocess.Popen` (in a new process group, so that cancel reaches children).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding LumbarSegLib/: the process's cwd
ERROR_PREFIX = "lumbarseg: error: "
CANCELLED = "Cancelled by the user; no result was written."

# Stage names from the command (read, load, localize, segment, postprocess, refine, stl) -> (overall fraction
# range, status text), for a progress bar over the whole run.
STAGE_TEXT = {
    "read": ((0.0, 0.05), "Reading the CT..."),
    "load": ((0.05, 0.1), "Loading the model and preparing the image..."),
    "localize": ((0.1, 0.35), "Stage 1: locating the lumbar spine (heatmap)..."),
    "segment": ((0.35, 0.7), "Stage 2: segmenting L1-L5 in the crop box (XUNet)..."),
    "postprocess": ((0.7, 0.75), "Naming the vertebrae and cleaning up labels..."),
    "refine": ((0.75, 0.97), "Stage 3: segmenting each vertebra on its own crop..."),
    "stl": ((0.97, 1.0), "Writing surfaces..."),
}


def overall_progress(stage: str, fraction: float) -> tuple[float, str]:
    """(fraction of the whole run 0..1, status text) for a stage event."""
    (lo, hi), text = STAGE_TEXT.get(stage, ((0.0, 1.0), f"{stage}..."))
    return lo + (hi - lo) * max(0.0, min(1.0, float(fraction))), text


@dataclass
class ProgressEvent:
    stage: str
    fraction: float  # of this stage: 0.0 when it starts, 1.0 when it ends
    overall: float  # of the whole run, 0..1
    text: str  # what to show the user


@dataclass
class EngineResult:
    """A finished run: the whole output folder, its ``report.json`` (parsed) and the label map."""

    output_dir: Path
    report: dict
    labels_path: Path


MAX_LINE_BYTES = 64 << 10  # a longer line is kept cut to this (the rest of it is counted, not held)
READ_LIMIT_BYTES = 4 << 20  # read at most this much per poll: a flood of output never stalls the GUI


@dataclass
class _Pipe:
    """Non-blocking reader of the process's merged stdout/stderr, split into lines. Each call reads at most
    :data:`READ_LIMIT_BYTES` (:attr:`more` says whether it stopped there) and holds at most
    :data:`MAX_LINE_BYTES` of a line: a 50 MB line costs a few milliseconds per poll, and is kept cut."""

    fd: int
    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False
    more: bool = False  # the last read stopped at READ_LIMIT_BYTES with output perhaps still waiting
    _cut: int = 0  # bytes of the current line not held
    _handle: object = field(default=None, repr=False)

    def __post_init__(self):
        if os.name == "nt":
            import msvcrt

            self._handle = msvcrt.get_osfhandle(self.fd)
        else:
            os.set_blocking(self.fd, False)

    def read_available(self, limit: int = READ_LIMIT_BYTES) -> list[str]:
        """Complete lines written so far (never blocks); the rest stays buffered until its newline."""
        lines: list[str] = []
        read = 0
        self.more = False
        while not self.closed:
            if read >= limit:
                self.more = True
                break
            chunk = self._read_chunk()
            if chunk is None:  # nothing more just now
                break
            if chunk == b"":
                self.closed = True
                break
            read += len(chunk)
            self._take(chunk, lines)
        if self.closed:
            lines += self.flush()
        return lines

    def flush(self) -> list[str]:
        """The unfinished last line, if any (when the output has ended)."""
        return [self._line()] if self.buffer or self._cut else []

    def _take(self, chunk: bytes, lines: list[str]) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = memoryview(chunk)[start:] if newline < 0 else memoryview(chunk)[start:newline]
            room = max(0, MAX_LINE_BYTES - len(self.buffer))
            self.buffer += piece[:room]
            self._cut += max(0, len(piece) - room)
            if newline < 0:
                return
            lines.append(self._line())
            start = newline + 1

    def _line(self) -> str:
        text = self.buffer.decode("utf-8", "replace").rstrip("\r")
        if self._cut:
            text += f" [... {self._cut} more bytes of this line not shown]"
        self.buffer, self._cut = bytearray(), 0
        return text

    def _read_chunk(self):
        if os.name == "nt":
            import _winapi

            try:
                available = _winapi.PeekNamedPipe(self._handle, 0)[0]
            except OSError:  # the writing end is closed and the pipe is empty
                return b""
            return os.read(self.fd, available) if available else None
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None

    def wait_readable(self, timeout: float) -> None:
        """Block (in the OS, no Python sleep) until there is output or ``timeout`` seconds passed (POSIX)."""
        import select

        select.select([self.fd], [], [], max(0.0, timeout))


def python_executable() -> str:
    """The interpreter that runs the command: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    if _in_slicer_app():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def _in_slicer_app() -> bool:
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def launch(args: list[str], environment: dict[str, str]) -> subprocess.Popen:
    """Start ``args`` with merged stdout+stderr on one pipe (bytes are read from its file descriptor).

    Inside Slicer: ``slicer.util.launchConsoleProcess`` (Slicer's start-up environment, no console window on
    Windows). Elsewhere: ``subprocess.Popen`` in a new session (POSIX) / process group (Windows), so that
    :meth:`EngineProcess.cancel` ends the process's children too. The working folder is the one holding
    ``LumbarSegLib`` (so ``-m LumbarSegLib.cli`` finds it even where PYTHONPATH is rewritten by a launcher);
    paths in ``args`` are absolute (:func:`segment_command`).
    """
    if _in_slicer_app():
        import slicer.util

        return slicer.util.launchConsoleProcess(args, updateEnvironment=environment, cwd=str(PACKAGE_ROOT))
    env = dict(os.environ)
    env.update(environment)
    kwargs = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=str(PACKAGE_ROOT), **kwargs)


def segment_command(ct_path, output_dir, *, device: str = "auto", model: str | None = None, crop_box_lps=None,
                    overwrite: bool = False, extra_args=(), python: str | None = None) -> list[str]:
    """The ``lumbarseg segment`` command line for these options (``python -m LumbarSegLib.cli ...``); file paths
    are made absolute (the process runs in another folder). ``model``: a shipped model's name or a file."""
    command = [python or python_executable(), "-m", "LumbarSegLib.cli", "segment", str(Path(ct_path).absolute()),
               "-o", str(Path(output_dir).absolute()), "--progress-format", "json", "--device", device or "auto"]
    if model:
        command += ["--model", str(Path(model).absolute()) if Path(str(model)).exists() else str(model)]
    if crop_box_lps is not None:
        lo, hi = crop_box_lps
        command += ["--crop-box", *(repr(float(v)) for v in (*lo, *hi))]
    if overwrite:
        command.append("--overwrite")
    return command + [str(a) for a in extra_args]


class EngineProcess:
    """One ``lumbarseg segment`` run in a subprocess. Create, :meth:`start`, then :meth:`poll` (GUI timer) or
    :meth:`wait` (scripts) until :attr:`running` is False; read :attr:`state`, :attr:`result`, :attr:`error`."""

    LOG_LINES = 400

    def __init__(self, ct_path, output_dir, *, device: str = "auto", model: str | None = None, crop_box_lps=None,
                 overwrite: bool = False, extra_args=(), python: str | None = None, launcher=None):
        self.output_dir = Path(output_dir)
        self.command = segment_command(ct_path, output_dir, device=device, model=model, crop_box_lps=crop_box_lps,
                                       overwrite=overwrite, extra_args=extra_args, python=python)
        self._launcher = launcher or launch
        self._process: subprocess.Popen | None = None
        self._pipe: _Pipe | None = None
        self._cancelled = False
        self.state = "new"  # new -> running -> done | failed | cancelled
        self.returncode: int | None = None
        self.result: EngineResult | None = None
        self.error: str | None = None
        self.log_lines: list[str] = []  # the command's output that is not a progress event
        self.stage, self.fraction, self.overall, self.status_text = "", 0.0, 0.0, "Starting..."

    # --- running

    def start(self) -> EngineProcess:
        if self.state != "new":
            raise RuntimeError("This run was already started.")
        # ``-m`` puts the working folder (PACKAGE_ROOT, see launch) first on sys.path: this LumbarSegLib runs.
        environment = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        self._process = self._launcher(self.command, environment)
        self._pipe = _Pipe(self._process.stdout.fileno())
        self.state = "running"
        return self

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def poll(self) -> list[ProgressEvent]:
        """New progress events since the last call; never blocks. Finishes the run when the process ended."""
        if self.state != "running":
            return []
        events = self._read_events()
        if self._process.poll() is not None and (self._pipe.closed or not self._pipe.more):
            # Ended, and what it wrote has been read (a grandchild still holding the pipe does not keep us).
            # A process that closed its output but still runs is not waited for: a later poll finishes it.
            events += self._read_events()
            self._finish()
        return events

    def wait_for_output(self, timeout: float) -> None:
        """Block in the OS (``select`` on the pipe; on Windows a wait on the process) until the process writes
        something or ends, at most ``timeout`` seconds. No Python sleep; call :meth:`poll` afterwards."""
        if not self.running:
            return
        if os.name == "nt":  # WaitForSingleObject: no polling loop
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        elif self._pipe.closed:  # its output has ended but it runs on: wait for the process itself
            _wait_for_exit(self._process, timeout)
        else:  # (Popen.wait with a timeout would sleep in a loop on POSIX)
            self._pipe.wait_readable(timeout)

    def wait(self, timeout: float | None = None, on_event=None) -> bool:
        """Poll until the run ends or ``timeout`` seconds pass, blocking in the OS between reads; each
        progress event goes to ``on_event(event)``. Returns True when the run has ended."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                break
            self.wait_for_output(left)
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
        return not self.running

    def cancel(self, wait: float = 10.0) -> None:
        """End the process and its children now (it writes nothing partial); then :attr:`state` is
        ``"cancelled"``. Waits up to ``wait`` seconds for the process to be gone."""
        if self.state == "new":
            self.state, self._cancelled, self.error = "cancelled", True, CANCELLED
            return
        if self.state != "running":
            return
        self._cancelled = True
        _kill_tree(self._process)
        try:
            self._process.wait(wait)
        except subprocess.TimeoutExpired:  # not gone yet (e.g. stuck in the kernel): do not hang the GUI on it
            pass
        self._read_events()
        self._finish()

    # --- reading the output

    def _read_events(self) -> list[ProgressEvent]:
        events = []
        for line in self._pipe.read_available():
            event = _progress_event(line)
            if event is None:
                if line.strip():
                    self.log_lines.append(line)
                    del self.log_lines[:-self.LOG_LINES]
                continue
            self.stage, self.fraction, self.overall = event.stage, event.fraction, event.overall
            self.status_text = event.text
            events.append(event)
        return events

    def _finish(self) -> None:
        # It has ended or closed its output (returns at once) - or it was killed and did not go within cancel's
        # wait, which is not waited for again.
        self.returncode = self._process.poll()  # it has ended (or was killed: then None until it goes)
        for line in self._pipe.flush():  # a last line without its newline (the pipe is still held open)
            if line.strip():
                self.log_lines.append(line)
        try:
            self._process.stdout.close()
        except OSError:
            pass
        if self._cancelled:
            self.state, self.error = "cancelled", CANCELLED
            return
        if self.returncode == 0:
            try:
                self.result = read_result(self.output_dir)
                self.state = "done"
                return
            except (OSError, ValueError, KeyError) as exc:
                self.error = f"The command ended without a complete result in {self.output_dir}: {exc}"
        else:
            self.error = one_line_error(self.log_lines, self.returncode)
        self.state = "failed"


def _wait_for_exit(process: subprocess.Popen, timeout: float) -> None:
    """Block in the OS until ``process`` ends or ``timeout`` seconds pass: ``select`` on a pidfd (Linux);
    elsewhere Popen.wait (which polls)."""
    import select

    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(process.pid)
        except OSError:  # already gone (reaped)
            return
        try:
            select.select([fd], [], [], max(0.0, timeout))
        finally:
            os.close(fd)
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _progress_event(line: str) -> ProgressEvent | None:
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("event") != "progress":
        return None
    try:  # a malformed event is a log line, never an exception in the GUI timer that polls
        stage, fraction = str(data.get("stage", "")), float(data.get("fraction", 0.0))
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(fraction):
        return None
    fraction = max(0.0, min(1.0, fraction))
    overall, text = overall_progress(stage, fraction)
    return ProgressEvent(stage, fraction, overall, text)


def one_line_error(lines: list[str], returncode: int | None) -> str:
    """The command's own one-line error ("lumbarseg: error: ..."), else the last line it wrote (e.g. the
    exception line of a crash), else the exit status."""
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return _shorten(line[len(ERROR_PREFIX):].strip())
    killed = killed_message(returncode)
    if killed:  # whatever it wrote before is not why it ended
        return killed
    for line in reversed(lines):
        if line.strip() and not line.startswith(" "):
            return _shorten(line.strip())
    return f"The segmentation process ended with exit status {returncode} and no message."


MAX_ERROR_CHARS = 1000


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + f" [... {len(text) - MAX_ERROR_CHARS} more characters]"


def killed_message(returncode: int | None) -> str | None:
    """What a process ended by a signal (a negative exit status on POSIX) means for the user; None otherwise."""
    if returncode is None or returncode >= 0 or os.name == "nt":
        return None
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "an unknown signal"
    text = f"The segmentation process was killed by signal {number} ({name}) before it finished"
    if number == signal.SIGKILL:
        return (text + ". The usual cause is running out of memory (the system's out-of-memory killer ends the "
                "largest process): close other programs, crop the CT to the lumbar region, or use a machine with "
                "more memory.")
    if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
        return text + ": it crashed. Copy the log (the lines above) into a bug report."
    return text + " (ended from outside: by the system, or another program)."


def read_result(output_dir) -> EngineResult:
    """The finished result in ``output_dir``: its ``report.json`` and the label map it names."""
    output_dir = Path(output_dir)
    report = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    labels = Path(report["outputs"]["labels"])
    if not labels.is_file():
        raise ValueError(f"the label map {labels} named in report.json is missing")
    return EngineResult(output_dir, report, labels)


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and its children: its process group when it leads one (started by :func:`launch`
    outside Slicer), its descendants through psutil when that is installed, and always the process itself."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        except psutil.Error:
            pass
    if os.name != "nt":
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        process.kill()
    except OSError:
        pass
