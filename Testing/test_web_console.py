"""The web app's server console stays clean through a result: no VTK error is printed.

trame-slicer's Threshold and intensity-mask effect pipelines are signalled when a segmentation becomes the
editor's active one; a pipeline that has no view yet updates a ``vtkImageThreshold`` with no input, and VTK
printed "Input port 0 of algorithm vtkImageThreshold ... has 0 connections but is not optional" for each
slice view on every result (issue 24 item 14). Here the real page object (:class:`LumbarSegWebApp`, its
SlicerApp with its slice and 3D views and segment editor, no browser needed) opens the sample CT, runs the
real engine and takes the result as the page does (``_finish``), in a child Python whose console - VTK's
error output goes to the process's stderr, below Python - is read back whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from web_browser import require_trame_slicer

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
from trame.app import get_server
from LumbarSegLib.web.app import LumbarSegWebApp
from LumbarSegLib.web.session import SAMPLE_CT

app = LumbarSegWebApp(get_server("console-test", client_type="vue3"), device="cpu")
app._open(SAMPLE_CT, "sample")
assert not app.state.ls_error, app.state.ls_error
print("LUMBARSEG-TEST: opened", flush=True)
app.session.start()
deadline = time.monotonic() + 400
while app.session.running and time.monotonic() < deadline:
    app.session.poll()
    time.sleep(0.25)
app._finish()
print("LUMBARSEG-TEST: status", app.state.ls_status, flush=True)
app.close()
"""


@pytest.mark.slow  # the real engine on the sample CT, in a child process
def test_one_result_prints_no_vtk_error_on_the_server_console():
    require_trame_slicer()
    # As `lumbarseg serve` runs on a server: no X display, VTK drawing offscreen with EGL (web/cli.py).
    env = dict(os.environ, PYTHONPATH=str(ROOT), VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    env.pop("DISPLAY", None)
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=480)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-4000:]
    # The run really reached the result: the sample's five vertebrae, shown through the editor.
    assert "LUMBARSEG-TEST: status Found L1, L2, L3, L4, L5." in run.stdout, console[-4000:]
    assert "has 0 connections but is not optional" not in console, console[-4000:]
    errors = [line for line in console.splitlines() if line.startswith("ERROR:") or "ERR|" in line]
    assert errors == [], "\n".join(errors[:12])


OPEN_CHILD = r"""
import sys
from trame.app import get_server
from LumbarSegLib.web.app import LumbarSegWebApp
from LumbarSegLib.web.session import SAMPLE_CT

app = LumbarSegWebApp(get_server("open-test", client_type="vue3"), device="cpu")
app.state.ls_owner = "owner"
app._open(SAMPLE_CT, "sample")
edited = app.session.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited")  # no hash of ours: an edit
app.session.segmentation_node = edited
app._open(SAMPLE_CT, "again")
assert app.state.ls_ask_open and not app.state.ls_error, app.state.ls_error
app.confirm_open("owner", False)  # keep the edits: nothing opened, nothing removed
assert edited.GetScene() is app.session.scene and not app.state.ls_ask_open
app._open(SAMPLE_CT, "again")
# the page writes the shared state: a path it puts there is never what opens (the pending CT lives on the server)
app.state.ls_pending_open = {"path": sys.argv[1], "label": "from the page"}
app.confirm_open("owner", True)  # discard them: the pending CT opens
assert edited.GetScene() is None and app.state.ls_status.startswith("Opened again"), app.state.ls_status
print("LUMBARSEG-TEST: ok", flush=True)
app.close()
"""


def test_opening_another_ct_over_edits_asks_and_keeps_the_pending_path_on_the_server(tmp_path):
    import shutil

    from LumbarSegLib.web.session import SAMPLE_CT

    require_trame_slicer()
    elsewhere = tmp_path / "not_offered.nrrd"  # a CT on the server that the page was never offered
    shutil.copy(SAMPLE_CT, elsewhere)
    env = dict(os.environ, PYTHONPATH=str(ROOT), VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    env.pop("DISPLAY", None)
    run = subprocess.run([sys.executable, "-c", OPEN_CHILD, str(elsewhere)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "LUMBARSEG-TEST: ok" in run.stdout, (run.stdout + run.stderr)[-4000:]
