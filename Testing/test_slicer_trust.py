"""The Slicer module's scene work when things go wrong, on a real MRML scene (slicer-core): a failed or
cancelled run leaves the scene as it was, edits made during a run are kept, NaN voxels and implausible sizes
are said, and the STL export refuses what it cannot do whole (the rest of the scene work: test_slicer_logic.py)."""

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from LumbarSegLib.inference import pipeline  # noqa: E402
from LumbarSegLib.errors import Cancelled  # noqa: E402
from LumbarSegLib.inference.models import load_model  # noqa: E402
from LumbarSegLib.scene.export import export_stl  # noqa: E402
from LumbarSegLib.scene.metrics_table import plausibility_warnings  # noqa: E402
from LumbarSegLib.scene.roi import box_lps_from_roi  # noqa: E402
from LumbarSegLib.scene.run import apply_result, run_segmentation  # noqa: E402
from LumbarSegLib.scene.segments import (is_user_edited, labels_to_segmentation, segmentation_content_hash,  # noqa: E402
                                         segmentation_to_label_array)
from LumbarSegLib.scene.volumes import sitk_to_volume_node, volume_node_to_sitk  # noqa: E402
from conftest import fake_engine, labels_box_lps, new_scene, paint_block, phantom, with_nan_rows  # noqa: E402

@pytest.fixture(scope="module")
def data():
    return phantom()


# ---------------------------------------------------------------------------------------------- trustworthy results

def _scene_state(scene):
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    return ids


def test_a_failed_run_leaves_no_half_made_nodes_and_loses_nothing(data):
    """Putting a broken result into the scene fails half-way (after the ROI moved and, for a reused node,
    after its segments were removed): the scene must be exactly as before."""
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, first = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    seg, roi = first.segmentation_node, first.roi_node
    state, content = _scene_state(scene), segmentation_content_hash(seg)
    box, attributes = box_lps_from_roi(roi, volume), {n: roi.GetAttribute(n) for n in roi.GetAttributeNames()}
    before = segmentation_to_label_array(seg, volume).copy()

    broken_labels = sitk.Compose(labels, labels)  # a two-component image: cannot become a label map
    moved_box = tuple(tuple(v + 7.0 for v in corner) for corner in box)
    broken = pipeline.SegmentationResult(broken_labels, ["L1", "L2", "L3", "L4", "L5"], None, moved_box, 0.9,
                                         {}, [], True)
    for target in (seg, None):  # replacing the unedited result, and creating a new node
        with pytest.raises(RuntimeError):
            apply_result(scene, volume, broken, target, roi)
        assert _scene_state(scene) == state  # no new segmentation, display or storage node left behind
        assert segmentation_content_hash(seg) == content and not is_user_edited(seg)
        np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), before)
        np.testing.assert_allclose(box_lps_from_roi(roi, volume), box, atol=1e-9)  # the ROI did not move
        assert {n: roi.GetAttribute(n) for n in roi.GetAttributeNames()} == attributes


def test_a_cancelled_run_changes_nothing(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, first = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    state, content = _scene_state(scene), segmentation_content_hash(first.segmentation_node)
    with pytest.raises(Cancelled):
        run_segmentation(scene, volume, model=load_model(), device="cpu",
                            segmentation_node=first.segmentation_node, cancel=lambda: True)
    assert _scene_state(scene) == state
    assert segmentation_content_hash(first.segmentation_node) == content


def test_edits_made_during_a_run_are_kept_even_after_agreeing_to_overwrite(data):
    """The user agreed to overwrite the segmentation as it was when the run started; painting into it
    while the run is going must not be thrown away."""
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    engine = fake_engine(labels, labels_box_lps(labels))
    _, first = run_segmentation(scene, volume, segment_fn=engine)
    seg = first.segmentation_node
    paint_block(seg, ct, "L2", np.s_[5:9, 5:9, 5:9])
    agreed = segmentation_content_hash(seg)  # the dialog "Overwrite" was answered for this content
    paint_block(seg, ct, "L3", np.s_[12:15, 12:15, 12:15])  # ...and then the user kept painting during the run
    edited = segmentation_to_label_array(seg, volume).copy()
    result = engine(volume_node_to_sitk(volume))
    outcome = apply_result(scene, volume, result, seg, first.roi_node, overwrite_edited=agreed)
    assert outcome.created_new and outcome.segmentation_node is not seg
    np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), edited)
    # Without further edits the agreement holds: the node is overwritten in place.
    outcome = apply_result(scene, volume, result, seg, first.roi_node,
                              overwrite_edited=segmentation_content_hash(seg))
    assert outcome.segmentation_node is seg and not is_user_edited(seg)


