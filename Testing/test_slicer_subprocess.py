"""The Slicer module's run, headless: the Logic launches the real command line (this test's ``python`` in place
of PythonSlicer) on the bundled sample CT in a real MRML scene (slicer-core), the widget's timer is played by
``poll()`` calls with no sleep in Python, and the result lands in the scene (segments, ROI, surfaces,
metrics table). Cancel ends the process and leaves the scene as it was; a bad CT shows its one-line error.

One real run (about half a minute on a loaded 2-core machine) is shared by the tests of this file.
"""

import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LumbarSegLib.errors import Cancelled  # noqa: E402
from LumbarSegLib.scene import engine_job  # noqa: E402
from LumbarSegLib.scene.metrics_table import table_to_dict  # noqa: E402
from LumbarSegLib.scene.provenance import read_provenance  # noqa: E402
from LumbarSegLib.scene.roi import ROI_NAME, box_lps_from_roi  # noqa: E402
from LumbarSegLib.scene.sample_data import SAMPLE_FILE  # noqa: E402
from LumbarSegLib.scene.segments import segmentation_to_label_array  # noqa: E402
from LumbarSegLib.scene.volumes import label_array_to_sitk, sitk_to_volume_node  # noqa: E402
from conftest import new_scene  # noqa: E402
from conftest import load_module  # noqa: E402

pytestmark = pytest.mark.slow  # the real command line in a subprocess (module-scoped run)

module = load_module()


