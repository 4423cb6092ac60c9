"""The Slicer module's scene work on a real MRML scene from the ``slicer-core`` wheel (no mocks of slicer).

A synthetic CT (``LumbarSegLib.phantoms``) is put into a volume node with an oblique, flipped direction;
deterministic checks feed a known label map through the same "results into the scene" function the
module uses, and the whole flow runs once more with the real engine (bundled model, else random weights).
"""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from LumbarSegLib.inference import pipeline  # noqa: E402
from LumbarSegLib.measures import agreement, measurements  # noqa: E402
from LumbarSegLib.constants import LABEL_COLORS, LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA  # noqa: E402
from LumbarSegLib.errors import InputError  # noqa: E402
from LumbarSegLib.inference.models import load_model  # noqa: E402
from LumbarSegLib.scene.export import export_labelmap, export_stl  # noqa: E402
from LumbarSegLib.scene.metrics_table import compute_metrics, fill_metrics_table, table_to_dict  # noqa: E402
from LumbarSegLib.scene.roi import (ROI_NAME, box_for_run, box_lps_from_roi, box_lps_to_ras_center_size,  # noqa: E402
                                    roi_was_moved)
from LumbarSegLib.scene.run import apply_result, friendly_error, prepare_run, run_segmentation  # noqa: E402
from LumbarSegLib.scene.scene import ATTR_BOX_LPS  # noqa: E402
from LumbarSegLib.scene.segments import (DEFAULT_SMOOTHING, TERMINOLOGY_CONTEXT, is_user_edited,  # noqa: E402
                                         labels_to_segmentation, segmentation_to_label_array,
                                         terminology_entry_string, vertebra_label_from_name)
from LumbarSegLib.scene.volumes import (sitk_to_oriented_image, sitk_to_volume_node, volume_ijk_to_ras,  # noqa: E402
                                        volume_node_to_sitk)
from LumbarSegLib.measures.trabecular import roi_segment_kind  # noqa: E402
from conftest import fake_engine, labels_box_lps, new_scene, phantom, segment_ids  # noqa: E402

@pytest.fixture(scope="module")
def data():
    return phantom()


def segments(node):
    """The node's vertebra segments by name (its trabecular ROI segments are test_trabecular_slicer's)."""
    s = node.GetSegmentation()
    return {s.GetNthSegment(i).GetName(): s.GetNthSegment(i) for i in range(s.GetNumberOfSegments())
            if roi_segment_kind(s.GetNthSegment(i).GetName()) is None}


# --------------------------------------------------------------------------------------------------


def test_volume_round_trip_oblique_and_flipped(data):
    ct, _ = data
    scene = new_scene()
    node = sitk_to_volume_node(scene, ct, "CT")
    # IJK -> RAS of voxel (1, 2, 3) equals the LPS point with x, y negated.
    m = volume_ijk_to_ras(node)
    lps = np.array(ct.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(m @ [1, 2, 3, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-6)
    back = volume_node_to_sitk(node)
    assert back.GetSize() == ct.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), ct.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))
    # Slicer's own bounds agree with SimpleITK's physical corners.
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    corners = np.array([ct.TransformContinuousIndexToPhysicalPoint([a, b, c])
                        for a in (-0.5, ct.GetSize()[0] - 0.5) for b in (-0.5, ct.GetSize()[1] - 0.5)
                        for c in (-0.5, ct.GetSize()[2] - 0.5)]) * [-1, -1, 1]
    np.testing.assert_allclose(bounds[0::2], corners.min(axis=0), atol=1e-4)
    np.testing.assert_allclose(bounds[1::2], corners.max(axis=0), atol=1e-4)