def test_segmentation_deleted_during_the_run_gets_a_new_node(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    engine = fake_engine(labels, labels_box_lps(labels))
    _, first = run_segmentation(scene, volume, segment_fn=engine)
    scene.RemoveNode(first.segmentation_node)
    outcome = apply_result(scene, volume, engine(volume_node_to_sitk(volume)), first.segmentation_node,
                              first.roi_node)
    assert outcome.segmentation_node.GetScene() is scene and outcome.created_new
    assert any("deleted while the run was going" in m for m in outcome.messages)


def test_nan_voxels_in_a_volume_are_air_with_a_warning(data):
    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, with_nan_rows(ct), "CT with NaN")
    calls = []
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels), calls))
    seen = sitk.GetArrayViewFromImage(calls[-1]["image"])
    assert np.isfinite(seen).all() and np.all(seen[:, :2, :] == -1000)
    assert any(m.startswith("WARNING: The volume 'CT with NaN' has") and "set to air" in m for m in outcome.messages)


@pytest.mark.parametrize("z_factor, plausible", [(1.0, True), (5.0, False)])
def test_implausible_sizes_are_warned_about_in_the_module(data, z_factor, plausible):
    """A slice spacing written 5 times too large: every vertebra is 5 times too high and too large."""
    ct, labels = data
    ct, labels = sitk.Image(ct), sitk.Image(labels)
    spacing = list(ct.GetSpacing())
    spacing[2] *= z_factor
    ct.SetSpacing(spacing)
    labels.SetSpacing(spacing)
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    warnings = plausibility_warnings(outcome.segmentation_node, volume)
    assert [m for m in outcome.messages if "implausible" in m] == warnings
    assert (warnings == []) is plausible
    if not plausible:
        assert len(warnings) == 5 and all("Check the voxel spacing" in w for w in warnings)


def test_slicer_stl_export_refuses_a_smoothing_factor_outside_0_to_1(data, tmp_path):
    """A smoothing factor above 1 makes the windowed-sinc smoothing return NaN vertices: the export refuses
    the factor before meshing, and no STL is written."""
    from LumbarSegLib.errors import InputError

    ct, labels = data
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    seg = outcome.segmentation_node
    seg.GetSegmentation().SetConversionParameter("Smoothing factor", "5")
    seg.RemoveClosedSurfaceRepresentation()
    with pytest.raises(InputError, match="Smoothing factor 5 is outside 0..1"):
        export_stl(seg, tmp_path / "stl")
    assert not list((tmp_path / "stl").glob("*.stl"))
    seg.GetSegmentation().SetConversionParameter("Smoothing factor", "0.5")
    seg.RemoveClosedSurfaceRepresentation()
    assert len(export_stl(seg, tmp_path / "stl")) == 5


def test_slicer_stl_export_never_mixes_two_results_in_one_folder(tmp_path):
    """Two scans whose segmentations have the same name ('CT lumbar vertebrae'), the second without L5,
    exported into one folder: the second export is refused (the first scan's L5 would stay beside the new
    L1-L4), and after agreeing to replace, the folder holds exactly the second export."""
    from LumbarSegLib.scene.export import EarlierExportError

    folder = tmp_path / "planning"
    first_ct, first_labels = phantom(seed=7)
    second_ct, second_labels = phantom(seed=8, drop=("L5",))
    exports = []
    for ct, labels in ((first_ct, first_labels), (second_ct, second_labels)):
        scene = new_scene()
        volume = sitk_to_volume_node(scene, ct, "CT")
        exports.append(labels_to_segmentation(scene, labels, volume))
    (folder).mkdir()
    (folder / "notes.stl").write_bytes(b"another program's file")  # not LumbarSeg's: never touched

    first = export_stl(exports[0], folder)
    assert [p.name for p in first] == [f"CT lumbar vertebrae_L{i}.stl" for i in range(1, 6)]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    with pytest.raises(EarlierExportError, match="already holds 5 STL file.* of a segmentation named "
                                                 "'CT lumbar vertebrae'") as refused:
        export_stl(exports[1], folder)
    assert sorted(p.name for p in refused.value.paths) == sorted(p.name for p in first)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, nothing hidden left

    second = export_stl(exports[1], folder, overwrite=True)
    assert [p.name for p in second] == [f"CT lumbar vertebrae_L{i}.stl" for i in range(1, 5)]
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in second] + ["notes.stl"])
    assert all(p.read_bytes() != before[p.name] for p in second)  # the second scan's surfaces
    assert (folder / "notes.stl").read_bytes() == b"another program's file"


def test_slicer_stl_export_to_an_unwritable_folder_is_one_clear_error(data, tmp_path):
    from LumbarSegLib.errors import InputError

    ct, labels = data
    scene = new_scene()
    seg = labels_to_segmentation(scene, labels, sitk_to_volume_node(scene, ct, "CT"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(InputError, match="the folder .*locked is read-only"):
            export_stl(seg, locked / "stl")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="notes.txt is a file, not a folder"):
        export_stl(seg, tmp_path / "notes.txt" / "stl")