def load_volume(scene, path=SAMPLE_FILE, name="LumbarSegSampleCT"):
    """As Slicer's Add Data does: a volume node read by a volume archetype storage node."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    return volume


def new_logic():
    logic = module.LumbarSegLogic()
    logic.pythonExecutable = sys.executable  # PythonSlicer's part
    return logic


def scene_state(scene):
    """Node IDs, and every segmentation's and ROI's content, to see that nothing changed."""
    state = {}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        value = node.GetClassName()
        if node.IsA("vtkMRMLSegmentationNode"):
            value += ":" + engine_job.segmentation_content_hash(node)
        elif node.IsA("vtkMRMLMarkupsROINode"):
            value += ":" + repr((tuple(node.GetCenter()), tuple(node.GetSize())))
        state[node.GetID()] = value
    return state


def forbidden_sleep(*_):
    raise AssertionError("time.sleep was called: the GUI's poll must not sleep")


def poll_like_the_widget(job, until=None):
    """The widget's QTimer: poll() again and again. Between calls the test blocks in the OS on the process's
    pipe (select), as the Qt event loop would sit between timer ticks; time.sleep is forbidden."""
    events, polls_while_running = [], 0
    with mock.patch("time.sleep", forbidden_sleep):
        while job.process.running:
            job.process.wait_for_output(0.1)
            events += job.process.poll()
            polls_while_running += job.process.running
            if until is not None and until(events):
                break
    return events, polls_while_running


@pytest.fixture(scope="module")
def finished_run():
    scene = new_scene()
    volume = load_volume(scene)
    logic = new_logic()
    t0 = time.perf_counter()
    job = logic.startSegmentation(scene, volume, device="cpu")
    events, polls_while_running = poll_like_the_widget(job)
    assert job.process.state == "done", (job.process.error, job.process.log_lines[-20:])
    report = job.process.result.report
    cli_labels = sitk.ReadImage(str(job.process.result.labels_path))
    outcome = logic.finishSegmentation(scene, job)
    table = outcome.metrics_table
    seconds = time.perf_counter() - t0
    return dict(scene=scene, volume=volume, logic=logic, job=job, events=events, polls=polls_while_running,
                report=report, cli_labels=cli_labels, outcome=outcome, table=table, seconds=seconds)


def test_the_logic_launches_the_real_command_line_on_the_file_itself(finished_run):
    command = finished_run["job"].process.command
    assert command[:4] == [sys.executable, "-m", "LumbarSegLib.cli", "segment"]
    assert Path(command[4]) == SAMPLE_FILE  # the volume's own unchanged file, not a copy
    assert command[command.index("--progress-format") + 1] == "json" and "--device" in command
    assert "--crop-box" not in command  # no user box yet: the localizer places it
    assert finished_run["job"].process.returncode == 0
    assert not finished_run["job"].work_dir.exists()  # the work folder is removed after loading


def test_the_timer_sees_every_stage_while_the_process_runs(finished_run):
    events = finished_run["events"]
    stages = [e.stage for e in events if e.fraction == 0.0]
    # "refine": the per-vertebra stage, on by default with the bundled model; on the finder's path (when a finder
    # is bundled) it follows the finder and the count ("segment"), and what is reported of it is decided there
    from LumbarSegLib.inference.finder import FINDER_BUNDLE

    counted = FINDER_BUNDLE.default_path().is_file()
    assert stages == ["read", "load", "localize", "segment"] + (["refine"] if counted else ["postprocess", "refine"])
    assert all(any(e.stage == s and e.fraction == 1.0 for e in events) for s in stages)
    overall = [e.overall for e in events]
    assert overall == sorted(overall) and overall[-1] > 0.9
    assert finished_run["polls"] > 0  # poll() returned while the process was still running: it does not block


def test_the_result_lands_in_the_scene_as_before(finished_run):
    report, outcome, volume = finished_run["report"], finished_run["outcome"], finished_run["volume"]
    segmentation = outcome.segmentation_node
    assert report["found"], "the bundled model finds vertebrae in the bundled sample CT"
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    from LumbarSegLib.measures.trabecular import roi_segment_kind

    # one segment per vertebra found, besides the trabecular ROI segments (where the HU is measured)
    assert sorted(n for n in names if roi_segment_kind(n) is None) == sorted(report["found"])
    assert any(roi_segment_kind(n) for n in names)
    in_scene = label_array_to_sitk(segmentation_to_label_array(segmentation, volume), volume)
    # The CLI's label map on the file's grid; Slicer stored the slices in the other order: same voxels in space.
    cli_on_node_grid = sitk.Resample(finished_run["cli_labels"], in_scene, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(in_scene), sitk.GetArrayFromImage(cli_on_node_grid))
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert segmentation.GetSegmentation().ContainsRepresentation(closed)  # surfaces for the 3D view
    roi = outcome.roi_node
    assert roi.GetName() == ROI_NAME
    np.testing.assert_allclose(np.ravel(box_lps_from_roi(roi, volume)),
                               np.ravel([report["crop_box"]["lps_min_mm"], report["crop_box"]["lps_max_mm"]]),
                               atol=1e-3)
    rows = table_to_dict(finished_run["table"])
    assert sorted(rows) == sorted(report["found"])
    # The table shows the report's measurements, and they are what the scene's segmentation measures.
    measured = finished_run["logic"].computeMetrics(finished_run["scene"], segmentation, volume)
    for name, row in table_to_dict(measured).items():
        for column in ("Volume", "Height", "Mean HU", "Median HU", "Centroid R", "Centroid A", "Centroid S"):
            assert rows[name][column] == pytest.approx(row[column], rel=1e-6, abs=1e-6), (name, column)
    assert not any("Centroid R" in r and np.isnan(r["Centroid R"]) for r in rows.values())
    provenance = read_provenance(segmentation)
    assert provenance["settings"]["device_used"] == "cpu" and provenance["settings"]["crop_box"] == "localizer"
    assert provenance["report"] == finished_run["report"]["provenance"]  # what the run wrote, copied as it is
    assert provenance["model_sha256"] == finished_run["report"]["model"]["sha256"]
    logic = finished_run["logic"]
    assert sorted(logic.lastResult.found) == sorted(report["found"])
    assert any("Found " in line for line in logic.logLines)


def test_cancel_ends_the_process_and_leaves_the_scene_as_it_was(finished_run):
    scene, volume, logic = finished_run["scene"], finished_run["volume"], finished_run["logic"]
    before = scene_state(scene)
    job = logic.startSegmentation(scene, volume, device="cpu", roiMode="always")
    assert "--crop-box" in job.process.command  # the ROI is the user's box now
    poll_like_the_widget(job, until=lambda events: any(e.stage == "load" for e in events))
    assert job.process.running
    pid = job.process.pid
    logic.cancelSegmentation(job)
    assert job.process.state == "cancelled" and job.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped)
    assert not job.work_dir.exists()
    with pytest.raises(Cancelled):
        logic.finishSegmentation(scene, job)
    assert scene_state(scene) == before


def test_a_bad_ct_shows_its_one_line_error_and_changes_nothing(tmp_path):
    scene = new_scene()
    mr = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 800, (24, 24, 24)).astype(np.int16))
    volume = sitk_to_volume_node(scene, mr, "MR")  # in memory only: handed over as a temporary NRRD
    before = scene_state(scene)
    logic = new_logic()
    with mock.patch("time.sleep", forbidden_sleep), pytest.raises(engine_job.EngineRunError) as raised:
        logic.process(scene, volume, device="cpu")
    message = str(raised.value)
    assert message.startswith("The volume 'MR' has intensities 0..799; expected a CT in Hounsfield units")
    assert "\n" not in message and "input_ct.nrrd" not in message  # one line, naming what the user knows
    assert slicer_friendly(message) == message
    assert scene_state(scene) == before
    assert logic.lastError is raised.value


def slicer_friendly(message):
    from LumbarSegLib.scene.run import friendly_error

    return friendly_error(engine_job.EngineRunError(message))


def test_a_changed_volume_is_handed_over_as_a_temporary_file_with_its_geometry(tmp_path):
    scene = new_scene()
    volume = load_volume(scene)
    assert engine_job.unmodified_source_file(volume) == SAMPLE_FILE
    import vtk

    from LumbarSegLib.scene.volumes import volume_lps_geometry, volume_node_to_sitk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    matrix.SetElement(0, 3, matrix.GetElement(0, 3) + 7.0)  # moved: the file's header no longer describes it
    volume.SetIJKToRASMatrix(matrix)
    assert engine_job.unmodified_source_file(volume) is None
    path = engine_job.input_ct_file(volume, tmp_path)
    assert path == tmp_path / engine_job.INPUT_NAME
    written = sitk.ReadImage(str(path))
    spacing, origin, direction = volume_lps_geometry(volume)
    np.testing.assert_allclose(written.GetOrigin(), origin, atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), direction, atol=1e-9)
    np.testing.assert_allclose(written.GetSpacing(), spacing, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(volume_node_to_sitk(volume)))
