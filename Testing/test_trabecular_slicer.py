"""Trabecular ROIs in a real MRML scene (slicer-core): a run puts "L1 trabecular ROI" ... in as segments of
their own, the metrics table shows the trabecular HU measured in them, and follows a ROI the reader moved
(or falls back to the automatic rule when it is deleted)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LumbarSegLib.measures import trabecular  # noqa: E402
from LumbarSegLib.scene.metrics_table import compute_metrics, fill_metrics_table, table_to_dict  # noqa: E402
from LumbarSegLib.scene.run import apply_result  # noqa: E402
from LumbarSegLib.scene.segments import is_user_edited, segment_mask, segmentation_to_label_array  # noqa: E402
from LumbarSegLib.scene.trabecular_rois import add_roi_segments, roi_segment_names  # noqa: E402
from LumbarSegLib.scene.volumes import sitk_to_oriented_image, sitk_to_volume_node, volume_node_to_sitk  # noqa: E402
from conftest import DIRECTION, fake_engine, labels_box_lps, new_scene  # noqa: E402

KNOWN_HU = 100.0


@pytest.fixture(scope="module")
def known_phantom():
    """The Slicer tests' small oblique, flipped phantom, with a known trabecular HU."""
    from LumbarSegLib.io import label_maps
    from LumbarSegLib.phantoms import generate_phantom

    ct, verse = generate_phantom(4, shape=(72, 72, 100), spacing=(2.0, 2.0, 2.5), fov="lumbar",
                                 trabecular_hu=KNOWN_HU)
    labels = sitk.GetImageFromArray(label_maps.to_internal_labels(sitk.GetArrayViewFromImage(verse), "verse"))
    for image in (ct, labels):
        image.SetOrigin((12.5, -40.0, 100.0))
        image.SetDirection(DIRECTION.ravel().tolist())
    labels.CopyInformation(ct)
    return ct, labels


def _ids(node):
    s = node.GetSegmentation()
    return {s.GetNthSegment(i).GetName(): s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())}


def test_a_run_adds_roi_segments_and_the_table_follows_an_edited_roi(known_phantom):
    ct, labels = known_phantom
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    outcome = apply_result(scene, volume, fake_engine(labels, labels_box_lps(labels))(volume_node_to_sitk(volume)))
    seg = outcome.segmentation_node
    grid = volume_node_to_sitk(volume)
    hu = sitk.GetArrayFromImage(grid)
    expected = trabecular.measure(segmentation_to_label_array(seg, volume), hu, grid)
    measured = [n for n, r in expected.items() if r.core.reason is None]
    assert len(measured) >= 4
    names = set(roi_segment_names(seg))
    assert names == {f"{n} trabecular ROI" for n in measured} | {"L1 single-slice ROI"}
    assert not is_user_edited(seg)  # the ROIs are part of the result as created
    # The vertebrae read back unchanged: a ROI segment is not taken for its vertebra.
    np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), sitk.GetArrayViewFromImage(labels))

    table = fill_metrics_table(scene, compute_metrics(seg, volume))
    rows = table_to_dict(table)
    for name in measured:
        assert rows[name]["Trabecular HU"] == pytest.approx(expected[name].core.median)
        assert abs(rows[name]["Trabecular HU"] - KNOWN_HU) <= 10
        assert rows[name]["Trabecular ROI voxels"] == expected[name].core.voxels
        assert "from the ROI segment" in rows[name]["Trabecular note"]
        mask = segment_mask(seg, _ids(seg)[f"{name} trabecular ROI"], volume)
        np.testing.assert_array_equal(mask, expected[name].core.full_mask(hu.shape))
    assert rows["L1"]["Single-slice HU"] == pytest.approx(expected["L1"].single_slice.mean)
    assert table.GetColumnUnitLabel("Trabecular HU") == "HU"

    # The reader moves L2's ROI 40 mm forward (out of the bone): the table measures it where it now is.
    name = measured[1]
    moved = np.roll(expected[name].core.full_mask(hu.shape), -20, axis=1)
    image = sitk.GetImageFromArray(moved.astype(np.uint8))
    image.CopyInformation(grid)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        sitk_to_oriented_image(image), seg, _ids(seg)[f"{name} trabecular ROI"],
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert is_user_edited(seg)  # a later run will not overwrite the moved ROI without asking
    rows = table_to_dict(fill_metrics_table(scene, compute_metrics(seg, volume), table))
    assert rows[name]["Trabecular HU"] == pytest.approx(float(np.median(hu[moved])))
    assert abs(rows[name]["Trabecular HU"] - KNOWN_HU) > 50
    assert rows[measured[0]]["Trabecular HU"] == pytest.approx(expected[measured[0]].core.median)  # others stay

    # Deleted, the ROI is placed by the automatic rule again; recreated, it is a segment again.
    seg.GetSegmentation().RemoveSegment(_ids(seg)[f"{name} trabecular ROI"])
    rows = table_to_dict(fill_metrics_table(scene, compute_metrics(seg, volume), table))
    assert rows[name]["Trabecular HU"] == pytest.approx(expected[name].core.median)
    assert "from the ROI segment" not in rows[name]["Trabecular note"]
    assert f"{name} trabecular ROI" in add_roi_segments(seg, volume)
    assert set(roi_segment_names(seg)) == names


def test_no_value_shows_its_reason_in_the_table(known_phantom):
    ct, labels = known_phantom
    arr = sitk.GetArrayFromImage(labels)
    cut = int(np.nonzero((arr == 3).any(axis=(1, 2)))[0].mean())
    ct_c, lab_c = ct[:, :, cut:], labels[:, :, cut:]  # the field of view cuts L3's body
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct_c, "CT")
    outcome = apply_result(scene, volume, fake_engine(lab_c, labels_box_lps(lab_c))(volume_node_to_sitk(volume)))
    assert "L3 trabecular ROI" not in roi_segment_names(outcome.segmentation_node)
    rows = table_to_dict(fill_metrics_table(scene, compute_metrics(outcome.segmentation_node, volume)))
    assert np.isnan(rows["L3"]["Trabecular HU"]) and "cut by the field of view" in rows["L3"]["Trabecular note"]