def test_clear_messages_for_bad_inputs():
    with pytest.raises(InputError, match="No input volume"):
        volume_node_to_sitk(None)
    scene = new_scene()
    mr = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 900, (20, 20, 20)).astype(np.int16))
    node = sitk_to_volume_node(scene, mr, "MR")
    with pytest.raises(InputError, match="Hounsfield"):
        prepare_run(node)
    assert "out of memory" in friendly_error(MemoryError(), "cuda").lower()
    assert "torch" in friendly_error(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert friendly_error(InputError("No lumbar spine found")) == "No lumbar spine found"


def test_results_into_scene_roi_segments_terminology_surfaces(data):
    ct, labels = phantom(drop=("L5",))  # partial field of view: L5 absent
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    box = labels_box_lps(labels)
    result = fake_engine(labels, box)(volume_node_to_sitk(volume))
    outcome = apply_result(scene, volume, result)

    # Crop ROI: named, RAS bounds = LPS box with x and y negated, visible in 2D and 3D.
    roi = outcome.roi_node
    assert roi.GetName() == ROI_NAME and roi.IsA("vtkMRMLMarkupsROINode")
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    (mnx, mny, mnz), (mxx, mxy, mxz) = box
    np.testing.assert_allclose(bounds, [-mxx, -mnx, -mxy, -mny, mnz, mxz], atol=1e-6)
    display = roi.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility3D()
    np.testing.assert_allclose(box_lps_from_roi(roi, volume), box, atol=1e-6)

    # Segments: only those present, named, coloured, with SNOMED CT terminology.
    seg = outcome.segmentation_node
    found = segments(seg)
    assert list(found) == ["L1", "L2", "L3", "L4"]
    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    for label in range(1, 5):
        segment = found[LABEL_NAMES[label]]
        np.testing.assert_allclose(segment.GetColor(), LABEL_COLORS[label])
        tag = segment.GetTerminology()
        assert tag.startswith(TERMINOLOGY_CONTEXT + "~")  # the terminology this extension ships
        assert f"SCT^{SNOMED_VERTEBRA[label][0]}^{SNOMED_VERTEBRA[label][1]}" in tag
        assert f"SCT^{SNOMED_BONE_CATEGORY[0]}^{SNOMED_BONE_CATEGORY[1]}" in tag
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(tag, entry)
        assert entry.GetTypeObject().GetCodeValue() == SNOMED_VERTEBRA[label][0]
        assert entry.GetCategoryObject().GetCodingSchemeDesignator() == "SCT"
        value = vtk.reference("")
        assert segment.GetTag(tag_name, value) and str(value) == tag

    # Voxels: the segmentation resampled on the CT grid is exactly the label map.
    np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), sitk.GetArrayViewFromImage(labels))

    # Closed surfaces exist (smoothed), 3D shows them, slices show fill and outline.
    s = seg.GetSegmentation()
    assert s.ContainsRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    assert float(s.GetConversionParameter("Smoothing factor")) == pytest.approx(DEFAULT_SMOOTHING)
    for name, sid in segment_ids(seg).items():
        poly = vtk.vtkPolyData()
        seg.GetClosedSurfaceRepresentation(sid, poly)
        assert poly.GetNumberOfPoints() > 100, name
    sd = seg.GetDisplayNode()
    assert sd.GetPreferredDisplayRepresentationName3D() == "Closed surface"
    assert sd.GetVisibility2DFill() and sd.GetVisibility2DOutline() and sd.GetVisibility3D()


