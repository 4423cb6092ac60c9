"""The bodies of the module's self-test (``LumbarSegTest`` in ``LumbarSeg.py``): Slicer's "Reload and Test",
``Slicer --python-code``, the extension build servers, and headless against slicer-core
(Testing/test_slicer_extension.py). Each function takes the ``unittest.TestCase`` (for its assertions and
``delayDisplay``), the module's Logic class and the scene.

The model parts run the real command line in a subprocess (:mod:`.engine_job`), as the GUI does.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import SimpleITK as sitk


def phantom():
    """A small synthetic CT (a torso of soft tissue around a column of five bone blocks, L1 on top, 3.2 x 3.2 x
    3 mm voxels) and its L1-L5 labels, with a flipped x axis (a non-trivial direction). Not anatomy: the
    scene code is checked with known labels, and a model run only has to agree with itself. Made here, not
    by :mod:`LumbarSegLib.phantoms`, which Slicer does not install (only the runtime is)."""
    nx, ny, nz = 56, 48, 80
    z, y, x = np.mgrid[:nz, :ny, :nx]
    ct = np.full((nz, ny, nx), -1000, np.int16)
    ct[((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.36 * ny)) ** 2 <= 1] = 40
    labels = np.zeros((nz, ny, nx), np.uint8)
    column = (x - nx / 2) ** 2 + (y - 0.62 * ny) ** 2 <= (0.12 * nx) ** 2
    height = nz / 5.0
    for i in range(5):  # L1 (label 1) most superior = largest z in LPS
        top = nz - i * height
        labels[column & (z >= top - 0.88 * height) & (z < top - 0.12 * height)] = i + 1
    ct[labels > 0] = 650
    images = []
    for array in (ct, labels):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((3.2, 3.2, 3.0))
        image.SetOrigin((80.0, -70.0, -120.0))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        images.append(image)
    return tuple(images)


def set_up(test):
    """A clean scene for each part: Slicer's own (cleared), else a new one (slicer-core), with the
    segmentations logic; stored as ``test.scene``."""
    import slicer

    from .scene import ensure_segmentations_logic

    if hasattr(slicer, "mrmlScene"):
        slicer.mrmlScene.Clear()
        test.scene = slicer.mrmlScene
    else:  # slicer-core: no application scene
        test.scene = slicer.vtkMRMLScene()
    ensure_segmentations_logic(test.scene)


def require_torch(test):
    """Skip a model part, saying why, where PyTorch is missing (unittest may run each test method alone)."""
    from .dependencies import torch_problem

    problem = torch_problem()
    if problem:
        test.skipTest(f"the model part of the LumbarSeg self-test needs PyTorch: {problem}")


def run_test(test, torch_problem):
    """Slicer's runTest: the scene part always, the model parts only with PyTorch (``torch_problem()`` is
    None); otherwise ``test.modelSkipReason`` says why they were skipped."""
    test.setUp()
    test.test_LumbarSeg_SceneLogic()
    test.modelSkipReason = torch_problem()
    if test.modelSkipReason:
        test.delayDisplay(f"Skipped the model part of the LumbarSeg self-test: {test.modelSkipReason}")
        return
    test.setUp()
    test.test_LumbarSeg_FullFlow()
    test.setUp()
    test.test_LumbarSeg_BackgroundRunAndCancel()


def scene_logic(test, logic_class, scene):
    """Everything the buttons do after a run, without PyTorch: known labels into the scene (in the CT's
    study), metrics, smoothing, edit detection, exports, provenance and diagnostics."""
    import slicer

    from . import metrics_table, segments, volumes

    test.delayDisplay("Scene logic without the model")
    ct, labels = phantom()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Phantom"), "CT")
    volume = volumes.sitk_to_volume_node(scene, ct, "LumbarSeg test CT")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(study, volume), study)
    segmentation = segments.labels_to_segmentation(scene, labels, volume)
    test.assertEqual(len(segments.segment_ids_by_vertebra(segmentation)), 5)  # besides the trabecular ROIs
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)), study)
    np.testing.assert_array_equal(segments.segmentation_to_label_array(segmentation, volume),
                                  sitk.GetArrayViewFromImage(labels))
    logic = logic_class()
    test.assertFalse(logic.isUserEdited(segmentation))
    test.assertTrue(logic.setSmoothing(segmentation, 0.3))
    test.assertFalse(logic.setSmoothing(segmentation, 0.3))  # unchanged: surfaces are not rebuilt
    test.assertFalse(logic.isUserEdited(segmentation))
    table = logic.computeMetrics(scene, segmentation, volume, segmentation)
    rows = metrics_table.table_to_dict(table)
    test.assertEqual(sorted(rows), ["L1", "L2", "L3", "L4", "L5"])
    for row in rows.values():
        test.assertAlmostEqual(row["DSC"], 1.0)
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)), study)
    with tempfile.TemporaryDirectory() as folder:
        test.assertEqual(len(logic.exportStl(segmentation, folder)), 5)
        path = logic.exportLabelmap(scene, segmentation, volume, os.path.join(folder, "l.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                      sitk.GetArrayViewFromImage(labels))
    test.assertIn("Model", logic.modelInfoHtml())
    logic.recordError(RuntimeError("self-test error"))
    text = logic.diagnostics(slicerVersion="self-test")
    test.assertIn("Last error: RuntimeError: self-test error", text)
    test.delayDisplay("Scene logic passed")


def full_flow(test, logic_class, scene):
    """The command line in a subprocess on a synthetic CT, waited for (``Logic.process``), then known labels
    into the same nodes and an STL export."""
    require_torch(test)
    from ..inference import pipeline
    from . import provenance, roi, run, segments, volumes

    test.delayDisplay("Synthetic CT")
    ct, labels = phantom()
    volume = volumes.sitk_to_volume_node(scene, ct, "LumbarSeg test CT")
    logic = logic_class()

    test.delayDisplay("Segmenting with the command line in a subprocess (bundled model)")
    result, outcome = logic.process(scene, volume, device="cpu")
    segmentation = outcome.segmentation_node
    if result.found:
        node_segments = segmentation.GetSegmentation()
        names = [node_segments.GetNthSegment(i).GetName() for i in range(node_segments.GetNumberOfSegments())]
        from ..measures.trabecular import roi_segment_kind

        vertebrae = [n for n in names if roi_segment_kind(n) is None]  # "L1 trabecular ROI" ... besides
        test.assertEqual(sorted(vertebrae), sorted(result.found))
        stored = provenance.read_provenance(segmentation)
        test.assertEqual(stored["settings"]["device_used"], "cpu")
        test.assertIn("not a medical device", stored["notice"])
    else:
        test.assertIsNone(segmentation)

    test.delayDisplay("Known labels into the scene")
    box = pipeline.index_box_to_lps(ct, (5, 5, 5), (50, 43, 75))
    known = pipeline.SegmentationResult(labels, ["L1", "L2", "L3", "L4", "L5"], None, box, 1.0, {}, [], True)
    outcome = run.apply_result(scene, volume, known, segmentation, outcome.roi_node, overwrite_edited=True)
    segmentation = outcome.segmentation_node
    test.assertEqual(len(segments.segment_ids_by_vertebra(segmentation)), 5)  # besides the trabecular ROIs
    np.testing.assert_array_equal(segments.segmentation_to_label_array(segmentation, volume),
                                  sitk.GetArrayViewFromImage(labels))
    test.assertEqual(outcome.roi_node.GetName(), roi.ROI_NAME)

    test.delayDisplay("Export")
    with tempfile.TemporaryDirectory() as folder:
        test.assertEqual(len(logic.exportStl(segmentation, folder)), 5)
    test.delayDisplay("Full flow passed")


def background_run_and_cancel(test, logic_class, scene, process_events=None):
    """What the GUI does: start the subprocess, poll it from the event loop (no sleep: the wait is on the
    process's output), load the result; then a second run cancelled, which changes nothing."""
    require_torch(test)
    import slicer

    from ..errors import Cancelled
    from . import volumes

    # Slicer's event loop runs between polls inside the application; headless there is none
    process_events = process_events or getattr(getattr(slicer, "app", None), "processEvents", lambda: None)

    ct, _ = phantom()
    volume = volumes.sitk_to_volume_node(scene, ct, "LumbarSeg test CT")
    logic = logic_class()
    job = logic.startSegmentation(scene, volume, device="cpu")
    polls = 0
    while job.process.running:
        job.process.wait_for_output(0.05)
        job.process.poll()
        process_events()  # the GUI keeps running while the engine works
        polls += 1
    test.assertGreater(polls, 1)
    result_found = bool(job.process.result and job.process.result.report["found"])
    outcome = logic.finishSegmentation(scene, job)
    test.assertEqual(outcome.segmentation_node is not None, result_found)

    nodes = scene.GetNumberOfNodes()
    job = logic.startSegmentation(scene, volume, device="cpu")
    logic.cancelSegmentation(job)
    test.assertEqual(job.process.state, "cancelled")
    with test.assertRaises(Cancelled):
        logic.finishSegmentation(scene, job)
    test.assertEqual(scene.GetNumberOfNodes(), nodes)
    test.delayDisplay("Background run and cancel passed")
