"""Helpers for the browser tests of ``lumbarseg serve`` (test_web_browser.py): the web environment, one
server per test (a real subprocess on 127.0.0.1), Debian's chromium driven by Playwright, and pixel
statistics of the views.

The server runs in the tests' own interpreter (the one environment tools/install.sh makes has the web app:
trame-slicer on slicer-core 5.11), or in the one ``LUMBARSEG_WEB_PYTHON`` names; without trame-slicer there
the tests skip and say how to install it - except where ``LUMBARSEG_REQUIRE_WEB=1`` (set by .ci/run), where
its absence fails them.
"""

from __future__ import annotations

import colorsys
import functools
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_PYTHON = Path(os.environ.get("LUMBARSEG_WEB_PYTHON") or sys.executable)
CHROMIUM = Path(os.environ.get("LUMBARSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 900}
START_TIMEOUT_S = 240  # the server imports VTK, Slicer's core and trame: ~10 s idle, minutes on a loaded CI box
RUN_TIMEOUT_MS = 420_000  # one segmentation of the sample CT (about 15 s alone on 2 cores)


@functools.lru_cache(maxsize=1)
def missing_web_environment() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not WEB_PYTHON.exists():
        return f"the interpreter for the server is absent ({WEB_PYTHON}); check LUMBARSEG_WEB_PYTHON"
    probe = subprocess.run([str(WEB_PYTHON), "-c", "import trame_slicer, slicer_layer_dm, torch"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"the web app is not installed in {WEB_PYTHON} ({last}); run 'bash tools/install.sh'"
    if not CHROMIUM.exists():
        return f"Debian's chromium is absent ({CHROMIUM}); 'apt-get install chromium' (tools/install.sh does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed in this environment (pip install -e '.[test]')"
    return None


def require_web_environment():
    reason = missing_web_environment()
    if reason is not None:
        _fail_or_skip(reason, "browser tests skipped: ")


def require_trame_slicer():
    """For tests that run the web app's server without a browser: trame-slicer must be importable."""
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        _fail_or_skip("trame-slicer is not installed (bash tools/install.sh installs it)")


def _fail_or_skip(reason: str, skip_prefix: str = ""):
    """Skip, saying why - or fail where LUMBARSEG_REQUIRE_WEB=1 (CI) says the web tests must run."""
    if os.environ.get("LUMBARSEG_REQUIRE_WEB") == "1":
        pytest.fail(f"LUMBARSEG_REQUIRE_WEB=1 but {reason}")
    pytest.skip(f"{skip_prefix}{reason}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """``lumbarseg serve`` in ``WEB_PYTHON``, as a user starts it; stopped with SIGTERM."""

    def __init__(self, work_dir: Path, *extra: str):
        self.port = free_port()
        self.work_dir = work_dir
        self.log_path = work_dir.parent / f"serve-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.pop("DISPLAY", None)  # headless, as on a server
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(WEB_PYTHON), "-m", "LumbarSegLib.cli", "serve", "--port", str(self.port), "--work-dir",
             str(work_dir), *extra], stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"lumbarseg serve exited ({self.process.returncode}):\n{self.log_tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.5)
        raise AssertionError(f"lumbarseg serve did not listen within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def engine_processes(self) -> list[int]:
        """Process ids of running ``LumbarSegLib.cli segment`` commands (the engine subprocesses)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"LumbarSegLib.cli" in cmdline and b"segment" in cmdline:
                if _is_descendant(int(proc.name), self.process.pid):
                    found.append(int(proc.name))
        return found

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def _is_descendant(pid: int, ancestor: int) -> bool:
    for _ in range(10):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def open_page(browser, url: str, *, owner: bool = True):
    """A new browser (context) on the app, waited until the page is connected and (``owner``) owns it."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.page_errors = errors
    page.goto(url)
    page.wait_for_selector("#ls-panel", timeout=120_000)
    page.wait_for_function("() => window.trame && window.trame.state.get('ls_owner')", timeout=60_000)
    page.wait_for_function("() => Array.from(document.querySelectorAll('img.image-display-area'))"
                           ".filter(e => e.naturalWidth > 50).length === 4", timeout=120_000)  # views drawn
    if owner:
        page.wait_for_function("() => window.trame.state.get('ls_owner') === window.lumbarsegPageId",
                               timeout=30_000)
    return page


def state(page, name: str):
    return page.evaluate(f"() => window.trame.state.get({name!r})")


def segment_and_wait(page):
    page.click("#ls-segment")
    page.wait_for_function("() => window.trame.state.get('ls_running') === false && "
                           "window.trame.state.get('ls_metrics').length > 0 || window.trame.state.get('ls_error')",
                           timeout=RUN_TIMEOUT_MS)
    assert not state(page, "ls_error"), state(page, "ls_error")


def metric_rows(page) -> list[list[str]]:
    return [[cell.strip() for cell in row.inner_text().split("\t")] for row in page.query_selector_all(".ls-metric-row")]


def view_boxes(page) -> list[dict]:
    """The four views' on-screen boxes; the 3D view is the largest (layout '3D Primary'), then the slice
    views top to bottom (axial, coronal, sagittal)."""
    boxes = [el.bounding_box() for el in page.query_selector_all("img.image-display-area")]
    boxes = [b for b in boxes if b and b["width"] > 50 and b["height"] > 50]
    assert len(boxes) == 4, boxes
    boxes.sort(key=lambda b: -b["width"] * b["height"])
    return [boxes[0]] + sorted(boxes[1:], key=lambda b: b["y"])


def view_pixels(page, box: dict) -> np.ndarray:
    from PIL import Image

    png = page.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0


def colour_shares(pixels: np.ndarray, colours: dict) -> dict:
    """Share of the picture's pixels whose hue is within 12 degrees of each named colour (saturated pixels
    only, so the grey background and shading do not count)."""
    flat = pixels.reshape(-1, 3)
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in flat[:: max(1, len(flat) // 60000)]])
    saturated = (hsv[:, 1] > 0.35) & (hsv[:, 2] > 0.15)
    out = {}
    for name, rgb in colours.items():
        hue = colorsys.rgb_to_hsv(*rgb)[0]
        distance = np.abs(((hsv[:, 0] - hue) + 0.5) % 1.0 - 0.5)
        out[name] = float(np.mean(saturated & (distance < 12 / 360)))
    return out


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


if __name__ == "__main__":  # python Testing/web_browser.py: say whether the browser tests can run here
    print(missing_web_environment() or "the web environment, chromium and playwright are all here")
    sys.exit(0)