def test_metrics_table_matches_metrics_module(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    seg = labels_to_segmentation(scene, labels, volume)
    table = fill_metrics_table(scene, compute_metrics(seg, volume))
    rows = table_to_dict(table)
    expected = measurements.measure(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(ct), ct)
    assert list(rows) == list(expected) == ["L1", "L2", "L3", "L4", "L5"]
    for name, m in expected.items():
        assert rows[name]["Volume"] == pytest.approx(m["volume_ml"])
        assert rows[name]["Height"] == pytest.approx(m["height_mm"])
        assert rows[name]["Mean HU"] == pytest.approx(m["mean_hu"])
        x, y, z = m["centroid_mm"]
        assert (rows[name]["Centroid R"], rows[name]["Centroid A"], rows[name]["Centroid S"]) == \
            pytest.approx((-x, -y, z))
        assert 10 < rows[name]["Volume"] < 200
    assert table.GetColumnUnitLabel("Volume") == "mL"
    assert "DSC" not in rows["L1"]

    # With a reference segmentation (TotalSegmentator-style names, one vertebra shrunk): agreement columns.
    ref_array = sitk.GetArrayFromImage(labels)
    ref_array[(ref_array == 3) & (np.arange(ref_array.shape[0])[:, None, None] % 2 == 0)] = 0
    ref_labels = sitk.GetImageFromArray(ref_array)
    ref_labels.CopyInformation(labels)
    ref = labels_to_segmentation(scene, ref_labels, volume, name="reference")
    for name, sid in segment_ids(ref).items():
        ref.GetSegmentation().GetSegment(sid).SetName("vertebrae_" + name)
    fill_metrics_table(scene, compute_metrics(seg, volume, ref), table)
    rows = table_to_dict(table)
    expected = agreement.compare(sitk.GetArrayViewFromImage(labels), ref_array, ct.GetSpacing()[::-1])
    for name, m in expected.items():
        for key in ("DSC", "FND", "FPD", "MSD", "ASD", "HD95"):
            assert rows[name][key] == pytest.approx(m[key], nan_ok=True), (name, key)
    assert rows["L1"]["DSC"] == pytest.approx(1.0) and rows["L3"]["DSC"] < 0.9
    # segment, volume/height/mean/median, centroid, 6 trabecular (test_trabecular_slicer), 6 agreement
    assert table.GetNumberOfColumns() == 1 + 4 + 3 + 6 + 6


def test_export_stl_and_labelmaps(data, tmp_path):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    seg = labels_to_segmentation(scene, labels, volume)
    files = export_stl(seg, tmp_path / "stl")
    assert len(files) == 5
    from LumbarSegLib.results.surfaces import write_stl

    command_line_files = write_stl(labels, tmp_path / "command_line")
    ids = segment_ids(seg)
    for name in ids:
        path = next(p for p in files if p.stem.endswith(name))
        reader = vtk.vtkSTLReader()
        reader.SetFileName(str(path))
        reader.Update()
        mesh = reader.GetOutput()
        assert mesh.GetNumberOfPoints() > 100
        # One STL writer: the export from the scene is the command line's surface of the same labels.
        command_line = vtk.vtkSTLReader()
        command_line.SetFileName(str(command_line_files[name]))
        command_line.Update()
        np.testing.assert_allclose(mesh.GetBounds(), command_line.GetOutput().GetBounds(), atol=1e-3)
        assert mesh.GetNumberOfPoints() == command_line.GetOutput().GetNumberOfPoints()
        # ...and the surface sits where the voxels are (within a voxel).
        arr = sitk.GetArrayViewFromImage(labels) == int(name[1])
        k, j, i = np.nonzero(arr)
        pts = np.array([ct.TransformIndexToPhysicalPoint((int(a), int(b_), int(c))) for a, b_, c in
                        zip(i[::50], j[::50], k[::50])])
        assert np.all(pts.min(axis=0) > np.array(mesh.GetBounds()[0::2]) - 4)
        assert np.all(pts.max(axis=0) < np.array(mesh.GetBounds()[1::2]) + 4)

    nii = export_labelmap(scene, seg, volume, tmp_path / "labels.nii.gz")
    back = sitk.ReadImage(str(nii))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))
    np.testing.assert_allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), ct.GetDirection(), atol=1e-5)
    assert scene.GetFirstNodeByName("__lumbarseg_export__") is None  # temporary node removed

    segnrrd = export_labelmap(scene, seg, volume, tmp_path / "labels.seg.nrrd")
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(segnrrd))
    assert storage.ReadData(loaded)
    assert sorted(segments(loaded)) == ["L1", "L2", "L3", "L4", "L5"]
    np.testing.assert_array_equal(segmentation_to_label_array(loaded, volume), sitk.GetArrayViewFromImage(labels))
    with pytest.raises(ValueError):
        export_labelmap(scene, seg, volume, tmp_path / "labels.png")


def test_moved_roi_is_honoured_and_edits_are_never_overwritten(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    box = labels_box_lps(labels)
    calls = []
    engine = fake_engine(labels, box, calls)

    # First run: localizer path (no box given), ROI placed from the engine's box.
    result, first = run_segmentation(scene, volume, segment_fn=engine)
    assert calls[-1]["box_lps"] is None
    roi, seg = first.roi_node, first.segmentation_node
    assert not is_user_edited(seg) and not roi_was_moved(roi, volume)

    # Re-run untouched: the localizer runs again and the same node is reused.
    _, again = run_segmentation(scene, volume, segment_fn=engine, segmentation_node=seg)
    assert calls[-1]["box_lps"] is None and again.segmentation_node is seg and not again.created_new

    # The user moves and resizes the ROI: the next run hands exactly that box to the engine.
    roi.SetCenter(*(np.array(roi.GetCenter()) + [4.0, -6.0, 9.0]))
    roi.SetSize(*(np.array(roi.GetSize()) * [1.1, 0.9, 0.8]))
    moved = box_lps_from_roi(roi, volume)
    assert roi_was_moved(roi, volume)
    run_segmentation(scene, volume, segment_fn=engine, segmentation_node=seg)
    np.testing.assert_allclose(calls[-1]["box_lps"], moved, atol=1e-9)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 1  # the same ROI, left as moved
    np.testing.assert_allclose(box_lps_from_roi(roi, volume), moved, atol=1e-9)
    # ...and it keeps being used on later runs, unless the user asks to re-locate.
    assert box_for_run(roi, volume, "auto") is not None and box_for_run(roi, volume, "never") is None
    # Another volume never inherits this volume's box.
    other = sitk_to_volume_node(scene, ct, "other CT")
    assert box_for_run(roi, other, "auto") is None

    # The user edits the segmentation (paints a block into L2, as the Segment Editor would).
    before = segmentation_to_label_array(seg, volume).copy()
    sid = segment_ids(seg)["L2"]
    paint = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    paint[5:9, 5:9, 5:9] = 1
    img = sitk.GetImageFromArray(paint)
    img.CopyInformation(ct)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        sitk_to_oriented_image(img), seg, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)
    edited = segmentation_to_label_array(seg, volume).copy()
    assert (edited != before).sum() == 64
    assert is_user_edited(seg)

    _, rerun = run_segmentation(scene, volume, segment_fn=engine, segmentation_node=seg)
    assert rerun.created_new and rerun.segmentation_node is not seg
    assert any("was edited" in m for m in rerun.messages)
    np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), edited)  # old content intact
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2
    # Renaming a segment is an edit too; a fresh result is not.
    assert not is_user_edited(rerun.segmentation_node)
    rerun.segmentation_node.GetSegmentation().GetSegment(segment_ids(rerun.segmentation_node)["L1"]).SetName("X")
    assert is_user_edited(rerun.segmentation_node)


def test_rotated_or_transformed_roi_gives_its_bounding_box(data):
    ct, _ = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "hand drawn")
    roi.SetCenter(10, 20, 30)
    roi.SetSize(20, 40, 60)
    assert box_for_run(roi, volume, "auto") is not None  # drawn by hand: used
    assert box_for_run(roi, volume, "never") is None
    np.testing.assert_allclose(box_lps_from_roi(roi, volume), ((-20, -40, 0), (0, 0, 60)), atol=1e-9)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 5.0)  # 5 mm to the right
    transform.SetMatrixTransformToParent(m)
    roi.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(box_lps_from_roi(roi, volume), ((-25, -40, 0), (-5, 0, 60)), atol=1e-9)
    rot = vtk.vtkMatrix4x4()
    rot.SetElement(0, 0, 0.0), rot.SetElement(0, 1, -1.0), rot.SetElement(1, 0, 1.0), rot.SetElement(1, 1, 0.0)
    roi.SetAndObserveTransformNodeID(None)
    roi.SetAndObserveObjectToNodeMatrix(rot)  # rotated 90 degrees about S: x and y extents swap
    (mn, mx) = box_lps_from_roi(roi, volume)
    np.testing.assert_allclose(np.array(mx) - np.array(mn), (40, 20, 60), atol=1e-9)


@pytest.mark.slow
def test_whole_flow_with_the_real_engine(data):
    """Bundled model if present, else random weights: the scene must match whatever the engine found."""
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    model = load_model()
    stages = []
    result, outcome = run_segmentation(scene, volume, model=model, device="cpu",
                                          progress=lambda s, f: stages.append(s))
    assert "load" in stages and "localize" in stages
    if not model.trained:
        assert any("randomly initialised" in m for m in outcome.messages)
    if result.found:
        assert sorted(segments(outcome.segmentation_node)) == sorted(result.found)
    else:  # no empty node clutters the scene
        assert any("No lumbar spine" in m for m in outcome.messages)
        assert outcome.segmentation_node is None
        assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0

    # Then with a user-drawn ROI around the spine: the engine gets the box and skips the localizer.
    roi = outcome.roi_node or scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", ROI_NAME)
    box = labels_box_lps(labels)
    center, size = box_lps_to_ras_center_size(box)
    roi.SetCenter(*center)
    roi.SetSize(*size)
    roi.RemoveAttribute(ATTR_BOX_LPS)  # as if drawn by hand
    calls = []

    def recording(image, **kwargs):
        calls.append(kwargs["box_lps"])
        return pipeline.segment(image, **kwargs)

    stages.clear()
    result2, outcome2 = run_segmentation(scene, volume, model=model, device="cpu", roi_node=roi,
                                            segment_fn=recording, progress=lambda s, f: stages.append(s))
    np.testing.assert_allclose(calls[0], box, atol=1e-9)
    assert "localize" not in stages and "segment" in stages
    assert any("localizer was skipped" in m for m in outcome2.messages)
    if result2.found:
        assert sorted(segments(outcome2.segmentation_node)) == sorted(result2.found)
    # The engine's voxel box covers the drawn one; the ROI stays as drawn and keeps being used.
    assert np.all(np.array(result2.box_lps[0]) <= np.array(box[0]) + 1e-6)
    assert np.all(np.array(result2.box_lps[1]) >= np.array(box[1]) - 1e-6)
    np.testing.assert_allclose(box_lps_from_roi(outcome2.roi_node, volume), box, atol=1e-6)
    assert box_for_run(roi, volume, "auto") == box_lps_from_roi(roi, volume)


def test_terminology_and_name_matching():
    for label in range(1, 6):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(
            terminology_entry_string(label), entry)
        assert entry.GetTypeObject().GetCodeMeaning() == SNOMED_VERTEBRA[label][1]
    assert vertebra_label_from_name("L3") == 3
    assert vertebra_label_from_name("vertebrae_L4") == 4
    assert vertebra_label_from_name("l5 vertebra") == 5
    assert vertebra_label_from_name("L6") is None
    assert vertebra_label_from_name("T12") is None
    assert vertebra_label_from_name("L12") is None


def test_nothing_found_creates_no_node_and_keeps_an_existing_one(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    nothing = pipeline.SegmentationResult(empty, [], None, None, 0.1, {}, ["No lumbar spine found in this image."],
                                          True)
    outcome = apply_result(scene, volume, nothing)
    assert outcome.segmentation_node is None and outcome.roi_node is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    seg = labels_to_segmentation(scene, labels, volume)
    outcome = apply_result(scene, volume, nothing, seg)
    assert outcome.segmentation_node is seg and len(segments(seg)) == 5
    assert any("left unchanged" in m for m in outcome.messages)
